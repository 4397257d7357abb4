//! Publishing the hardware on the agent's own Node: capability labels, the class label and the
//! `policyserve.io/hardware` annotation, by server-side apply under one field manager.
//!
//! Server-side apply is what makes this safe and quiet. The apiserver remembers which labels
//! this manager applied last time: a label missing from the next apply is removed (a GPU that
//! went away takes its labels with it), an identical apply changes nothing (a restart does not
//! remove and re-add labels, unlike Node Feature Discovery's delete-then-add), and labels that
//! other managers own are never touched.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use policyserve_crds::HARDWARE_ANNOTATION;

use crate::hardware::Hardware;
use crate::{Error, FIELD_MANAGER, Result};

/// Wait before retrying after a failed detection or publication.
const RETRY: Duration = Duration::from_secs(10);

/// The apply configuration for `node`: exactly the labels and the annotation this agent owns.
pub fn node_apply(node: &str, hw: &Hardware) -> serde_json::Value {
    // Serializing plain structs cannot fail; an empty description is still valid JSON.
    let description = serde_json::to_string(hw).unwrap_or_else(|_| "{}".into());
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": crate::labels::labels(hw),
            "annotations": {HARDWARE_ANNOTATION: description},
        },
    })
}

/// Applies `hw`'s labels and annotation to `node`, removing those of an earlier apply that no
/// longer hold.
///
/// # Errors
/// [`Error::NodeNotFound`] when the Node does not exist (applying would create it);
/// [`Error::Kube`] when the apiserver fails or refuses.
pub async fn publish(client: &Client, node: &str, hw: &Hardware) -> Result<()> {
    let api = Api::<Node>::all(client.clone());
    if api.get_metadata_opt(node).await?.is_none() {
        return Err(Error::NodeNotFound(node.to_owned()));
    }
    // force: take over our keys should someone else have set them; the labels are ours to say.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(node, &params, &Patch::Apply(node_apply(node, hw)))
        .await?;
    Ok(())
}

/// Keeps `node`'s labels current: detects (or reads the hardware file), publishes, and again
/// every `every`, so a hot-plugged GPU or a changed quota shows. Failures are logged and
/// retried; this returns only when dropped, so run it beside other work in a `select!`.
pub async fn keep_labelled(
    client: Client,
    node: String,
    hardware_file: Option<PathBuf>,
    every: Duration,
) {
    let mut last: Option<Hardware> = None;
    loop {
        let wait = match detect(hardware_file.clone()).await {
            Ok(hw) => {
                if last.as_ref().is_some_and(|prev| prev != &hw) {
                    tracing::info!(node, class = %hw.class(), "hardware changed");
                }
                match publish(&client, &node, &hw).await {
                    Ok(()) => {
                        tracing::debug!(node, class = %hw.class(), "labels published");
                        last = Some(hw);
                        every
                    }
                    Err(error) => {
                        tracing::warn!(node, %error, "failed to label the node");
                        RETRY.min(every)
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "hardware detection failed");
                RETRY.min(every)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Detection reads files and may load the NVIDIA driver: off the async workers.
async fn detect(hardware_file: Option<PathBuf>) -> Result<Hardware> {
    tokio::task::spawn_blocking(move || crate::hardware::load(hardware_file.as_deref()))
        .await
        .map_err(|e| Error::Hardware(format!("detection task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::tests::gpu_node;

    #[test]
    fn the_apply_configuration_holds_labels_and_the_description() {
        let hw = gpu_node();
        let apply = node_apply("node-a", &hw);
        assert_eq!(apply["metadata"]["name"], "node-a");
        assert_eq!(
            apply["metadata"]["labels"]["policyserve.io/hardware-class"],
            "gpu-accelerated"
        );
        let description = apply["metadata"]["annotations"][HARDWARE_ANNOTATION]
            .as_str()
            .unwrap();
        let back: Hardware = serde_json::from_str(description).unwrap();
        assert_eq!(back, hw);
    }

    #[test]
    fn the_same_hardware_gives_the_same_apply_configuration() {
        assert_eq!(
            node_apply("n", &gpu_node()).to_string(),
            node_apply("n", &gpu_node()).to_string()
        );
    }
}
