#!/usr/bin/env bash
# Soak test (docs/reliability.md, "Soak"): a standalone `policyserve-agent serve` under sustained
# open-loop load at a fraction of its measured capacity, for a fixed time.
#
#   1. measure capacity as the agent does: `policyserve-agent tune` with a p99 target, whose
#      chosen.capacity is the highest open-loop rate at which the target held with nothing
#      rejected; then serve the chosen configuration (RATE skips tuning and serves defaults);
#   2. offer FRACTION × capacity on a fixed schedule (open loop) for DURATION seconds, sampling
#      the server's RSS every SAMPLE seconds;
#   3. pass when no request failed or went unsent, every request the server answered OK is one
#      the client got (server counter delta = client answers: none accepted and lost), and the RSS
#      slope over the second half of the run stays under SLOPE_LIMIT_KIB_PER_MIN.
#
# Usage: scripts/soak.sh            (5 minutes at 80%, models/policy-mlp.onnx)
#        DURATION=60 FRACTION=0.5 scripts/soak.sh
# Needs ORT_DYLIB_PATH (make deps). Writes target/soak/{tune,soak}.json, rss.csv, summary.txt.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-300}
FRACTION=${FRACTION:-0.8}
SAMPLE=${SAMPLE:-5}
MODEL=${MODEL:-models/policy-mlp.onnx}
PORT=${PORT:-18001}
METRICS_PORT=${METRICS_PORT:-18002}
SLOPE_LIMIT_KIB_PER_MIN=${SLOPE_LIMIT_KIB_PER_MIN:-256}
P99_TARGET_MS=${P99_TARGET_MS:-5}
TUNE_BUDGET=${TUNE_BUDGET:-30s}
OUT=${OUT:-target/soak}
: "${ORT_DYLIB_PATH:?set ORT_DYLIB_PATH to libonnxruntime.so (make deps)}"

mkdir -p "$OUT"
cargo build --release -p policyserve-agent --bin policyserve-agent --example loadgen
AGENT=target/release/policyserve-agent
LOADGEN=target/release/examples/loadgen

json_field() { # FILE EXPRESSION: a figure from a JSON report
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"
}

PROFILE_ARGS=()
if [ -z "${RATE:-}" ]; then
  "$AGENT" tune --model "$MODEL" --p99-ms "$P99_TARGET_MS" --budget "$TUNE_BUDGET" \
    --output json >"$OUT/tune.json"
  CAPACITY=$(json_field "$OUT/tune.json" 'r["chosen"]["capacity"]["throughputRps"]')
  json_field "$OUT/tune.json" 'json.dumps(r["chosen"]["config"])' >"$OUT/profile.json"
  PROFILE_ARGS=(--profile "$OUT/profile.json")
  RATE=$(python3 -c "print(round($CAPACITY * $FRACTION))")
  [ "$RATE" -gt 0 ] || { echo "soak: tune found no rate meeting p99 ${P99_TARGET_MS} ms" >&2; exit 1; }
else
  CAPACITY=unmeasured
fi

"$AGENT" serve --model "policy=$MODEL" --grpc-addr "127.0.0.1:$PORT" \
  --metrics-addr "127.0.0.1:$METRICS_PORT" "${PROFILE_ARGS[@]}" >"$OUT/agent.log" 2>&1 &
AGENT_PID=$!
SAMPLER_PID=
cleanup() {
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null || true
  kill "$AGENT_PID" 2>/dev/null || true
  wait "$AGENT_PID" 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$METRICS_PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$AGENT_PID" 2>/dev/null || { cat "$OUT/agent.log"; echo "soak: the agent exited" >&2; exit 1; }
  sleep 0.5
done

# Answers with code Ok the server counted for the model.
served_ok() {
  curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk '/^policyserve_inference_requests_total\{/ && /model="policy"/ && /code="Ok"/ {s += $NF} END {printf "%d\n", s}'
}
# Answers with any other code.
served_not_ok() {
  curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk '/^policyserve_inference_requests_total\{/ && !/code="Ok"/ {s += $NF} END {printf "%d\n", s}'
}
echo "soak: capacity $CAPACITY/s (p99 ≤ ${P99_TARGET_MS} ms), offering $RATE/s for ${DURATION}s"

echo "elapsed_s,rss_kib" >"$OUT/rss.csv"
(
  start=$(date +%s)
  while kill -0 "$AGENT_PID" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$AGENT_PID/status")
    echo "$(( $(date +%s) - start )),$rss" >>"$OUT/rss.csv"
    sleep "$SAMPLE"
  done
) &
SAMPLER_PID=$!

OK_BEFORE=$(served_ok)
NOT_OK_BEFORE=$(served_not_ok)
"$LOADGEN" --target "http://127.0.0.1:$PORT" --model policy --concurrency '' \
  --open-rate "$RATE" --duration "$DURATION" --warm-up 0 --label soak --json "$OUT/soak.json"
# The server counts an answer when it is written; give the last ones a moment.
sleep 1
OK_DELTA=$(( $(served_ok) - OK_BEFORE ))
NOT_OK_DELTA=$(( $(served_not_ok) - NOT_OK_BEFORE ))
kill "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=

ANSWERED=$(json_field "$OUT/soak.json" 'r["steps"][-1]["requests"]')
ERRORS=$(json_field "$OUT/soak.json" 'r["steps"][-1]["errors"]')
ACHIEVED=$(json_field "$OUT/soak.json" 'round(r["steps"][-1]["rps"])')
P99=$(json_field "$OUT/soak.json" 'r["steps"][-1]["p99_ms"]')
LATE=$(json_field "$OUT/soak.json" 'r["steps"][-1].get("late")')
# Least-squares slope of RSS against time over the second half (after warm-up and arenas).
read -r RSS_FIRST RSS_LAST RSS_MAX SLOPE < <(awk -F, -v half="$((DURATION / 2))" '
  NR > 1 { if (first == "") first = $2; last = $2; if ($2 > max) max = $2
           if ($1 >= half) { n++; sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2 } }
  END { slope = (n > 1 && n * sxx - sx * sx != 0) ? (n * sxy - sx * sy) / (n * sxx - sx * sx) * 60 : 0
        printf "%d %d %d %.1f\n", first, last, max, slope }' "$OUT/rss.csv")

{
  echo "capacity_rps=$CAPACITY offered_rps=$RATE achieved_rps=$ACHIEVED duration_s=$DURATION"
  echo "client_answered=$ANSWERED client_errors_or_unsent=$ERRORS late_over_1ms=$LATE p99_ms=$P99"
  echo "server_ok=$OK_DELTA server_not_ok=$NOT_OK_DELTA"
  echo "rss_kib_first=$RSS_FIRST rss_kib_last=$RSS_LAST rss_kib_max=$RSS_MAX"
  echo "rss_slope_kib_per_min_second_half=$SLOPE samples=$(( $(wc -l <"$OUT/rss.csv") - 1 ))"
} | tee "$OUT/summary.txt"

status=0
[ "$ERRORS" -eq 0 ] || { echo "soak: FAIL: $ERRORS requests failed or went unsent" >&2; status=1; }
[ "$NOT_OK_DELTA" -eq 0 ] || { echo "soak: FAIL: the server answered $NOT_OK_DELTA non-OK" >&2; status=1; }
[ "$OK_DELTA" -eq "$ANSWERED" ] || {
  echo "soak: FAIL: the server answered $OK_DELTA OK, the client got $ANSWERED" >&2; status=1; }
awk -v s="$SLOPE" -v l="$SLOPE_LIMIT_KIB_PER_MIN" 'BEGIN { exit !(s <= l) }' || {
  echo "soak: FAIL: RSS grows $SLOPE KiB/min (limit $SLOPE_LIMIT_KIB_PER_MIN)" >&2; status=1; }
[ "$status" -eq 0 ] && echo "soak: PASS"
exit "$status"
