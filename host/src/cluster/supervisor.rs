//! `amf cluster`: creates or assembles the group, starts one `amf controller` process per
//! controller, prints each one's ready line, and on SIGINT/SIGTERM stops them all cleanly.

use super::ClusterError;
use crate::raid::assemble::{create, has_members, CreateOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Settings of `amf cluster`.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Group directory.
    pub dir: PathBuf,
    /// Controllers to start.
    pub controllers: usize,
    /// Shape for a new group (used only when the directory holds no members).
    pub create: Option<CreateOptions>,
    /// NBD port of controller 0; controller I listens on port + I.
    pub nbd_port: u16,
    /// Admin port of controller 0; controller I listens on port + I.
    pub admin_port: u16,
    /// Listen host.
    pub host: String,
    /// Passed to the controllers: start a group that crashed while degraded.
    pub force: bool,
}

struct Running {
    index: usize,
    child: Child,
    /// Reaped already: its pid may belong to someone else now.
    exited: bool,
}

fn terminate(procs: &mut [Running]) {
    for p in procs.iter().filter(|p| !p.exited) {
        // SAFETY: kill(2) on a pid we spawned; no memory is involved.
        unsafe {
            libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// Runs the cluster until a signal; Ok when every controller stopped cleanly.
pub fn run(opts: ClusterOptions) -> Result<(), ClusterError> {
    if opts.controllers != 1 {
        return Err(ClusterError::Unsupported(format!(
            "--controllers {}: controllers sharing a group need the coherency card, which this build \
             does not have yet; use --controllers 1",
            opts.controllers
        )));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(ClusterError::Signals)?;
    }
    if !has_members(&opts.dir) {
        let shape = opts.create.clone().ok_or_else(|| ClusterError::MissingShape(opts.dir.clone()))?;
        create(&opts.dir, &shape)?;
        eprintln!(
            "amf: created {} group of {} members ({} bytes each) in {}",
            shape.level,
            shape.members,
            shape.member_bytes,
            opts.dir.display()
        );
    }
    let exe = std::env::current_exe().map_err(|source| ClusterError::Spawn { index: 0, source })?;
    let mut procs: Vec<Running> = Vec::new();
    for index in 0..opts.controllers {
        let spawned = Command::new(&exe)
            .arg("controller")
            .arg("--dir")
            .arg(&opts.dir)
            .arg("--index")
            .arg(index.to_string())
            .arg("--nbd")
            .arg(format!("{}:{}", opts.host, opts.nbd_port as usize + index))
            .arg("--admin")
            .arg(format!("{}:{}", opts.host, opts.admin_port as usize + index))
            .args(opts.force.then_some("--force"))
            // Out of the terminal's process group: Ctrl-C reaches the supervisor alone, which
            // stops the controllers itself (otherwise a controller that stops first looks like
            // one that died).
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(source) => {
                terminate(&mut procs);
                return Err(ClusterError::Spawn { index, source });
            }
        };
        let Some(out) = child.stdout.take() else {
            terminate(&mut procs);
            return Err(ClusterError::Spawn { index, source: std::io::Error::other("no stdout") });
        };
        let mut lines = BufReader::new(out).lines();
        let ready = lines.by_ref().map_while(Result::ok).find(|l| l.starts_with("controller "));
        match ready {
            Some(line) => {
                println!("{line}");
                let _ = std::io::stdout().flush();
                // Keep forwarding whatever the controller prints later.
                std::thread::spawn(move || {
                    for l in lines.map_while(Result::ok) {
                        println!("{l}");
                    }
                });
                procs.push(Running { index, child, exited: false });
            }
            None => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                terminate(&mut procs);
                return Err(ClusterError::ControllerDied { index, status });
            }
        }
    }
    let mut died = None;
    while !stop.load(Relaxed) && died.is_none() {
        std::thread::sleep(Duration::from_millis(100));
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.exited = true;
                died = Some(ClusterError::ControllerDied { index: p.index, status: status.to_string() });
            }
        }
    }
    terminate(&mut procs);
    let mut clean = true;
    for p in procs.iter_mut().filter(|p| !p.exited) {
        match p.child.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("amf: controller {} stopped with {s}", p.index);
                clean = false;
            }
            Err(e) => {
                eprintln!("amf: controller {}: {e}", p.index);
                clean = false;
            }
        }
    }
    match died {
        Some(e) => Err(e),
        None if clean => Ok(()),
        None => Err(ClusterError::ControllerDied { index: 0, status: "unclean stop".into() }),
    }
}
