//! Tier 4 (a real cluster): the chart installed with `helm install` on a local Kubernetes 1.20
//! cluster with real nodes (kubelet, containerd, runc, CNI; `scripts/cluster.sh`), from images
//! built from this checkout. The operator and the agents run as pods under the chart's
//! ServiceAccounts; the tests hold an admin kubeconfig, as the person installing the chart does,
//! and pods never see it.
//!
//! One release on one cluster is shared, so the lifecycle is one test walking its steps in
//! order (install, serve, lose an agent, finalizers, upgrade, uninstall); each step says what
//! it checks. There is no cluster DNS: clients use pod IPs, and the headless Services' names are
//! not resolved here. The API server is 1.20: endpoints are core/v1 Endpoints (no
//! discovery.k8s.io/v1), and probes are TCP (no gRPC probes).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use policyserve_crds::{OptimizationProfile, PolicyService};
use policyserve_tests::cluster::{LocalCluster, local_cluster, run};
use policyserve_tests::{eventually, unique_name, workspace_root};
use serde_json::{Value, json};

/// Long enough for an agent to start, tune a few candidates and report on 2 shared cores.
const TIMEOUT: Duration = Duration::from_secs(240);
/// Seconds each agent tunes a profile: the tier checks serving, not the tuner.
const TUNING_BUDGET: &str = "operator.tuningBudgetSeconds=3";

/// The chart on real nodes, from `helm install` to `helm uninstall`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_serves_on_real_nodes_recovers_and_cleans_up() -> Result<()> {
    let started = Instant::now();
    let cluster = local_cluster();
    eprintln!(
        "cluster: {} node(s) {:?} ({:.0?} to bring up)",
        cluster.nodes.len(),
        cluster.nodes,
        started.elapsed()
    );
    let t = Tier::new(cluster).await?;

    step(
        "helm install: the operator leads, each node's agent labels its Node",
        || t.helm_install_runs_a_leading_operator_and_an_agent_per_node(),
    )
    .await?;
    step(
        "operator and agents run as the chart's ServiceAccounts",
        || t.pods_run_as_the_charts_service_accounts_not_as_admin(),
    )
    .await?;
    let examples = step(
        "the example PolicyServices become Ready on the agent pods",
        || t.the_examples_become_ready_served_by_agent_pods(),
    )
    .await?;
    step(
        "tritonclient through each pod IP gets ONNX Runtime's numbers",
        || t.tritonclient_through_pod_ips_gets_onnx_runtimes_numbers(&examples.namespace),
    )
    .await?;
    step(
        "the headless Services' endpoints list the serving pods' IPs",
        || t.endpoints_list_the_serving_agent_pod_ips(&examples.namespace),
    )
    .await?;
    step(
        "a deleted agent pod comes back; its Node's labels hold",
        || t.a_deleted_agent_pod_is_recreated_without_label_flaps(&examples.namespace),
    )
    .await?;
    step("deletion waits for the operator's finalizer", || {
        t.deletion_without_the_operator_waits_for_its_finalizer(&examples.namespace)
    })
    .await?;
    step("the garbage collector follows the owner references", || {
        t.the_garbage_collector_removes_profiles_of_a_deleted_policy_service(&examples.namespace)
    })
    .await?;
    step("no component was refused anything", || {
        t.no_component_log_says_forbidden()
    })
    .await?;
    step(
        "helm upgrade rolls the DaemonSet and serving resumes",
        || t.helm_upgrade_rolls_the_agents_and_serving_resumes(&examples.namespace),
    )
    .await?;
    step(
        "no component was refused anything after the upgrade",
        || t.no_component_log_says_forbidden(),
    )
    .await?;
    step(
        "helm uninstall stops every pod and leaves the PolicyServices",
        || t.helm_uninstall_stops_every_pod_and_leaves_policy_services(&examples.namespace),
    )
    .await?;
    drop(examples);
    eprintln!("cluster tier: {:.0?} in all", started.elapsed());
    Ok(())
}

/// The chart itself, without a cluster: the host model folder is mounted at the agent's model
/// root, read-only, and the RBAC grants what real pods were seen to need.
#[test]
fn the_chart_mounts_host_models_at_the_model_root_and_grants_endpoints_and_leases() -> Result<()> {
    let chart = workspace_root().join("charts/policyserve");
    let rendered = run(
        "helm",
        &[
            "template",
            "ps",
            chart.to_str().context("chart path")?,
            "--namespace",
            "policyserve-system",
            "--set",
            "agent.hostModels.enabled=true,agent.hostModels.path=/srv/models",
        ],
        &[],
    )?;
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&rendered)
        .filter_map(|doc| <Value as serde::Deserialize>::deserialize(doc).ok())
        .filter(|doc| doc.is_object())
        .collect();
    let daemonset = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .context("no DaemonSet")?;
    let pod = &daemonset["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["hostPath"]["path"] == "/srv/models")
        .context("no hostPath volume for the models")?;
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume["name"])
        .context("the model volume is not mounted")?;
    assert_eq!(mount["mountPath"], policyserve_crds::MODEL_ROOT);
    assert_eq!(mount["readOnly"], true);

    let rules = |kind: &str, name: &str| -> Vec<Value> {
        objects
            .iter()
            .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let grants = |rules: &[Value], resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|v| v.contains(&json!(resource)))
                && r["verbs"]
                    .as_array()
                    .is_some_and(|v| v.contains(&json!(verb)))
                && r["resourceNames"].is_null()
        })
    };
    let operator = rules("ClusterRole", "ps-policyserve-operator");
    for verb in [
        "get", "list", "watch", "create", "patch", "update", "delete",
    ] {
        assert!(
            grants(&operator, "endpoints", verb),
            "operator cannot {verb} endpoints"
        );
    }
    let operator_leases = rules("Role", "ps-policyserve-operator-leader-election");
    for verb in ["get", "list", "watch"] {
        assert!(
            grants(&operator_leases, "leases", verb),
            "operator cannot {verb} leases"
        );
    }
    let agent_leases = rules("Role", "ps-policyserve-agent-lease");
    for verb in ["get", "create", "update", "patch"] {
        assert!(
            grants(&agent_leases, "leases", verb),
            "agent cannot {verb} leases"
        );
    }
    for verb in ["list", "watch", "delete"] {
        assert!(
            !grants(&agent_leases, "leases", verb),
            "agent may {verb} leases"
        );
    }
    Ok(())
}

/// Runs one step, saying what it checks and how long it took.
async fn step<T, F, Fut>(what: &str, body: F) -> Result<T>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let started = Instant::now();
    eprintln!("step: {what}");
    let value = body()
        .await
        .with_context(|| format!("step failed: {what}"))?;
    eprintln!("  ok in {:.1?}", started.elapsed());
    Ok(value)
}

/// The tier's view of the cluster and the release.
struct Tier {
    cluster: &'static LocalCluster,
    client: Client,
}

/// The namespace holding the example PolicyServices, and the model server the URL example
/// downloads from; the server stops when this is dropped.
struct Examples {
    namespace: String,
    _server: ModelServer,
}

/// `python3 -m http.server` serving models/ on the host side of the pod bridge.
struct ModelServer(Child);

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `kubectl get --watch` of one Node's labels, one JSON line per change.
struct LabelWatch {
    child: Child,
    lines: std::thread::JoinHandle<Vec<String>>,
}

impl LabelWatch {
    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.join().unwrap_or_default()
    }
}

const OPERATOR_SELECTOR: &str = "app.kubernetes.io/component=operator";
const AGENT_SELECTOR: &str = "app.kubernetes.io/component=agent";
/// The labels whose stability the agent restart must keep.
const STABLE_LABELS: [&str; 3] = [
    "policyserve.io/hardware-class",
    "hw.policyserve.io/source",
    "hw.policyserve.io/cpu-threads",
];

impl Tier {
    async fn new(cluster: &'static LocalCluster) -> Result<Self> {
        let client = cluster.client().await?;
        Ok(Self { cluster, client })
    }

    fn ns(&self) -> &str {
        &self.cluster.namespace
    }

    fn operator_name(&self) -> String {
        format!("{}-operator", self.cluster.release)
    }

    fn agent_name(&self) -> String {
        format!("{}-agent", self.cluster.release)
    }

    fn policy_services(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            namespace,
            &ApiResource::erase::<PolicyService>(&()),
        )
    }

    fn profiles(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            namespace,
            &ApiResource::erase::<OptimizationProfile>(&()),
        )
    }

    fn helm_chart_args<'a>(&'a self, chart: &'a str, values: &'a str) -> Vec<&'a str> {
        vec![
            chart,
            "--namespace",
            self.ns(),
            // Helm 4 applies CRDs server-side, which 1.20 refuses for their CEL rules.
            "--server-side=false",
            "-f",
            values,
            "--set",
            TUNING_BUDGET,
        ]
    }

    async fn pods(&self, selector: &str) -> Result<Vec<Pod>> {
        let api = Api::<Pod>::namespaced(self.client.clone(), self.ns());
        Ok(api
            .list(&ListParams::default().labels(selector))
            .await?
            .items)
    }

    /// The Ready agent pod of every node, once each node has exactly one that is not
    /// terminating.
    async fn agent_pods_by_node(&self) -> Result<BTreeMap<String, Pod>> {
        let nodes = self.cluster.nodes.clone();
        eventually("a Ready agent pod on every node", TIMEOUT, || async {
            let mut by_node = BTreeMap::new();
            for pod in self.pods(AGENT_SELECTOR).await? {
                if pod.metadata.deletion_timestamp.is_some() || !is_ready(&pod) {
                    continue;
                }
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                if let Some(node) = node {
                    by_node.insert(node, pod);
                }
            }
            let all = nodes.iter().all(|n| by_node.contains_key(n));
            Ok(all.then_some(by_node))
        })
        .await
    }

    async fn helm_install_runs_a_leading_operator_and_an_agent_per_node(&self) -> Result<()> {
        let values = self.cluster.values.to_string_lossy().into_owned();
        let chart = chart_path();
        let mut args = vec!["install", self.cluster.release.as_str()];
        args.extend(self.helm_chart_args(&chart, &values));
        args.push("--create-namespace");
        self.cluster.helm(&args)?;

        let operator = eventually("a Ready operator pod", TIMEOUT, || async {
            let pods = self.pods(OPERATOR_SELECTOR).await?;
            Ok(pods.into_iter().find(is_ready))
        })
        .await?;
        let leases = Api::<Lease>::namespaced(self.client.clone(), self.ns());
        let operator_pod = operator.name_any();
        eventually(
            "the operator pod to hold the leader Lease",
            TIMEOUT,
            || async {
                let lease = leases.get_opt(&self.operator_name()).await?;
                let holder = lease
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity)
                    .unwrap_or_default();
                Ok((holder == operator_pod).then_some(()))
            },
        )
        .await?;

        let agents = self.agent_pods_by_node().await?;
        ensure!(
            agents.len() == self.cluster.nodes.len(),
            "agents on {:?}, nodes {:?}",
            agents.keys().collect::<Vec<_>>(),
            self.cluster.nodes
        );
        let nodes = Api::<Node>::all(self.client.clone());
        for node in &self.cluster.nodes {
            eventually(
                &format!("{node} labelled by its agent"),
                TIMEOUT,
                || async {
                    let labels = nodes
                        .get_metadata(node)
                        .await?
                        .metadata
                        .labels
                        .unwrap_or_default();
                    let detected = labels.get("hw.policyserve.io/source").map(String::as_str)
                        == Some("detected");
                    Ok(
                        (detected && labels.contains_key("policyserve.io/hardware-class"))
                            .then_some(()),
                    )
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn pods_run_as_the_charts_service_accounts_not_as_admin(&self) -> Result<()> {
        let admin = std::fs::read_to_string(&self.cluster.kubeconfig)?;
        for (selector, account) in [
            (OPERATOR_SELECTOR, self.operator_name()),
            (AGENT_SELECTOR, self.agent_name()),
        ] {
            for pod in self.pods(selector).await? {
                let spec = pod.spec.as_ref().context("pod without a spec")?;
                ensure!(
                    spec.service_account_name.as_deref() == Some(account.as_str()),
                    "{} runs as {:?}, not {account}",
                    pod.name_any(),
                    spec.service_account_name
                );
                // Nothing of the admin's credentials reaches a pod: no host path of the
                // cluster's folder, no environment carrying a kubeconfig or a token.
                let text = serde_json::to_string(spec)?;
                ensure!(
                    !text.contains(&self.cluster.dir.to_string_lossy().into_owned()),
                    "{} mounts the cluster's folder",
                    pod.name_any()
                );
                for line in admin
                    .lines()
                    .filter(|l| l.trim_start().starts_with("token:"))
                {
                    let token = line.trim_start().trim_start_matches("token:").trim();
                    ensure!(
                        !text.contains(token),
                        "{} carries the admin token",
                        pod.name_any()
                    );
                }
                ensure!(
                    !text.contains("KUBECONFIG"),
                    "{} sets KUBECONFIG",
                    pod.name_any()
                );
            }
            // What the ServiceAccount may do: the chart's grants, not an admin's.
            let user = format!("system:serviceaccount:{}:{account}", self.ns());
            let can = |verb: &str, resource: &str| -> Result<bool> {
                let out = self.cluster.kubectl_output(&[
                    "auth",
                    "can-i",
                    verb,
                    resource,
                    "--all-namespaces",
                    "--as",
                    &user,
                ])?;
                Ok(out.trim() == "yes")
            };
            ensure!(!can("get", "secrets")?, "{account} may read secrets");
            ensure!(!can("create", "pods")?, "{account} may create pods");
            ensure!(!can("delete", "nodes")?, "{account} may delete nodes");
        }
        let agent = format!("system:serviceaccount:{}:{}", self.ns(), self.agent_name());
        let can_agent = self
            .cluster
            .kubectl_output(&["auth", "can-i", "patch", "nodes", "--as", &agent])?;
        ensure!(can_agent.trim() == "yes", "the agent cannot label nodes");
        Ok(())
    }

    async fn the_examples_become_ready_served_by_agent_pods(&self) -> Result<Examples> {
        let namespace = unique_name("robots");
        self.cluster.kubectl(&["create", "namespace", &namespace])?;
        let root = workspace_root();
        let server = self.start_model_server()?;
        let examples = root.join("examples");
        self.cluster.kubectl(&[
            "apply",
            "--server-side",
            "-n",
            &namespace,
            "-f",
            &examples
                .join("policyservice-configmap.yaml")
                .to_string_lossy(),
        ])?;
        // The path example names files under the model root, which the chart mounts from
        // this checkout's models/ (values-local.yaml): applied unchanged.
        self.cluster.kubectl(&[
            "apply",
            "-n",
            &namespace,
            "-f",
            &examples.join("policyservice-path.yaml").to_string_lossy(),
        ])?;
        // The URL example downloads from the model server on the pod bridge, checked against
        // its sha256 (no other network here).
        let url = std::fs::read_to_string(examples.join("policyservice-url.yaml"))?.replace(
            "https://models.example.com/policies/",
            &format!("http://{}/", server.1),
        );
        self.cluster
            .kubectl_with_input(&["apply", "-n", &namespace, "-f", "-"], &url)?;

        let agents = self.agent_pods_by_node().await?;
        let pod_ips: BTreeSet<String> = agents.values().filter_map(pod_ip).collect();
        for name in ["cartpole", "walker", "lander"] {
            self.wait_ready(&namespace, name).await?;
            // Every profile that serves does so on an agent pod's IP.
            for profile in self.serving_profiles(&namespace, name).await? {
                let address = profile.data["status"]["endpoint"]["address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                ensure!(
                    pod_ips.contains(&address),
                    "{name} is served at {address}, not by an agent pod ({pod_ips:?})"
                );
            }
        }
        Ok(Examples {
            namespace,
            _server: server.0,
        })
    }

    /// Starts the model server on a free port of the bridge's host address.
    fn start_model_server(&self) -> Result<(ModelServer, String)> {
        let address = self.cluster.api_address.clone();
        let port = std::net::TcpListener::bind((address.as_str(), 0))?
            .local_addr()?
            .port();
        let child = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", &address])
            .current_dir(workspace_root().join("models"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("failed to start python3 -m http.server")?;
        let server = ModelServer(child);
        let target = format!("{address}:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&target).is_err() {
            ensure!(Instant::now() < deadline, "the model server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok((server, target))
    }

    async fn wait_ready(&self, namespace: &str, name: &str) -> Result<DynamicObject> {
        let api = self.policy_services(namespace);
        eventually(
            &format!("PolicyService {name} Ready=True"),
            TIMEOUT,
            || async {
                let ps = api.get_opt(name).await?;
                Ok(ps.filter(|ps| condition(&ps.data, "Ready") == Some("True")))
            },
        )
        .await
    }

    async fn serving_profiles(&self, namespace: &str, name: &str) -> Result<Vec<DynamicObject>> {
        let list = self
            .profiles(namespace)
            .list(&ListParams::default().labels(&format!("policyserve.io/policy-service={name}")))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| condition(&p.data, "Serving") == Some("True"))
            .collect())
    }

    async fn tritonclient_through_pod_ips_gets_onnx_runtimes_numbers(
        &self,
        namespace: &str,
    ) -> Result<()> {
        for (name, fp32, int8) in [
            ("cartpole", "policy-mlp-tiny.onnx", None),
            ("walker", "policy-mlp.onnx", Some("policy-mlp.int8.onnx")),
            ("lander", "policy-mlp.onnx", None),
        ] {
            let profiles = self.serving_profiles(namespace, name).await?;
            ensure!(!profiles.is_empty(), "{name}: no serving profile");
            for profile in profiles {
                let status = &profile.data["status"];
                let file = match (status["chosen"]["precision"].as_str(), int8) {
                    (Some("int8"), Some(int8)) => int8,
                    _ => fp32,
                };
                let address = status["endpoint"]["address"].as_str().unwrap_or_default();
                let model = status["endpoint"]["modelName"].as_str().unwrap_or_default();
                let diff = infer(&format!("{address}:8001"), model, file)?;
                if diff >= 1e-4 {
                    // Say which model file the answers do match, if any: a variant other than
                    // the one the status reports is being served.
                    let other = match int8 {
                        Some(int8) if file == fp32 => Some(int8),
                        Some(_) => Some(fp32),
                        None => None,
                    };
                    let other_diff = match other {
                        Some(other) => format!(
                            "; from {other}: {}",
                            infer(&format!("{address}:8001"), model, other)?
                        ),
                        None => String::new(),
                    };
                    bail!(
                        "{name} at {address} (status: precision {:?}): differs from ONNX \
                         Runtime on {file} by {diff}{other_diff}",
                        status["chosen"]["precision"]
                    );
                }
            }
        }
        Ok(())
    }

    async fn endpoints_list_the_serving_agent_pod_ips(&self, namespace: &str) -> Result<()> {
        let endpoints = Api::<Endpoints>::namespaced(self.client.clone(), namespace);
        for name in ["cartpole", "walker", "lander"] {
            let serving: BTreeSet<String> = self
                .serving_profiles(namespace, name)
                .await?
                .iter()
                .filter_map(|p| p.data["status"]["endpoint"]["address"].as_str())
                .map(str::to_owned)
                .collect();
            let agents = self.agent_pods_by_node().await?;
            let pod_ips: BTreeSet<String> = agents.values().filter_map(pod_ip).collect();
            ensure!(
                serving.is_subset(&pod_ips),
                "{name}: {serving:?} vs pods {pod_ips:?}"
            );
            eventually(
                &format!("Endpoints {name} = {serving:?}"),
                TIMEOUT,
                || async {
                    let listed: BTreeSet<String> = endpoints
                        .get_opt(name)
                        .await?
                        .and_then(|e| e.subsets)
                        .unwrap_or_default()
                        .into_iter()
                        .flat_map(|s| s.addresses.unwrap_or_default())
                        .map(|a| a.ip)
                        .collect();
                    Ok((listed == serving).then_some(()))
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn a_deleted_agent_pod_is_recreated_without_label_flaps(
        &self,
        namespace: &str,
    ) -> Result<()> {
        let node = self.cluster.nodes[0].clone();
        let before = self.agent_pods_by_node().await?;
        let old = before.get(&node).context("no agent on the first node")?;
        let nodes = Api::<Node>::all(self.client.clone());
        let baseline = stable_labels(&nodes.get_metadata(&node).await?.metadata.labels);
        let watch = self.watch_node_labels(&node)?;

        let pods = Api::<Pod>::namespaced(self.client.clone(), self.ns());
        pods.delete(&old.name_any(), &Default::default()).await?;
        let old_uid = old.uid().unwrap_or_default();
        let recreated = eventually(&format!("a new agent pod on {node}"), TIMEOUT, || async {
            let now = self.agent_pods_by_node().await?;
            Ok(now
                .get(&node)
                .filter(|p| p.uid().unwrap_or_default() != old_uid)
                .cloned())
        })
        .await?;
        let new_ip = pod_ip(&recreated).context("new pod without an IP")?;
        // Serving resumes on the new pod: every profile of that node reports its new address
        // and answers there, and the PolicyServices are Ready again.
        for name in ["cartpole", "walker", "lander"] {
            let profile = policyserve_crds::optimization_profile_name(name, &node);
            let api = self.profiles(namespace);
            let Some(current) = api.get_opt(&profile).await? else {
                continue; // not planned on this node
            };
            let model = current.data["status"]["endpoint"]["modelName"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            eventually(
                &format!("{profile} serving at {new_ip}"),
                TIMEOUT,
                || async {
                    let p = api.get(&profile).await?;
                    let at =
                        p.data["status"]["endpoint"]["address"].as_str() == Some(new_ip.as_str());
                    Ok((at && condition(&p.data, "Serving") == Some("True")).then_some(()))
                },
            )
            .await?;
            let file = if name == "cartpole" {
                "policy-mlp-tiny.onnx"
            } else {
                let p = api.get(&profile).await?;
                if p.data["status"]["chosen"]["precision"] == "int8" {
                    "policy-mlp.int8.onnx"
                } else {
                    "policy-mlp.onnx"
                }
            };
            let diff = infer(&format!("{new_ip}:8001"), &model, file)?;
            ensure!(diff < 1e-4, "{profile} at {new_ip}: differs by {diff}");
            self.wait_ready(namespace, name).await?;
        }
        let seen = watch.stop();
        ensure!(!seen.is_empty(), "the label watch saw nothing");
        for line in &seen {
            let labels: Option<BTreeMap<String, String>> = serde_json::from_str(line).ok();
            let now = stable_labels(&labels);
            ensure!(
                now == baseline,
                "{node}'s labels flapped during the restart: {now:?}, before {baseline:?}"
            );
        }
        Ok(())
    }

    /// Watches `node`'s labels with kubectl (a real watch: every change is a line).
    fn watch_node_labels(&self, node: &str) -> Result<LabelWatch> {
        let mut child = Command::new("kubectl")
            .args([
                "--kubeconfig",
                &self.cluster.kubeconfig.to_string_lossy(),
                "get",
                "node",
                node,
                "--watch",
                "-o",
                "jsonpath={.metadata.labels}{\"\\n\"}",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("failed to start kubectl get --watch")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect()
        });
        Ok(LabelWatch { child, lines })
    }

    async fn scale_operator(&self, replicas: i32) -> Result<()> {
        let deployments = Api::<Deployment>::namespaced(self.client.clone(), self.ns());
        deployments
            .patch(
                &self.operator_name(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await?;
        eventually(&format!("{replicas} operator pods"), TIMEOUT, || async {
            let pods = self.pods(OPERATOR_SELECTOR).await?;
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            let done = if replicas == 0 {
                pods.is_empty()
            } else {
                usize::try_from(replicas).ok() == Some(ready)
            };
            Ok(done.then_some(()))
        })
        .await
    }

    async fn deletion_without_the_operator_waits_for_its_finalizer(
        &self,
        namespace: &str,
    ) -> Result<()> {
        let api = self.policy_services(namespace);
        let profiles = self.profiles(namespace);
        let selector = "policyserve.io/policy-service=cartpole";
        ensure!(
            !profiles
                .list(&ListParams::default().labels(selector))
                .await?
                .items
                .is_empty(),
            "cartpole has no profiles to clean up"
        );
        self.scale_operator(0).await?;
        api.delete("cartpole", &Default::default()).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let terminating = api.get("cartpole").await?;
        ensure!(
            terminating.metadata.deletion_timestamp.is_some()
                && !terminating.finalizers().is_empty(),
            "cartpole is not held by a finalizer: {:?}",
            terminating.metadata
        );
        self.scale_operator(1).await?;
        eventually("cartpole and its profiles gone", TIMEOUT, || async {
            let gone = api.get_opt("cartpole").await?.is_none()
                && profiles
                    .list(&ListParams::default().labels(selector))
                    .await?
                    .items
                    .is_empty();
            Ok(gone.then_some(()))
        })
        .await
    }

    async fn the_garbage_collector_removes_profiles_of_a_deleted_policy_service(
        &self,
        namespace: &str,
    ) -> Result<()> {
        let api = self.policy_services(namespace);
        let profiles = self.profiles(namespace);
        let selector = "policyserve.io/policy-service=walker";
        let walker = api.get("walker").await?;
        let owned = profiles
            .list(&ListParams::default().labels(selector))
            .await?
            .items;
        ensure!(!owned.is_empty(), "walker has no profiles");
        for profile in &owned {
            ensure!(
                profile
                    .owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == walker.metadata.uid.as_ref()),
                "{} has no owner reference to walker",
                profile.name_any()
            );
        }
        self.scale_operator(0).await?;
        api.delete("walker", &Default::default()).await?;
        // What someone does by hand when no operator will ever come back.
        api.patch(
            "walker",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
        eventually(
            "the garbage collector to remove walker's profiles",
            TIMEOUT,
            || async {
                let gone = api.get_opt("walker").await?.is_none()
                    && profiles
                        .list(&ListParams::default().labels(selector))
                        .await?
                        .items
                        .is_empty();
                Ok(gone.then_some(()))
            },
        )
        .await?;
        self.scale_operator(1).await?;
        self.wait_ready(namespace, "lander").await?;
        Ok(())
    }

    async fn no_component_log_says_forbidden(&self) -> Result<()> {
        for selector in [OPERATOR_SELECTOR, AGENT_SELECTOR] {
            for pod in self.pods(selector).await? {
                let name = pod.name_any();
                let restarts: i32 = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .map(|c| c.iter().map(|c| c.restart_count).sum())
                    .unwrap_or(0);
                ensure!(restarts == 0, "{name} restarted {restarts} times");
                let logs = self.cluster.kubectl(&["logs", "-n", self.ns(), &name])?;
                ensure!(!logs.trim().is_empty(), "{name} logged nothing");
                let refused: Vec<&str> = logs
                    .lines()
                    .filter(|l| l.to_lowercase().contains("forbidden"))
                    .collect();
                ensure!(refused.is_empty(), "{name} was refused: {refused:#?}");
            }
        }
        Ok(())
    }

    async fn helm_upgrade_rolls_the_agents_and_serving_resumes(
        &self,
        namespace: &str,
    ) -> Result<()> {
        let before: BTreeSet<String> = self
            .agent_pods_by_node()
            .await?
            .values()
            .filter_map(ResourceExt::uid)
            .collect();
        let values = self.cluster.values.to_string_lossy().into_owned();
        let chart = chart_path();
        let mut args = vec!["upgrade", self.cluster.release.as_str()];
        args.extend(self.helm_chart_args(&chart, &values));
        // A changed pod template: every agent pod must be replaced.
        args.extend(["--set", "agent.redetectSeconds=240"]);
        self.cluster.helm(&args)?;

        let daemonsets = Api::<DaemonSet>::namespaced(self.client.clone(), self.ns());
        eventually("the DaemonSet rolled out", TIMEOUT, || async {
            let ds = daemonsets.get(&self.agent_name()).await?;
            let generation = ds.metadata.generation.unwrap_or_default();
            let status = ds.status.unwrap_or_default();
            let rolled = status.observed_generation.unwrap_or_default() >= generation
                && status.updated_number_scheduled == Some(status.desired_number_scheduled)
                && status.number_ready == status.desired_number_scheduled;
            Ok(rolled.then_some(()))
        })
        .await?;
        let after = self.agent_pods_by_node().await?;
        for (node, pod) in &after {
            ensure!(
                !before.contains(&pod.uid().unwrap_or_default()),
                "{node}'s agent pod was not replaced"
            );
            let args = serde_json::to_string(&pod.spec.as_ref().map(|s| &s.containers[0].args))?;
            ensure!(
                args.contains("--redetect-seconds=240"),
                "{node}: old pod template"
            );
        }
        let lander = self.wait_ready(namespace, "lander").await?;
        let new_ips: BTreeSet<String> = after.values().filter_map(pod_ip).collect();
        let profiles = eventually("lander served by the new pods", TIMEOUT, || async {
            let serving = self.serving_profiles(namespace, "lander").await?;
            let all_new = !serving.is_empty()
                && serving.iter().all(|p| {
                    p.data["status"]["endpoint"]["address"]
                        .as_str()
                        .is_some_and(|a| new_ips.contains(a))
                });
            Ok(all_new.then_some(serving))
        })
        .await?;
        let model = lander.data["status"]["endpoint"]["modelName"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for profile in profiles {
            let address = profile.data["status"]["endpoint"]["address"]
                .as_str()
                .unwrap_or_default();
            let diff = infer(&format!("{address}:8001"), &model, "policy-mlp.onnx")?;
            ensure!(diff < 1e-4, "lander at {address}: differs by {diff}");
        }
        Ok(())
    }

    async fn helm_uninstall_stops_every_pod_and_leaves_policy_services(
        &self,
        namespace: &str,
    ) -> Result<()> {
        self.cluster
            .helm(&["uninstall", &self.cluster.release, "--namespace", self.ns()])?;
        eventually("no pod left in the release namespace", TIMEOUT, || async {
            let pods = Api::<Pod>::namespaced(self.client.clone(), self.ns());
            Ok(pods
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
                .then_some(()))
        })
        .await?;
        // The CRDs stay, and with them the PolicyServices, each still holding the operator's
        // finalizer: deleting one now (or deleting the CRD, which deletes them all) waits for
        // an operator that is gone, until someone removes the finalizers by hand.
        let api = self.policy_services(namespace);
        let lander = api.get("lander").await?;
        ensure!(!lander.finalizers().is_empty(), "lander lost its finalizer");
        api.delete("lander", &Default::default()).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let held = api.get("lander").await?;
        ensure!(
            held.metadata.deletion_timestamp.is_some(),
            "lander is not terminating"
        );
        api.patch(
            "lander",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
        eventually(
            "lander gone once its finalizer is removed",
            TIMEOUT,
            || async { Ok(api.get_opt("lander").await?.is_none().then_some(())) },
        )
        .await
    }
}

/// Sends four single-row requests with tritonclient to `url` and returns the largest difference
/// from ONNX Runtime's own answer (the deps virtualenv's onnxruntime) on `models/<file>`.
fn infer(url: &str, model: &str, file: &str) -> Result<f64> {
    const CLIENT: &str = r#"
import json, sys
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton
url, model, path = sys.argv[1:4]
client = triton.InferenceServerClient(url=url)
meta = client.get_model_metadata(model, as_json=True)
name, width = meta["inputs"][0]["name"], int(meta["inputs"][0]["shape"][-1])
x = np.random.default_rng(7).standard_normal((4, width)).astype(np.float32)
rows = []
for row in x:
    # One row per request: every tuned configuration takes that (maxBatchSize may be 1).
    request = triton.InferInput(name, [1, width], "FP32")
    request.set_data_from_numpy(row[None, :])
    rows.append(client.infer(model, [request]).as_numpy(meta["outputs"][0]["name"]))
got = np.concatenate(rows)
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
# Row by row as well: an int8 model quantizes its activations per batch (dynamic quantization),
# so its answer for a row depends on the rows batched with it.
feed = session.get_inputs()[0].name
want = np.concatenate([session.run(None, {feed: row[None, :]})[0] for row in x])
assert got.shape == want.shape, (got.shape, want.shape)
print(json.dumps({"max_abs_diff": float(np.max(np.abs(got - want)))}))
"#;
    let python = std::env::var("POLICYSERVE_PYTHON").context(
        "POLICYSERVE_PYTHON is not set: run `make deps` and `source ~/.cache/policyserve/env.sh`",
    )?;
    let path: PathBuf = workspace_root().join("models").join(file);
    // An int8 answer also depends on rows batched with ours; the agent's own re-measurement
    // traffic may share a batch now and then, so the best of three tries counts.
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let out = run(
            &python,
            &["-c", CLIENT, url, model, &path.to_string_lossy()],
            &[],
        )?;
        let answer: Value = serde_json::from_str(out.trim()).context("the client's answer")?;
        let diff = answer["max_abs_diff"]
            .as_f64()
            .context("no max_abs_diff in the client's answer")?;
        best = best.min(diff);
        if best < 1e-4 {
            break;
        }
    }
    Ok(best)
}

fn chart_path() -> String {
    workspace_root()
        .join("charts/policyserve")
        .to_string_lossy()
        .into_owned()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

/// The status of condition `type_` in an object's `status.conditions`.
fn condition<'a>(data: &'a Value, type_: &str) -> Option<&'a str> {
    data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["status"]
        .as_str()
}

fn stable_labels(labels: &Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    labels
        .iter()
        .flatten()
        .filter(|(k, _)| STABLE_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
