//! Helpers for end-to-end tests: real `amf` processes on temp directories, real NBD clients.
#![allow(dead_code)]

pub mod nbd_client;
pub mod netns;
pub mod stream;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The amf binary under test.
pub fn amf_bin() -> &'static str {
    env!("CARGO_BIN_EXE_amf")
}

/// A running `amf cluster`.
pub struct Cluster {
    pub child: Child,
    pub dir: PathBuf,
    pub nbd_uri: String,
    pub admin: String,
    pub controller_pid: i32,
    pub stderr: PathBuf,
    pub ready_line: String,
    /// Every controller's (NBD URI, admin URL), by index.
    pub controllers: Vec<(String, String)>,
    /// Every controller's pid, by index.
    pub pids: Vec<i32>,
}

/// Starts `amf cluster --dir DIR ARGS...` on ports the kernel picks (port 0; the ready line says
/// which: a port probed free beforehand can be taken by another test before the cluster binds it)
/// and waits for the ready line.
pub fn start(dir: &Path, args: &[&str]) -> Cluster {
    try_start(dir, args).unwrap_or_else(|e| panic!("cluster did not start: {e}"))
}

/// Like [`start`], returning the error output when the cluster does not come up.
pub fn try_start(dir: &Path, args: &[&str]) -> Result<Cluster, String> {
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stderr = dir.with_extension(format!("stderr-{n}.log"));
    let mut child = Command::new(amf_bin())
        .args(["cluster", "--dir"])
        .arg(dir)
        .args(["--nbd-port", "0", "--admin-port", "0"])
        .args(args)
        // Its own process group, as a shell job has: `interrupt` signals the whole group.
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let count = args
        .iter()
        .position(|a| *a == "--controllers")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1);
    let mut lines = Vec::new();
    for _ in 0..count {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::fs::read_to_string(&stderr).unwrap_or_default());
            }
        }
    }
    let mut controllers = Vec::new();
    let mut pids = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(w.len(), 8, "ready line: {l}");
        assert_eq!((w[0], w[1]), ("controller", i.to_string().as_str()), "ready lines in order: {lines:?}");
        controllers.push((w[5].to_string(), w[7].to_string()));
        pids.push(w[3].parse().unwrap());
    }
    let line = lines[0].clone();
    // controller 0 pid PID nbd nbd://127.0.0.1:PORT/amf admin http://127.0.0.1:APORT
    let w: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(w.len(), 8, "ready line: {line}");
    assert_eq!((w[0], w[1], w[2], w[4], w[6]), ("controller", "0", "pid", "nbd", "admin"), "ready line: {line}");
    let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p != 0);
    let nbd = w[5]
        .strip_prefix("nbd://127.0.0.1:")
        .or_else(|| w[5].strip_prefix("nbds://127.0.0.1:"))
        .and_then(|r| r.strip_suffix("/amf"));
    assert!(nbd.and_then(port).is_some(), "ready line: {line}");
    let admin = w[7].strip_prefix("http://127.0.0.1:").or_else(|| w[7].strip_prefix("https://127.0.0.1:"));
    assert!(admin.and_then(port).is_some(), "ready line: {line}");
    Ok(Cluster {
        child,
        dir: dir.to_path_buf(),
        nbd_uri: w[5].to_string(),
        admin: w[7].to_string(),
        controller_pid: w[3].parse().unwrap(),
        stderr,
        ready_line: line,
        controllers,
        pids,
    })
}

impl Cluster {
    /// SIGTERM and wait; returns the supervisor's exit status.
    pub fn stop(mut self) -> ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_timeout(&mut self.child, Duration::from_secs(60));
        if !status.success() {
            // The reason is in the log: print it beside the failing assertion.
            eprintln!("the cluster exited with {status}; its log:\n{}", self.log());
        }
        status
    }

    /// Ctrl-C at a terminal: SIGINT to the supervisor's whole process group; returns its status.
    pub fn interrupt(mut self) -> ExitStatus {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGINT) };
        wait_timeout(&mut self.child, Duration::from_secs(60))
    }

    /// kill -9 the controller process, then the supervisor (a crash of the whole node).
    pub fn crash(mut self) {
        unsafe { libc::kill(self.controller_pid, libc::SIGKILL) };
        let _ = wait_timeout(&mut self.child, Duration::from_secs(30));
    }

    /// What the cluster wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Host and port of the NBD export.
    pub fn nbd_addr(&self) -> String {
        self.nbd_uri.trim_start_matches("nbd://").trim_start_matches("nbds://").trim_end_matches("/amf").to_string()
    }

    /// GET an admin path of controller 0, parsed as JSON.
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        admin_get(&self.admin, path)
    }

    /// GET an admin path of controller `i`, parsed as JSON.
    pub fn admin_of(&self, i: usize, path: &str) -> serde_json::Value {
        admin_get(&self.controllers[i].1, path)
    }

    /// NBD URI of controller `i`.
    pub fn uri(&self, i: usize) -> &str {
        &self.controllers[i].0
    }
}

/// POST to a controller's admin endpoint with a bearer token: (HTTP status, body).
pub fn post(admin: &str, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin.trim_start_matches("http://")).unwrap();
    write!(s, "POST {path} HTTP/1.0\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let code = r.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, r.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default())
}

/// GET `path` from an admin endpoint, parsed as JSON.
pub fn admin_get(admin: &str, path: &str) -> serde_json::Value {
    {
        let out = Command::new("curl").args(["-sf", &format!("{admin}{path}")]).output();
        match out {
            Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap(),
            _ => {
                // curl may be missing: use a raw HTTP request.
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(admin.trim_start_matches("http://")).unwrap();
                write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
                let mut r = String::new();
                s.read_to_string(&mut r).unwrap();
                serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap()
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = wait_timeout(&mut self.child, Duration::from_secs(30));
        }
    }
}

pub fn wait_timeout(child: &mut Child, t: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > t {
            let _ = child.kill();
            panic!("process {} did not exit within {t:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command, panicking with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs qemu-io commands against an NBD URI; fails on any error or pattern mismatch.
pub fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri);
    let out = run_ok(&mut c);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("Pattern verification failed") && !text.contains("failed:"), "qemu-io {cmds:?}: {text}");
    text
}

/// `amf ARGS` succeeding.
pub fn amf(args: &[&str]) -> Output {
    run_ok(Command::new(amf_bin()).args(args))
}

/// `amf scrub DIR --json` finds no parity mismatch.
pub fn scrub_clean(dir: &Path) {
    let out = amf(&["scrub", dir.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mismatches"], 0, "scrub: {v}");
}

/// `amf inspect DIR --json`.
pub fn inspect(dir: &Path) -> serde_json::Value {
    let out = amf(&["inspect", dir.to_str().unwrap(), "--json"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Member file path.
pub fn member(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("member-{i:02}.img"))
}
