//! Controller failure end to end: `amf cluster --controllers 3`, qemu-io writing through one
//! controller, kill -9 of that controller mid-stream. The survivors prove it dead, take over
//! its dirty lines from the replicas they hold, resync what it was writing, and serve on.

mod common;

use common::stream::*;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// A 3-controller RAID6 on Verilator cards with qemu-io streaming writes through controller 0,
/// 1500 of them answered already (qemu-io's output reaches us in blocks: it is further along).
/// Write-back caching (qemu-io's default, writethrough, makes every write FUA: it would go to
/// the members before its answer and leave nothing to take over).
fn raid6_streaming_through_0(dir: &std::path::Path) -> (Cluster, std::process::Child, std::sync::mpsc::Receiver<()>) {
    let c = start(
        dir,
        &["--controllers", "3", "--level", "raid6", "--members", "5", "--member-size", "32M", "--card", "sim"],
    );
    let (writer, rx) = spawn_writer(c.uri(0), 0, "writeback");
    for _ in 0..1500 {
        rx.recv_timeout(Duration::from_secs(60)).expect("qemu-io writes through controller 0");
    }
    (c, writer, rx)
}

#[test]
fn kill_9_of_a_controller_loses_no_acknowledged_write_and_the_others_serve_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let (c, mut writer, rx) = raid6_streaming_through_0(&dir);
    unsafe { libc::kill(c.pids[0], libc::SIGKILL) };
    let killed = Instant::now();
    // qemu-io reports every write answered, in order, then fails at the next one.
    let _ = writer.wait();
    let acked = 1500 + rx.iter().count() as u64; // to the end of its output
    assert!(acked < WRITES, "the kill came after the last write");
    let want = expected(0, acked - 1);
    // The first request through a survivor.
    loop {
        let out = Command::new("qemu-io").args(["-f", "raw", "-c", "read 0 4096", c.uri(1)]).output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("read 4096/4096") {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no survivor answered within 30 s");
    }
    let takeover_ms = killed.elapsed().as_millis();
    eprintln!("takeover: first request through a survivor {takeover_ms} ms after kill -9");
    for i in [1, 2] {
        let s = c.admin_of(i, "/status");
        assert_eq!(s["coherency"]["live"], 0b110, "controller {i}: {s}");
    }
    // Every acknowledged write, through both survivors: they agree, and nothing is lost.
    eprintln!("{acked} writes acknowledged before the kill");
    verify(c.uri(1), &want);
    verify(c.uri(2), &want);
    // They keep serving writes too.
    qemu_io(c.uri(2), &["write -P 0xee 4M 8k"]);
    qemu_io(c.uri(1), &["read -P 0xee 4M 8k"]);
    let taken: u64 = [1, 2]
        .iter()
        .map(|&i| c.admin_of(i, "/status")["coherency"]["counters"]["lines_taken_over"].as_u64().unwrap())
        .sum();
    eprintln!("{taken} dirty lines taken over");
    let log = c.log();
    assert!(log.contains("controller 0 died") && log.contains("controllers [0] are dead"), "{log}");
    // The survivors stop cleanly: the group is clean (they wrote back every line, their own
    // and controller 0's) and its redundancy is whole.
    let status = c.stop();
    assert!(!status.success(), "a controller died: the cluster says so in its exit status");
    assert_eq!(inspect(&dir)["clean"], true, "{}", inspect(&dir));
    scrub_clean(&dir);
    // And after a restart, everything acknowledged is on the members.
    let c = start(&dir, &["--controllers", "1"]);
    verify(c.uri(0), &want);
    assert!(c.stop().success());
}

/// SIGSTOP of the controller a host writes through, for longer than its lease: its process
/// lives (its life lock stays held), so the survivors learn it is out only from its lease on
/// the members, which stops being renewed. They take over its dirty lines and serve; the host
/// overwrites half the places through a survivor. On SIGCONT the stopped controller finds its
/// lease over and fences itself: it writes nothing (its old dirty lines would overwrite the
/// new data) and answers no host.
#[test]
fn a_controller_paused_past_its_lease_is_taken_over_and_fences_itself_when_it_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let (c, mut writer, rx) = raid6_streaming_through_0(&dir);
    unsafe { libc::kill(c.pids[0], libc::SIGSTOP) };
    let stopped = Instant::now();
    // The survivors move on once its lease expires.
    loop {
        let live = c.admin_of(1, "/status")["coherency"]["live"].as_u64();
        if live == Some(0b110) {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(30), "controller 0's lease never expired: {:?}", live);
        std::thread::sleep(Duration::from_millis(50));
    }
    let takeover_ms = stopped.elapsed().as_millis();
    eprintln!("takeover: survivors moved on {takeover_ms} ms after SIGSTOP");
    // New data on the even places, through a survivor, on the members.
    let cmds: Vec<String> =
        (0..PLACES).step_by(2).map(|p| format!("write -P 0xee {} {WRITE_BYTES}", p * WRITE_BYTES)).collect();
    let mut refs: Vec<&str> = cmds.iter().map(|s| s.as_str()).collect();
    refs.push("flush");
    qemu_io(c.uri(1), &refs);
    // Controller 0 resumes: it fences itself, and its host's connection ends.
    unsafe { libc::kill(c.pids[0], libc::SIGCONT) };
    let status = wait_timeout(&mut writer, Duration::from_secs(30));
    assert!(!status.success(), "qemu-io got an error from the fenced controller");
    let acked = 1500 + rx.iter().count() as u64; // to the end of its output
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.log().contains("controller 0 fenced itself and died") {
        assert!(Instant::now() < deadline, "controller 0 did not end: {}", c.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = c.log();
    assert!(log.contains("controller 0: fencing itself") || log.contains("controller 0: its lease ran out"), "{log}");
    assert!(log.contains("exit status: 3"), "{log}");
    // Odd places: every write acknowledged before the pause. Even places: the new data (the
    // fenced controller did not write its old copies over it).
    let want: Vec<(u64, Vec<u64>)> = expected(0, acked - 1)
        .into_iter()
        .map(|(p, allowed)| if p % 2 == 0 { (p, vec![0xee]) } else { (p, allowed) })
        .collect();
    verify(c.uri(1), &want);
    verify(c.uri(2), &want);
    let status = c.stop();
    assert!(!status.success(), "a controller was fenced: the cluster says so in its exit status");
    scrub_clean(&dir);
    let c = start(&dir, &["--controllers", "1"]);
    verify(c.uri(0), &want);
    assert!(c.stop().success());
}

#[test]
fn all_controllers_killed_mid_write_resync_only_what_they_were_writing_and_lose_no_durable_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let args = [
        "--controllers",
        "3",
        "--level",
        "raid5",
        "--members",
        "4",
        "--member-size",
        "64M",
        "--chunk",
        "64K",
        "--bitmap-region",
        "1M",
        "--card",
        "model",
    ];
    let c = start(&dir, &args);
    // One writer per controller, each on its own 4 MiB; writethrough: every answered write is
    // on the members (what a host may count on after a power loss of every controller).
    let writers: Vec<_> = (0..3).map(|i| spawn_writer(c.uri(i), i as u64 * 2 * PLACES, "writethrough")).collect();
    for (_, rx) in &writers {
        for _ in 0..300 {
            rx.recv_timeout(Duration::from_secs(60)).expect("qemu-io writes");
        }
    }
    for pid in &c.pids {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let mut wants = Vec::new();
    for (i, (mut w, rx)) in writers.into_iter().enumerate() {
        let _ = w.wait();
        let acked = 300 + rx.try_iter().count() as u64;
        wants.push(expected(i as u64 * 2 * PLACES, acked - 1));
    }
    let _ = c.stop();
    let before = inspect(&dir);
    assert_eq!(before["clean"], false, "{before}");
    let regions = before["stripes"].as_u64().unwrap().div_ceil(before["bitmap_region_stripes"].as_u64().unwrap());
    // Restarted, the group resyncs only the regions some controller was writing.
    let c = start(&dir, &["--controllers", "3", "--card", "model"]);
    let log = c.log();
    let resynced: u64 = log
        .lines()
        .find_map(|l| l.split("unclean shutdown; resyncing ").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no resync in the log: {log}"));
    eprintln!("resynced {resynced} of {regions} write-intent regions");
    assert!(resynced > 0 && resynced * 4 < regions, "{resynced} of {regions} regions resynced");
    for want in &wants {
        verify(c.uri(1), want);
    }
    assert!(c.stop().success());
    scrub_clean(&dir);
}

/// Waits until controllers `which` show member `m` in `state`.
fn wait_member_state(c: &Cluster, which: &[usize], m: usize, state: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let states: Vec<String> = which
            .iter()
            .map(|&i| c.admin_of(i, "/status")["members"][m]["state"].as_str().unwrap_or("").to_string())
            .collect();
        if states.iter().all(|s| s == state) {
            return;
        }
        assert!(Instant::now() < deadline, "member {m} as controllers {which:?} see it: {states:?}\n{}", c.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A member file removed under load from three controllers: every controller stops using it,
/// reads stay correct. Its rebuild onto a new file runs from controller 1, which is killed
/// mid-rebuild: the lowest survivor (its lease record named the member it was rebuilding)
/// resumes it from the point recorded in the superblocks and finishes it; scrub clean.
#[test]
fn a_rebuild_survives_the_death_of_the_controller_running_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(
        &dir,
        &[
            "--controllers",
            "3",
            "--level",
            "raid5",
            "--members",
            "4",
            "--member-size",
            "64M",
            "--chunk",
            "16K",
            "--card",
            "model",
        ],
    );
    let token = std::fs::read_to_string(dir.join("run").join("admin-token")).unwrap();
    for i in 0..3u64 {
        qemu_io(c.uri(i as usize), &[&format!("write -P {} {} 4M", 0x31 + i, i << 22)]);
    }
    // Member 2's file goes away while controller 0 writes.
    let (mut writer, rx) = spawn_writer(c.uri(0), 2048, "writethrough");
    rx.recv_timeout(Duration::from_secs(60)).expect("qemu-io writes through controller 0");
    std::fs::remove_file(member(&dir, 2)).unwrap();
    wait_member_state(&c, &[0, 1, 2], 2, "faulty", Duration::from_secs(30));
    let _ = writer.kill();
    let _ = writer.wait();
    let reads: Vec<String> = (0..3u64).map(|i| format!("read -P {} {} 4M", 0x31 + i, i << 22)).collect();
    let refs: Vec<&str> = reads.iter().map(|s| s.as_str()).collect();
    for i in 0..3 {
        qemu_io(c.uri(i), &refs);
    }
    // The rebuild onto a new file, from controller 1; controller 1 dies part-way.
    let (code, body) = post(&c.controllers[1].1, "/rebuild?member=2", token.trim());
    assert_eq!(code, 202, "{body}");
    let total = loop {
        let t = c.admin_of(1, "/status")["task"].clone();
        let (done, total) = (t["done"].as_u64().unwrap_or(0), t["total"].as_u64().unwrap_or(0));
        if done >= 256 {
            assert!(done < total, "the rebuild ended before the kill: {t}");
            break total;
        }
        assert_eq!(t["state"], "running", "{t}");
        std::thread::sleep(Duration::from_millis(5));
    };
    unsafe { libc::kill(c.pids[1], libc::SIGKILL) };
    // Controller 0, the lowest survivor, resumes it and finishes it.
    wait_member_state(&c, &[0, 2], 2, "active", Duration::from_secs(120));
    let log = c.log();
    assert!(log.contains("controller 0: resuming the rebuild of member 2"), "{log}");
    let task = c.admin_of(0, "/status")["task"].clone();
    assert_eq!((task["kind"].as_str(), task["state"].as_str()), (Some("rebuild"), Some("done")), "{task}");
    assert!(task["result"]["stripes"].as_u64().unwrap_or(u64::MAX) <= total, "{task}");
    for i in [0, 2] {
        qemu_io(c.uri(i), &refs);
    }
    assert!(!c.stop().success(), "a controller died: the cluster says so");
    scrub_clean(&dir);
    assert!(inspect(&dir)["members"].as_array().unwrap().iter().all(|m| m["state"] == "active"), "{}", inspect(&dir));
    let c = start(&dir, &["--controllers", "1"]);
    qemu_io(&c.nbd_uri, &refs);
    assert!(c.stop().success());
}
