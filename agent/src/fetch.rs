//! Fetching model files named by an OptimizationProfile: ConfigMap binaryData, an HTTP(S)
//! download checked against its SHA-256 (and cached by digest), or a path on the node.
//!
//! Every source is bounded, since a profile's author need not be the node's owner:
//!
//! - `model.path` reads only regular files under the agent's model root
//!   ([`FetchOptions::model_root`], [`policyserve_crds::MODEL_ROOT`] by default), with symlinks
//!   resolved before the check, so `/dev/zero`, `/etc/shadow` or a symlink out of the root are
//!   refused without being opened.
//! - Every file, from any source, is at most [`FetchOptions::max_model_bytes`]; a download is
//!   streamed and counted as it arrives, so a chunked reply without a length stops at the cap.
//! - Downloads have a connect, a read and an overall timeout, follow at most
//!   [`FetchOptions::max_redirects`] redirects and never one from https to http.
//! - Transient failures (a ConfigMap not there yet, HTTP 5xx, 408 or 429, timeouts, refused
//!   connections) are retried with exponential backoff ([`Retry`]); the others (a wrong digest,
//!   a 404, a path outside the root) fail at once, since only a spec change can fix them.
//!
//! Error messages name the source and what to change, and never quote a file's content.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use policyserve_crds::{ModelSource, ModelSpec, Precision};
use sha2::{Digest, Sha256};

mod error;

pub use self::error::{Error, Result};
use crate::engine::ModelFiles;

/// Default largest model file, bytes: a policy model is small, and a wrong URL or path should
/// neither fill the node's disk nor its memory.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Limits, timeouts and retries of model fetching. `Default` is what the agent runs with unless
/// its flags say otherwise.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The folder `model.path` sources must lie in once symlinks are resolved.
    pub model_root: PathBuf,
    /// Largest model file accepted from any source, bytes.
    pub max_model_bytes: u64,
    /// Longest a download may take to connect (TCP and TLS).
    pub connect_timeout: Duration,
    /// Longest a download may wait for its next bytes.
    pub read_timeout: Duration,
    /// Longest a whole download may take, from connecting to the last byte.
    pub download_timeout: Duration,
    /// Redirects a download follows; https to http is refused whatever the count.
    pub max_redirects: usize,
    /// How transient failures are retried.
    pub retry: Retry,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            model_root: PathBuf::from(policyserve_crds::MODEL_ROOT),
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            // 2 GiB at 5 MB/s: a slower source is better mirrored nearer the node.
            download_timeout: Duration::from_secs(600),
            max_redirects: 5,
            retry: Retry::default(),
        }
    }
}

/// Exponential backoff for transient fetch failures: `first_delay`, doubled after each failed
/// attempt up to `max_delay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included; None retries until the fetch succeeds or fails for
    /// good, as a Kubernetes controller requeues: a ConfigMap may be created long after the
    /// PolicyService that names it.
    pub max_attempts: Option<u32>,
    /// Wait after the first failed attempt.
    pub first_delay: Duration,
    /// Longest wait between attempts.
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: None,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
        }
    }
}

impl Retry {
    /// No retries: one attempt.
    pub const NEVER: Self = Self {
        max_attempts: Some(1),
        first_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };

    /// The wait after failed attempt `attempt` (1 for the first), or None when no attempt is
    /// left.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
        let doublings = attempt.saturating_sub(1).min(31);
        Some(
            self.first_delay
                .saturating_mul(1 << doublings)
                .min(self.max_delay),
        )
    }
}

/// A failed attempt that will be retried: what [`Fetcher::model_with_retries`] tells its caller
/// before it waits.
#[derive(Debug)]
pub struct Retrying<'a> {
    /// The attempt that failed, 1 for the first.
    pub attempt: u32,
    /// Attempts allowed in all, when bounded.
    pub max_attempts: Option<u32>,
    /// Why it failed.
    pub error: &'a Error,
    /// The wait before the next attempt.
    pub delay: Duration,
}

impl std::fmt::Display for Retrying<'_> {
    /// One line for a status condition: "attempt 2 failed: …; retrying in 4s".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attempt {}", self.attempt)?;
        if let Some(max) = self.max_attempts {
            write!(f, " of {max}")?;
        }
        write!(
            f,
            " failed: {}; retrying in {}",
            self.error,
            humantime::format_duration(self.delay)
        )
    }
}

/// One failed attempt and whether trying again may help.
#[derive(Debug)]
struct Failure {
    error: Error,
    transient: bool,
}

impl Failure {
    fn transient(source: &str, reason: impl std::fmt::Display) -> Self {
        Self {
            error: fetch_error(source, reason),
            transient: true,
        }
    }

    fn permanent(error: Error) -> Self {
        Self {
            error,
            transient: false,
        }
    }
}

type Attempt<T> = std::result::Result<T, Failure>;

/// Fetches model files for profiles.
#[derive(Clone)]
pub struct Fetcher {
    client: Client,
    http: reqwest::Client,
    cache_dir: PathBuf,
    options: FetchOptions,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("cache_dir", &self.cache_dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher with the default [`FetchOptions`] that reads ConfigMaps through `client` and
    /// caches downloads in `cache_dir`.
    ///
    /// # Errors
    /// [`Error::Client`] when the HTTP client cannot be built (no TLS roots).
    pub fn new(client: Client, cache_dir: PathBuf) -> Result<Self> {
        Self::with_options(client, cache_dir, FetchOptions::default())
    }

    /// A fetcher with `options`.
    ///
    /// # Errors
    /// [`Error::Client`] when the HTTP client cannot be built (no TLS roots).
    pub fn with_options(client: Client, cache_dir: PathBuf, options: FetchOptions) -> Result<Self> {
        let max_redirects = options.max_redirects;
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .timeout(options.download_timeout)
            .redirect(reqwest::redirect::Policy::custom(
                move |attempt| match redirect_verdict(
                    attempt.previous(),
                    attempt.url(),
                    max_redirects,
                ) {
                    Ok(()) => attempt.follow(),
                    Err(reason) => attempt.error(reason),
                },
            ))
            .build()
            .map_err(Error::Client)?;
        Ok(Self {
            client,
            http,
            cache_dir,
            options,
        })
    }

    /// The options in effect.
    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// The model and its variants, from the profile's namespace, retrying transient failures
    /// as [`FetchOptions::retry`] says without telling anyone; see
    /// [`Fetcher::model_with_retries`].
    ///
    /// # Errors
    /// As [`Fetcher::model_with_retries`].
    pub async fn model(&self, namespace: &str, name: &str, spec: &ModelSpec) -> Result<ModelFiles> {
        self.model_with_retries(namespace, name, spec, |_: &Retrying<'_>| {
            std::future::ready(())
        })
        .await
    }

    /// The model and its variants, from the profile's namespace. Each file is retried on
    /// transient failures with backoff; `on_retry` is called after each failed attempt that
    /// will be retried, and the future it returns is awaited before the wait (to write a status
    /// condition saying why the model is still loading and which attempt this was). The future
    /// owns what it needs, so that the whole fetch stays `Send` for the task that runs it.
    ///
    /// # Errors
    /// [`Error::Failed`] or [`Error::HashMismatch`], naming the source and, after retries,
    /// how many attempts were made.
    pub async fn model_with_retries<Fut>(
        &self,
        namespace: &str,
        name: &str,
        spec: &ModelSpec,
        mut on_retry: impl FnMut(&Retrying<'_>) -> Fut,
    ) -> Result<ModelFiles>
    where
        Fut: Future<Output = ()>,
    {
        let mut files = BTreeMap::new();
        let sources = std::iter::once((Precision::Fp32, &spec.source))
            .chain(spec.variants.iter().map(|v| (v.precision, &v.source)));
        for (precision, source) in sources {
            let bytes = self
                .fetch_with_retries(namespace, source, &mut on_retry)
                .await?;
            files.insert(precision, bytes);
        }
        // fp32 is the first source above, so this cannot fail.
        ModelFiles::new(name, files).map_err(|e| fetch_error(name, e))
    }

    /// One file, retried on transient failures (see [`Fetcher::model_with_retries`]).
    ///
    /// # Errors
    /// [`Error::Failed`] or [`Error::HashMismatch`].
    pub async fn fetch_with_retries<Fut>(
        &self,
        namespace: &str,
        source: &ModelSource,
        on_retry: &mut impl FnMut(&Retrying<'_>) -> Fut,
    ) -> Result<Arc<[u8]>>
    where
        Fut: Future<Output = ()>,
    {
        let retry = self.options.retry;
        let mut attempt = 1;
        loop {
            let failure = match self.attempt(namespace, source).await {
                Ok(bytes) => return Ok(bytes),
                Err(failure) => failure,
            };
            let delay = failure
                .transient
                .then(|| retry.delay_after(attempt))
                .flatten();
            let Some(delay) = delay else {
                return Err(gave_up(failure, attempt));
            };
            tracing::info!(
                attempt,
                ?delay,
                "model fetch failed, retrying: {}",
                failure.error
            );
            on_retry(&Retrying {
                attempt,
                max_attempts: retry.max_attempts,
                error: &failure.error,
                delay,
            })
            .await;
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One file, one attempt.
    ///
    /// # Errors
    /// [`Error::Failed`] or [`Error::HashMismatch`].
    pub async fn fetch(&self, namespace: &str, source: &ModelSource) -> Result<Arc<[u8]>> {
        self.attempt(namespace, source).await.map_err(|f| f.error)
    }

    async fn attempt(&self, namespace: &str, source: &ModelSource) -> Attempt<Arc<[u8]>> {
        match (&source.config_map, &source.url, &source.path) {
            (Some(cm), None, None) => self.config_map(namespace, &cm.name, &cm.key).await,
            (None, Some(url), None) => self.download(&url.uri, &url.sha256).await,
            (None, None, Some(path)) => {
                let (root, max) = (
                    self.options.model_root.clone(),
                    self.options.max_model_bytes,
                );
                let path = PathBuf::from(path);
                tokio::task::spawn_blocking(move || read_model_path(&root, &path, max))
                    .await
                    .map_err(|e| Failure::permanent(fetch_error("model.path", e)))?
                    .map(Arc::from)
                    .map_err(Failure::permanent)
            }
            _ => Err(Failure::permanent(fetch_error(
                "the model source",
                "set exactly one of configMap, url or path",
            ))),
        }
    }

    async fn config_map(&self, namespace: &str, name: &str, key: &str) -> Attempt<Arc<[u8]>> {
        let source = format!("ConfigMap {namespace}/{name} key {key}");
        let config_map = Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| kube_failure(&source, e))?
            // Created after the PolicyService, or on its way: worth waiting for.
            .ok_or_else(|| Failure::transient(&source, "the ConfigMap does not exist (yet)"))?;
        if let Some(bytes) = config_map.binary_data.as_ref().and_then(|d| d.get(key)) {
            let max = self.options.max_model_bytes;
            if bytes.0.len() as u64 > max {
                return Err(Failure::permanent(fetch_error(
                    &source,
                    too_large(bytes.0.len() as u64, max),
                )));
            }
            return Ok(Arc::from(bytes.0.as_slice()));
        }
        let in_data = config_map
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key(key));
        // Fixed by editing the ConfigMap, which no watch of the agent sees: retried like a
        // missing ConfigMap.
        Err(Failure::transient(
            &source,
            if in_data {
                "the key is in data, not binaryData: an ONNX file is binary"
            } else {
                "no such key in binaryData"
            },
        ))
    }

    async fn download(&self, uri: &str, sha256: &str) -> Attempt<Arc<[u8]>> {
        // The digest names the cache file: anything but 64 hex digits could name another path.
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Failure::permanent(fetch_error(
                uri,
                "url.sha256 must be 64 hex digits",
            )));
        }
        let sha256 = sha256.to_ascii_lowercase();
        let max = self.options.max_model_bytes;
        let cached = self.cache_dir.join(format!("{sha256}.onnx"));
        if let Ok(bytes) = read_regular_file(&cached, max)
            && hex_sha256(&bytes) == sha256
        {
            tracing::debug!(uri, "model found in cache");
            return Ok(Arc::from(bytes));
        }
        let (bytes, actual) = self.stream(uri, max).await?;
        if actual != sha256 {
            return Err(Failure::permanent(Error::HashMismatch {
                uri: uri.to_owned(),
                expected: sha256,
                actual,
            }));
        }
        // The cache is an optimisation: a node without a writable cache still serves.
        if let Err(e) = write_cache(&self.cache_dir, &cached, &bytes).await {
            tracing::warn!(path = %cached.display(), "cannot cache the model: {e}");
        }
        Ok(Arc::from(bytes))
    }

    /// The body of `uri` and its SHA-256, counted as it arrives and refused past `max` bytes,
    /// whatever the server declared.
    async fn stream(&self, uri: &str, max: u64) -> Attempt<(Vec<u8>, String)> {
        let mut response = self
            .http
            .get(uri)
            .send()
            .await
            .map_err(|e| request_failure(uri, &e))?;
        let status = response.status();
        if !status.is_success() {
            let transient = status.is_server_error()
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
            let reason = format!("the server answered HTTP {status}");
            return Err(if transient {
                Failure::transient(uri, reason)
            } else {
                Failure::permanent(fetch_error(uri, format!("{reason}: check url.uri")))
            });
        }
        if let Some(length) = response.content_length().filter(|n| *n > max) {
            return Err(Failure::permanent(fetch_error(uri, too_large(length, max))));
        }
        let mut hasher = Sha256::new();
        // Sized from the declared length, within the cap and at most 64 MiB: fewer doublings for
        // an honest server, no large allocation on a hostile one's word alone.
        let declared = response
            .content_length()
            .unwrap_or(0)
            .min(max)
            .min(64 << 20);
        let mut body = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| request_failure(uri, &e))?
        {
            let received = body.len() as u64 + chunk.len() as u64;
            if received > max {
                return Err(Failure::permanent(fetch_error(
                    uri,
                    format!(
                        "the download passed {max} bytes and was stopped (the agent's \
                             limit, --max-model-bytes)"
                    ),
                )));
            }
            hasher.update(&chunk);
            body.extend_from_slice(&chunk);
        }
        Ok((body, hex(&hasher.finalize())))
    }
}

/// Whether a redirect from `previous` (the first address first) to `next` may be followed:
/// never from https to anything else, and at most `max` in all.
///
/// # Errors
/// Why not, in words for a status condition.
pub fn redirect_verdict(
    previous: &[reqwest::Url],
    next: &reqwest::Url,
    max: usize,
) -> std::result::Result<(), String> {
    if previous.len() > max {
        return Err(format!(
            "more than {max} redirects; point url.uri at the final address"
        ));
    }
    if previous.iter().any(|u| u.scheme() == "https") && next.scheme() != "https" {
        return Err(format!(
            "refusing a redirect from https to {}: it would drop TLS",
            next.scheme()
        ));
    }
    Ok(())
}

/// Reads the model at `path`, which must lie under `root` once symlinks are resolved, be a
/// regular file and hold at most `max_bytes`. Paths outside the root are refused before the
/// file system is asked anything about them, so the error tells nothing about files there.
///
/// # Errors
/// [`Error::Failed`] saying which rule the path breaks and what to change.
pub fn read_model_path(root: &Path, path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let source = format!("model.path {}", path.display());
    let fail = |reason: String| fetch_error(&source, reason);
    let remedy = format!(
        "put the model under {} (the agent's model root, --model-root; the chart mounts the \
         node's model folder there)",
        root.display()
    );
    if !path.is_absolute() {
        return Err(fail(format!("the path must be absolute; {remedy}")));
    }
    if path.components().any(|c| c == Component::ParentDir) || !path.starts_with(root) {
        return Err(fail(format!(
            "the path is outside the model root; {remedy}"
        )));
    }
    let canonical_root = root.canonicalize().map_err(|e| {
        fail(format!(
            "the agent's model root {} is not usable on this node ({e}): mount the node's \
             model folder there or start the agent with --model-root",
            root.display()
        ))
    })?;
    let resolved = path.canonicalize().map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotFound => {
                "no such file on this node: copy the model to every node that may serve it".into()
            }
            _ => format!("the path cannot be resolved: {e}"),
        })
    })?;
    if !resolved.starts_with(&canonical_root) {
        return Err(fail(format!(
            "the path resolves through a symlink outside the model root; {remedy}"
        )));
    }
    read_regular_file(&resolved, max_bytes).map_err(fail)
}

/// A regular file's bytes, at most `max_bytes`. Opened without following a final symlink and
/// without blocking (a FIFO would otherwise hang the open), then checked on the open handle, so
/// the file checked is the file read.
fn read_regular_file(path: &Path, max_bytes: u64) -> std::result::Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("failed to open the file: {e}"))?;
    let metadata = file
        .metadata()
        .map_err(|e| format!("failed to read the file's metadata: {e}"))?;
    if !metadata.is_file() {
        return Err(format!(
            "not a regular file (a {}); name an .onnx file",
            file_kind(&metadata.file_type())
        ));
    }
    if metadata.len() > max_bytes {
        return Err(too_large(metadata.len(), max_bytes));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // One byte past the cap tells a file that grew since fstat from one that did not.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("failed to read the file: {e}"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64, max_bytes));
    }
    Ok(bytes)
}

fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "directory"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

fn too_large(bytes: u64, max: u64) -> String {
    format!("{bytes} bytes is larger than the agent's limit of {max} bytes (--max-model-bytes)")
}

async fn write_cache(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    // Write then rename, so a crash never leaves a truncated file under the digest's name.
    let partial = path.with_extension("partial");
    tokio::fs::write(&partial, bytes).await?;
    tokio::fs::rename(&partial, path).await
}

/// Lower-case hex SHA-256.
pub fn hex_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fetch_error(source: &str, reason: impl std::fmt::Display) -> Error {
    Error::Failed {
        source_name: source.to_owned(),
        reason: reason.to_string(),
    }
}

/// The final error of a fetch that failed `attempts` times.
fn gave_up(failure: Failure, attempts: u32) -> Error {
    match failure.error {
        Error::Failed {
            source_name,
            reason,
        } if attempts > 1 => Error::Failed {
            source_name,
            reason: format!("{reason} (gave up after {attempts} attempts)"),
        },
        error => error,
    }
}

/// A kube error as a failure: the API server's 429 and 5xx answers and failures to reach it are
/// transient, its other refusals (403: the agent's RBAC) are not.
fn kube_failure(source: &str, error: kube::Error) -> Failure {
    let transient = match &error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        _ => true,
    };
    Failure {
        error: fetch_error(source, error),
        transient,
    }
}

/// A request that got no complete answer: timeouts, refused or reset connections and cut
/// bodies are transient; a refused redirect or a malformed address is not.
fn request_failure(uri: &str, error: &reqwest::Error) -> Failure {
    let reason = error_chain(error);
    if error.is_redirect() || error.is_builder() {
        Failure::permanent(fetch_error(uri, reason))
    } else {
        Failure::transient(uri, reason)
    }
}

/// An error and its sources, joined: reqwest's own message alone ("error sending request")
/// does not say what happened.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_lower_case_hex() {
        assert_eq!(
            hex_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_stops_after_the_last_attempt() {
        let retry = Retry {
            max_attempts: Some(5),
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
        };
        let delays: Vec<_> = (1..=5).map(|a| retry.delay_after(a)).collect();
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(delays, vec![s(1), s(2), s(4), s(5), None]);
        assert_eq!(Retry::NEVER.delay_after(1), None);
        let forever = Retry::default();
        assert_eq!(forever.delay_after(1_000_000), Some(forever.max_delay));
    }

    #[test]
    fn redirects_never_drop_tls_and_stop_at_the_limit() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let https = url("https://models.example/a.onnx");
        let http = url("http://models.example/a.onnx");
        let down = redirect_verdict(std::slice::from_ref(&https), &http, 5).unwrap_err();
        assert!(down.contains("https to http"), "{down}");
        // A downgrade anywhere in the chain counts, not only from the last hop.
        assert!(redirect_verdict(&[https.clone(), https.clone()], &http, 5).is_err());
        assert!(redirect_verdict(std::slice::from_ref(&http), &https, 5).is_ok());
        assert!(redirect_verdict(std::slice::from_ref(&http), &http, 5).is_ok());
        let chain = vec![http.clone(); 6];
        assert!(
            redirect_verdict(&chain, &http, 5)
                .unwrap_err()
                .contains("more than 5 redirects")
        );
    }

    #[test]
    fn the_final_error_counts_the_attempts() {
        let failure = Failure::transient("ConfigMap a/b key m", "the ConfigMap does not exist");
        let error = gave_up(failure, 3).to_string();
        assert!(error.contains("gave up after 3 attempts"), "{error}");
        let once = gave_up(Failure::transient("x", "y"), 1).to_string();
        assert!(!once.contains("gave up"), "{once}");
    }
}
