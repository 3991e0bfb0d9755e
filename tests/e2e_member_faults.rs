//! Members that fail while the group runs: the reproduction from the data-integrity issue (a
//! member that starts failing reads in the middle of a reconstruct-write must not corrupt data
//! that was acknowledged and flushed before it), for RAID5 and RAID6, through real qemu-io.

mod common;
use common::*;

/// Writes three chunks, cuts `failing` short so its reads fail, rewrites the middle chunk (a
/// reconstruct-write that has to read the cut member), then reads everything back.
fn member_failing_mid_write_keeps_flushed_data(level: &str, members: &str, failing: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(&dir, &["--level", level, "--members", members, "--member-size", "64M", "--chunk", "64K"]);
    let uri = c.nbd_uri.clone();
    qemu_io(&uri, &["write -P 0x11 0 64k", "write -P 0x22 64k 64k", "write -P 0x33 128k 64k", "flush"]);
    // The member's data area is gone past 1 MiB: every read of a chunk there fails.
    std::fs::OpenOptions::new().write(true).open(member(&dir, failing)).unwrap().set_len(1 << 20).unwrap();
    qemu_io(&uri, &["write -P 0x44 64k 64k"]);
    qemu_io(&uri, &["read -P 0x11 0 64k", "read -P 0x44 64k 64k", "read -P 0x33 128k 64k"]);
    let st = c.admin_json("/status");
    let failed: Vec<u64> = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "faulty")
        .map(|m| m["index"].as_u64().unwrap())
        .collect();
    assert_eq!(failed, vec![failing as u64], "{level}: status names the failed member: {st}");
    assert!(c.stop().success());
    // After a restart the failure is still recorded and the data still reads back.
    let c = start(&dir, &[]);
    qemu_io(&c.nbd_uri, &["read -P 0x11 0 64k", "read -P 0x44 64k 64k", "read -P 0x33 128k 64k"]);
    assert!(c.stop().success());
}

#[test]
fn raid5_member_failing_mid_reconstruct_write_loses_nothing() {
    member_failing_mid_write_keeps_flushed_data("raid5", "4", 0);
}

#[test]
fn raid6_member_failing_mid_reconstruct_write_loses_nothing() {
    member_failing_mid_write_keeps_flushed_data("raid6", "5", 1);
}

/// Every file of the group folder with its contents.
fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.extension().is_some_and(|e| e == "lock" || e == "log"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn refused_rebuilds_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(&dir, &["--level", "raid5", "--members", "4", "--member-size", "16M"]);
    qemu_io(&c.nbd_uri, &["write -P 0x5a 0 1M", "flush"]);
    let small = tmp.path().join("small.img");
    std::fs::write(&small, vec![0u8; 1 << 20]).unwrap();
    let big = tmp.path().join("big.img");
    std::fs::File::create(&big).unwrap().set_len(32 << 20).unwrap();
    // The operator allows the small file as a replacement: it gets past the allow-list.
    std::fs::write(dir.join("replacements.allow"), format!("{}\n", small.display())).unwrap();
    let before = snapshot(&dir);
    let names: Vec<&String> = before.iter().map(|(n, _)| n).collect();
    let m2 = member(&dir, 2);
    let refused = [
        "/rebuild?member=1".to_string(),
        "/rebuild?member=7".to_string(),
        format!("/rebuild?member=1&replacement={}", tmp.path().join("missing.img").display()),
        format!("/rebuild?member=1&replacement={}", small.display()),
        format!("/rebuild?member=1&replacement={}", m2.display()),
    ];
    let token = std::fs::read_to_string(dir.join("run/admin-token")).unwrap();
    for path in &refused {
        let (code, body) = post(&c.admin, path, token.trim());
        assert!(code == 409 || code == 400 || code == 403, "POST {path}: {code} {body}");
        if path.contains("small.img") {
            assert_eq!(code, 409, "an allowed replacement passes the allow-list: {body}");
        }
        assert!(body.contains("error"), "POST {path}: {body}");
    }
    // Without the token (or with another) nothing is even looked at.
    for token in ["", "0123"] {
        let (code, body) = post(&c.admin, "/scrub?repair=1", token);
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("admin-token"), "{body}");
    }
    // A replacement outside the group folder is refused unless the operator listed it.
    let (code, body) = post(&c.admin, &format!("/rebuild?member=1&replacement={}", big.display()), token.trim());
    assert!(code == 403 && body.contains("replacements.allow"), "{code} {body}");
    assert!(snapshot(&dir) == before, "a refused rebuild changed the group folder ({names:?})");
    assert!(std::fs::read(&big).unwrap().iter().all(|b| *b == 0), "the refused replacement was written");
    qemu_io(&c.nbd_uri, &["read -P 0x5a 0 1M"]);
    assert!(c.stop().success());
    // Offline, the same refusals write nothing either (not even the superblocks).
    let before = snapshot(&dir);
    let d = dir.to_str().unwrap();
    let offline: [&[&str]; 5] = [
        &["rebuild", d],
        &["rebuild", d, "--member", "1"],
        &["rebuild", d, "--member", "7"],
        &["rebuild", d, "--member", "1", "--replacement", small.to_str().unwrap()],
        &["rebuild", d, "--member", "1", "--replacement", m2.to_str().unwrap()],
    ];
    for args in offline {
        let out = std::process::Command::new(amf_bin()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("error"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(snapshot(&dir) == before, "a refused offline rebuild changed the group folder");
    // And after a restart every member is still there and active.
    let v = inspect(&dir);
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 4, "{v}");
    assert!(members.iter().all(|m| m["state"] == "active"), "{v}");
}

#[test]
fn a_member_deleted_while_running_shows_in_status_within_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(&dir, &["--level", "raid5", "--members", "4", "--member-size", "16M"]);
    qemu_io(&c.nbd_uri, &["write -P 0x5a 0 1M", "flush"]);
    std::fs::remove_file(member(&dir, 3)).unwrap();
    let t = std::time::Instant::now();
    loop {
        let st = c.admin_json("/status");
        if st["members"][3]["state"] == "faulty" {
            assert_eq!(st["degraded"], true, "{st}");
            break;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "member 3 still healthy: {st}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    qemu_io(&c.nbd_uri, &["read -P 0x5a 0 1M"]);
    // `amf status` piped into a reader that leaves early ends quietly.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} status {} | true", amf_bin(), dir.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(c.stop().success());
}

/// A small tmpfs that the test mounts and always unmounts.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with a file until it is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0xffu8; 1 << 16];
    while f.write_all(&block).is_ok() {}
}

#[test]
fn members_on_a_full_filesystem_fail_and_come_back_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&tmp.path().join("mnt"), 48 << 20);
    let dir = fs.0.join("g");
    // Four sparse 24 MiB members on 48 MiB: they cannot all be filled.
    let c = start(&dir, &["--level", "raid5", "--members", "4", "--member-size", "24M", "--chunk", "64K"]);
    qemu_io(&c.nbd_uri, &["write -P 0x11 0 8M", "flush"]);
    fill(&fs.0.join("filler"));
    // Writes into unallocated space now fail on every member: the members fail one after another.
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x22 16M 8M", &c.nbd_uri])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("failed") || !out.status.success(), "a write with every member full must fail: {text}");
    let st = c.admin_json("/status");
    assert_eq!(st["failed"], true, "the group failed: {st}");
    let _ = c.stop();
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    // Space is back, the files are intact; a plain start refuses...
    let refused = try_start(&dir, &[]).err().expect("a failed group must not start without --force");
    assert!(refused.contains("recorded it as failed"), "{refused}");
    // ... and --force brings it back, saying what it forced.
    let c = start(&dir, &["--force"]);
    let log = c.log();
    assert!(log.contains("FORCED: member") && log.contains("regions were being written"), "{log}");
    qemu_io(&c.nbd_uri, &["read -P 0x11 0 8M"]);
    qemu_io(&c.nbd_uri, &["write -P 0x33 8M 1M", "flush", "read -P 0x33 8M 1M"]);
    assert!(c.stop().success());
    // Rebuild what stayed out, then the scrub is clean and everything reads back.
    let d = dir.to_str().unwrap();
    while inspect(&dir)["members"].as_array().unwrap().iter().any(|m| m["state"] != "active") {
        amf(&["rebuild", d]);
    }
    let v: serde_json::Value = serde_json::from_slice(&amf(&["scrub", d, "--json"]).stdout).unwrap();
    assert_eq!(v["mismatches"], 0, "{v}");
    assert_eq!(v["skipped"], 0, "{v}");
    let c = start(&dir, &[]);
    qemu_io(&c.nbd_uri, &["read -P 0x11 0 8M", "read -P 0x33 8M 1M"]);
    assert!(c.stop().success());
}
