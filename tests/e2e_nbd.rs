//! End to end: `amf cluster` processes on member files, driven by unmodified NBD clients
//! (qemu-io, qemu-img, nbdinfo, nbdcopy, fio's nbd engine).

mod common;
use common::*;
use std::process::Command;

fn shape(level: &str, members: &str) -> Vec<String> {
    ["--level", level, "--members", members, "--member-size", "24M", "--chunk", "64K"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// Patterns written through qemu-io survive a clean restart, at every level.
#[test]
fn qemu_io_patterns_survive_restart_at_every_level() {
    for (level, members) in [("raid0", "3"), ("raid1", "2"), ("raid5", "4"), ("raid6", "5"), ("raid10", "4")] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(level);
        let sh = shape(level, members);
        let c = start(&dir, &args(&sh));
        let writes = [
            "write -P 0x11 0 1M",
            "write -P 0x22 1048576 4k",
            "write -P 0x33 5000 3000",
            "write -P 0x44 3145728 192k",
            "write -z 8388608 64k",
        ];
        qemu_io(&c.nbd_uri, &writes);
        let reads = [
            "read -P 0x11 0 5000",
            "read -P 0x33 5000 3000",
            "read -P 0x11 8000 1040576",
            "read -P 0x22 1048576 4k",
            "read -P 0x44 3145728 192k",
            "read -P 0 8388608 64k",
        ];
        qemu_io(&c.nbd_uri, &reads);
        assert!(c.stop().success(), "{level}: clean stop exits 0");
        assert_eq!(inspect(&dir)["clean"], true, "{level}: stop marks the group clean");
        let c = start(&dir, &[]);
        qemu_io(&c.nbd_uri, &reads);
        assert!(c.stop().success());
    }
}

/// A RAID6 group with two members gone serves reconstructed data, and an online rebuild
/// brings both back with parity clean.
#[test]
fn degraded_raid6_reads_then_online_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(&dir, &args(&shape("raid6", "6")));
    qemu_io(&c.nbd_uri, &["write -P 0x5a 0 2M", "write -P 0xa5 2097152 300k"]);
    assert!(c.stop().success());
    std::fs::remove_file(member(&dir, 1)).unwrap();
    std::fs::remove_file(member(&dir, 4)).unwrap();
    let c = start(&dir, &[]);
    assert!(c.log().contains("running degraded"), "{}", c.log());
    qemu_io(&c.nbd_uri, &["read -P 0x5a 0 2M", "read -P 0xa5 2097152 300k"]);
    let st = c.admin_json("/status");
    assert_eq!(st["degraded"], true);
    assert!(st["engine"]["degraded_reads"].as_u64().unwrap() > 0);
    // Writes while degraded, then rebuild both members online.
    qemu_io(&c.nbd_uri, &["write -P 0x77 65536 128k"]);
    let d = dir.to_str().unwrap();
    let out = amf(&["rebuild", d, "--member", "1", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["member"], 1);
    amf(&["rebuild", d, "--json"]);
    let st = c.admin_json("/status");
    assert_eq!(st["degraded"], false, "{st}");
    let out = amf(&["scrub", d, "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["mismatches"], 0);
    assert_eq!(s["skipped"], 0);
    qemu_io(&c.nbd_uri, &["read -P 0x5a 0 65536", "read -P 0x77 65536 128k", "read -P 0xa5 2097152 300k"]);
    assert!(c.stop().success());
    // The rebuilt members carry their share: lose two others.
    std::fs::remove_file(member(&dir, 0)).unwrap();
    std::fs::remove_file(member(&dir, 2)).unwrap();
    let c = start(&dir, &[]);
    qemu_io(&c.nbd_uri, &["read -P 0x77 65536 128k", "read -P 0xa5 2097152 300k"]);
}

/// qemu-img converts an image into the export and compares it back; nbdcopy copies it out.
#[test]
fn qemu_img_and_nbdcopy_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(&dir, &args(&shape("raid5", "5")));
    let src = tmp.path().join("src.raw");
    let size = 8 << 20;
    let mut data = vec![0u8; size];
    let mut x = 0x1234_5678u32;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(&src, &data).unwrap();
    run_ok(Command::new("qemu-img").args(["convert", "-n", "-f", "raw", "-O", "raw"]).arg(&src).arg(&c.nbd_uri));
    // Compare only the first 8 MiB: the export is larger.
    let part = format!("json:{{\"driver\":\"raw\",\"size\":{size},\"file\":{{\"driver\":\"nbd\",\"server\":{{\"type\":\"inet\",\"host\":\"127.0.0.1\",\"port\":\"{}\"}},\"export\":\"amf\"}}}}", c.nbd_addr().split(':').nth(1).unwrap());
    run_ok(Command::new("qemu-img").args(["compare", "-f", "raw"]).arg(&src).arg(&part));
    let info = run_ok(Command::new("nbdinfo").arg("--json").arg(&c.nbd_uri));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let export = &v["exports"][0];
    assert_eq!(export["block_size_preferred"], 4096);
    assert_eq!(export["can_multi_conn"], true);
    assert_eq!(export["can_flush"], true);
    assert_eq!(export["can_fua"], true);
    let out = tmp.path().join("out.raw");
    run_ok(Command::new("nbdcopy").arg(&c.nbd_uri).arg(&out));
    let copied = std::fs::read(&out).unwrap();
    assert!(copied[..size] == data[..], "nbdcopy read back what qemu-img wrote");
    assert!(c.stop().success());
}

/// fio's nbd engine writes random blocks with checksums and verifies them.
#[test]
fn fio_nbd_engine_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(&dir, &args(&shape("raid6", "5")));
    // fio saves its verify state in the working folder: the test's own, not the tree's.
    let out = run_ok(Command::new("fio").current_dir(tmp.path()).args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", c.nbd_uri),
        "--rw=randwrite",
        "--bs=4k",
        "--size=16M",
        "--iodepth=16",
        "--verify=crc32c",
        "--do_verify=1",
        "--output-format=json",
    ]));
    // fio may print notes before its JSON.
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    assert_eq!(v["jobs"][0]["error"], 0, "fio reported an error");
    assert!(v["jobs"][0]["write"]["total_ios"].as_u64().unwrap() >= 4096, "fio wrote every block");
    let s = c.admin_json("/status");
    assert!(s["engine"]["rmw_writes"].as_u64().unwrap() + s["engine"]["rcw_writes"].as_u64().unwrap() > 0);
    assert!(c.stop().success());
    let out = amf(&["scrub", dir.to_str().unwrap(), "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["mismatches"], 0);
}

/// Two connections see each other's writes (MULTI_CONN), and a FLUSH on one covers both.
#[test]
fn multi_connection_writes_are_visible_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(&dir, &args(&shape("raid5", "3")));
    let mut a = nbd_client::Client::connect(&c.nbd_addr());
    let mut b = nbd_client::Client::connect(&c.nbd_addr());
    assert_eq!(a.write(4096, &[0xcd; 8192], 0).unwrap(), 0);
    assert_eq!(b.flush().unwrap(), 0);
    assert_eq!(b.read(4096, 8192).unwrap().unwrap(), vec![0xcd; 8192]);
    a.disconnect();
    b.disconnect();
}
