//! TLS for the hosts' NBD connections: rustls (ring provider) configurations built from PEM
//! files, and a throwaway certificate authority for a cluster on one machine (rcgen), written
//! under the file names QEMU's `tls-creds-x509` and libnbd's `tls-certificates` look for, so
//! `qemu-io --object tls-creds-x509,dir=DIR,...` and `nbdinfo nbds://...?tls-certificates=DIR`
//! use the same folder.

pub mod fabric;
mod local_ca;
pub mod nonblocking;

pub use local_ca::{generate, LocalCa};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The certificate authority's certificate.
pub const CA_CERT: &str = "ca-cert.pem";
/// The server's certificate chain.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The server's private key.
pub const SERVER_KEY: &str = "server-key.pem";
/// A client's certificate chain (for mutual TLS).
pub const CLIENT_CERT: &str = "client-cert.pem";
/// A client's private key.
pub const CLIENT_KEY: &str = "client-key.pem";

/// A failed TLS set-up step.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file held no certificate.
    #[error("{0}: no certificate in the file")]
    NoCertificate(PathBuf),
    /// rustls refused the certificates or key.
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client certificate authority {path}: {source}")]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// A certificate could not be generated.
    #[error("generating a certificate: {0}")]
    Generate(#[source] rcgen::Error),
    /// A controller's fabric certificate does not name its node.
    #[error("{path}: the certificate is not valid for {name} (this controller's node)")]
    NotNode {
        /// The certificate file.
        path: PathBuf,
        /// The name it should carry.
        name: String,
    },
    /// A generated file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Whether hosts must use TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// NBD_OPT_STARTTLS is offered; plaintext is served too.
    Optional,
    /// Every option but STARTTLS and ABORT is refused with NBD_REP_ERR_TLS_REQD until the
    /// client has started TLS (the NBD spec's FORCEDTLS).
    #[default]
    Required,
}

/// The `[tls]` section of a controller's configuration (and `amf cluster --tls`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This controller's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Hosts must present a certificate signed by this authority (mutual TLS); without it any
    /// host may connect, as without TLS, but over an encrypted, server-authenticated link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Plaintext refused (`required`, the default) or also served (`optional`).
    #[serde(default)]
    pub mode: TlsMode,
}

impl TlsConfig {
    /// The files of a folder laid out as QEMU's `tls-creds-x509` expects: `server-cert.pem`,
    /// `server-key.pem`, and `ca-cert.pem` for client certificates when `verify_clients`.
    pub fn from_dir(dir: &Path, mode: TlsMode, verify_clients: bool) -> TlsConfig {
        TlsConfig {
            cert: dir.join(SERVER_CERT),
            key: dir.join(SERVER_KEY),
            client_ca: verify_clients.then(|| dir.join(CA_CERT)),
            mode,
        }
    }

    /// Loads the files into a server configuration.
    pub fn load(&self) -> Result<ServerTls, TlsError> {
        Ok(ServerTls { config: server_config(&self.cert, &self.key, self.client_ca.as_deref())?, mode: self.mode })
    }
}

/// The `[admin_tls]` section: HTTPS for the admin endpoint (and `amf cluster --admin-tls`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsConfig {
    /// The endpoint's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Clients must present a certificate signed by this authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl AdminTlsConfig {
    /// Loads the files into a server configuration.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        server_config(&self.cert, &self.key, self.client_ca.as_deref())
    }
}

/// A loaded server TLS setting.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The rustls configuration every connection starts from.
    pub config: Arc<rustls::ServerConfig>,
    /// Whether plaintext is refused.
    pub mode: TlsMode,
}

// ring builds with a C compiler alone (aws-lc-rs needs cmake on every CI machine); rustls
// deprecated its ring provider only for lacking post-quantum key exchange.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem { path: path.into(), source };
    let certs = CertificateDer::pem_file_iter(path).map_err(pem)?.collect::<Result<Vec<_>, _>>().map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.into()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem { path: path.into(), source })
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates(path)? {
        roots.add(c).map_err(TlsError::Config)?;
    }
    Ok(roots)
}

/// A server configuration from PEM files; with `client_ca`, clients must present a certificate
/// it signed.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|source| TlsError::ClientCa { path: ca.into(), source })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certificates(cert)?, private_key(key)?).map_err(TlsError::Config)?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts `ca` and, with `client`, presents that certificate and
/// key (the test and bench clients).
pub fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots(ca)?);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            builder.with_client_auth_cert(certificates(cert)?, private_key(key)?).map_err(TlsError::Config)?
        }
    };
    Ok(Arc::new(config))
}
