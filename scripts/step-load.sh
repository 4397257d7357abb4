# The scaling benchmark of docs/benchmarks.md ("Scaling on demand"), sourced by scripts/demo.sh
# when DEMO_STEP_LOAD=1, on the demo's cluster: a PolicyService with a small throughput target,
# so that demand alone decides its replicas, gets an open-loop load that steps from a fifth of
# its first node's capacity to one and a half times it and back. Every STEP_SECONDS the load is
# split evenly over the agents then serving it (there is no cluster DNS or Service proxy here,
# so the script balances as a gRPC client resolving the headless Service would), and a row
# records what was offered, what clients got, and what the status said: demand, capacity and
# replicas. Uses the demo's $RUN, $BIN, $NAMESPACE, say() and its operator's 30 s scale-down
# stabilization.
: "${STEP_SECONDS:=15}"
: "${STEP_FRACTIONS:=0.2 0.2 1.5 1.5 1.5 1.5 0.2 0.2 0.2 0.2 0.2}"

say "scaling on demand: a step load up and down (${STEP_SECONDS}s steps)"
kubectl apply --server-side -n "$NAMESPACE" -f - >/dev/null <<EOF
apiVersion: policyserve.io/v1alpha1
kind: PolicyService
metadata: {name: stepper}
spec:
  model: {configMap: {name: cartpole-model, key: model.onnx}}
  targets: {latencyP99Ms: 5.0, throughputRps: 50}
  placement: {minReplicas: 1, maxReplicas: 3, headroomPercent: 20}
EOF
step_status() {
  kubectl get policyservice stepper -n "$NAMESPACE" -o jsonpath="$1"
}
deadline=$(( $(date +%s) + DEMO_TIMEOUT_SECONDS ))
until [ -n "$(step_status '{.status.capacity.throughputRps}')" ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then echo "stepper was never measured"; return 1; fi
  sleep 2
done
one_node=$(step_status '{.status.capacity.throughputRps}')
echo "one node's capacity: ${one_node} rps; offered = fraction x that, split over the serving agents"
echo "| t s | offered rps | got rps | late | not OK | demand rps (status) | capacity rps (status) | desired | serving |"
echo "|---|---|---|---|---|---|---|---|---|"
start=$(date +%s)
for fraction in $STEP_FRACTIONS; do
  mapfile -t targets < <(kubectl get optimizationprofiles -n "$NAMESPACE" \
    -l policyserve.io/policy-service=stepper -o jsonpath=\
'{range .items[*]}{.status.conditions[?(@.type=="Serving")].status} {.status.endpoint.address}:{.status.endpoint.port} {.status.endpoint.modelName}{"\n"}{end}' |
    sed -n 's/^True //p')
  offered=$("$POLICYSERVE_PYTHON" -c "print(round($fraction * $one_node))")
  share=$("$POLICYSERVE_PYTHON" -c "print(max(1, round($offered / max(1, ${#targets[@]}))))")
  jsons=()
  loads=()
  for i in "${!targets[@]}"; do
    read -r target model <<<"${targets[$i]}"
    json="$RUN/step-$(date +%s)-$i.json"
    jsons+=("$json")
    "$BIN/examples/loadgen" --target "http://$target" --model "$model" --row-len 16 \
      --concurrency '' --open-rate "$share" --duration "$STEP_SECONDS" --warm-up 0 \
      --json "$json" >/dev/null 2>>"$RUN/step-load.log" &
    loads+=($!)
  done
  # Only the load generators: a bare `wait` would wait for the demo's agents too.
  [ "${#loads[@]}" -eq 0 ] || wait "${loads[@]}"
  got=$("$POLICYSERVE_PYTHON" - "${jsons[@]}" <<'EOF'
import json, sys
rps = late = errors = 0
for path in sys.argv[1:]:
    try:
        step = json.load(open(path))["steps"][-1]
    except (OSError, ValueError, IndexError, KeyError):
        continue
    rps += step["rps"]; late += step.get("late") or 0; errors += step["errors"]
print(f"{rps:.0f} | {late} | {errors}")
EOF
)
  row=$(step_status '{.status.served.demandRps} | {.status.capacity.throughputRps} | {.status.scaling.desiredReplicas} | {.status.scaling.servingReplicas}')
  echo "| $(( $(date +%s) - start )) | $offered | $got | $row |"
done
echo "the operator's scaling reason at the end:"
step_status '{.status.scaling.reason}'; echo
