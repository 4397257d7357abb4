//! Scale benchmark (not a test): N Nodes × M PolicyServices against the cluster in KUBECONFIG,
//! with the operator binary running as its own process so its memory and CPU are its own.
//!
//! ```text
//! cargo build --release -p policyserve-operator --examples
//! scripts/with-control-plane.sh target/release/examples/scale_bench \
//!     --operator target/release/policyserve-operator [--nodes 100] [--services 1000]
//! ```
//!
//! Measures: time from the first create until every PolicyService reports
//! ProfilesAssigned=True; time until all are PerformanceCompliant=True after the "agents"
//! (this program) report measurements; reconciles per PolicyService; the operator's peak RSS;
//! its CPU use and reconciles while idle (a requeue storm would show there).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use policyserve_crds::conditions::{self, PERFORMANCE_COMPLIANT, PROFILES_ASSIGNED};
use policyserve_crds::{OptimizationProfile, PolicyService};
use serde_json::json;

const PARALLEL: usize = 32;

struct Options {
    operator: String,
    nodes: usize,
    services: usize,
    metrics_port: u16,
}

fn options() -> Result<Options> {
    let mut options = Options {
        operator: "target/release/policyserve-operator".into(),
        nodes: 100,
        services: 1000,
        metrics_port: 18080,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--operator" => options.operator = value,
            "--nodes" => options.nodes = value.parse()?,
            "--services" => options.services = value.parse()?,
            "--metrics-port" => options.metrics_port = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(options)
}

async fn install_crds(client: &Client) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for mut crd in policyserve_crds::manifests::crds() {
        let name = crd.name_any();
        match api.get_opt(&name).await? {
            Some(existing) => {
                crd.metadata.resource_version = existing.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &crd).await?;
            }
            None => {
                api.create(&PostParams::default(), &crd).await?;
            }
        }
        let established = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(api.clone(), &name, established),
        )
        .await??;
    }
    Ok(())
}

fn node_labels(i: usize, run: &str) -> BTreeMap<String, String> {
    let (class, cpus, memory) = match i % 4 {
        0 => ("high-performance-cpu", "32", "131072"),
        1 => ("balanced", "8", "32768"),
        2 => ("memory-constrained", "2", "4096"),
        _ => ("gpu-accelerated", "16", "65536"),
    };
    let mut labels = BTreeMap::from([
        ("policyserve.io/hardware-class".to_owned(), class.to_owned()),
        ("policyserve.io/test-run".to_owned(), run.to_owned()),
        ("hw.policyserve.io/cpu-usable".to_owned(), cpus.to_owned()),
        ("hw.policyserve.io/cpu-cores".to_owned(), cpus.to_owned()),
        (
            "hw.policyserve.io/memory-usable-mib".to_owned(),
            memory.to_owned(),
        ),
        (
            "hw.policyserve.io/source".to_owned(),
            "simulated".to_owned(),
        ),
    ]);
    if class == "gpu-accelerated" {
        labels.insert("hw.policyserve.io/gpu.count".into(), "1".into());
        labels.insert("hw.policyserve.io/gpu.compute.major".into(), "8".into());
        labels.insert("hw.policyserve.io/gpu.compute.minor".into(), "0".into());
    }
    labels
}

fn policy_service(i: usize) -> Result<PolicyService> {
    // A mix: memory limits under and over 1 GiB, one or two replicas, a throughput target.
    let memory = if i.is_multiple_of(3) { "512Mi" } else { "2Gi" };
    let min = 1 + i % 2;
    Ok(serde_json::from_value(json!({
        "apiVersion": "policyserve.io/v1alpha1",
        "kind": "PolicyService",
        "metadata": {"name": format!("ps-{i:04}")},
        "spec": {
            "model": {"configMap": {"name": "model", "key": "model.onnx"}},
            "targets": {"latencyP99Ms": 5.0, "throughputRps": 1000, "memoryLimit": memory},
            "placement": {"minReplicas": min, "maxReplicas": 4}
        }
    }))?)
}

async fn count_true(api: &Api<PolicyService>, type_: &str) -> Result<usize> {
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|ps| {
            ps.status.as_ref().is_some_and(|s| {
                s.observed_generation == ps.metadata.generation
                    && conditions::is_true(&s.conditions, type_)
            })
        })
        .count())
}

async fn wait_all(api: &Api<PolicyService>, type_: &str, total: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = count_true(api, type_).await?;
        if done == total {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {total} {type_} after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn reconciles(port: u16) -> Result<f64> {
    let output = tokio::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .await?;
    let text = String::from_utf8(output.stdout)?;
    text.lines()
        .find_map(|l| l.strip_prefix("policyserve_operator_reconciles_total "))
        .context("no reconciles metric")?
        .trim()
        .parse()
        .context("reconciles metric")
}

/// (peak RSS MiB, CPU seconds) of a process, from /proc.
fn process_usage(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("VmHWM")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of /proc/PID/stat (1-based), 12 and 13 after ')'.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok((hwm_kib / 1024.0, ticks / 100.0))
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = options()?;
    let client = Client::try_default().await?;
    install_crds(&client).await?;
    let run = format!("bench-{}", std::process::id());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": run}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;

    let nodes = Api::<Node>::all(client.clone());
    futures::stream::iter(0..options.nodes)
        .map(|i| {
            let nodes = nodes.clone();
            let run = run.clone();
            async move {
                let node: Node = serde_json::from_value(json!({
                    "metadata": {"name": format!("{run}-node-{i:03}"), "labels": node_labels(i, &run)}
                }))?;
                nodes.create(&PostParams::default(), &node).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;

    let mut operator = tokio::process::Command::new(&options.operator)
        .args([
            "--leader-election=false",
            "--namespace",
            &run,
            "--node-selector",
            &format!("policyserve.io/test-run={run}"),
            "--metrics-addr",
            &format!("127.0.0.1:{}", options.metrics_port),
            "--log-filter",
            "warn",
        ])
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("failed to start {}", options.operator))?;
    let pid = operator.id().context("operator pid")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let api = Api::<PolicyService>::namespaced(client.clone(), &run);
    let started = Instant::now();
    futures::stream::iter(0..options.services)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &policy_service(i)?)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;
    let created = started.elapsed();
    wait_all(&api, PROFILES_ASSIGNED, options.services).await?;
    let assigned = started.elapsed();
    let after_assign = reconciles(options.metrics_port).await?;

    // Play the agents: every profile reports Serving with figures that meet the targets.
    let profiles = Api::<OptimizationProfile>::namespaced(client.clone(), &run);
    let list = profiles.list(&ListParams::default()).await?;
    let profile_count = list.items.len();
    let reported = Instant::now();
    let now = jiff::Timestamp::now().to_string();
    futures::stream::iter(list.items)
        .map(|p| {
            let profiles = profiles.clone();
            let now = now.clone();
            async move {
                let condition = |t: &str| json!({"type": t, "status": "True", "reason": t, "message": "bench", "lastTransitionTime": now});
                let status = json!({"status": {
                    "conditions": [condition("Loaded"), condition("Tuned"), condition("Serving")],
                    "measured": {"latencyP50Ms": 0.5, "latencyP95Ms": 0.8, "latencyP99Ms": 1.0, "throughputRps": 5000.0, "memoryMiB": 120.0}
                }});
                profiles
                    .patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(status))
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;
    wait_all(&api, PERFORMANCE_COMPLIANT, options.services).await?;
    let compliant = reported.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_measure = reconciles(options.metrics_port).await?;

    let idle_seconds = 30.0;
    let (_, cpu_before) = process_usage(pid)?;
    tokio::time::sleep(Duration::from_secs_f64(idle_seconds)).await;
    let (peak_rss_mib, cpu_after) = process_usage(pid)?;
    let after_idle = reconciles(options.metrics_port).await?;

    let stop = Instant::now();
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(30), operator.wait()).await;
    let shutdown = stop.elapsed();
    let services = options.services as f64;

    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| nodes × PolicyServices | {} × {} |",
        options.nodes, options.services
    );
    println!("| OptimizationProfiles created | {profile_count} |");
    println!(
        "| creating the PolicyServices ({PARALLEL} in parallel) | {:.1} s |",
        created.as_secs_f64()
    );
    println!(
        "| first create → all ProfilesAssigned=True | {:.1} s |",
        assigned.as_secs_f64()
    );
    println!(
        "| reconciles per PolicyService until assigned | {:.2} |",
        after_assign / services
    );
    println!(
        "| agents report → all PerformanceCompliant=True | {:.1} s |",
        compliant.as_secs_f64()
    );
    println!(
        "| reconciles per PolicyService, total | {:.2} |",
        after_measure / services
    );
    println!(
        "| reconciles while idle for {idle_seconds:.0} s | {} |",
        after_idle - after_measure
    );
    println!(
        "| operator CPU while idle | {:.2} % of one core |",
        (cpu_after - cpu_before) / idle_seconds * 100.0
    );
    println!("| operator peak RSS (VmHWM) | {peak_rss_mib:.1} MiB |");
    println!(
        "| graceful shutdown on SIGTERM | {:.2} s |",
        shutdown.as_secs_f64()
    );
    Ok(())
}
