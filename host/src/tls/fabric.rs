//! Mutual TLS between controllers. One certificate authority belongs to the cluster; each
//! controller holds a certificate valid for the DNS name `amf-node-N` (its node id), usable as
//! server and client. A controller connecting to peer P checks that the peer's certificate is
//! the cluster CA's and names `amf-node-P`; a controller accepting a connection checks that the
//! client's certificate is the CA's and learns from it which node is on the other end, and every
//! frame on that connection must say it comes from that node. A host's NBD certificate, even
//! from the same CA, names no node and is refused.

use super::{certificates, private_key, provider, roots, TlsError};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Node ids a certificate may name (the card's node id is 3 bits).
const NODES_MAX: u8 = 8;

/// The name a controller's certificate carries.
pub fn node_name(node: u8) -> String {
    format!("amf-node-{node}")
}

/// The `[fabric_tls]` section of a controller's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FabricTlsConfig {
    /// The cluster's certificate authority (PEM).
    pub ca: PathBuf,
    /// This controller's certificate chain, valid for `amf-node-N` (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// Loaded fabric TLS: how to connect to peers and how to accept them.
#[derive(Debug)]
pub struct FabricTls {
    /// For connections to peers (presents this controller's certificate).
    pub client: Arc<rustls::ClientConfig>,
    /// For connections from peers (asks for theirs).
    pub server: Arc<rustls::ServerConfig>,
}

/// Which node a peer's certificate chain names (its end entity must be valid for exactly one
/// `amf-node-N`).
pub fn node_of(chain: &[CertificateDer<'_>]) -> Option<u8> {
    let cert = webpki::EndEntityCert::try_from(chain.first()?).ok()?;
    let mut named = (0..NODES_MAX).filter(|n| {
        ServerName::try_from(node_name(*n)).is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    });
    match (named.next(), named.next()) {
        (Some(n), None) => Some(n),
        _ => None,
    }
}

impl FabricTlsConfig {
    /// Loads the files; refuses a certificate that does not name `node`.
    pub fn load(&self, node: u8) -> Result<FabricTls, TlsError> {
        let chain = certificates(&self.cert)?;
        if node_of(&chain) != Some(node) {
            return Err(TlsError::NotNode { path: self.cert.clone(), name: node_name(node) });
        }
        let ca = roots(&self.ca)?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(ca.clone())
            .with_client_auth_cert(chain.clone(), private_key(&self.key)?)
            .map_err(TlsError::Config)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca), provider())
            .build()
            .map_err(|source| TlsError::ClientCa { path: self.ca.clone(), source })?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, private_key(&self.key)?)
            .map_err(TlsError::Config)?;
        // Fabric connections carry one way only: session tickets would sit unread in the
        // connecting side's socket.
        server.send_tls13_tickets = 0;
        Ok(FabricTls { client: Arc::new(client), server: Arc::new(server) })
    }
}

/// Makes a certificate authority for a cluster of `nodes` controllers on one machine and one
/// certificate per node in `dir` (`ca-cert.pem`, `node-N-cert.pem`, `node-N-key.pem`). The CA's
/// key is not kept: no certificate can be added to this cluster later.
pub fn generate_cluster(dir: &Path, nodes: u8) -> Result<Vec<FabricTlsConfig>, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.into(), source })?;
    let gen = TlsError::Generate;
    let ca_key = KeyPair::generate().map_err(gen)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca.distinguished_name.push(DnType::CommonName, "amf cluster fabric CA");
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).map_err(gen)?;
    let ca_path = dir.join(super::CA_CERT);
    super::local_ca::write(dir, super::CA_CERT, &ca_cert.pem(), false)?;
    let mut out = Vec::new();
    for n in 0..nodes {
        let key = KeyPair::generate().map_err(gen)?;
        let mut p = CertificateParams::new(vec![node_name(n)]).map_err(gen)?;
        p.distinguished_name.push(DnType::CommonName, node_name(n));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(gen)?;
        let (cert_name, key_name) = (format!("node-{n}-cert.pem"), format!("node-{n}-key.pem"));
        super::local_ca::write(dir, &cert_name, &cert.pem(), false)?;
        super::local_ca::write(dir, &key_name, &key.serialize_pem(), true)?;
        out.push(FabricTlsConfig { ca: ca_path.clone(), cert: dir.join(cert_name), key: dir.join(key_name) });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_certificate_names_its_node_and_loads_only_as_that_node() {
        let dir = tempfile::tempdir().unwrap();
        let cfgs = generate_cluster(dir.path(), 3).unwrap();
        for (n, c) in cfgs.iter().enumerate() {
            assert_eq!(node_of(&certificates(&c.cert).unwrap()), Some(n as u8));
            c.load(n as u8).unwrap();
        }
        let e = cfgs[1].load(2).unwrap_err();
        assert!(e.to_string().contains("amf-node-2"), "{e}");
        // A host's certificate names no node.
        super::super::generate(&dir.path().join("hosts"), &[]).unwrap();
        let host = certificates(&dir.path().join("hosts").join(super::super::CLIENT_CERT)).unwrap();
        assert_eq!(node_of(&host), None);
    }
}
