#!/usr/bin/env bash
# The end-to-end demo on this machine: a real kube-apiserver + etcd, the operator and three
# agents as local processes, each agent on its own loopback address with a SIMULATED node
# (examples/hardware: a GPU node that executes on CPU, a large CPU node, a small node), real
# ONNX Runtime and real gRPC. Applies the example PolicyServices, waits for the agents'
# measurements, prints what the operator and agents report, sends a short gRPC load at a
# served model, and shuts everything down. Run it with `make demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
: "${DEMO_TIMEOUT_SECONDS:=300}"
: "${DEMO_TUNING_BUDGET_SECONDS:=20}"
NAMESPACE=demo
BIN="$ROOT/target/release"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

source "${POLICYSERVE_CACHE:-$HOME/.cache/policyserve}/env.sh"
say "building release binaries"
cargo build -q --release -p policyserve-agent -p policyserve-operator --bins --example loadgen

RUN="$(mktemp -d -t policyserve-demo.XXXXXX)"
export CP_RUN_DIR="$RUN/control-plane"
PIDS=()
cleanup() {
  say "shutting down"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/control-plane.sh stop >/dev/null 2>&1 || true
  echo "logs were in $RUN (removed)"
  rm -rf "$RUN"
}
trap cleanup EXIT

say "starting a local control plane (kube-apiserver v1.20 + etcd; no kubelet)"
scripts/control-plane.sh start >/dev/null
export KUBECONFIG="$CP_RUN_DIR/kubeconfig"
# Client-side apply: the 1.20 apiserver refuses CEL rules under server-side apply and drops
# them otherwise; kubectl's client-side schema check refuses the field (--validate=false).
# The operator validates the same rules itself.
kubectl apply --validate=false -f charts/policyserve/crds/ >/dev/null
kubectl wait --for condition=Established crd --all --timeout=60s >/dev/null
kubectl create namespace "$NAMESPACE" >/dev/null

# Nodes are registered by the kubelet in a real cluster; here they are plain API objects.
declare -A HARDWARE=([demo-gpu]=gpu-node [demo-cpu]=large-cpu-node [demo-small]=small-node)
declare -A ADDRESS=([demo-gpu]=127.0.0.2 [demo-cpu]=127.0.0.3 [demo-small]=127.0.0.4)
for node in demo-gpu demo-cpu demo-small; do
  kubectl create -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata: {name: $node}
EOF
done

say "starting the operator and three agents (simulated hardware, real ONNX Runtime)"
"$BIN/policyserve-operator" --leader-election=false --metrics-addr 127.0.0.1:0 --agent-namespace "$NAMESPACE" \
  --tuning-budget-seconds "$DEMO_TUNING_BUDGET_SECONDS" --scale-down-stabilization 30s \
  >"$RUN/operator.log" 2>&1 &
PIDS+=($!)
for node in demo-gpu demo-cpu demo-small; do
  "$BIN/policyserve-agent" run --node-name "$node" \
    --hardware-file "examples/hardware/${HARDWARE[$node]}.json" \
    --grpc-addr "${ADDRESS[$node]}:8001" --metrics-addr "${ADDRESS[$node]}:8002" \
    --model-cache "$RUN/cache-$node" --model-root "$ROOT/models" --namespace "$NAMESPACE" \
    --served-window-seconds 20 --served-write-seconds 5 \
    --tuning-lock-file "$RUN/tuning.lock" >"$RUN/agent-$node.log" 2>&1 &
  PIDS+=($!)
  echo "  $node  ${ADDRESS[$node]}:8001  examples/hardware/${HARDWARE[$node]}.json (SIMULATED)"
done
sleep 2
kubectl get nodes -L policyserve.io/hardware-class -L hw.policyserve.io/source -L hw.policyserve.io/cpu-usable \
  -L hw.policyserve.io/gpu.product

say "applying the example PolicyServices"
# The URL example downloads from a local web server (no other network here), checked against
# its sha256; the path example points at this checkout's models, the agents' model root here.
python3 -m http.server 18080 --bind 127.0.0.1 --directory models >"$RUN/http.log" 2>&1 &
PIDS+=($!)
kubectl apply --server-side -n "$NAMESPACE" -f examples/policyservice-configmap.yaml >/dev/null
sed "s#https://models.example.com/policies/#http://127.0.0.1:18080/#" examples/policyservice-url.yaml |
  kubectl apply -n "$NAMESPACE" -f - >/dev/null
sed "s#/var/lib/policyserve/models/#$ROOT/models/#" examples/policyservice-path.yaml |
  kubectl apply -n "$NAMESPACE" -f - >/dev/null
# One example served by all three nodes, so each hardware class shows its own choice.
kubectl patch policyservice cartpole -n "$NAMESPACE" --type merge \
  -p '{"spec":{"placement":{"minReplicas":3}}}' >/dev/null
kubectl get policyservices -n "$NAMESPACE"

say "waiting for the agents to tune and report (budget ${DEMO_TUNING_BUDGET_SECONDS}s per profile)"
deadline=$(( $(date +%s) + DEMO_TIMEOUT_SECONDS ))
compliance() {
  kubectl get policyservices -n "$NAMESPACE" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="PerformanceCompliant")].status}{"\n"}{end}'
}
until [ "$(compliance | grep -c -E '^(True|False)$')" -eq 3 ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "timed out; operator log tail:"; tail -n 20 "$RUN/operator.log"; exit 1
  fi
  sleep 2
done

say "kubectl get policyservices"
kubectl get policyservices -n "$NAMESPACE"
say "what the agents measured, per node (kubectl get optimizationprofiles)"
echo "capacity: the highest rate that held every latency target, open loop over loopback gRPC on"
echo "the node; the three agents share this machine's CPUs, so they tune one at a time (one lock file)"
kubectl get optimizationprofiles -n "$NAMESPACE" -o custom-columns=\
'NAME:.metadata.name,NODE:.spec.nodeName,CLASS:.spec.hardwareClass,PROFILE:.spec.profile,SERVING:.status.conditions[?(@.type=="Serving")].status,PREC:.status.chosen.precision,THREADS:.status.chosen.intraOpThreads,BATCH:.status.chosen.maxBatchSize,CAPACITY:.status.capacity.throughputRps,P99MS:.status.capacity.latencyP99Ms,MIB:.status.capacity.memoryMiB'
say "why: each PolicyService's conditions"
for ps in $(kubectl get policyservices -n "$NAMESPACE" -o jsonpath='{.items[*].metadata.name}'); do
  echo "$ps:"
  kubectl get policyservice "$ps" -n "$NAMESPACE" \
    -o jsonpath='{range .status.conditions[*]}  {.type}={.status} ({.reason}): {.message}{"\n"}{end}'
done
echo "the simulated GPU node's tuner (no CUDA here):"
kubectl get optimizationprofiles -n "$NAMESPACE" -l policyserve.io/node=demo-gpu \
  -o jsonpath='{range .items[*]}  {.metadata.name}: {.status.conditions[?(@.type=="Tuned")].message}{"\n"}{end}'

say "a short gRPC load (KServe V2, tritonclient) at a served model"
endpoint=$(kubectl get optimizationprofiles -n "$NAMESPACE" -l policyserve.io/policy-service=cartpole \
  -o jsonpath='{.items[0].status.endpoint.address}:{.items[0].status.endpoint.port} {.items[0].status.endpoint.modelName}')
"$POLICYSERVE_PYTHON" - $endpoint <<'EOF'
import sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import tritonclient.grpc as triton

url, model = sys.argv[1], sys.argv[2]
meta = triton.InferenceServerClient(url=url).get_model_metadata(model, as_json=True)
width = int(meta["inputs"][0]["shape"][1])

def client(seed, n=300):
    c = triton.InferenceServerClient(url=url)
    x = np.random.default_rng(seed).standard_normal((1, width)).astype(np.float32)
    latencies = []
    for _ in range(n):
        i = triton.InferInput(meta["inputs"][0]["name"], [1, width], "FP32")
        i.set_data_from_numpy(x)
        t = time.perf_counter()
        c.infer(model, [i])
        latencies.append(time.perf_counter() - t)
    return latencies

start = time.perf_counter()
with ThreadPoolExecutor(8) as pool:
    latencies = sorted(l for ls in pool.map(client, range(8)) for l in ls)
elapsed = time.perf_counter() - start
p = lambda q: latencies[int(q * (len(latencies) - 1))] * 1000
print(f"{model} at {url}: {len(latencies)} requests from 8 Python clients in {elapsed:.2f}s "
      f"= {len(latencies) / elapsed:.0f} rps (client-bound); p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms")
EOF

say "what the status claims vs what a client gets (Rust open-loop load at each node's capacity)"
# The bar: at least 90% of the claimed rate, no answer failed, every latency target held.
echo "| profile | claimed capacity rps | claimed p99 ms | offered rps | got rps | got p99 ms | late | not OK | bar |"
echo "|---|---|---|---|---|---|---|---|---|"
kubectl get optimizationprofiles -n "$NAMESPACE" -o jsonpath=\
'{range .items[*]}{.metadata.name} {.spec.policyService} {.status.capacity.throughputRps} {.status.capacity.latencyP99Ms} {.status.endpoint.address}:{.status.endpoint.port} {.status.endpoint.modelName} {.spec.targets}{"\n"}{end}' |
while read -r name policy rps p99 target model targets; do
  # A profile not measured yet prints empty fields, which `read` collapses: no number here.
  if ! [[ "$rps" =~ ^[0-9]+(\.[0-9]+)?$ ]] || [ "${rps%.*}" -le 0 ]; then
    [[ "$rps" =~ ^[0-9] ]] || { rps=unmeasured; p99=-; }
    echo "| $name | $rps | $p99 | - | - | - | - | - | - |"
    continue
  fi
  # The examples' models take 16 (cartpole's tiny model) or 64 observation values.
  width=64; [ "$policy" = cartpole ] && width=16
  json="$RUN/claims-$name.json"
  "$BIN/examples/loadgen" --target "http://$target" --model "$model" --row-len "$width" \
    --concurrency '' --open-rate "$rps" --duration 5 --warm-up 1 --json "$json" \
    >/dev/null 2>"$RUN/claims-$name.log" || true
  "$POLICYSERVE_PYTHON" - "$json" "$name" "$rps" "$p99" "${targets:-{\}}" <<'EOF'
import json, sys
path, name, rps, p99, targets = sys.argv[1:6]
claimed = f"| {name} | {float(rps):.0f} | {float(p99):.3f} | {float(rps):.0f}"
try:
    step = json.load(open(path))["steps"][-1]
except (OSError, ValueError, IndexError, KeyError):
    print(f"{claimed} | load failed | - | - | - | - |")
    sys.exit()
targets = json.loads(targets)  # the profile's spec.targets, compact JSON from kubectl
misses = [f"{step['rps'] / float(rps):.0%} of the rate"] if step["rps"] < 0.9 * float(rps) else []
if step["errors"]:
    misses.append(f"{step['errors']} not OK")
for q in ("p50", "p95", "p99"):
    limit = targets.get(f"latency{q.upper()}Ms")
    if limit is not None and step[f"{q}_ms"] > limit:
        misses.append(f"{q} {step[f'{q}_ms']:.3f} > {limit:g} ms")
bar = "missed: " + ", ".join(misses) if misses else "met"
print(f"{claimed} | {step['rps']:.0f} | {step['p99_ms']:.3f} | {step.get('late', 0)} | {step['errors']} | {bar} |")
EOF
done

say "kubectl get policyservices, after the loads (served figures are written when they move)"
sleep 7
kubectl get policyservices -n "$NAMESPACE"
# The scaling benchmark of docs/benchmarks.md, on this cluster (about four more minutes).
if [ "${DEMO_STEP_LOAD:-0}" = 1 ]; then
  source scripts/step-load.sh
fi
