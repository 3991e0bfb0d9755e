//! A controller cut off from its peers' network while the members stay reachable (as when a
//! controller's cluster link fails but its disk paths do not): three `amf serve` processes,
//! each in its own network namespace; the test takes one's link down. The cut controller
//! hears no one, the others hear each other: it loses the lease's conflict over reach and
//! fences itself (it stops answering and writing, says so on the members, exits 3), and the
//! others take over its dirty lines and serve on. Started again with its link back, it joins
//! them with a cold cache.

mod common;

use common::netns::Net;
use common::stream::*;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Controller {
    child: Child,
    log: std::path::PathBuf,
}

impl Controller {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn config(net: &Net, dir: &std::path::Path, i: usize, n: usize, service: bool) -> String {
    let a = |j: usize| net.addr(j);
    let mut t = format!(
        "node = {i}\nnodes = {n}\ngroup = \"{}\"\nnbd = \"{}:10809\"\nadmin = \"{}:8080\"\nfabric = \"{}:7000\"\n\
         cache_mib = 16\n\n[card]\nbackend = \"model\"\nlink = \"{}:7100\"\n",
        dir.display(),
        a(i),
        a(i),
        a(i),
        a(i)
    );
    for j in (0..n).filter(|j| *j != i) {
        t += &format!("\n[[peer]]\nnode = {j}\nfabric = \"{}:7000\"\nlink = \"{}:7100\"\n", a(j), a(j));
        if service {
            t += &format!("nbd = \"{}:10809\"\n", a(j));
        }
    }
    if service {
        t += &format!("\n[service]\ndev = \"{}\"\nprefix = 24\n", net.inner(i));
    }
    t
}

/// Starts controller i in its namespace; returns once the group's peers are all up (the ready
/// line comes after the rendezvous with every peer).
fn spawn(
    net: &Net,
    dir: &std::path::Path,
    i: usize,
    n: usize,
    service: bool,
) -> (Controller, std::sync::mpsc::Receiver<String>) {
    let cfg = dir.with_extension(format!("ctl-{i}.toml"));
    std::fs::write(&cfg, config(net, dir, i, n, service)).unwrap();
    let log = dir.with_extension(format!("ctl-{i}.log"));
    let mut child = Command::new("ip")
        .args(["netns", "exec", &net.ns(i), amf_bin(), "serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    (Controller { child, log }, rx)
}

/// SIGTERM to controllers `which`; each stops clean.
fn stop_clean(ctl: &mut [Controller], which: &[usize]) {
    for &i in which {
        unsafe { libc::kill(ctl[i].child.id() as i32, libc::SIGTERM) };
    }
    for &i in which {
        let s = wait_timeout(&mut ctl[i].child, Duration::from_secs(30));
        assert!(s.success(), "controller {i}: {}", ctl[i].log());
    }
}

/// A RAID5 group in `dir` (made by one controller, stopped clean) served by three controllers,
/// one per namespace of `net` (`service`: with service addresses that move); returns once
/// every one is ready.
fn start_cluster(net: &Net, dir: &std::path::Path, service: bool) -> Vec<Controller> {
    let c = start(dir, &["--controllers", "1", "--level", "raid5", "--members", "4", "--member-size", "32M"]);
    assert!(c.stop().success());
    let (ctl, ready): (Vec<_>, Vec<_>) = (0..3).map(|i| spawn(net, dir, i, 3, service)).unzip();
    for (i, rx) in ready.iter().enumerate() {
        let line = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| panic!("{}", ctl[i].log()));
        assert!(line.starts_with("controller "), "{line}");
    }
    ctl
}

/// Waits until controllers `which` all report membership `live` (bit n: controller n).
fn wait_live(net: &Net, ctl: &[Controller], which: &[usize], live: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while which
        .iter()
        .any(|&i| admin_get(&format!("http://{}:8080", net.addr(i)), "/status")["coherency"]["live"] != live)
    {
        let logs: Vec<String> = which.iter().map(|&i| format!("-- {i}:\n{}", ctl[i].log())).collect();
        assert!(Instant::now() < deadline, "membership {live:#b} not reached\n{}", logs.join("\n"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts controller `i` again (same configuration) and waits until all three have it back.
fn rejoin(net: &Net, dir: &std::path::Path, ctl: &mut [Controller], i: usize) {
    let restarted = Instant::now();
    let (again, ready) = spawn(net, dir, i, 3, false);
    ctl[i] = again;
    let line = ready.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| {
        let logs: Vec<String> = ctl
            .iter()
            .enumerate()
            .map(|(n, c)| {
                let st = if n == i {
                    serde_json::Value::Null
                } else {
                    admin_get(&format!("http://{}:8080", net.addr(n)), "/status")
                };
                format!("-- {n}:\n{}\nlease {}\ntakeover {}", c.log(), st["lease"], st["coherency"]["takeover"])
            })
            .collect();
        panic!("controller {i} not ready again\n{}", logs.join("\n"))
    });
    assert!(line.starts_with(&format!("controller {i}")), "{line}");
    wait_live(net, ctl, &[0, 1, 2], 0b111, Duration::from_secs(60));
    eprintln!("controller {i} rejoined {:.1} s after it was started again", restarted.elapsed().as_secs_f64());
}

/// `qemu_io`, with every controller's log when it fails.
fn qemu_io_logged(uri: &str, cmds: &[&str], ctl: &[Controller]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c.arg(uri).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || text.contains("failed") {
        let logs: Vec<String> = ctl.iter().enumerate().map(|(i, c)| format!("-- {i}:\n{}", c.log())).collect();
        panic!("qemu-io {cmds:?} through {uri}: {text}\n{}", logs.join("\n"));
    }
}

/// 1 MiB of 0xa1 at 8 MiB through controller 1, then a stream of writes through controller 0
/// (write-back: acknowledged once replicated, dirty in its cache); returns once 1500 are
/// answered.
fn stream_through_0(net: &Net) -> (std::process::Child, std::sync::mpsc::Receiver<()>) {
    let uri = |i: usize| format!("nbd://{}:10809/amf", net.addr(i));
    qemu_io(&uri(1), &["write -P 0xa1 8M 1M"]);
    let (writer, rx) = spawn_writer(&uri(0), 0, "writeback");
    for _ in 0..1500 {
        rx.recv_timeout(Duration::from_secs(60)).expect("qemu-io writes through controller 0");
    }
    (writer, rx)
}

#[test]
fn a_controller_cut_off_from_its_peers_fences_itself_the_others_take_over_and_it_rejoins() {
    let net = Net::new(3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let mut ctl = start_cluster(&net, &dir, false);
    let uri = |i: usize| format!("nbd://{}:10809/amf", net.addr(i));
    let admin = |i: usize| format!("http://{}:8080", net.addr(i));
    let (mut writer, rx) = stream_through_0(&net);
    // Controller 0 is cut off mid-stream: its fabric and its card link go down, its members
    // do not.
    let cut = Instant::now();
    net.set_link(0, false);
    let status = wait_timeout(&mut ctl[0].child, Duration::from_secs(30));
    let fenced_s = cut.elapsed().as_secs_f64();
    let log0 = ctl[0].log();
    assert_eq!(status.code(), Some(3), "controller 0 fenced itself (exit 3): {log0}");
    assert!(log0.contains("fencing itself") && log0.contains("do not hear each other"), "{log0}");
    eprintln!("controller 0 fenced itself {fenced_s:.1} s after its link went down");
    // The link comes back: controller 0's host learns that its connection is gone (the
    // process that held it is) and qemu-io ends.
    net.set_link(0, true);
    let _ = wait_timeout(&mut writer, Duration::from_secs(60));
    let acked = 1500 + rx.iter().count() as u64;
    assert!(acked < WRITES, "the cut came after the last write");
    // The others took over and serve everything acknowledged.
    wait_live(&net, &ctl, &[1], 0b110, Duration::from_secs(30));
    let back_s = cut.elapsed().as_secs_f64();
    eprintln!("the others serve without it {back_s:.1} s after the cut");
    let want = expected(0, acked - 1);
    for i in [1, 2] {
        verify(&uri(i), &want);
        qemu_io(&uri(i), &["read -P 0xa1 8M 1M"]);
    }
    qemu_io(&uri(2), &["write -P 0xb2 9M 64k"]);
    qemu_io(&uri(1), &["read -P 0xb2 9M 64k"]);
    let took: u64 = [1, 2]
        .iter()
        .map(|&i| admin_get(&admin(i), "/status")["coherency"]["counters"]["lines_taken_over"].as_u64().unwrap())
        .sum();
    eprintln!("{took} dirty lines taken over");
    // Controller 0 starts again with its link back: it joins the running membership with a
    // cold cache and serves, coherent with the others.
    rejoin(&net, &dir, &mut ctl, 0);
    assert!(ctl[0].log().contains("joined the running controllers"), "{}", ctl[0].log());
    verify(&uri(0), &want);
    qemu_io(&uri(0), &["read -P 0xb2 9M 64k", "write -P 0xc3 9M 64k", "write -P 0xc4 12M 256k"]);
    qemu_io(&uri(1), &["read -P 0xc3 9M 64k", "read -P 0xc4 12M 256k", "write -P 0xc5 12M 4k"]);
    qemu_io(&uri(2), &["read -P 0xc5 12M 4k", "read -P 0xc4 12292k 252k"]);
    qemu_io(&uri(0), &["read -P 0xc5 12M 4k"]);
    // Everyone stops clean; the group scrubs clean and holds everything.
    stop_clean(&mut ctl, &[0, 1, 2]);
    scrub_clean(&dir);
    let c = start(&dir, &["--controllers", "1"]);
    verify(&c.nbd_uri, &want);
    qemu_io(&c.nbd_uri, &["read -P 0xa1 8M 1M", "read -P 0xc3 9M 64k", "read -P 0xc5 12M 4k"]);
    assert!(c.stop().success());
}

/// Three controllers in their namespaces with service addresses that move. qemu-io writes
/// through controller 0's address with NBD reconnection (`reconnect-delay`); controller 0's
/// host dies (its link down, its process killed). Controller 1, which holds its replicas,
/// takes over its lines and its address (added to its interface, announced by gratuitous
/// ARP); qemu-io reconnects to the same address and goes on: no write fails, every one is
/// there, through every controller and the moved address.
#[test]
fn a_host_writing_through_a_dead_controller_goes_on_through_its_moved_address() {
    let net = Net::new(3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let mut ctl = start_cluster(&net, &dir, true);
    let uri = |i: usize| format!("nbd://{}:10809/amf", net.addr(i));
    // The host: qemu-io in the hosts' namespace, reconnecting, with TCP keepalive (a request
    // in flight when controller 0 died waits on a connection nothing will close: the first
    // probe to the moved address gets a reset, and qemu reconnects).
    let opts = format!(
        "driver=nbd,server.type=inet,server.host={},server.port=10809,export=amf,reconnect-delay=60,\
         server.keep-alive=on",
        net.addr(0)
    );
    let host_ns = net.host_ns();
    let mut args: Vec<String> =
        ["netns", "exec", &host_ns, "qemu-io", "--image-opts"].iter().map(|s| s.to_string()).collect();
    for i in 0..WRITES {
        args.push("-c".into());
        args.push(format!("write -P {} {} {WRITE_BYTES}", pattern(i), (i % PLACES) * WRITE_BYTES));
    }
    args.push(opts);
    let mut writer = Command::new("ip").args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = writer.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let mut wrote = 0u64;
    while wrote < 1500 {
        let (_, l) = rx.recv_timeout(Duration::from_secs(60)).expect("qemu-io writes through controller 0");
        wrote += l.starts_with("wrote 8192/8192") as u64;
    }
    // Controller 0's host dies: off the network, then gone.
    net.set_link(0, false);
    let died = Instant::now();
    let _ = ctl[0].child.kill();
    let _ = ctl[0].child.wait();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = writer.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = writer.kill();
            let neigh = Command::new("ip").args(["neigh"]).output().map(|o| o.stdout).unwrap_or_default();
            panic!(
                "qemu-io did not finish 120 s after controller 0 died\nneighbours: {}\n-- 1:\n{}\n-- 2:\n{}",
                String::from_utf8_lossy(&neigh),
                ctl[1].log(),
                ctl[2].log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    let _ = writer.stderr.take().unwrap().read_to_string(&mut err);
    let mut failed = Vec::new();
    let mut gap = Duration::ZERO;
    let mut last = died;
    for (t, l) in rx.iter() {
        if l.starts_with("wrote 8192/8192") {
            wrote += 1;
            if t > died {
                gap = gap.max(t - last);
                last = t;
            }
        } else if l.contains("failed") || l.contains("error") {
            failed.push(l);
        }
    }
    assert!(failed.is_empty() && status.success(), "qemu-io saw errors: {failed:?} {err}\n{}", ctl[1].log());
    assert_eq!(wrote, WRITES, "every write answered");
    eprintln!("the host's writes paused {} ms at most after controller 0 died", gap.as_millis());
    let log1 = ctl[1].log();
    assert!(log1.contains("took over controller 0's service address"), "{log1}");
    let want = expected(0, WRITES - 1);
    for u in [uri(0), uri(1), uri(2)] {
        verify(&u, &want);
    }
    stop_clean(&mut ctl, &[1, 2]);
    scrub_clean(&dir);
}

/// Controller 1 is killed (kill -9) while qemu-io writes through controller 0 and is started
/// again at once, before the others may even have seen it die (it takes its life lock again
/// within their watch interval): it waits until they took over from its last run, then joins
/// while the writes go on. No write fails or is lost, and all three serve every write.
#[test]
fn a_controller_killed_and_started_again_at_once_rejoins_under_load() {
    let net = Net::new(3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let mut ctl = start_cluster(&net, &dir, false);
    let uri = |i: usize| format!("nbd://{}:10809/amf", net.addr(i));
    let admin = |i: usize| format!("http://{}:8080", net.addr(i));
    let (mut writer, rx) = stream_through_0(&net);
    let _ = ctl[1].child.kill();
    let _ = ctl[1].child.wait();
    rejoin(&net, &dir, &mut ctl, 1);
    // The others took over from its last run before it joined.
    for i in [0, 2] {
        let log = ctl[i].log();
        let dead = log.find("controllers [1] are dead").unwrap_or_else(|| panic!("{log}"));
        let joined = log.find("controller 1 joined").unwrap_or_else(|| panic!("{log}"));
        assert!(dead < joined, "{log}");
        let t = &admin_get(&admin(i), "/status")["coherency"]["takeover"];
        assert_eq!(t["joins"], 1, "{t}");
        assert_eq!(t["gone"], 0, "{t}");
    }
    let status = wait_timeout(&mut writer, Duration::from_secs(300));
    assert!(status.success(), "qemu-io failed\n0:\n{}\n1:\n{}", ctl[0].log(), ctl[1].log());
    let acked = 1500 + rx.iter().count() as u64;
    assert_eq!(acked, WRITES, "every write answered");
    let want = expected(0, WRITES - 1);
    for i in [1, 2, 0] {
        verify(&uri(i), &want);
    }
    qemu_io(&uri(1), &["read -P 0xa1 8M 1M", "write -P 0xb2 9M 64k"]);
    qemu_io(&uri(0), &["read -P 0xb2 9M 64k"]);
    qemu_io(&uri(2), &["read -P 0xb2 9M 64k"]);
    // Controller 2 stops alone (SIGTERM): it writes back, leaves the membership, and the
    // others serve on without waiting for it; started again, it joins.
    stop_clean(&mut ctl, &[2]);
    wait_live(&net, &ctl, &[0, 1], 0b011, Duration::from_secs(30));
    qemu_io(&uri(0), &["write -P 0xc3 9M 64k"]);
    qemu_io(&uri(1), &["read -P 0xc3 9M 64k"]);
    rejoin(&net, &dir, &mut ctl, 2);
    qemu_io_logged(&uri(2), &["read -P 0xc3 9M 64k"], &ctl);
    stop_clean(&mut ctl, &[0, 1, 2]);
    scrub_clean(&dir);
}
