//! NBD over TLS with unmodified clients: qemu-io and qemu-img with `tls-creds-x509`, nbdinfo
//! and nbdcopy with `nbds://` URIs. Plaintext is refused where TLS is required; a host without
//! a certificate, or with one from another authority, is refused where client certificates
//! are required, while the hosts that have one keep being served.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};

const SHAPE: [&str; 6] = ["--level", "raid5", "--members", "3", "--member-size", "24M"];

/// qemu-io over TLS with the credentials in `creds` (QEMU's file names).
fn qemu_io_tls(port: &str, creds: &Path, cmds: &[&str]) -> Output {
    let mut c = Command::new("qemu-io");
    c.arg("--object")
        .arg(format!("tls-creds-x509,id=tls0,dir={},endpoint=client", creds.display()))
        .args(["--image-opts", &format!("driver=nbd,host=127.0.0.1,port={port},export=amf,tls-creds=tls0")]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.output().unwrap()
}

/// qemu-io over TLS that must succeed with every pattern verified.
fn qemu_io_tls_ok(port: &str, creds: &Path, cmds: &[&str]) {
    let o = qemu_io_tls(port, creds, cmds);
    assert!(o.status.success() && !text(&o).contains("failed"), "qemu-io over TLS {cmds:?}: {}", text(&o));
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn port(uri: &str) -> String {
    uri.rsplit(':').next().unwrap().trim_end_matches("/amf").to_string()
}

fn nbd_counter(admin: &str, name: &str) -> u64 {
    admin_get(admin, "/status")["nbd_server"][name].as_u64().unwrap()
}

#[test]
fn qemu_io_nbdinfo_and_nbdcopy_over_tls_and_plaintext_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let mut args = SHAPE.to_vec();
    args.push("--tls");
    let c = start(&dir, &args);
    assert!(c.nbd_uri.starts_with("nbds://127.0.0.1:"), "{}", c.nbd_uri);
    let creds = dir.join("tls");
    let p = port(&c.nbd_uri);

    qemu_io_tls_ok(&p, &creds, &["write -P 0x5c 8M 256k", "read -P 0x5c 8M 256k"]);

    let uri = format!("{}?tls-certificates={}", c.nbd_uri, creds.display());
    let info = run_ok(Command::new("nbdinfo").arg(&uri));
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    assert!(info.contains("with TLS"), "{info}");

    // Data in through qemu-img (TLS), out through nbdcopy (TLS), compared.
    let size = 4 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
    let src = tmp.path().join("src.raw");
    std::fs::write(&src, &data).unwrap();
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "--target-image-opts"])
            .arg("--object")
            .arg(format!("tls-creds-x509,id=tls0,dir={},endpoint=client", creds.display()))
            .arg(&src)
            .arg(format!(
                "driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port={p},file.export=amf,file.tls-creds=tls0"
            )),
    );
    let out = tmp.path().join("out.raw");
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&out));
    assert!(std::fs::read(&out).unwrap()[..size] == data[..], "nbdcopy over TLS read back what qemu-img wrote");

    // Plaintext: refused with NBD_REP_ERR_TLS_REQD (qemu-io prints the server's message).
    let refused_before = nbd_counter(&c.admin, "tls_refused");
    let plain_uri = c.nbd_uri.replace("nbds://", "nbd://");
    let o = Command::new("qemu-io").args(["-f", "raw", "-c", "read 0 4k"]).arg(&plain_uri).output().unwrap();
    assert!(!o.status.success(), "plaintext qemu-io was served: {}", text(&o));
    assert!(text(&o).contains("requires TLS"), "{}", text(&o));
    let o = Command::new("nbdinfo").arg(&plain_uri).output().unwrap();
    assert!(!o.status.success(), "plaintext nbdinfo was served: {}", text(&o));
    assert!(nbd_counter(&c.admin, "tls_refused") >= refused_before + 2);
    assert!(nbd_counter(&c.admin, "tls_connections") >= 4);

    // The data written over TLS is still there after the refusals.
    qemu_io_tls_ok(&p, &creds, &["read -P 0x5c 8M 256k"]);
    assert!(c.stop().success());
}

#[test]
fn optional_tls_serves_both() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let mut args = SHAPE.to_vec();
    args.extend(["--tls", "optional"]);
    let c = start(&dir, &args);
    assert!(c.nbd_uri.starts_with("nbd://"), "plaintext is served, so the URI is nbd://: {}", c.nbd_uri);
    qemu_io_tls_ok(&port(&c.nbd_uri), &dir.join("tls"), &["write -P 0x11 0 64k"]);
    qemu_io(&c.nbd_uri, &["read -P 0x11 0 64k"]);
    assert_eq!(nbd_counter(&c.admin, "tls_connections"), 1);
    assert!(c.stop().success());
}

/// Three controllers requiring client certificates: hosts with the cluster CA's client
/// certificate are served by every controller and see each other's writes; a host with no
/// certificate, or one from another authority, is refused and counted.
#[test]
fn client_certificates_required_by_every_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let mut args = SHAPE.to_vec();
    args.extend(["--controllers", "3", "--card", "model", "--tls", "--tls-client-certs"]);
    let c = start(&dir, &args);
    let creds = dir.join("tls");
    qemu_io_tls_ok(&port(c.uri(1)), &creds, &["write -P 0x77 2M 128k"]);

    // The CA alone: no client certificate.
    let ca_only = tmp.path().join("ca-only");
    std::fs::create_dir(&ca_only).unwrap();
    std::fs::copy(creds.join("ca-cert.pem"), ca_only.join("ca-cert.pem")).unwrap();
    // A complete set from another authority, with this cluster's CA to trust the server.
    let stranger = tmp.path().join("stranger");
    amf(&["certs", stranger.to_str().unwrap()]);
    std::fs::copy(creds.join("ca-cert.pem"), stranger.join("ca-cert.pem")).unwrap();
    // qemu checks its own certificate against its CA before it connects, so the stranger's
    // certificate goes through nbdinfo (libnbd sends whatever it is given).
    for (who, d) in [("no certificate", &ca_only), ("another CA's certificate", &stranger)] {
        let before = nbd_counter(&c.controllers[2].1, "tls_failures");
        let o = if d == &ca_only {
            qemu_io_tls(&port(c.uri(2)), d, &["read 2M 4k"])
        } else {
            Command::new("nbdinfo").arg(format!("{}?tls-certificates={}", c.uri(2), d.display())).output().unwrap()
        };
        assert!(!o.status.success(), "a host with {who} was served: {}", text(&o));
        assert_eq!(nbd_counter(&c.controllers[2].1, "tls_failures"), before + 1, "{who}");
    }
    // Hosts with the certificate are served on and see controller 1's write.
    for i in [0, 2] {
        qemu_io_tls_ok(&port(c.uri(i)), &creds, &["read -P 0x77 2M 128k"]);
    }
    assert!(c.stop().success());
}

/// `--admin-tls`: the admin endpoints answer over HTTPS only. `amf status` reaches them trusting
/// the CA named by AMF_ADMIN_CA and says what is missing without it; a plaintext request gets
/// no HTTP answer; a mutation without the token is refused over TLS as over HTTP; Prometheus-style
/// keep-alive clients get several answers on one connection (curl).
#[test]
fn admin_endpoint_over_https() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let shape = ["--level", "raid1", "--members", "2", "--member-size", "8M"];
    let c = start(&dir, &[&["--controllers", "2", "--admin-tls"][..], &shape[..]].concat());
    let ca = dir.join("tls/ca-cert.pem");
    for (_, admin) in &c.controllers {
        assert!(admin.starts_with("https://127.0.0.1:"), "ready line names https: {admin}");
        let o = Command::new(amf_bin()).args(["status", "--admin", admin]).env("AMF_ADMIN_CA", &ca).output().unwrap();
        assert!(o.status.success() && text(&o).contains("raid1"), "{}", text(&o));
        let o = Command::new(amf_bin()).args(["status", "--admin", admin]).env_remove("AMF_ADMIN_CA").output().unwrap();
        assert!(!o.status.success() && text(&o).contains("AMF_ADMIN_CA"), "{}", text(&o));
        // Another CA's certificate is not trusted.
        let other = tmp.path().join("other");
        amf::tls::generate(&other, &[]).unwrap();
        let o = Command::new(amf_bin())
            .args(["status", "--admin", admin])
            .env("AMF_ADMIN_CA", other.join("ca-cert.pem"))
            .output()
            .unwrap();
        assert!(!o.status.success(), "a certificate from another CA was trusted: {}", text(&o));
        // Plain HTTP to the TLS port: no HTTP answer.
        let mut s = std::net::TcpStream::connect(admin.trim_start_matches("https://")).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /status HTTP/1.0\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(!got.starts_with(b"HTTP/"), "plaintext got an HTTP answer: {:?}", String::from_utf8_lossy(&got));
        // A mutation without the token, and one with it.
        let (code, _) = amf::cluster::admin::request_with_ca(admin, "POST", "/scrub", None, Some(&ca)).unwrap();
        assert_eq!(code, 401);
        let token = std::fs::read_to_string(dir.join("run/admin-token")).unwrap();
        let (code, body) =
            amf::cluster::admin::request_with_ca(admin, "POST", "/scrub", Some(token.trim()), Some(&ca)).unwrap();
        assert_eq!(code, 202, "{body}");
    }
    // Keep-alive: two answers on one connection.
    let admin = &c.controllers[0].1;
    let urls = [format!("{admin}/metrics"), format!("{admin}/status")];
    let o = Command::new("curl").args(["-sf", "--cacert"]).arg(&ca).args(&urls).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("amf_engine") && out.contains("\"members\""), "{}", text(&o));
    assert!(c.stop().success());
}
