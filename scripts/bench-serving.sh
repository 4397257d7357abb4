#!/usr/bin/env bash
# The serving load benchmark of docs/benchmarks.md from prebuilt binaries: the agent (profile
# chosen by `tune`, then the fixed bench/agent-profile.json) and KServe's Python model server,
# each swept by agent/examples/loadgen at concurrency 1..64 plus an open loop at half the max.
# scripts/bench.sh builds and calls it; on a machine without cargo (a GPU box) call it with
# the binaries of scripts/gpu-bundle.sh.
#
#   AGENT=... LOADGEN=... scripts/bench-serving.sh OUT_DIR
#
# Knobs: PYTHON (with kserve; unset = KServe skipped), MODEL (models/policy-mlp.onnx),
# STEP (s per load step, 5), WARM (s, 1), SERVER_CPUS / CLIENT_CPUS (taskset lists, e.g.
# 0,1 and 2-9: servers then run on their own cores and the load generator on others;
# unset = everything shares the machine), CLIENT_THREADS (load generator threads, 1),
# RATES (e.g. 5000,10000,20000: after the fixed profile's sweep, open loops at those rates, each
# with the agent's and the load generator's CPU time per request: on shared cores the two
# together say how busy the machine was).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:?usage: bench-serving.sh OUT_DIR}
: "${AGENT:?AGENT: the policyserve-agent binary}" "${LOADGEN:?LOADGEN: the loadgen binary}"
MODEL=${MODEL:-$ROOT/models/policy-mlp.onnx}
STEP=${STEP:-5} WARM=${WARM:-1} CLIENT_THREADS=${CLIENT_THREADS:-1}
mkdir -p "$OUT"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# Command prefixes that pin to a CPU list (taskset execs, so $! stays the server's PID).
SERVER=() CLIENT=()
if [[ -n ${SERVER_CPUS:-} ]]; then SERVER=(taskset -c "$SERVER_CPUS"); fi
# On cores of its own the open loop's pacer spins to keep its schedule (a sleep that short
# oversleeps and sends bursts); sharing cores with the servers, it sleeps.
if [[ -n ${CLIENT_CPUS:-} ]]; then CLIENT=(taskset -c "$CLIENT_CPUS"); fi

port_free() { # port: fail when something (a server left from an earlier run) answers there
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "port $1 is already in use: stop what listens there first" >&2
    return 1
  fi
}

wait_for_port() { # port pid
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "server exited" >&2; return 1; }
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}

rss() { # pid -> "VmHWM VmRSS" in MiB
  awk '/^VmHWM|^VmRSS/ {printf "%.1f ", $2 / 1024}' "/proc/$1/status"
}

load() { # label port json-name
  "${CLIENT[@]}" "$LOADGEN" --model policy --concurrency 1,2,4,8,16,32,64 \
    --duration "$STEP" --warm-up "$WARM" --open-fraction 0.5 --threads "$CLIENT_THREADS" \
    --target "http://127.0.0.1:$2" --label "$1" --json "$OUT/load-$3.json" | tee "$OUT/load-$3.md"
}

server_latency() { # label: the agent's own latency histogram over the whole sweep, so that a
  # tail seen by the load generator can be told apart from one inside the server
  if command -v curl >/dev/null 2>&1; then
    curl -s http://127.0.0.1:18002/metrics | awk -v label="$1" -F'le="' '
      /^policyserve_inference_latency_seconds_bucket/ {
        split($2, v, "\""); n = $0; sub(/.* /, "", n); le[++k] = v[1]; c[k] = n }
      END { for (i = 1; i <= k; i++) if (le[i] == "0.0016" || le[i] == "0.0064" || le[i] == "0.0256")
              over = over sprintf(" > %s s: %d;", le[i], c[k] - c[i]);
            printf "agent (%s) server-side latency over the sweep: %d requests;%s\n", label, c[k], over }' \
      | tee -a "$OUT/load-$1.md"
  fi
}

cpu_seconds() { # pid -> user + system CPU seconds so far
  awk -v tick="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / tick}' "/proc/$1/stat"
}

open_curve() { # agent-pid: open loops at $RATES with CPU time per request on both sides
  [[ -n ${RATES:-} ]] || return 0
  echo "| open loop | rps | p50 ms | p99 ms | errors | agent CPU µs/request | load generator CPU µs/request |" \
    | tee "$OUT/open-curve.md"
  echo "|---|---|---|---|---|---|---|" | tee -a "$OUT/open-curve.md"
  local rate before after client TIMEFORMAT='%U %S'
  for rate in ${RATES//,/ }; do
    before=$(cpu_seconds "$1")
    client=$({ time "${CLIENT[@]}" "$LOADGEN" --model policy --concurrency '' --open-rate "$rate" \
      --duration "$STEP" --warm-up "$WARM" --threads "$CLIENT_THREADS" \
      --target http://127.0.0.1:18001 --json "$OUT/open-$rate.json" >/dev/null 2>&1; } 2>&1)
    after=$(cpu_seconds "$1")
    # CPU time covers the warm-up too: per request of everything sent.
    "${PYTHON:-python3}" -c 'import json, sys
s = json.load(open(sys.argv[1]))["steps"][0]
sent = float(sys.argv[2]) * (float(sys.argv[3]) + float(sys.argv[4]))
agent = (float(sys.argv[6]) - float(sys.argv[5])) / sent * 1e6
client = sum(map(float, sys.argv[7].split())) / sent * 1e6
print("| %.0f/s | %.0f | %.3f | %.3f | %d | %.1f | %.1f |" % (s["target_rps"], s["rps"], s["p50_ms"], s["p99_ms"], s["errors"], agent, client))' \
      "$OUT/open-$rate.json" "$rate" "$STEP" "$WARM" "$before" "$after" "$client" | tee -a "$OUT/open-curve.md"
  done
}

serve_agent() { # label profile-file
  port_free 18001
  "${SERVER[@]}" "$AGENT" serve --model "policy=$MODEL" \
    --grpc-addr 127.0.0.1:18001 --metrics-addr 127.0.0.1:18002 --profile "$2" \
    >"$OUT/agent-$1.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_for_port 18001 "$pid"
  load "agent ($1)" 18001 "$1"
  server_latency "$1"
  echo "agent ($1) memory after the sweep, MiB (VmHWM VmRSS): $(rss "$pid")" | tee -a "$OUT/load-$1.md"
  rss "$pid" >"$OUT/rss-$1.txt"
  if [[ $1 == fixed ]]; then open_curve "$pid"; fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
  "· servers on CPUs ${SERVER_CPUS:-any} · load generator on CPUs ${CLIENT_CPUS:-any}" \
  "($CLIENT_THREADS threads)"

# The profile `tune` chooses where the server runs, for the goals (p99 < 1 ms, 80 MiB).
"${SERVER[@]}" "$AGENT" tune --model "$MODEL" --p99-ms 1 --memory 80Mi --budget 20s \
  --output json 2>"$OUT/tune.err" >"$OUT/tune.json"
"${PYTHON:-python3}" -c 'import json, sys; d = json.load(open(sys.argv[1])); json.dump(d["chosen"]["config"], open(sys.argv[2], "w"))' \
  "$OUT/tune.json" "$OUT/profile-tuned.json"
echo "tuned profile: $(cat "$OUT/profile-tuned.json")"
echo "fixed profile: $(tr -d ' \n' <bench/agent-profile.json)"
serve_agent tuned "$OUT/profile-tuned.json"
serve_agent fixed "$ROOT/bench/agent-profile.json"

if [[ -z ${PYTHON:-} ]]; then
  echo "PYTHON unset: KServe Python skipped"
  exit 0
fi
# KServe's Python server, default settings but for the ports (the defaults may be taken).
port_free 18081
"${SERVER[@]}" "$PYTHON" bench/kserve_server.py --model_name policy --model_path "$MODEL" \
  --grpc_port 18081 --http_port 18080 >"$OUT/kserve.log" 2>&1 &
pid=$!
PIDS+=("$pid")
wait_for_port 18081 "$pid"
load "KServe Python" 18081 kserve
echo "KServe Python memory after the sweep, MiB (VmHWM VmRSS): $(rss "$pid")" | tee -a "$OUT/load-kserve.md"
rss "$pid" >"$OUT/rss-kserve.txt"
kill "$pid"
wait "$pid" 2>/dev/null || true

echo "== goals"
"$PYTHON" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
load = lambda name: json.load(open(f"{out}/load-{name}.json"))
kserve = load("kserve")
c16 = lambda r: next(s["rps"] for s in r["steps"] if s["mode"] == "closed" and s["concurrency"] == 16)
for name in ("tuned", "fixed"):
    agent = load(name)
    open_step = next(s for s in agent["steps"] if s["mode"] == "open")
    hwm = float(open(f"{out}/rss-{name}.txt").read().split()[0])
    ratio = c16(agent) / c16(kserve)
    print(f"agent ({name}): c16 {c16(agent):.0f} rps vs KServe {c16(kserve):.0f} rps = {ratio:.1f}x "
          f"[goal >= 10x: {'met' if ratio >= 10 else 'MISSED'}]; "
          f"p99 at {open_step['target_rps']:.0f}/s (half of max {agent['max_rps']:.0f}) = {open_step['p99_ms']:.3f} ms "
          f"[goal < 1 ms: {'met' if open_step['p99_ms'] < 1 else 'MISSED'}]; "
          f"peak RSS {hwm:.1f} MiB [goal < 80 MiB: {'met' if hwm < 80 else 'MISSED'}]")
PY
