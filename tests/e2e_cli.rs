//! The command-line contract: ready lines, inspect --json, clear errors for bad input, offline
//! scrub/repair and rebuild with byte-identical results.

mod common;
use common::*;
use std::process::Command;

const SHAPE: [&str; 8] = ["--level", "raid5", "--members", "4", "--member-size", "16M", "--chunk", "32K"];

#[test]
fn inspect_json_describes_the_group() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(&dir, &SHAPE);
    assert!(c.ready_line.starts_with("controller 0 pid "));
    let st = c.admin_json("/status");
    assert_eq!(st["level"], "raid5");
    // amf status, by directory and by endpoint, text and JSON.
    let d = dir.to_str().unwrap();
    let text = String::from_utf8(amf(&["status", d]).stdout).unwrap();
    assert!(text.contains("raid5") && text.contains("healthy") && text.contains("member  3"), "{text}");
    let js: serde_json::Value =
        serde_json::from_slice(&amf(&["status", "--admin", &c.admin, "--json"]).stdout).unwrap();
    assert_eq!(js["members"].as_array().unwrap().len(), 4);
    // Prometheus text on /metrics, after some I/O.
    qemu_io(&c.nbd_uri, &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"]);
    let mut s = std::net::TcpStream::connect(c.admin.trim_start_matches("http://")).unwrap();
    use std::io::{Read, Write};
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut m = String::new();
    s.read_to_string(&mut m).unwrap();
    assert!(
        m.contains("# TYPE amf_engine_member_writes counter") && m.contains("amf_members_degraded{controller=\"0\"} 0"),
        "{m}"
    );
    // A Prometheus text parser reads it, with latency histograms of the I/O that ran.
    let body = m.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    let samples = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap().samples;
    for op in ["write", "read", "member_write", "member_read"] {
        let h = samples.iter().find(|s| s.metric == "amf_latency_seconds" && s.labels.get("op") == Some(op));
        let Some(prometheus_parse::Value::Histogram(b)) = h.map(|s| &s.value) else { panic!("{op} histogram: {body}") };
        assert!(b.last().is_some_and(|b| b.count > 0.0), "{op} observed: {b:?}");
    }
    // The same at a glance in amf status, and in its JSON.
    let text = String::from_utf8(amf(&["status", d]).stdout).unwrap();
    assert!(text.contains("latency us (mean/p99<=): ") && text.contains("member_write "), "{text}");
    let js: serde_json::Value = serde_json::from_slice(&amf(&["status", d, "--json"]).stdout).unwrap();
    assert!(js["latency"]["write"]["count"].as_u64().unwrap() >= 1, "{js}");
    assert!(c.stop().success());
    let v = inspect(&dir);
    assert_eq!(v["level"], "raid5");
    assert_eq!(v["layout"], "left-symmetric");
    assert_eq!(v["chunk_bytes"], 32768);
    assert_eq!(v["data_offset_bytes"], 1 << 20);
    assert_eq!(v["clean"], true);
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 4);
    for (i, m) in members.iter().enumerate() {
        assert_eq!(m["index"], i);
        assert_eq!(m["state"], "active");
        assert!(m["path"].as_str().unwrap().ends_with(&format!("member-{i:02}.img")));
    }
}

#[test]
fn ctrl_c_stops_the_group_cleanly() {
    // The terminal signals the whole foreground group: the supervisor must still see every
    // controller stop as the clean stop it asked for, whichever of them the signal reaches first.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    for round in 0..3 {
        let c = start(&dir, if round == 0 { &SHAPE[..] } else { &[] });
        let stderr = c.stderr.clone();
        let status = c.interrupt();
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        assert!(status.success(), "round {round}: {status}\n{log}");
        assert!(!log.contains("error"), "round {round}: {log}");
        assert_eq!(inspect(&dir)["clean"], true, "round {round}");
    }
}

#[test]
fn bad_invocations_fail_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("empty");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(amf_bin()).args(["cluster", "--dir"]).arg(&dir).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("creating a group needs --level"), "{out:?}");
    let out = Command::new(amf_bin())
        .args(["cluster", "--dir"])
        .arg(&dir)
        .args(["--controllers", "9"])
        .args(SHAPE)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 to 8 controllers"), "{out:?}");
    let out = Command::new(amf_bin()).args(["cluster", "--dir"]).arg(&dir).args(["--level", "raid7"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown RAID level"));
    let out = Command::new(amf_bin())
        .args(["cluster", "--dir"])
        .arg(&dir)
        .args(["--level", "raid6", "--members", "3", "--member-size", "8M"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("raid6 needs at least 4 members"), "{out:?}");
    let out = Command::new(amf_bin()).args(["inspect"]).arg(&dir).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no amf members"));
}

#[test]
fn corrupt_superblocks_degrade_then_refuse_naming_members() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(&dir, &SHAPE);
    qemu_io(&c.nbd_uri, &["write -P 0x3c 0 1M"]);
    assert!(c.stop().success());
    let corrupt = |i: usize| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(member(&dir, i)).unwrap();
        f.write_all_at(&[0xff; 8], 48).unwrap();
    };
    corrupt(1);
    let c = start(&dir, &[]);
    let log = c.log();
    assert!(log.contains("member-01.img") && log.contains("checksum"), "{log}");
    qemu_io(&c.nbd_uri, &["read -P 0x3c 0 1M"]);
    assert!(c.stop().success());
    let v = inspect(&dir);
    assert_eq!(v["members"][1]["state"], "faulty");
    assert!(v["rejected"][0]["reason"].as_str().unwrap().contains("checksum"));
    corrupt(3);
    let err = try_start(&dir, &[]).err().expect("two unusable RAID5 members must refuse to start");
    assert!(err.contains("member-01.img") && err.contains("member-03.img") && err.contains("tolerates 1"), "{err}");
}

#[test]
fn offline_scrub_repairs_and_rebuild_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(&dir, &SHAPE);
    qemu_io(&c.nbd_uri, &["write -P 0x61 0 3M", "write -P 0x62 4194304 100k"]);
    assert!(c.stop().success());
    let d = dir.to_str().unwrap();
    // Flip a byte of stripe 2's parity: left-symmetric puts it on member 4-1-2 = 1. (RAID5 cannot
    // tell a bad data block from bad parity; repair rewrites parity from the data.)
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(member(&dir, 1)).unwrap();
        f.write_all_at(&[0x99], (1 << 20) + 2 * 32768 + 1234).unwrap();
    }
    let s: serde_json::Value = serde_json::from_slice(&amf(&["scrub", d, "--json"]).stdout).unwrap();
    assert_eq!(s["mismatches"], 1);
    let s: serde_json::Value = serde_json::from_slice(&amf(&["scrub", d, "--repair", "--json"]).stdout).unwrap();
    assert_eq!(s["repaired"], 1);
    let s: serde_json::Value = serde_json::from_slice(&amf(&["scrub", d, "--json"]).stdout).unwrap();
    assert_eq!(s["mismatches"], 0);
    // Lose member 0 and rebuild it offline onto a replacement file of our choosing.
    let original = std::fs::read(member(&dir, 0)).unwrap();
    std::fs::remove_file(member(&dir, 0)).unwrap();
    let spare = tmp.path().join("spare.img");
    std::fs::write(&spare, vec![0u8; 16 << 20]).unwrap();
    let out = amf(&["rebuild", d, "--replacement", spare.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("member 0 rebuilt"));
    let rebuilt = std::fs::read(member(&dir, 0)).unwrap();
    assert!(rebuilt[1 << 20..] == original[1 << 20..], "rebuilt data area is byte-identical");
    let v = inspect(&dir);
    assert_eq!(v["members"][0]["state"], "active");
    // A member index the group does not have is refused before anything is created.
    let out = Command::new(amf_bin()).args(["rebuild", d, "--member", "9"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no member 9"), "{out:?}");
    assert!(!member(&dir, 9).exists());
    // Nothing to rebuild in a healthy group.
    let out = Command::new(amf_bin()).args(["rebuild", d]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to rebuild"), "{out:?}");
    let c = start(&dir, &[]);
    qemu_io(&c.nbd_uri, &["read -P 0x61 0 3M", "read -P 0x62 4194304 100k"]);
}

#[test]
fn card_diagnostics_decode_registers_for_model_and_sim_cards() {
    for card in ["model", "sim"] {
        let v: serde_json::Value = serde_json::from_slice(&amf(&["regs", "--card", card, "--json"]).stdout).unwrap();
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 7, "{card}");
        assert_eq!(blocks[0]["block"], "device");
        assert_eq!(blocks[6]["block"], "link_auth", "{card}");
        let status = blocks[0]["registers"].as_array().unwrap().iter().find(|r| r["name"] == "status").unwrap();
        let ready = status["fields"].as_array().unwrap().iter().find(|f| f["name"] == "ready").unwrap();
        assert_eq!(ready["value"], 1, "{card}: status.ready decoded");
        let code = status["fields"].as_array().unwrap().iter().find(|f| f["name"] == "error_code").unwrap();
        assert_eq!(code["meaning"], "none", "{card}: enum values named");
        let c: serde_json::Value = serde_json::from_slice(&amf(&["card", "--card", card, "--json"]).stdout).unwrap();
        assert_eq!(
            (c["ready"].clone(), c["enabled"].clone(), c["error_code"].clone()),
            (true.into(), true.into(), 0.into()),
            "{card}"
        );
        assert_eq!(c["rings"]["command"]["entries"], 256);
        assert!(c["counters"]["frames_tx"].is_u64());
        assert!(c["counters"]["forged"].is_u64() && c["counters"]["replayed"].is_u64(), "{c}");
        assert_eq!(c["link_auth"], false, "{card}: a standalone card has no key");
        let text = String::from_utf8(amf(&["regs", "--card", card]).stdout).unwrap();
        assert!(text.contains("error_code=0 (none)"), "{text}");
    }
}
