//! HTTPS: the REST API over TLS (rustls), from a PEM certificate chain and private key.
//!
//! ```text
//!  TcpListener ─accept─▶ handshake task (≤ max_pending_handshakes, each ≤ handshake_timeout_ms)
//!                            └─ TlsStream ─▶ bounded channel ─▶ TlsListener::accept ─▶ axum::serve
//! ```
//!
//! Handshakes run beside the accept loop, so that a client that connects and says nothing holds
//! up only itself, for at most [`TlsOptions::handshake_timeout_ms`]; at most
//! [`TlsOptions::max_pending_handshakes`] run at once (new connections wait in the kernel's
//! backlog meanwhile). ALPN offers `h2` and `http/1.1`, so HTTP/2 clients (the ksqlDB clients'
//! `/query-stream` and `/inserts-stream`) negotiate HTTP/2. The accept task belongs to the
//! listener: dropping the listener (when [`crate::serve`] returns) stops it and every handshake.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::ServerError;

/// Default of [`TlsOptions::handshake_timeout_ms`].
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Default of [`TlsOptions::max_pending_handshakes`].
pub const DEFAULT_MAX_PENDING_TLS_HANDSHAKES: usize = 64;

/// Largest certificate or key file read, in bytes: a chain of a few certificates is a few KiB.
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// Where the server's certificate and key are, and the limits of handshakes.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// PEM file of the server's certificate, followed by the intermediates of its chain.
    pub certificate_chain_path: PathBuf,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key_path: PathBuf,
    /// Longest a client may take to complete its TLS handshake before it is disconnected.
    /// Default [`DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS`].
    pub handshake_timeout_ms: u64,
    /// Most handshakes in progress at once. Default [`DEFAULT_MAX_PENDING_TLS_HANDSHAKES`].
    pub max_pending_handshakes: usize,
}

impl TlsOptions {
    /// The certificate chain and key files, with the default limits.
    pub fn new(certificate_chain_path: PathBuf, private_key_path: PathBuf) -> Self {
        Self {
            certificate_chain_path,
            private_key_path,
            handshake_timeout_ms: DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
            max_pending_handshakes: DEFAULT_MAX_PENDING_TLS_HANDSHAKES,
        }
    }
}

/// The certificate and key, loaded and checked against each other: ready to serve with.
#[derive(Clone)]
pub struct TlsIdentity {
    config: Arc<rustls::ServerConfig>,
    options: TlsOptions,
}

impl std::fmt::Debug for TlsIdentity {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Reads the files of `options`; fails with a message naming the file and what is wrong.
    pub fn load(options: TlsOptions) -> Result<Self, ServerError> {
        let chain_pem = read_pem_file(&options.certificate_chain_path)?;
        let chain = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error(&options.certificate_chain_path, &e.to_string()))?;
        if chain.is_empty() {
            return Err(tls_error(
                &options.certificate_chain_path,
                "holds no PEM \"CERTIFICATE\" block",
            ));
        }
        let key_pem = read_pem_file(&options.private_key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            tls_error(
                &options.private_key_path,
                &format!("holds no usable private key ({e})"),
            )
        })?;
        // Explicitly ring: the build links both of rustls' providers, so there is no default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerError::Tls(format!("TLS set-up failed: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                ServerError::Tls(format!(
                    "the certificate {} and the key {} do not make a TLS identity: {e}",
                    options.certificate_chain_path.display(),
                    options.private_key_path.display()
                ))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            options,
        })
    }

    /// A listener that hands `axum::serve` connections whose handshake completed.
    pub fn listener(&self, tcp: TcpListener) -> io::Result<TlsListener> {
        let local_addr = tcp.local_addr()?;
        let capacity = self.options.max_pending_handshakes.max(1);
        let (sender, connections) = mpsc::channel(capacity);
        let accept_task = tokio::spawn(accept_loop(
            tcp,
            TlsAcceptor::from(self.config.clone()),
            sender,
            Duration::from_millis(self.options.handshake_timeout_ms.max(1)),
            capacity,
        ));
        Ok(TlsListener {
            connections,
            local_addr,
            accept_task,
        })
    }
}

fn tls_error(path: &Path, problem: &str) -> ServerError {
    ServerError::Tls(format!("the TLS file {} {problem}", path.display()))
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, ServerError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| ServerError::Tls(format!("cannot read {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ServerError::Tls(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(tls_error(
            path,
            &format!("is larger than {MAX_PEM_FILE_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// Accepts TCP connections and runs their handshakes, at most `max_pending` at a time.
async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    handshake_timeout: Duration,
    max_pending: usize,
) {
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.len() >= max_pending {
            handshakes.join_next().await;
        }
        tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let acceptor = acceptor.clone();
                    let connections = connections.clone();
                    handshakes.spawn(async move {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                // The server stopped taking connections when this fails.
                                let _ = connections.send((tls, peer)).await;
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                            }
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: wait a little, as axum does.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
}

/// TLS connections for `axum::serve`. Dropping it stops accepting and every handshake.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept task ended (it only does when aborted): no connection will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
