//! Starts `amf cluster` as a child process and reads its ready lines: what `amf demo` and
//! `amf bench cluster` drive their clients against.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `amf cluster`.
pub struct Launched {
    child: Child,
    /// NBD host:port of each controller.
    pub nbd: Vec<String>,
    /// Admin URL of each controller.
    pub admin: Vec<String>,
}

impl Launched {
    /// Runs `amf cluster --dir DIR --controllers N ARGS` on kernel-chosen ports and waits for
    /// every ready line.
    pub fn start(dir: &Path, controllers: usize, args: &[&str]) -> Result<Launched, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args(["cluster", "--controllers", &controllers.to_string(), "--nbd-port", "0", "--admin-port", "0"])
            .args(args)
            .arg("--dir")
            .arg(dir)
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start amf cluster: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout from amf cluster")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut me = Launched { child, nbd: Vec::new(), admin: Vec::new() };
        while me.nbd.len() < controllers {
            let line =
                rx.recv_timeout(Duration::from_secs(120)).map_err(|_| "the cluster did not start".to_string())?;
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() == 8 && w[0] == "controller" {
                me.nbd.push(
                    w[5].trim_start_matches("nbd://")
                        .trim_start_matches("nbds://")
                        .trim_end_matches("/amf")
                        .to_string(),
                );
                me.admin.push(w[7].to_string());
            }
        }
        Ok(me)
    }

    /// Its controllers' /status documents.
    pub fn status(&self) -> Result<Vec<serde_json::Value>, String> {
        self.admin
            .iter()
            .map(|a| {
                let (code, body) = super::admin::request(a, "GET", "/status", None).map_err(|e| e.to_string())?;
                if code != 200 {
                    return Err(format!("{a}/status: HTTP {code}"));
                }
                serde_json::from_str(&body).map_err(|e| e.to_string())
            })
            .collect()
    }

    /// CPU time (user and system) used so far by the cluster's processes: the supervisor and
    /// every process below it (the controllers), from /proc.
    pub fn cpu_seconds(&self) -> f64 {
        // SAFETY: sysconf reads a constant of the system; no memory is involved.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
        // pid -> (parent, CPU ticks)
        let mut procs = std::collections::HashMap::new();
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
            // After the command name (which may hold spaces): state, ppid, ... utime (12th), stime.
            let Some((_, rest)) = stat.rsplit_once(')') else { continue };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            procs.insert(pid, (num(1) as u32, num(11) + num(12)));
        }
        let root = self.child.id();
        let below = |mut pid: u32| {
            // Bounded: a parent chain is never longer than the process table.
            for _ in 0..procs.len() {
                if pid == root {
                    return true;
                }
                match procs.get(&pid) {
                    Some((parent, _)) if *parent != 0 => pid = *parent,
                    _ => return false,
                }
            }
            false
        };
        let total: u64 = procs.iter().filter(|(pid, _)| below(**pid)).map(|(_, (_, t))| t).sum();
        total as f64 / ticks
    }

    /// SIGTERM and wait; true when it stopped cleanly.
    pub fn stop(&mut self) -> bool {
        // SAFETY: kill(2) on our own child; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        self.child.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}
