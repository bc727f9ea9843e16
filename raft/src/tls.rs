//! TLS for every connection between Goat's processes (rustls, ring).
//!
//! One [`TlsArgs`] on managers and workers: `--tls-cert`, `--tls-key`,
//! `--tls-ca`, all three or none. With them:
//!
//! - a manager serves HTTPS only, and requires every client to present a
//!   certificate signed by the CA (mutual TLS). A connection without one
//!   fails in the handshake, before a byte of HTTP is read: a stranger on
//!   the network cannot even reach the token check.
//! - every internal client (Raft, forwarding, heartbeats, polls) speaks
//!   `https://`, presents this process's certificate, and accepts a peer
//!   only if the peer's certificate is signed by the CA and names the
//!   address dialled (a DNS name or IP SAN). A member added at a foreign
//!   address is refused in the handshake: no request, and so no token,
//!   ever reaches it.
//!
//! Without them everything is plain HTTP (a loopback development cluster).
//! All internal clients ignore `HTTP_PROXY` and friends ([`client_builder`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// `--tls-cert`, `--tls-key`, `--tls-ca`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// This process's certificate (PEM, the chain up to the CA). With
    /// --tls-key and --tls-ca: every connection is TLS, both ways verified.
    #[arg(long, env = "GOAT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "GOAT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): peers and clients must present a
    /// certificate signed by it.
    #[arg(long, env = "GOAT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// Loaded TLS material: what a process serves and dials with.
#[derive(Clone)]
pub struct Tls {
    pub server: Arc<ServerConfig>,
    pub client: ClientConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

impl TlsArgs {
    /// Whether TLS is asked for (any of the three given).
    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_ca.is_some()
    }

    /// Loads the files: `None` without TLS, an error if only some are given
    /// or one does not parse.
    pub fn load(&self) -> anyhow::Result<Option<Tls>> {
        let (cert, key, ca) = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => return Ok(None),
            (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
            _ => bail!("TLS needs all three of --tls-cert, --tls-key and --tls-ca"),
        };
        let chain = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading the key {}", key.display()))?;
        let mut roots = RootCertStore::empty();
        for ca_cert in read_certs(ca)? {
            roots.add(ca_cert).with_context(|| format!("adding the CA of {}", ca.display()))?;
        }
        let roots = Arc::new(roots);

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .context("building the client certificate verifier")?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .context("the certificate does not match its key")?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the certificate does not match its key")?;
        Ok(Some(Tls { server: Arc::new(server), client }))
    }
}

/// The scheme internal URLs use: `https` with TLS, else `http`.
pub fn scheme(tls: Option<&Tls>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// A reqwest client builder for internal traffic: never through a proxy,
/// and with TLS, presenting this process's certificate and trusting only
/// the cluster's CA.
pub fn client_builder(tls: Option<&Tls>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder().no_proxy();
    match tls {
        Some(tls) => builder.use_preconfigured_tls(tls.client.clone()),
        None => builder,
    }
}
