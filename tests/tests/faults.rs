//! Tier 3 (end to end), faults: the operator and agents as real processes (built from this
//! checkout) on the test control plane, with real ONNX Runtime and gRPC, and the faults a
//! cluster sees: `kill -9` of the operator mid-reconcile and of its leader, a control-plane
//! restart, an agent killed under load, an agent stopped with SIGTERM under load and started
//! again. docs/reliability.md ("Faults") records what each found, with the figures these tests
//! print (`-- --nocapture`).
//!
//! The tests run one at a time: the control-plane restart breaks every other test's watches,
//! and agents' capacity sweeps on two vCPUs would measure each other.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use policyserve_agent::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use policyserve_crds::conditions::{self, READY};
use policyserve_crds::{OptimizationProfile, POLICY_SERVICE_LABEL, PolicyService};
use policyserve_tests::local::{infer_through, served_request, serving, tiny_spec};
use policyserve_tests::process::{Process, binary, free_port, http_get};
use policyserve_tests::{
    RUN_LABEL, client, eventually, install_crds, restart_control_plane, test_namespace,
    unique_name, workspace_root,
};
use serde_json::{Value, json};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a test waits for the operator and agents.
const TIMEOUT: Duration = Duration::from_secs(90);

/// One test's namespace and Node label; its operators and agents see only those.
struct Scope {
    client: Client,
    namespace: String,
    run: String,
}

impl Scope {
    async fn new(prefix: &str) -> Result<Self> {
        let client = client().await?;
        install_crds(&client).await?;
        let namespace = test_namespace(&client, prefix).await?;
        Ok(Self {
            client,
            namespace,
            run: unique_name("run"),
        })
    }

    /// Starts an operator replica. `lease_seconds` is its leader Lease's duration.
    fn operator(&self, identity: &str, metrics_port: u16, lease_seconds: u64) -> Result<Process> {
        let args: Vec<String> = [
            "--namespace",
            &self.namespace,
            "--agent-namespace",
            &self.namespace,
            "--lease-namespace",
            &self.namespace,
            "--node-selector",
            &format!("{RUN_LABEL}={}", self.run),
            "--identity",
            identity,
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--lease-duration-seconds",
            &lease_seconds.to_string(),
            "--tuning-budget-seconds",
            "2",
            "--scale-down-stabilization",
            "2s",
        ]
        .map(String::from)
        .to_vec();
        let log = format!("{}-{identity}", self.namespace);
        Process::spawn(&binary("policyserve-operator")?, &args, &log)
    }

    /// Starts the agent of `node` (`run`, as in the DaemonSet), its hardware simulated by
    /// examples/hardware/balanced-node.json. It logs each label publication.
    fn agent(&self, node: &str, attempt: u32) -> Result<Process> {
        let temp = std::env::temp_dir();
        let hardware = workspace_root().join("examples/hardware/balanced-node.json");
        let args: Vec<String> = vec![
            "--log=info,ort=warn,policyserve_agent::node=debug".into(),
            "run".into(),
            format!("--node-name={node}"),
            format!("--namespace={}", self.namespace),
            "--grpc-addr=127.0.0.1:0".into(),
            "--metrics-addr=127.0.0.1:0".into(),
            format!("--hardware-file={}", hardware.display()),
            "--served-window-seconds=4".into(),
            "--served-write-seconds=1".into(),
            format!(
                "--model-cache={}",
                temp.join(format!("policyserve-cache-{node}")).display()
            ),
            format!(
                "--tensorrt-cache={}",
                temp.join(format!("policyserve-tensorrt-{node}")).display()
            ),
        ];
        Process::spawn(
            &binary("policyserve-agent")?,
            &args,
            &format!("agent-{node}-{attempt}"),
        )
    }

    /// Creates Node `prefix-…`: bare, as a kubelet registers it (its agent labels it), or
    /// labelled as an agent would have, for tests without agents.
    async fn node(&self, prefix: &str, labelled: bool) -> Result<String> {
        let name = unique_name(prefix);
        let mut labels = BTreeMap::from([(RUN_LABEL.to_owned(), self.run.clone())]);
        if labelled {
            labels.extend(
                [
                    ("policyserve.io/hardware-class", "balanced"),
                    ("hw.policyserve.io/cpu-usable", "4"),
                    ("hw.policyserve.io/memory-usable-mib", "16384"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
            );
        }
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
        self.nodes().create(&PostParams::default(), &node).await?;
        Ok(name)
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn policy_services(&self) -> Api<PolicyService> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn profiles(&self) -> Api<OptimizationProfile> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn apply(&self, name: &str, spec: Value) -> Result<()> {
        let ps = json!({"apiVersion": "policyserve.io/v1alpha1", "kind": "PolicyService",
                        "metadata": {"name": name}, "spec": spec});
        self.policy_services()
            .patch(
                name,
                &PatchParams::apply("faults").force(),
                &Patch::Apply(&ps),
            )
            .await?;
        Ok(())
    }

    async fn profiles_of(&self, ps: &str) -> Result<Vec<OptimizationProfile>> {
        let selector = format!("{POLICY_SERVICE_LABEL}={ps}");
        Ok(self
            .profiles()
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }

    /// Puts `models/<model>` into ConfigMap `name` under `model.onnx`.
    async fn model(&self, name: &str, model: &str) -> Result<()> {
        let bytes = std::fs::read(workspace_root().join("models").join(model))?;
        let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "binaryData": {"model.onnx": k8s_openapi::ByteString(bytes)}});
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
            self.client.clone(),
            &self.namespace,
        )
        .patch(
            name,
            &PatchParams::apply("faults").force(),
            &Patch::Apply(&config_map),
        )
        .await?;
        Ok(())
    }

    /// Waits until the PolicyService's Ready condition is `status`; returns the PolicyService.
    async fn ready(&self, ps: &str, status: &str) -> Result<PolicyService> {
        let api = self.policy_services();
        eventually(&format!("{ps} Ready={status}"), TIMEOUT, || async {
            let current = api.get(ps).await?;
            let ready = current
                .status
                .as_ref()
                .and_then(|s| conditions::find(&s.conditions, READY))
                .is_some_and(|c| c.status == status);
            Ok(ready.then_some(current))
        })
        .await
    }

    /// The holder of the operator's leader Lease.
    async fn leader(&self) -> Result<Option<String>> {
        let lease = Api::<Lease>::namespaced(self.client.clone(), &self.namespace)
            .get_opt("policyserve-operator")
            .await?;
        Ok(lease.and_then(|l| l.spec?.holder_identity))
    }
}

/// The operator's `policyserve_operator_leader` gauge, read from its metrics.
async fn leads(metrics_port: u16) -> Result<Option<bool>> {
    let Ok(body) = http_get(metrics_port, "/metrics").await else {
        return Ok(None); // not listening yet
    };
    let value = body
        .lines()
        .find_map(|line| line.strip_prefix("policyserve_operator_leader "))
        .context("no policyserve_operator_leader gauge")?;
    Ok(Some(value.trim() == "1"))
}

/// A PolicyService planned on `replicas` nodes, for tests whose nodes have no agents.
fn planned_only(replicas: u32) -> Value {
    json!({
        "model": {"configMap": {"name": "model", "key": "model.onnx"}},
        "targets": {"latencyP99Ms": 5.0},
        "placement": {"minReplicas": replicas, "maxReplicas": replicas},
    })
}

#[tokio::test]
async fn an_operator_killed_mid_reconcile_leaves_no_orphaned_or_duplicate_profiles() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scope = Scope::new("faults-kill").await?;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(scope.node("cpu", true).await?);
    }
    // Enough work that the kill lands between two of its writes.
    const SERVICES: usize = 40;
    for i in 0..SERVICES {
        scope.apply(&format!("ps-{i}"), planned_only(3)).await?;
    }

    let profiles = scope.profiles();
    let mut first = watcher(profiles.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut operator = scope.operator("op-a", free_port()?, 5)?;
    tokio::time::timeout(TIMEOUT, first.next())
        .await
        .with_context(|| format!("no profile; operator log:\n{}", operator.log_tail(20)))?;
    operator.kill().await?;
    drop(first);
    let at_kill = profiles.list(&ListParams::default()).await?.items.len();
    println!(
        "kill -9 of the operator with {at_kill} of {} profiles written",
        3 * SERVICES
    );
    ensure!(
        at_kill < 3 * SERVICES,
        "the operator wrote all {at_kill} profiles before the kill landed: raise SERVICES"
    );

    // While no operator runs: a node leaves and a PolicyService is deleted (its finalizer
    // holds it, Terminating, until an operator removes its profiles).
    scope
        .nodes()
        .delete(&nodes[2], &DeleteParams::default())
        .await?;
    scope
        .policy_services()
        .delete("ps-0", &DeleteParams::default())
        .await?;

    // A new replica (a new pod: another identity) waits out the dead one's Lease, then plans.
    let restarted = Instant::now();
    let _operator = scope.operator("op-b", free_port()?, 5)?;
    let expected: BTreeSet<&str> = nodes[..2].iter().map(String::as_str).collect();
    let services = scope.policy_services();
    let converged = eventually(
        "one profile per PolicyService and remaining node",
        TIMEOUT,
        || async {
            let owners: BTreeMap<String, String> = services
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .map(|ps| (ps.uid().unwrap_or_default(), ps.name_any()))
                .collect();
            let all = profiles.list(&ListParams::default()).await?.items;
            let mut by_service: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for p in &all {
                let owned_by_live = p
                    .owner_references()
                    .iter()
                    .any(|o| owners.get(&o.uid) == Some(&p.spec.policy_service));
                if !owned_by_live {
                    return Ok(None); // an orphan, or its PolicyService not yet gone
                }
                by_service
                    .entry(p.spec.policy_service.clone())
                    .or_default()
                    .push(p.spec.node_name.clone());
            }
            let done = owners.len() == SERVICES - 1
                && by_service.len() == SERVICES - 1
                && by_service.values().all(|on| {
                    on.len() == expected.len()
                        && on.iter().map(String::as_str).collect::<BTreeSet<_>>() == expected
                });
            Ok(done.then_some(all.len()))
        },
    )
    .await?;
    println!(
        "after the restart: {converged} profiles, one per (PolicyService, node), in {:.1} s \
         (including the dead replica's 5 s Lease)",
        restarted.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test]
async fn of_two_operator_replicas_one_leads_and_the_other_takes_over_when_it_is_killed()
-> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scope = Scope::new("faults-leader").await?;
    scope.node("cpu", true).await?;
    const LEASE_SECONDS: u64 = 5;
    let (port_a, port_b) = (free_port()?, free_port()?);
    let mut a = scope.operator("op-a", port_a, LEASE_SECONDS)?;
    eventually("op-a to lead", TIMEOUT, || async {
        Ok((leads(port_a).await? == Some(true)).then_some(()))
    })
    .await?;
    let _b = scope.operator("op-b", port_b, LEASE_SECONDS)?;
    let standby = eventually("op-b's metrics", TIMEOUT, || leads(port_b)).await?;
    ensure!(!standby, "op-b leads while op-a holds the Lease");
    assert_eq!(scope.leader().await?.as_deref(), Some("op-a"));
    scope.apply("before", planned_only(1)).await?;
    eventually("the leader to plan", TIMEOUT, || async {
        Ok((scope.profiles_of("before").await?.len() == 1).then_some(()))
    })
    .await?;
    ensure!(
        leads(port_b).await? == Some(false),
        "op-b took over from a live leader"
    );

    let killed = Instant::now();
    a.kill().await?;
    eventually(
        "op-b to lead",
        Duration::from_secs(LEASE_SECONDS + 10),
        || async { Ok((leads(port_b).await? == Some(true)).then_some(())) },
    )
    .await?;
    let failover = killed.elapsed();
    assert_eq!(scope.leader().await?.as_deref(), Some("op-b"));
    scope.apply("after", planned_only(1)).await?;
    eventually("the new leader to plan", TIMEOUT, || async {
        Ok((scope.profiles_of("after").await?.len() == 1).then_some(()))
    })
    .await?;
    let planned = killed.elapsed();
    println!(
        "leader killed: op-b led after {:.2} s, planned a new PolicyService {:.2} s after the \
         kill (Lease duration {LEASE_SECONDS} s)",
        failover.as_secs_f64(),
        planned.as_secs_f64()
    );
    Ok(())
}

/// Closed-loop gRPC clients at one endpoint, counting answers until stopped.
struct Load {
    ok: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    lost: Arc<std::sync::Mutex<Vec<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` connections, each sending the next request when the last is answered; a
    /// client stops at its first refusal (a real one would go to another endpoint).
    async fn start(profile: &OptimizationProfile, width: usize, clients: usize) -> Result<Self> {
        let (url, request) = served_request(profile, width, 1)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let ok = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            // A connection each, as separate clients would have.
            let mut client = GrpcInferenceServiceClient::connect(url.clone()).await?;
            let (request, stopped) = (request.clone(), stopped.clone());
            let (ok, refused, lost) = (ok.clone(), refused.clone(), lost.clone());
            tasks.push(tokio::spawn(async move {
                while !*stopped.borrow() {
                    match client.model_infer(request.clone()).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) if never_accepted(&status) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(status) => {
                            if let Ok(mut lost) = lost.lock() {
                                lost.push(format!("{status:?}"));
                            }
                            break;
                        }
                    }
                }
            }));
        }
        Ok(Self {
            ok,
            refused,
            lost,
            stop,
            tasks,
        })
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients; (answered OK, refused before acceptance, lost with their errors).
    async fn finish(self) -> Result<(u64, u64, Vec<String>)> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await?;
        }
        let lost = self.lost.lock().map(|l| l.clone()).unwrap_or_default();
        let ok = self.ok.load(Ordering::Relaxed);
        Ok((ok, self.refused.load(Ordering::Relaxed), lost))
    }
}

/// Whether a failed request never reached the server's handler: the connection was refused,
/// or HTTP/2 refused the stream after a GOAWAY (the server says it did not process it). Any
/// other failure of a sent request counts as lost.
fn never_accepted(status: &tonic::Status) -> bool {
    let text = format!("{status:?}");
    status.code() == tonic::Code::Unavailable
        && (text.contains("Connection refused") || text.contains("refused stream"))
}

/// What an agent's drain says it took and answered (its "gRPC drained" log line).
struct DrainAccount {
    accepted: u64,
    answered: u64,
}

fn drain_account(agent: &Process) -> Result<DrainAccount> {
    let log = std::fs::read_to_string(&agent.log)?;
    let line = log
        .lines()
        .rfind(|l| l.contains("gRPC drained"))
        .with_context(|| format!("no drain in the agent's log:\n{}", agent.log_tail(20)))?;
    let field = |name: &str| -> Result<u64> {
        let start = line
            .find(&format!("{name}="))
            .with_context(|| format!("no {name} in {line:?}"))?
            + name.len()
            + 1;
        let digits: String = line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Ok(digits.parse()?)
    };
    Ok(DrainAccount {
        accepted: field("accepted")?,
        answered: field("answered")?,
    })
}

/// The agent Lease's last renewal.
async fn renewed(scope: &Scope, node: &str) -> Result<jiff::Timestamp> {
    let lease = Api::<Lease>::namespaced(scope.client.clone(), &scope.namespace)
        .get(&policyserve_crds::agent_lease_name(node))
        .await?;
    lease
        .spec
        .and_then(|s| s.renew_time)
        .map(|t| t.0)
        .context("a Lease without renewTime")
}

/// Waits until `ps` has a profile that its agent reports Serving, and returns it.
async fn serving_profile(scope: &Scope, ps: &str) -> Result<OptimizationProfile> {
    eventually(&format!("{ps} to be served"), TIMEOUT, || async {
        Ok(scope.profiles_of(ps).await?.into_iter().find(serving))
    })
    .await
}

#[tokio::test]
async fn after_a_control_plane_restart_every_watch_recovers_and_nothing_is_lost() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scope = Scope::new("faults-restart").await?;
    let node = scope.node("cpu", false).await?;
    scope.model("tiny-model", "policy-mlp-tiny.onnx").await?;
    // The operator with its defaults: leader election on, a 15 s Lease.
    let mut operator = scope.operator("op-a", free_port()?, 15)?;
    let mut agent = scope.agent(&node, 0)?;
    scope
        .apply(
            "before",
            tiny_spec("tiny-model", json!({"latencyP99Ms": 50.0})),
        )
        .await?;
    // Two replicas wanted, one node: planned there, short of minReplicas.
    let mut wide = tiny_spec("tiny-model", json!({"latencyP99Ms": 50.0}));
    wide["placement"]["minReplicas"] = json!(2);
    scope.apply("wide", wide).await?;
    scope.ready("before", "True").await?;
    let before = serving_profile(&scope, "before").await?;
    let load = Load::start(&before, 16, 4).await?;

    let last_renewal = renewed(&scope, &node).await?;
    // Off the test's one thread, so the load keeps running through the outage.
    let outage = tokio::task::spawn_blocking(restart_control_plane).await??;
    let restarted = Instant::now();
    println!("control plane restarted in {:.1} s", outage.as_secs_f64());

    // Nothing lost: the same objects, and serving never needed the apiserver.
    let (ok, refused, lost) = load.finish().await?;
    println!(
        "load through the restart: {ok} answered, {refused} refused, {} lost",
        lost.len()
    );
    ensure!(refused == 0 && lost.is_empty() && ok > 0, "{lost:?}");
    let still = scope.profiles_of("before").await?;
    ensure!(
        still.len() == 1 && still[0].uid() == before.uid() && serving(&still[0]),
        "the profile changed: {still:?}"
    );
    assert_eq!(infer_through(&still[0], 16).await?.len(), 4);

    // Every watch acts on a change made after the restart. The operator's PolicyService
    // watch plans "after"; the agent's profile watch serves it; the operator's profile
    // watch sees it Serving.
    scope
        .apply(
            "after",
            tiny_spec("tiny-model", json!({"latencyP99Ms": 50.0})),
        )
        .await?;
    scope.ready("after", "True").await?;
    // The operator's Node watch: a node that joins now is planned for "wide".
    let joined = scope.node("cpu", true).await?;
    eventually("wide to be planned on the new node", TIMEOUT, || async {
        let on: BTreeSet<String> = scope
            .profiles_of("wide")
            .await?
            .into_iter()
            .map(|p| p.spec.node_name)
            .collect();
        Ok((on == BTreeSet::from([node.clone(), joined.clone()])).then_some(()))
    })
    .await?;
    // The operator's Lease watch: had it stopped, the agent's Lease would look older than the
    // 40 s timeout by now and "before" would turn AgentLost. Its renewals go on.
    let agent_timeout = Duration::from_secs(policyserve_crds::AGENT_LEASE_TIMEOUT_SECONDS + 5);
    let until = last_renewal + jiff::SignedDuration::try_from(agent_timeout)?;
    while jiff::Timestamp::now() < until {
        let ps = scope.policy_services().get("before").await?;
        let ready = ps
            .status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, READY).cloned());
        ensure!(
            ready.as_ref().is_some_and(|c| c.status == "True"),
            "before: {ready:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ensure!(
        renewed(&scope, &node).await? > last_renewal,
        "the agent stopped renewing its Lease"
    );
    ensure!(
        operator.exited()?.is_none(),
        "the operator exited:\n{}",
        operator.log_tail(20)
    );
    ensure!(
        agent.exited()?.is_none(),
        "the agent exited:\n{}",
        agent.log_tail(20)
    );
    println!(
        "watches recovered: checked {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test]
async fn an_agent_killed_under_load_leaves_the_others_serving_and_its_node_is_replaced()
-> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scope = Scope::new("faults-agent").await?;
    let mut agents = BTreeMap::new();
    for _ in 0..3 {
        let node = scope.node("cpu", false).await?;
        agents.insert(node.clone(), scope.agent(&node, 0)?);
    }
    scope.model("tiny-model", "policy-mlp-tiny.onnx").await?;
    let _operator = scope.operator("op-a", free_port()?, 15)?;
    let mut spec = tiny_spec("tiny-model", json!({"latencyP99Ms": 50.0}));
    // Two nodes, never three: demand cannot scale onto the spare, only the loss can move there.
    spec["placement"]["minReplicas"] = json!(2);
    spec["placement"]["maxReplicas"] = json!(2);
    scope.apply("walker", spec).await?;
    scope.ready("walker", "True").await?;
    let planned = scope.profiles_of("walker").await?;
    ensure!(
        planned.len() == 2 && planned.iter().all(serving),
        "{planned:?}"
    );
    let (victim, survivor) = (&planned[0], &planned[1]);
    let spare = agents
        .keys()
        .find(|n| **n != victim.spec.node_name && **n != survivor.spec.node_name)
        .cloned()
        .context("a third node")?;
    let before = scope.policy_services().get("walker").await?;
    let capacity = |ps: &PolicyService| {
        ps.status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .map(|c| c.throughput_rps)
    };
    println!("capacity before: {:?} rps on two nodes", capacity(&before));

    let to_victim = Load::start(victim, 16, 2).await?;
    let to_survivor = Load::start(survivor, 16, 2).await?;
    eventually("load on both nodes", TIMEOUT, || async {
        Ok((to_victim.ok() > 50 && to_survivor.ok() > 50).then_some(()))
    })
    .await?;
    let killed = Instant::now();
    let survivor_ok_at_kill = to_survivor.ok();
    agents
        .get_mut(&victim.spec.node_name)
        .context("the victim's agent")?
        .kill()
        .await?;

    // The operator notices once the Lease is 40 s old, and plans the spare node.
    let services = scope.policy_services();
    let noticed = eventually("the lost node to be replaced", TIMEOUT, || async {
        let on: BTreeSet<String> = scope
            .profiles_of("walker")
            .await?
            .into_iter()
            .map(|p| p.spec.node_name)
            .collect();
        Ok(on.contains(&spare).then_some(killed.elapsed()))
    })
    .await?;
    let after = services.get("walker").await?;
    println!(
        "agent lost after {:.1} s; capacity now {:?} rps; Ready: {:?}",
        noticed.as_secs_f64(),
        capacity(&after),
        after
            .status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, READY).cloned())
            .map(|c| (c.reason, c.message))
    );
    scope.ready("walker", "True").await?;
    // Ready may still be the condition written before the loss: wait for the spare itself.
    let now = eventually("the spare to serve", TIMEOUT, || async {
        let now = scope.profiles_of("walker").await?;
        let spare_serves = now.iter().any(|p| {
            p.spec.node_name == spare
                && serving(p)
                && p.status.as_ref().is_some_and(|s| s.endpoint.is_some())
        });
        Ok(spare_serves.then_some(now))
    })
    .await?;
    let replaced = killed.elapsed();
    let on: BTreeSet<&str> = now.iter().map(|p| p.spec.node_name.as_str()).collect();
    ensure!(
        on == BTreeSet::from([survivor.spec.node_name.as_str(), spare.as_str()]),
        "walker on {on:?}"
    );
    let (survivor_ok, refused, lost) = to_survivor.finish().await?;
    let _ = to_victim.finish().await?;
    println!(
        "replacement serving {:.1} s after the kill; the survivor answered {} requests after it, \
         {refused} refused, {} lost",
        replaced.as_secs_f64(),
        survivor_ok - survivor_ok_at_kill,
        lost.len()
    );
    ensure!(
        refused == 0 && lost.is_empty(),
        "the survivor failed requests: {lost:?}"
    );
    ensure!(
        survivor_ok > survivor_ok_at_kill,
        "the survivor stopped answering"
    );
    let on_spare = now
        .iter()
        .find(|p| p.spec.node_name == spare)
        .context("spare profile")?;
    assert_eq!(infer_through(on_spare, 16).await?.len(), 4);
    Ok(())
}

#[tokio::test]
async fn an_agent_stopped_with_sigterm_answers_every_accepted_request_and_restarts_unchanged()
-> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scope = Scope::new("faults-drain").await?;
    let node = scope.node("cpu", false).await?;
    scope.model("model", "policy-mlp.onnx").await?;
    let _operator = scope.operator("op-a", free_port()?, 15)?;
    let mut agent = scope.agent(&node, 0)?;
    scope
        .apply("drained", tiny_spec("model", json!({"latencyP99Ms": 50.0})))
        .await?;
    scope.ready("drained", "True").await?;
    let profile = serving_profile(&scope, "drained").await?;
    let labelled = scope.nodes().get(&node).await?;

    let load = Load::start(&profile, 64, 16).await?;
    eventually("load", TIMEOUT, || async {
        Ok((load.ok() > 200).then_some(()))
    })
    .await?;
    let ok_at_signal = load.ok();
    let signalled = Instant::now();
    let exit = agent.terminate(Duration::from_secs(30)).await?;
    let drained = signalled.elapsed();
    let (ok, refused, failed) = load.finish().await?;
    let account = drain_account(&agent)?;
    println!(
        "SIGTERM under load: exit {exit} after {:.2} s; {} answered after the signal, {refused} \
         refused, {} failed in transport ({ok} answered in all); the agent took {} requests \
         and answered {}",
        drained.as_secs_f64(),
        ok - ok_at_signal,
        failed.len(),
        account.accepted,
        account.answered
    );
    ensure!(
        exit.success(),
        "the agent exited with {exit}:\n{}",
        agent.log_tail(20)
    );
    // These clients are the only ones sending this agent real requests. A GOAWAY or a closed
    // connection does not say whether the server had taken a stream, so the agent's own
    // account decides: every request it took it answered, and every answer reached a client.
    // The requests that failed were then never taken (an error status from a handler would
    // count as answered and not as an answer got).
    ensure!(
        account.accepted == account.answered,
        "{} requests taken were never answered",
        account.accepted.abs_diff(account.answered)
    );
    ensure!(
        account.answered == ok,
        "the agent answered {} requests, its clients got {ok} answers; failures: {failed:?}",
        account.answered
    );

    // Started again (a container restart): the same labels, the same profile, serving again.
    let restarted = scope.agent(&node, 1)?;
    eventually("the restarted agent to serve", TIMEOUT, || async {
        let p = scope.profiles().get(&profile.name_any()).await?;
        let fresh = p.status.as_ref().and_then(|s| s.endpoint.clone())
            != profile.status.as_ref().and_then(|s| s.endpoint.clone());
        Ok((serving(&p) && fresh && restarted.log_count("labels published") > 0).then_some(()))
    })
    .await?;
    let relabelled = scope.nodes().get(&node).await?;
    assert_eq!(relabelled.labels(), labelled.labels());
    // Nothing else writes this Node: an unchanged version means the restart's label apply
    // changed nothing, not even for a moment.
    assert_eq!(relabelled.resource_version(), labelled.resource_version());
    let now = scope.profiles_of("drained").await?;
    ensure!(
        now.len() == 1 && now[0].uid() == profile.uid(),
        "replanned: {now:?}"
    );
    Ok(())
}
