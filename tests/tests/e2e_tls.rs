//! Tier 3 (end to end) with mTLS on the agent's gRPC port: the agent started with the chart's
//! TLS flags tunes over its own TLS listener (the capacity sweep presents the serving
//! certificate as its client certificate) and answers only clients with a certificate.

use anyhow::{Context, Result};
use policyserve_agent::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use policyserve_agent::grpc::proto::model_infer_request::InferInputTensor;
use policyserve_agent::grpc::proto::{InferTensorContents, ModelInferRequest};
use policyserve_crds::conditions::READY;
use policyserve_tests::local::{Cluster, infer_through, tiny_spec};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A certificate signed by `issuer` for `names`, with `usages`: (certificate, key), PEM.
fn issue(
    issuer: &Issuer<'_, KeyPair>,
    names: &[&str],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<(String, String)> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.extended_key_usages = usages;
    let key = KeyPair::generate()?;
    Ok((params.signed_by(&key, issuer)?.pem(), key.serialize_pem()))
}

#[tokio::test]
async fn an_agent_with_mtls_tunes_over_its_own_tls_port_and_answers_only_clients_with_certificates()
-> Result<()> {
    let mut ca = CertificateParams::new(Vec::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate()?;
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let server = issue(
        &issuer,
        &["127.0.0.1"],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let client = issue(
        &issuer,
        &["client"],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    let folder = tempfile::tempdir()?;
    let secret = folder.path();
    for (name, contents) in [
        ("tls.crt", &server.0),
        ("tls.key", &server.1),
        ("ca.crt", &ca_pem),
    ] {
        std::fs::write(secret.join(name), contents)?;
    }

    let mut cluster = Cluster::start("e2e-tls").await?;
    cluster.agent_args = vec![
        format!("--tls-cert={}", secret.join("tls.crt").display()),
        format!("--tls-key={}", secret.join("tls.key").display()),
        format!("--tls-client-ca={}", secret.join("ca.crt").display()),
        "--health-addr=127.0.0.1:0".into(),
    ];
    cluster.add_node("tls", "balanced-node.json").await?;
    cluster
        .model_config_map("tiny-model", "policy-mlp-tiny.onnx")
        .await?;
    cluster
        .apply(
            "cartpole",
            tiny_spec("tiny-model", json!({"latencyP99Ms": 50.0})),
        )
        .await?;
    cluster.condition("cartpole", READY, "True").await?;

    let profiles = cluster.profiles_of("cartpole").await?;
    let profile = profiles.first().context("a profile")?;
    let status = profile.status.as_ref().context("status")?;
    let capacity = status.capacity.as_ref().context("the sweep's capacity")?;
    // Latencies come only from answered sweep requests, so the sweep reached the server over
    // mTLS; how high a rate passed depends on this machine's load (as in e2e.rs).
    assert!(capacity.latency_p99_ms > 0.0, "{capacity:?}");
    let endpoint = status.endpoint.as_ref().context("endpoint")?;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name("127.0.0.1")
        .identity(Identity::from_pem(&client.0, &client.1));
    let channel = Endpoint::from_shared(format!("https://{}:{}", endpoint.address, endpoint.port))?
        .tls_config(tls)?
        .connect()
        .await?;
    let answer = GrpcInferenceServiceClient::new(channel)
        .model_infer(ModelInferRequest {
            model_name: endpoint.model_name.clone(),
            inputs: vec![InferInputTensor {
                name: "obs".into(),
                datatype: "FP32".into(),
                shape: vec![1, 16],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![0.25; 16],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(answer.outputs[0].shape, vec![1, 4]);

    assert!(
        infer_through(profile, 16).await.is_err(),
        "a plaintext client was answered"
    );
    Ok(())
}
