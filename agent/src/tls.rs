//! Optional TLS and mTLS for the gRPC server, from PEM files that are re-read when they change,
//! and the client side the capacity sweep uses to reach its own server over the same transport.
//!
//! A Kubernetes Secret mounted as a volume is renewed by kubelet swapping a symlink (`..data`),
//! so the files are re-read by path on an interval and compared by digest; no handle is held.
//! Each new connection takes the configuration current at its accept, so renewed certificates
//! reach new connections while open ones keep theirs. A renewal that does not load (a garbage
//! file, a key that is not the certificate's, a half-written pair) is refused with a warning
//! and the last good configuration keeps serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::Stream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::{Error, Result};

/// How often the files are checked for a renewal. Kubelet takes up to a minute or two to
/// project a changed Secret; ten seconds more is little, and a read of three small files is
/// cheap.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// A handshake that has not finished in this time is dropped, so that a client that connects
/// and sends nothing holds no more than a socket for a moment.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server's certificate, key and (for mTLS) client CA are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; when set, every client must present a certificate they signed.
    pub client_ca: Option<PathBuf>,
}

/// The gRPC server's TLS configuration, reloaded from [`TlsFiles`] when they change.
pub struct ServerTls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    reload_every: Duration,
    state: Mutex<State>,
}

struct State {
    current: Arc<Loaded>,
    /// Digest of the last set of files refused, so that it is warned about once.
    refused: Option<[u8; 32]>,
}

/// One loaded set of files.
struct Loaded {
    digest: [u8; 32],
    server: Arc<ServerConfig>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_auth: bool,
}

/// Never the key or the certificates: only where they come from.
impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads `files`, checking them as the server will use them.
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be read, [`Error::Tls`] naming the file that holds no
    /// certificate or key, a key that is not the certificate's, or a CA that does not load;
    /// with a client CA, also when the certificate is not one that CA accepts from a client
    /// (the capacity sweep presents it as its own client certificate).
    pub fn load(files: TlsFiles) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = parse(&files, &read_all(&files)?, &provider)?;
        Ok(Self {
            files,
            provider,
            reload_every: RELOAD_EVERY,
            state: Mutex::new(State {
                current: Arc::new(loaded),
                refused: None,
            }),
        })
    }

    /// Checks the files every `every` instead of every [`RELOAD_EVERY`].
    #[must_use]
    pub fn reload_every(self, every: Duration) -> Self {
        Self {
            reload_every: every,
            ..self
        }
    }

    /// Whether clients must present a certificate.
    pub fn client_auth(&self) -> bool {
        self.current().client_auth
    }

    fn current(&self) -> Arc<Loaded> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&state.current)
    }

    /// Reads the files again and serves them from the next connection on when they changed and
    /// load; files that changed and do not load are refused with a warning (once), and the
    /// configuration serving goes on.
    pub fn reload(&self) {
        let pems = match read_all(&self.files) {
            Ok(pems) => pems,
            // Warned about once per distinct error, like a file that does not load.
            Err(e) => return self.refuse(Sha256::digest(e.to_string()).into(), &e),
        };
        let digest = pems.digest();
        {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.current.digest == digest || state.refused == Some(digest) {
                return;
            }
        }
        match parse(&self.files, &pems, &self.provider) {
            Ok(loaded) => {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.current = Arc::new(loaded);
                state.refused = None;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => self.refuse(digest, &e),
        }
    }

    fn refuse(&self, digest: [u8; 32], error: &Error) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.refused != Some(digest) {
            tracing::warn!("TLS files changed but do not load, serving the previous ones: {error}");
            state.refused = Some(digest);
        }
    }

    /// Reloads every interval, forever; the server runs it beside itself.
    pub async fn keep_reloaded(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.reload_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let tls = Arc::clone(&self);
            // Small reads, but file I/O all the same: off the async workers.
            let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
        }
    }

    /// TLS connections accepted on `listener`, each handshaking with the configuration current
    /// when it arrived. Handshakes run side by side, so a slow or silent client delays no other;
    /// one that fails is dropped (logged at debug: port scanners and plaintext clients are
    /// ordinary). The stream ends, and the listener closes, when the stream is dropped.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
        let (ready, mut handshaken) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = ready.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors, most likely: wait rather than spin.
                            tracing::warn!("failed to accept a gRPC connection: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.current().server));
                let ready = ready.clone();
                tokio::spawn(async move {
                    // Small requests and answers: without TCP_NODELAY, Nagle's algorithm and
                    // delayed ACKs add ~40 ms to some of them.
                    let _ = tcp.set_nodelay(true);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = ready.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        futures::stream::poll_fn(move |cx| handshaken.poll_recv(cx))
    }

    /// A client configuration for this agent's own server at `address`, as the capacity sweep
    /// connects: it trusts exactly the certificate being served (a sweep reaches its server on
    /// loopback, a name its certificate need not carry, and the certificate's issuer may be
    /// known to no file the agent has), and under mTLS presents that certificate and key as its
    /// client certificate, which [`ServerTls::load`] has checked the client CA accepts.
    ///
    /// # Errors
    /// [`Error::Tls`] when rustls refuses the configuration.
    pub fn loopback_client(&self) -> Result<Arc<ClientConfig>> {
        let loaded = self.current();
        let tls_error = |e: rustls::Error| Error::Tls {
            path: self.files.cert.clone(),
            reason: format!("cannot be used by the capacity sweep: {e}"),
        };
        let builder = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SameCertificate {
                served: loaded.chain[0].clone(),
                provider: Arc::clone(&self.provider),
            }));
        let mut config = if loaded.client_auth {
            builder
                .with_client_auth_cert(loaded.chain.clone(), loaded.key.clone_key())
                .map_err(tls_error)?
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The name a loopback client gives the server: its address (the certificate is pinned, so the
/// name is not checked, but TLS needs one).
pub fn server_name(address: SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(address.ip().into())
}

/// The files' contents, as read together.
struct Pems {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Pems {
    fn digest(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let part = part.map_or(&[][..], Vec::as_slice);
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        digest.finalize().into()
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_all(files: &TlsFiles) -> Result<Pems> {
    Ok(Pems {
        cert: read(&files.cert)?,
        key: read(&files.key)?,
        client_ca: files.client_ca.as_deref().map(read).transpose()?,
    })
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::Tls {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn parse(files: &TlsFiles, pems: &Pems, provider: &Arc<CryptoProvider>) -> Result<Loaded> {
    let chain = certificates(&files.cert, &pems.cert)?;
    // The key's own parse errors are not repeated: they could quote its lines.
    let key = PrivateKeyDer::from_pem_slice(&pems.key).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid(&files.key, "holds no PEM private key"),
        _ => invalid(&files.key, "is not a PEM private key"),
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&files.cert, e.to_string()))?;
    let builder = match (&files.client_ca, &pems.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(path, pem)? {
                roots
                    .add(ca)
                    .map_err(|e| invalid(path, format!("is not a CA certificate: {e}")))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                    .build()
                    .map_err(|e| invalid(path, e.to_string()))?;
            verifier
                .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
                .map_err(|e| {
                    invalid(
                        &files.cert,
                        format!(
                            "is not accepted as a client certificate by {} ({e}); the capacity \
                             sweep presents the serving certificate as its client certificate, \
                             so it must be signed by that CA and allow client authentication",
                            path.display()
                        ),
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| {
            invalid(
                &files.key,
                format!("is not the key of {}: {e}", files.cert.display()),
            )
        })?;
    // gRPC clients (grpc-go among them) insist on negotiating HTTP/2 by ALPN.
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        digest: pems.digest(),
        server: Arc::new(server),
        chain,
        key,
        client_auth: files.client_ca.is_some(),
    })
}

/// Trusts one certificate, byte for byte, and checks that the server holds its key.
#[derive(Debug)]
struct SameCertificate {
    served: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SameCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.served.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
