//! The operator and the agent as real processes, for faults a task cannot stand in for: a
//! `kill -9` stops a process between any two instructions, with no destructor, no Lease
//! release and no drain, and a SIGTERM goes through the binary's own signal handling.
//!
//! The binaries are built on first use (`cargo build`, same target folder and profile as this
//! test binary), so they are never stale. Each process writes its log to a file in the temp
//! folder; failures quote its tail.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The built `policyserve-operator` or `policyserve-agent`.
///
/// # Errors
/// When `cargo build` fails.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)?;
    Ok(dir.join(name))
}

/// Builds both binaries into this test binary's profile folder (`<target>/<profile>`).
fn build() -> Result<PathBuf> {
    // This binary is `<target>/<profile>/deps/<name>-<hash>`.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary outside a target folder")?
        .to_path_buf();
    let target = profile_dir.parent().context("no target folder")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => bail!("unreadable profile folder {}", profile_dir.display()),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "policyserve-operator",
            "-p",
            "policyserve-agent",
        ])
        .args(["--profile", profile, "--target-dir"])
        .arg(target)
        .current_dir(crate::workspace_root())
        .status()
        .context("failed to run cargo build")?;
    if !status.success() {
        bail!("cargo build of the operator and agent failed: {status}");
    }
    Ok(profile_dir)
}

/// A free loopback port: bound, read and released, for a process that must be told its port
/// (another process could take it in between; on a test machine none does).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process that is SIGKILLed when dropped, so a failed test leaves none behind.
#[derive(Debug)]
pub struct Process {
    child: tokio::process::Child,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
}

impl Process {
    /// Starts `binary` with `args` against the test cluster (`KUBECONFIG`), logging to
    /// `<temp>/policyserve-<log_name>.log`.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn spawn(binary: &Path, args: &[String], log_name: &str) -> Result<Self> {
        let log = std::env::temp_dir().join(format!("policyserve-{log_name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(binary)
            .args(args)
            .env("KUBECONFIG", crate::kubeconfig())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        Ok(Self { child, log })
    }

    /// The process id.
    ///
    /// # Errors
    /// When it has already been waited for.
    pub fn pid(&self) -> Result<u32> {
        self.child.id().context("the process has exited")
    }

    /// `kill -9` and reap.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// Sends SIGTERM (as the kubelet does to a pod being deleted) and waits up to `grace` for
    /// the process to exit, as the kubelet's termination grace period would.
    ///
    /// # Errors
    /// When the signal cannot be sent, or the process is still running after `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        let pid = self.pid()?.to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed");
        }
        tokio::time::timeout(grace, self.child.wait())
            .await
            .with_context(|| format!("still running {grace:?} after SIGTERM"))?
            .map_err(Into::into)
    }

    /// Whether the process has exited, with its status.
    ///
    /// # Errors
    /// When its state cannot be read.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }
}

/// `GET http://127.0.0.1:<port><path>`, the body of a 200 answer (HTTP/1.0, so the server
/// closes the connection after it).
///
/// # Errors
/// When the connection fails or the answer is not 200.
pub async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}
