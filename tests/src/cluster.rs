//! The cluster tier's harness: a local Kubernetes 1.20 cluster with real nodes on this machine
//! (`scripts/cluster.sh`): kube-apiserver, kube-controller-manager, kube-scheduler and
//! kube-proxy, and per node a containerd and a kubelet registered as a Node, running the
//! images `scripts/build-images.sh` builds from this checkout.
//!
//! The cluster named by `POLICYSERVE_CLUSTER_DIR` (the `CLUSTER_DIR` of a `scripts/cluster.sh
//! up --no-chart`) is used when set. Otherwise the first use in a test binary brings one up
//! without the chart (the tests install it themselves) and a watchdog takes it down when the
//! binary exits. Unlike the apiserver tier, tests here share one cluster and one release, so a
//! test binary of this tier walks its steps in order.
//!
//! There is no cluster DNS: clients reach pods by IP, and name resolution is not tested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use kube::Client;

use crate::workspace_root;

/// A running local cluster, as `scripts/cluster.sh` describes it in `cluster.env`.
#[derive(Clone, Debug)]
pub struct LocalCluster {
    /// The cluster's state folder (`CLUSTER_DIR`).
    pub dir: PathBuf,
    /// An admin kubeconfig: what a person installing the chart holds. Pods never see it.
    pub kubeconfig: PathBuf,
    /// Chart values for the local images and the host model folder.
    pub values: PathBuf,
    /// The Nodes, as their kubelets registered them.
    pub nodes: Vec<String>,
    /// The host side of node 1's pod bridge: where the apiserver listens, and an address on
    /// this machine that every pod can reach (for a model server, say).
    pub api_address: String,
    /// Release name and namespace the chart is installed as.
    pub release: String,
    pub namespace: String,
}

/// The local cluster, brought up on first use.
///
/// # Panics
/// When none is configured and none can be brought up; the message says what is missing.
pub fn local_cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let found = match std::env::var_os("POLICYSERVE_CLUSTER_DIR") {
            Some(dir) => LocalCluster::read(Path::new(&dir)),
            None => bring_up(),
        };
        found.unwrap_or_else(|e| panic!("no local cluster for the cluster tier: {e:#}"))
    })
}

fn bring_up() -> Result<LocalCluster> {
    // The script makes bridges, mounts and containers; say so before it fails halfway.
    let uid = run("id", &["-u"], &[])?;
    if uid.trim() != "0" {
        bail!(
            "the cluster tier runs containers, bridges and mounts: run it as root \
             (make test does), or set POLICYSERVE_CLUSTER_DIR to a running cluster"
        );
    }
    let dir = std::env::temp_dir().join(format!("policyserve-cluster-{}", std::process::id()));
    let script = workspace_root().join("scripts/cluster.sh");
    let output = Command::new(&script)
        .args(["up", "--no-chart"])
        .env("CLUSTER_DIR", &dir)
        // The apiserver tier's variables must not leak into this cluster.
        .env_remove("CP_RUN_DIR")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run {}", script.display()))?;
    watch_over(&script, &dir)?;
    if !output.status.success() {
        bail!(
            "scripts/cluster.sh up failed (run `make deps`; it installs containerd, runc, the \
             CNI plugins, umoci, iptables and the Kubernetes binaries; logs will be in {}):\n{}",
            last_logs().display(),
            tail(&String::from_utf8_lossy(&output.stderr), 40)
        );
    }
    eprintln!(
        "cluster in {} (its logs move to {} when it goes down)",
        dir.display(),
        last_logs().display()
    );
    LocalCluster::read(&dir)
}

/// A watchdog that takes the cluster down once this test binary is gone; the cluster's
/// processes run in sessions of their own and would outlive it.
fn watch_over(script: &Path, dir: &Path) -> Result<()> {
    // The logs outlive the cluster, for a post-mortem of a failed run.
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; '{script}' down; \
         rm -rf '{logs}'; mv '{dir}/logs' '{logs}'; rm -rf '{dir}'",
        pid = std::process::id(),
        script = script.display(),
        dir = dir.display(),
        logs = last_logs().display(),
    );
    Command::new("setsid")
        .args(["sh", "-c", &watchdog])
        .env("CLUSTER_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to start the cluster's watchdog")?;
    Ok(())
}

/// Where the logs of the last cluster the harness brought up are kept once it is down.
pub fn last_logs() -> PathBuf {
    std::env::temp_dir().join("policyserve-cluster-logs")
}

impl LocalCluster {
    /// Reads `dir/cluster.env`, which `scripts/cluster.sh up` writes once its Nodes are Ready.
    ///
    /// # Errors
    /// When the file is missing or incomplete.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("cluster.env");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("no {}: is the cluster up?", path.display()))?;
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let var = |key: &str| -> Result<String> {
            vars.get(key)
                .map(|v| (*v).to_owned())
                .with_context(|| format!("{} has no {key}", path.display()))
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            kubeconfig: var("KUBECONFIG")?.into(),
            values: var("VALUES")?.into(),
            nodes: var("NODES")?
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            api_address: var("API_ADDRESS")?,
            release: var("RELEASE")?,
            namespace: var("NAMESPACE")?,
        })
    }

    /// An admin client for the cluster (the tests' own view; pods use their ServiceAccounts).
    ///
    /// # Errors
    /// When the kubeconfig cannot be read.
    pub async fn client(&self) -> Result<Client> {
        crate::client_from(&self.kubeconfig).await
    }

    /// Runs kubectl against the cluster and returns its standard output.
    ///
    /// # Errors
    /// When kubectl fails; the error carries its standard error.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let mut all = vec!["--kubeconfig", &kubeconfig];
        all.extend_from_slice(args);
        run("kubectl", &all, &[])
    }

    /// Runs kubectl with `stdin` as its standard input.
    ///
    /// # Errors
    /// When kubectl fails.
    pub fn kubectl_with_input(&self, args: &[&str], stdin: &str) -> Result<String> {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let mut all = vec!["--kubeconfig", &kubeconfig];
        all.extend_from_slice(args);
        run_with_input("kubectl", &all, stdin)
    }

    /// Runs kubectl and returns its standard output whatever its exit status: `kubectl auth
    /// can-i` answers "no" with status 1.
    ///
    /// # Errors
    /// When kubectl cannot be started.
    pub fn kubectl_output(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("failed to run kubectl (run `make deps`)")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs helm against the cluster.
    ///
    /// # Errors
    /// When helm fails.
    pub fn helm(&self, args: &[&str]) -> Result<String> {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let mut all = vec!["--kubeconfig", &kubeconfig];
        all.extend_from_slice(args);
        run("helm", &all, &[])
    }
}

/// Runs `program` with `args` (and extra environment) and returns its standard output.
///
/// # Errors
/// When it cannot start or exits unsuccessfully; the error names the command and quotes its
/// standard error.
pub fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .output()
        .with_context(|| format!("failed to run {program} (is it installed? run `make deps`)"))?;
    checked(program, args, output)
}

/// Like [`run`], with `stdin` as standard input.
///
/// # Errors
/// When the command fails.
pub fn run_with_input(program: &str, args: &[&str], stdin: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run {program}"))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(stdin.as_bytes())?;
    checked(program, args, child.wait_with_output()?)
}

fn checked(program: &str, args: &[&str], output: Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            tail(&String::from_utf8_lossy(&output.stderr), 20)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
