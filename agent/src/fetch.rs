//! Fetching model files named by an OptimizationProfile: ConfigMap binaryData, an HTTP(S)
//! download checked against its SHA-256 (and cached by digest), or a path on the node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use policyserve_crds::{ModelSource, ModelSpec, Precision};
use sha2::{Digest, Sha256};

use crate::engine::ModelFiles;
use crate::{Error, Result};

/// Largest model download accepted, bytes: a policy model is small, and a wrong URL should not
/// fill the node's disk.
const MAX_DOWNLOAD_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Fetches model files for profiles.
#[derive(Clone)]
pub struct Fetcher {
    client: Client,
    http: reqwest::Client,
    cache_dir: PathBuf,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher that reads ConfigMaps through `client` and caches downloads in `cache_dir`.
    pub fn new(client: Client, cache_dir: PathBuf) -> Self {
        Self {
            client,
            http: reqwest::Client::new(),
            cache_dir,
        }
    }

    /// The model and its variants, from the profile's namespace.
    ///
    /// # Errors
    /// [`Error::ModelFetch`] or [`Error::HashMismatch`], naming the source.
    pub async fn model(&self, namespace: &str, name: &str, spec: &ModelSpec) -> Result<ModelFiles> {
        let mut files = BTreeMap::new();
        files.insert(Precision::Fp32, self.fetch(namespace, &spec.source).await?);
        for variant in &spec.variants {
            files.insert(
                variant.precision,
                self.fetch(namespace, &variant.source).await?,
            );
        }
        ModelFiles::new(name, files)
    }

    /// One file.
    ///
    /// # Errors
    /// [`Error::ModelFetch`] or [`Error::HashMismatch`].
    pub async fn fetch(&self, namespace: &str, source: &ModelSource) -> Result<Arc<[u8]>> {
        match (&source.config_map, &source.url, &source.path) {
            (Some(cm), None, None) => self.config_map(namespace, &cm.name, &cm.key).await,
            (None, Some(url), None) => self.download(&url.uri, &url.sha256).await,
            (None, None, Some(path)) => read_file(Path::new(path)).await,
            _ => Err(fetch_error(
                "the model source",
                "set exactly one of configMap, url or path",
            )),
        }
    }

    async fn config_map(&self, namespace: &str, name: &str, key: &str) -> Result<Arc<[u8]>> {
        let source = format!("ConfigMap {namespace}/{name} key {key}");
        let config_map = Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| fetch_error(&source, e))?
            .ok_or_else(|| fetch_error(&source, "the ConfigMap does not exist"))?;
        if let Some(bytes) = config_map.binary_data.as_ref().and_then(|d| d.get(key)) {
            return Ok(Arc::from(bytes.0.as_slice()));
        }
        let in_data = config_map
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key(key));
        Err(fetch_error(
            &source,
            if in_data {
                "the key is in data, not binaryData: an ONNX file is binary"
            } else {
                "no such key in binaryData"
            },
        ))
    }

    async fn download(&self, uri: &str, sha256: &str) -> Result<Arc<[u8]>> {
        let cached = self.cache_dir.join(format!("{sha256}.onnx"));
        if let Ok(bytes) = tokio::fs::read(&cached).await
            && hex_sha256(&bytes) == sha256
        {
            tracing::debug!(uri, "model found in cache");
            return Ok(Arc::from(bytes));
        }
        let response = self
            .http
            .get(uri)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| fetch_error(uri, e))?;
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOWNLOAD_BYTES)
        {
            return Err(fetch_error(
                uri,
                format!("larger than {MAX_DOWNLOAD_BYTES} bytes"),
            ));
        }
        let bytes = response.bytes().await.map_err(|e| fetch_error(uri, e))?;
        let actual = hex_sha256(&bytes);
        if actual != sha256 {
            return Err(Error::HashMismatch {
                uri: uri.to_owned(),
                expected: sha256.to_owned(),
                actual,
            });
        }
        // The cache is an optimisation: a node without a writable cache still serves.
        if let Err(e) = write_cache(&self.cache_dir, &cached, &bytes).await {
            tracing::warn!(path = %cached.display(), "cannot cache the model: {e}");
        }
        Ok(Arc::from(bytes.as_ref()))
    }
}

async fn read_file(path: &Path) -> Result<Arc<[u8]>> {
    tokio::fs::read(path)
        .await
        .map(Arc::from)
        .map_err(|e| fetch_error(&path.display().to_string(), e))
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
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fetch_error(source: &str, reason: impl std::fmt::Display) -> Error {
    Error::ModelFetch {
        source_name: source.to_owned(),
        reason: reason.to_string(),
    }
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
}
