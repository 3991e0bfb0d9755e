//! A throwaway certificate authority for a cluster on one machine (`amf cluster --tls`): a CA,
//! a server certificate for the addresses the controllers listen on, and one client
//! certificate, each with the key usages GnuTLS checks (QEMU refuses a CA without keyCertSign
//! or a server certificate without serverAuth). Real deployments bring their own
//! (docs/operations.md).

use super::{TlsError, CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};

/// What [`generate`] wrote.
#[derive(Clone, Debug)]
pub struct LocalCa {
    /// The folder (QEMU's `tls-creds-x509` `dir=`, libnbd's `tls-certificates=`).
    pub dir: PathBuf,
}

pub(super) fn write(dir: &Path, name: &str, text: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let err = |source| TlsError::Write { path: path.clone(), source };
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

/// Writes a fresh CA, a server certificate valid for `names` (DNS names or IP addresses) and a
/// client certificate into `dir` (created if missing); old files there are replaced.
pub fn generate(dir: &Path, names: &[String]) -> Result<LocalCa, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.into(), source })?;
    let gen = TlsError::Generate;
    let ca_key = KeyPair::generate().map_err(gen)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca.distinguished_name.push(DnType::CommonName, "amf local cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).map_err(gen)?;

    let leaf = |cn: &str, sans: Vec<String>, purpose: ExtendedKeyUsagePurpose| -> Result<(String, String), TlsError> {
        let key = KeyPair::generate().map_err(gen)?;
        let mut p = CertificateParams::new(sans).map_err(gen)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![purpose];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(gen)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in names {
        if !sans.contains(n) {
            sans.push(n.clone());
        }
    }
    let (server_cert, server_key) = leaf("amf controller", sans, ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client_cert, client_key) = leaf("amf host", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;

    write(dir, CA_CERT, &ca_cert.pem(), false)?;
    write(dir, SERVER_CERT, &server_cert, false)?;
    write(dir, SERVER_KEY, &server_key, true)?;
    write(dir, CLIENT_CERT, &client_cert, false)?;
    write(dir, CLIENT_KEY, &client_key, true)?;
    Ok(LocalCa { dir: dir.into() })
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn generated_files_load_as_server_and_client_configurations() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &["10.0.0.2".into()]).unwrap();
        TlsConfig::from_dir(dir.path(), TlsMode::Required, true).load().unwrap();
        client_config(&dir.path().join(CA_CERT), Some((&dir.path().join(CLIENT_CERT), &dir.path().join(CLIENT_KEY))))
            .unwrap();
    }

    #[test]
    fn a_missing_or_garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &[]).unwrap();
        std::fs::write(dir.path().join(SERVER_CERT), "not a certificate").unwrap();
        let e = TlsConfig::from_dir(dir.path(), TlsMode::Required, false).load().unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate(_)), "{e}");
        let e = server_config(&dir.path().join("missing.pem"), &dir.path().join(SERVER_KEY), None).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}
