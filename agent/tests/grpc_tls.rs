//! TLS and mTLS on the real gRPC server with real ONNX Runtime: certificates made here with
//! rcgen, clients over tonic's rustls, renewals written the way kubelet updates a Secret volume.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use policyserve_agent::engine::{Engine, EngineOptions, ModelFiles, runtime};
use policyserve_agent::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use policyserve_agent::grpc::proto::model_infer_request::InferInputTensor;
use policyserve_agent::grpc::proto::{InferTensorContents, ModelInferRequest};
use policyserve_agent::load;
use policyserve_agent::metrics::Metrics;
use policyserve_agent::registry::{ModelRegistry, ServedModel};
use policyserve_agent::serve::{GrpcTransport, serve_grpc_on};
use policyserve_agent::tls::{ServerTls, TlsFiles};
use policyserve_crds::EngineConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Pair {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, names: &[&str], usages: &[ExtendedKeyUsagePurpose]) -> Pair {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate().unwrap();
        Pair {
            cert: params.signed_by(&key, &self.issuer).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }

    /// A certificate for this machine that also allows client authentication, as the
    /// capacity sweep needs under mTLS.
    fn server(&self) -> Pair {
        self.issue(
            &["localhost", "127.0.0.1"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    fn client(&self) -> Pair {
        self.issue(&["client"], &[ExtendedKeyUsagePurpose::ClientAuth])
    }
}

/// A folder laid out as kubelet projects a Secret: `tls.crt` → `..data/tls.crt`, `..data` → a
/// folder of this generation's files; a renewal writes a new folder and renames a new
/// `..data` link over the old one, so readers see the old files or the new, never a mix.
struct SecretVolume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl SecretVolume {
    fn new(files: &[(&str, &[u8])]) -> Self {
        let mut volume = Self {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        volume.write(files);
        volume
    }

    fn write(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let root = self.dir.path();
        let data = format!("..generation-{}", self.generation);
        std::fs::create_dir(root.join(&data)).unwrap();
        for (name, contents) in files {
            std::fs::write(root.join(&data).join(name), contents).unwrap();
        }
        std::os::unix::fs::symlink(&data, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        for (name, _) in files {
            let link = root.join(name);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), link).unwrap();
            }
        }
        if self.generation > 1 {
            let old = format!("..generation-{}", self.generation - 1);
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }

    fn renew(&mut self, pair: &Pair, ca: Option<&Ca>) {
        let mut files = vec![
            ("tls.crt", pair.cert.as_bytes()),
            ("tls.key", pair.key.as_bytes()),
        ];
        if let Some(ca) = ca {
            files.push(("ca.crt", ca.pem.as_bytes()));
        }
        self.write(&files);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn files(&self, client_auth: bool) -> TlsFiles {
        TlsFiles {
            cert: self.path("tls.crt"),
            key: self.path("tls.key"),
            client_ca: client_auth.then(|| self.path("ca.crt")),
        }
    }
}

/// The agent's gRPC server over `tls`, serving the test model, with a plaintext health port.
struct Server {
    address: SocketAddr,
    health: SocketAddr,
    tls: Arc<ServerTls>,
}

async fn start(files: TlsFiles) -> Server {
    runtime::environment(None).expect("ORT_DYLIB_PATH names libonnxruntime.so (run `make deps`)");
    let tls = Arc::new(
        ServerTls::load(files)
            .unwrap()
            .reload_every(Duration::from_millis(50)),
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/policy-mlp.onnx");
    let model = ModelFiles::read("policy", &path, &[]).unwrap();
    let config = EngineConfig {
        max_batch_size: 16,
        ..EngineConfig::default()
    };
    let engine = Engine::load(&model, &config, &EngineOptions::default()).unwrap();
    let registry = Arc::new(ModelRegistry::new());
    registry.insert(ServedModel::new("policy", engine, 60));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (address, health_address) = (listener.local_addr().unwrap(), health.local_addr().unwrap());
    let transport = GrpcTransport {
        tls: Some(Arc::clone(&tls)),
        health: Some(health),
    };
    tokio::spawn(serve_grpc_on(
        listener,
        transport,
        registry,
        Arc::new(Metrics::default()),
        1024 * 1024,
        std::future::pending(),
    ));
    Server {
        address,
        health: health_address,
        tls,
    }
}

/// Starts the server from a fresh Secret volume holding `pair` (and `ca.crt` for mTLS).
async fn start_with(pair: &Pair, client_ca: Option<&Ca>) -> (Server, SecretVolume) {
    let mut volume = SecretVolume::new(&[]);
    volume.renew(pair, client_ca);
    let server = start(volume.files(client_ca.is_some())).await;
    (server, volume)
}

/// A connection over TLS that trusts `ca` and presents `identity` when given.
async fn connect(
    address: SocketAddr,
    ca: &Ca,
    identity: Option<&Pair>,
) -> Result<GrpcInferenceServiceClient<Channel>, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("localhost");
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(&pair.cert, &pair.key));
    }
    let channel = Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(GrpcInferenceServiceClient::new(channel))
}

fn request() -> ModelInferRequest {
    ModelInferRequest {
        model_name: "policy".into(),
        inputs: vec![InferInputTensor {
            name: "obs".into(),
            datatype: "FP32".into(),
            shape: vec![1, 64],
            contents: Some(InferTensorContents {
                fp32_contents: vec![0.25; 64],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One inference on `client`, answered with the model's output.
async fn infer(client: &mut GrpcInferenceServiceClient<Channel>) -> Result<(), String> {
    let answer = client
        .model_infer(request())
        .await
        .map_err(|status| format!("{status:?}"))?
        .into_inner();
    assert_eq!(answer.outputs[0].shape, vec![1, 16]);
    Ok(())
}

/// A new connection that trusts `ca`, presenting `identity`, gets an answer.
async fn answered(address: SocketAddr, ca: &Ca, identity: Option<&Pair>) -> Result<(), String> {
    infer(&mut connect(address, ca, identity).await?).await
}

/// Polls until a new connection trusting `ca` gets an answer, for up to 5 s.
async fn until_answered(address: SocketAddr, ca: &Ca) {
    let start = Instant::now();
    loop {
        match answered(address, ca, None).await {
            Ok(()) => return,
            Err(e) if start.elapsed() > Duration::from_secs(5) => {
                panic!("the renewed certificate was never served: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn tls_clients_that_trust_the_ca_get_answers_and_plaintext_clients_get_none() {
    let ca = Ca::new("policyserve test CA");
    let (server, _volume) = start_with(&ca.server(), None).await;

    answered(server.address, &ca, None).await.unwrap();

    let plaintext = async {
        let mut client =
            GrpcInferenceServiceClient::connect(format!("http://{}", server.address)).await?;
        client.model_infer(request()).await?;
        anyhow::Ok(())
    };
    assert!(plaintext.await.is_err(), "a plaintext client was answered");

    let other = Ca::new("another CA");
    assert!(
        answered(server.address, &other, None).await.is_err(),
        "a client trusting another CA accepted the server"
    );
}

#[tokio::test]
async fn the_health_port_answers_plaintext_probes_while_grpc_needs_tls() {
    let ca = Ca::new("policyserve test CA");
    let (server, _volume) = start_with(&ca.server(), None).await;

    let channel = Endpoint::from_shared(format!("http://{}", server.health))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    // The health port serves health alone: no inference in plaintext through it.
    let mut inference = GrpcInferenceServiceClient::connect(format!("http://{}", server.health))
        .await
        .unwrap();
    let refused = inference.model_infer(request()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_it_signed_get_answers() {
    let ca = Ca::new("policyserve test CA");
    let (server, _volume) = start_with(&ca.server(), Some(&ca)).await;

    answered(server.address, &ca, Some(&ca.client()))
        .await
        .unwrap();
    assert!(
        answered(server.address, &ca, None).await.is_err(),
        "a client without a certificate was answered"
    );
    let stranger = Ca::new("a stranger's CA").client();
    assert!(
        answered(server.address, &ca, Some(&stranger))
            .await
            .is_err(),
        "a client with a certificate from another CA was answered"
    );
}

#[tokio::test]
async fn a_renewed_secret_reaches_new_connections_while_open_ones_keep_being_answered() {
    let old = Ca::new("old CA");
    let (server, mut volume) = start_with(&old.server(), None).await;
    let mut open = connect(server.address, &old, None).await.unwrap();
    infer(&mut open).await.unwrap();

    let new = Ca::new("new CA");
    volume.renew(&new.server(), None);
    until_answered(server.address, &new).await;

    assert!(
        answered(server.address, &old, None).await.is_err(),
        "new connections still get the old certificate"
    );
    infer(&mut open).await.unwrap();
}

#[tokio::test]
async fn a_renewal_that_does_not_load_is_refused_and_the_last_good_certificate_serves() {
    let ca = Ca::new("policyserve test CA");
    let good = ca.server();
    let (server, mut volume) = start_with(&good, None).await;

    let garbage = Pair {
        cert: "not a certificate".into(),
        key: good.key.clone(),
    };
    let someone_elses_key = Pair {
        cert: good.cert.clone(),
        key: ca.server().key,
    };
    for bad in [garbage, someone_elses_key] {
        volume.renew(&bad, None);
        // Many reload intervals: the bad files are read, refused, and stay refused.
        tokio::time::sleep(Duration::from_millis(400)).await;
        answered(server.address, &ca, None).await.unwrap();
    }

    // The reloading goes on after a refusal: a good renewal is still picked up.
    let new = Ca::new("new CA");
    volume.renew(&new.server(), None);
    until_answered(server.address, &new).await;
}

#[test]
fn the_capacity_sweeps_load_reaches_its_own_server_over_tls_and_mtls() {
    let ca = Ca::new("policyserve test CA");
    let server_runtime = tokio::runtime::Runtime::new().unwrap();
    for client_ca in [None, Some(&ca)] {
        let (server, _volume) = server_runtime.block_on(start_with(&ca.server(), client_ca));
        // As the sweep connects: by the served certificate, under mTLS presenting it.
        let tls = server.tls.loopback_client().unwrap();
        let client = load::client_runtime().unwrap();
        let target = client
            .block_on(load::Target::connect(
                server.address,
                Some(tls),
                2,
                "policy",
                "obs",
                64,
                true,
            ))
            .unwrap();
        let plan = load::Plan {
            rate: 200.0,
            duration: Duration::from_millis(500),
            max_in_flight: 64,
        };
        let outcome = load::run(client.handle(), &target, &plan, &|| false);
        assert_eq!(outcome.failed(), 0, "{:?}", outcome.errors);
        assert_eq!(outcome.latencies.len() as u64, outcome.scheduled);
    }
}

#[test]
fn files_that_cannot_serve_are_refused_at_start_naming_the_file() {
    let ca = Ca::new("policyserve test CA");
    let good = ca.server();
    let refused = |pair: &Pair, client_ca: Option<&Ca>| {
        let mut volume = SecretVolume::new(&[]);
        volume.renew(pair, client_ca);
        let error = ServerTls::load(volume.files(client_ca.is_some()))
            .unwrap_err()
            .to_string();
        (error, volume)
    };

    let (error, volume) = refused(
        &Pair {
            cert: "garbage".into(),
            key: good.key.clone(),
        },
        None,
    );
    assert!(
        error.contains(&volume.path("tls.crt").display().to_string()),
        "{error}"
    );

    let secret = "c2VjcmV0IGtleSBieXRlcw";
    let (error, volume) = refused(
        &Pair {
            cert: good.cert.clone(),
            key: format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
        },
        None,
    );
    assert!(
        error.contains(&volume.path("tls.key").display().to_string()),
        "{error}"
    );
    assert!(!error.contains(secret), "the error quotes the key: {error}");

    let (error, _) = refused(
        &Pair {
            cert: good.cert.clone(),
            key: ca.server().key,
        },
        None,
    );
    assert!(error.contains("is not the key of"), "{error}");

    // Under mTLS the sweep presents the serving certificate as a client's: one that does not
    // allow client authentication is refused at start, not found out at the first sweep.
    let server_only = ca.issue(&["localhost"], &[ExtendedKeyUsagePurpose::ServerAuth]);
    let (error, volume) = refused(&server_only, Some(&ca));
    assert!(
        error.contains(&volume.path("tls.crt").display().to_string()),
        "{error}"
    );
    assert!(error.contains("client certificate"), "{error}");

    let missing = TlsFiles {
        cert: PathBuf::from("/nonexistent/tls.crt"),
        key: PathBuf::from("/nonexistent/tls.key"),
        client_ca: None,
    };
    let error = ServerTls::load(missing).unwrap_err().to_string();
    assert!(error.contains("/nonexistent/tls.crt"), "{error}");
}
