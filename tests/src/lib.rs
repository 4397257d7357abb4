//! Test harness on a real kube-apiserver + etcd, and beside it a current CRD server.
//!
//! The cluster in `KUBECONFIG` is used when set (`scripts/with-control-plane.sh` sets it for a
//! whole `cargo test` run). Otherwise the first test of a test binary starts a private control
//! plane from the binaries in `KUBEBUILDER_ASSETS` (envtest's convention; `make deps` fills it),
//! and a watchdog stops it when the test binary exits. Each test works in its own namespace and
//! names cluster-scoped objects with a unique prefix, so tests run in parallel.
//!
//! That control plane is Kubernetes 1.20: it drops CEL rules (`x-kubernetes-validations`)
//! silently and has neither `discovery.k8s.io/v1` nor gRPC probes. For what only current
//! Kubernetes checks, a test asks for [`current_crd_client`]: Kubernetes 1.36's
//! apiextensions-apiserver (`scripts/apiext.sh`), started beside the control plane with its
//! authentication and namespaces delegated to it (`APIEXT_KUBECONFIG` when set, else started on
//! first use). It serves CRDs and custom resources only, no Nodes, Services or ConfigMaps, and
//! answers 404 on `/apis`, so kubectl, helm and kube's discovery cannot use it: tests address it
//! with typed `Api`s or an explicit `ApiResource`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub mod cluster;
pub mod local;
pub mod process;
pub mod specs;
pub mod world;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kubeconfig of the cluster the tests use, starting a control plane on first use.
///
/// # Panics
/// When no cluster is configured and none can be started; the message says what to install.
pub fn kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| match std::env::var_os("KUBECONFIG") {
        Some(path) => PathBuf::from(path),
        None => match start_control_plane() {
            Ok(path) => path,
            Err(e) => panic!("no cluster for the tests: {e:#}"),
        },
    })
}

fn start_control_plane() -> Result<PathBuf> {
    let assets = std::env::var_os("KUBEBUILDER_ASSETS").context(
        "neither KUBECONFIG nor KUBEBUILDER_ASSETS is set: run `make deps` and \
         `source ~/.cache/policyserve/env.sh`, or run the tests with `make test`",
    )?;
    let run_dir = std::env::temp_dir().join(format!("policyserve-cp-{}", std::process::id()));
    let script = workspace_root().join("scripts/control-plane.sh");
    let output = std::process::Command::new(&script)
        .arg("start")
        .env("KUBEBUILDER_ASSETS", &assets)
        .env("CP_RUN_DIR", &run_dir)
        .output()
        .with_context(|| format!("failed to run {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "control plane did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stop_when_this_process_exits(&script, "CP_RUN_DIR", &run_dir)?;
    let _ = PRIVATE_RUN_DIR.set(run_dir.clone());
    Ok(run_dir.join("kubeconfig"))
}

/// The state folder of the control plane this test binary started, if it started one.
static PRIVATE_RUN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Restarts the test control plane (`scripts/control-plane.sh restart`): kube-apiserver and
/// etcd stop and start again on the same port with the same certificates, token and data, so
/// every client keeps its kubeconfig and every watch breaks. Every test of the binary sees the
/// outage: run it only where no other test runs beside it.
///
/// # Errors
/// When the control plane is not one `scripts/control-plane.sh` started (`CP_RUN_DIR` unset and
/// none started by this binary), or the restart fails.
pub fn restart_control_plane() -> Result<Duration> {
    kubeconfig();
    let run_dir = match std::env::var_os("CP_RUN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PRIVATE_RUN_DIR.get().cloned().context(
            "KUBECONFIG names a cluster this test cannot restart: set CP_RUN_DIR to its \
             scripts/control-plane.sh state folder (scripts/with-control-plane.sh does)",
        )?,
    };
    let script = workspace_root().join("scripts/control-plane.sh");
    let started = std::time::Instant::now();
    let output = std::process::Command::new(&script)
        .arg("restart")
        .env("CP_RUN_DIR", &run_dir)
        .output()
        .with_context(|| format!("failed to run {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "control plane did not restart: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(started.elapsed())
}

/// The kubeconfig of the current (1.36) CRD server, starting one beside the control plane on
/// first use.
///
/// # Panics
/// When none is configured and none can be started: the tests of current Kubernetes fail, they
/// never skip.
pub fn current_crd_kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| match std::env::var_os("APIEXT_KUBECONFIG") {
        Some(path) => PathBuf::from(path),
        None => match start_current_crd_server() {
            Ok(path) => path,
            Err(e) => panic!("no current CRD server for the tests: {e:#}"),
        },
    })
}

fn start_current_crd_server() -> Result<PathBuf> {
    let core = kubeconfig();
    let run_dir = std::env::temp_dir().join(format!("policyserve-apiext-{}", std::process::id()));
    let script = workspace_root().join("scripts/apiext.sh");
    let output = std::process::Command::new(&script)
        .arg("start")
        .arg(core)
        .env("AX_RUN_DIR", &run_dir)
        .output()
        .with_context(|| format!("failed to run {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "the current CRD server did not start (run `make deps`): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stop_when_this_process_exits(&script, "AX_RUN_DIR", &run_dir)?;
    Ok(run_dir.join("kubeconfig"))
}

/// Starts a watchdog that runs `script stop` (with `dir_var` set to `run_dir`) and removes
/// `run_dir` once this test binary is gone: the servers run in their own sessions.
fn stop_when_this_process_exits(script: &Path, dir_var: &str, run_dir: &Path) -> Result<()> {
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; '{script}' stop; rm -rf '{run}'",
        pid = std::process::id(),
        script = script.display(),
        run = run_dir.display(),
    );
    std::process::Command::new("setsid")
        .args(["sh", "-c", &watchdog])
        .env(dir_var, run_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("failed to start a watchdog")?;
    Ok(())
}

/// A client for the current (1.36) CRD server, with the control plane's credentials.
///
/// # Errors
/// When its kubeconfig cannot be read.
pub async fn current_crd_client() -> Result<Client> {
    client_from(current_crd_kubeconfig()).await
}

/// A client for the test cluster. Make one per test: a client belongs to the tokio runtime
/// that created it, and each `#[tokio::test]` has its own.
///
/// # Errors
/// When the kubeconfig cannot be read.
pub async fn client() -> Result<Client> {
    client_from(kubeconfig()).await
}

async fn client_from(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// A name no other test in this run uses: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a fresh namespace for one test and returns its name. Namespaces are left behind:
/// the test apiserver runs no namespace controller, so deleting them would only mark them
/// Terminating.
///
/// # Errors
/// When the namespace cannot be created.
pub async fn test_namespace(client: &Client, prefix: &str) -> Result<String> {
    let name = unique_name(prefix);
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"policyserve.io/test": "true"}}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(name)
}

/// Installs the generated CRDs (create, or replace when present) and waits until both are
/// Established. Not server-side apply: Kubernetes before 1.25 refuses to apply the CEL rules'
/// `x-kubernetes-validations` field, while create and replace drop it silently, which is what a
/// user of an old cluster gets from `helm install` as well.
///
/// # Errors
/// When the apiserver refuses a CRD or it is not Established within 30 seconds.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for mut crd in policyserve_crds::manifests::crds() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        let result = match api.get_opt(&name).await? {
            Some(existing) => {
                crd.metadata.resource_version = existing.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &crd).await
            }
            None => api.create(&PostParams::default(), &crd).await,
        };
        match result {
            // Another test of this run installed it first.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            other => {
                other.with_context(|| format!("apiserver refused CRD {name}"))?;
            }
        }
        wait_established(&api, &name).await?;
    }
    Ok(())
}

/// Installs the generated CRDs the way Helm 4 does on a current cluster, by server-side apply
/// (field manager `helm`), and waits until both are Established. This is the path that refuses
/// a CRD whose CEL rules exceed their cost budget.
///
/// # Errors
/// When the apiserver refuses a CRD, with its message, or it is not Established within 30 s.
pub async fn apply_crds(client: &Client) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in policyserve_crds::manifests::crds() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(
            &name,
            &kube::api::PatchParams::apply("helm").force(),
            &kube::api::Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("apiserver refused CRD {name}"))?;
        wait_established(&api, &name).await?;
    }
    Ok(())
}

/// Waits until the CRD `name` is Established, for at most 30 seconds.
///
/// # Errors
/// When it is not Established in time, or the watch fails.
pub async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) -> Result<()> {
    let established = kube::runtime::wait::conditions::is_crd_established();
    tokio::time::timeout(
        Duration::from_secs(30),
        kube::runtime::wait::await_condition(api.clone(), name, established),
    )
    .await
    .with_context(|| format!("CRD {name} not Established in 30 s"))??;
    Ok(())
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`.
///
/// # Errors
/// When `check` fails, or returns `None` until the timeout; the error names `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The label each test puts on its Nodes, so that the controller it starts plans only those.
pub const RUN_LABEL: &str = "policyserve.io/test-run";

/// Starts the operator's controller in-process on a task of the test's runtime; it stops when
/// the returned sender is dropped. Tests restrict it (`config.namespace`, and
/// `config.node_selector` on [`RUN_LABEL`]) so that parallel tests do not see each other.
pub fn start_controller(
    client: &Client,
    config: policyserve_operator::ControllerConfig,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = client.clone();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        let metrics = std::sync::Arc::new(policyserve_operator::Metrics::default());
        if let Err(error) =
            policyserve_operator::run_controller(client, config, metrics, shutdown).await
        {
            eprintln!("controller failed: {error}");
        }
    });
    stop
}

/// Renews the agent Lease of `node` in `namespace`, as the node's agent does every 10 s: tests
/// that write profile statuses in an agent's place use it, since the operator treats a node
/// without a fresh Lease as not serving.
///
/// # Errors
/// When the apiserver refuses the Lease.
pub async fn agent_heartbeat(client: &Client, namespace: &str, node: &str) -> Result<()> {
    let lease = policyserve_agent::lease::lease(namespace, node);
    let name = policyserve_crds::agent_lease_name(node);
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &kube::api::PatchParams::apply(policyserve_agent::FIELD_MANAGER).force(),
            &kube::api::Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}

/// One test's slice of the cluster: its namespace, the [`RUN_LABEL`] value its Nodes carry, and
/// an in-process controller that sees only those (it stops when `stop` is dropped).
#[allow(missing_debug_implementations)] // kube::Client has no Debug
pub struct ControllerScope {
    pub client: Client,
    pub namespace: String,
    pub run: String,
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// Installs the CRDs, makes a namespace named from `prefix` and starts a controller scoped to
/// it and to Nodes labelled with a fresh run value. Scale-down stabilization is 2 s, so tests
/// see scaling in; `configure` changes anything else.
///
/// # Errors
/// When the cluster cannot be reached, or the CRDs or the namespace cannot be created.
pub async fn controller_scope(
    prefix: &str,
    configure: impl FnOnce(&mut policyserve_operator::ControllerConfig),
) -> Result<ControllerScope> {
    let client = client().await?;
    install_crds(&client).await?;
    let namespace = test_namespace(&client, prefix).await?;
    let run = unique_name("run");
    let mut config = policyserve_operator::ControllerConfig {
        namespace: Some(namespace.clone()),
        agent_namespace: namespace.clone(),
        node_selector: Some(format!("{RUN_LABEL}={run}")),
        scale_down_stabilization: Duration::from_secs(2),
        ..policyserve_operator::ControllerConfig::default()
    };
    configure(&mut config);
    let stop = start_controller(&client, config);
    Ok(ControllerScope {
        client,
        namespace,
        run,
        stop,
    })
}
