//! One controller process: assembles the group (resyncing after a crash), serves it over NBD,
//! answers the admin endpoint, runs maintenance tasks, and on SIGINT/SIGTERM flushes everything,
//! marks the group clean and exits 0.

use super::admin::{self, Task};
use super::dirlock::{controller_file, DirLock};
use super::ClusterError;
use crate::nbd::{Server, ServerConfig};
use crate::raid::assemble::{assemble_with, check_write_hole, resync};
use crate::raid::Array;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often written regions are synced and their write-intent bits cleared.
pub const BITMAP_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Settings of one controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Group directory.
    pub dir: PathBuf,
    /// Controller index.
    pub index: usize,
    /// NBD listen address.
    pub nbd: SocketAddr,
    /// Admin HTTP listen address.
    pub admin: SocketAddr,
    /// Start even if the group crashed while degraded (see `check_write_hole`).
    pub force: bool,
    /// TLS for the hosts.
    pub tls: Option<crate::tls::TlsConfig>,
    /// HTTPS for the admin endpoint.
    pub admin_tls: Option<crate::tls::AdminTlsConfig>,
}

/// What the admin endpoint and maintenance tasks share with the controller.
pub struct ControllerState {
    /// Controller index.
    pub index: usize,
    /// Group directory.
    pub dir: PathBuf,
    /// This controller's assembly of the group.
    pub array: Option<Arc<Array>>,
    /// The AMF core (its event loop), where this controller is one of several.
    pub core: Option<Arc<crate::amf::shell::Shell>>,
    /// NBD server counters.
    pub nbd: Arc<crate::nbd::ServerStats>,
    /// The current or last maintenance task.
    pub task: Mutex<Option<Task>>,
    /// Stripes resynced at start after an unclean shutdown.
    pub resynced_stripes: u64,
    /// NBD URI.
    pub nbd_uri: String,
    /// The bearer token mutating admin requests need (none: they are refused).
    pub admin_token: Option<String>,
    /// This controller's lease on the members, where it is one of several.
    pub lease: Option<Arc<super::lease::LeaseState>>,
}

/// Prints a line on stdout and flushes it; a reader that went away is not an error here (the
/// controller keeps serving; `println!` would panic).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// How often a controller checks that its members are still there.
pub const MEMBER_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The ready line printed once the controller serves (the `amf cluster` contract); the NBD
/// URI's scheme is `nbds` where hosts must use TLS.
pub fn ready_line(index: usize, pid: u32, nbd: &str, admin: &str) -> String {
    format!("controller {index} pid {pid} nbd {nbd} admin {admin}")
}

/// The NBD URI hosts use: `nbds://` (TLS, as libnbd spells it) where TLS is required.
pub fn nbd_uri(addr: SocketAddr, tls: Option<&crate::tls::ServerTls>) -> String {
    let scheme = match tls {
        Some(t) if t.mode == crate::tls::TlsMode::Required => "nbds",
        _ => "nbd",
    };
    format!("{scheme}://{addr}/amf")
}

/// Runs until SIGINT or SIGTERM.
pub fn run(opts: ControllerOptions) -> Result<(), ClusterError> {
    let signals = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signals.clone()).map_err(ClusterError::Signals)?;
    }
    let _lock = DirLock::acquire(&opts.dir)?;
    // Bind before touching the group so a busy port leaves it as it was.
    let bind = |addr: SocketAddr| {
        TcpListener::bind(addr).map_err(|source| ClusterError::Bind { addr: addr.to_string(), source })
    };
    let nbd_listener = bind(opts.nbd)?;
    let admin_listener = bind(opts.admin)?;
    let tls = opts.tls.as_ref().map(|t| t.load()).transpose()?;
    let admin_tls = opts.admin_tls.as_ref().map(|t| t.load()).transpose()?;
    let asm = assemble_with(&opts.dir, opts.force)?;
    if let Err(e) = check_write_hole(&asm, opts.force) {
        // Leave the group as found: not serving, still dirty, bitmap intact.
        return Err(e.into());
    }
    let tag = format!("amf: controller {}", opts.index);
    for note in asm.notes() {
        eprintln!("{tag}: {note}");
    }
    let degraded = asm.array.degraded_members();
    if !degraded.is_empty() {
        eprintln!("{tag}: running degraded, members {degraded:?} not in sync");
    }
    let mut resynced = 0;
    if asm.was_dirty {
        eprintln!("{tag}: unclean shutdown; resyncing {} write-intent regions", asm.dirty_regions.len());
        let (done, skipped) = resync(&asm.array, &asm.dirty_regions, &|d, t| {
            eprintln!("{tag}: resync {d}/{t} stripes");
        })?;
        resynced = done;
        eprintln!(
            "{tag}: resynced {done} of {} stripes ({skipped} skipped: members missing)",
            asm.array.geometry().stripes()
        );
    }
    let array = Arc::new(asm.array);
    let nbd_addr =
        nbd_listener.local_addr().map_err(|source| ClusterError::Bind { addr: opts.nbd.to_string(), source })?;
    let nbd_cfg = ServerConfig { tls: tls.clone(), ..ServerConfig::default() };
    let mut server = Server::spawn(nbd_listener, array.clone(), nbd_cfg)
        .map_err(|source| ClusterError::Bind { addr: opts.nbd.to_string(), source })?;
    let state = Arc::new(ControllerState {
        lease: None,
        index: opts.index,
        dir: opts.dir.clone(),
        array: Some(array.clone()),
        core: None,
        nbd: server.stats.clone(),
        task: Mutex::new(None),
        resynced_stripes: resynced,
        nbd_uri: nbd_uri(nbd_addr, tls.as_ref()),
        admin_token: admin::load_admin_token(&opts.dir),
    });
    let admin = admin::spawn(admin_listener, state.clone(), admin_tls)?;
    let pid = std::process::id();
    let line = ready_line(opts.index, pid, &state.nbd_uri, &admin.url());
    let status_file = controller_file(&opts.dir, opts.index);
    std::fs::write(
        &status_file,
        format!("{{\"pid\":{pid},\"nbd\":\"{}\",\"admin\":\"{}\"}}\n", state.nbd_uri, admin.url()),
    )
    .map_err(|source| ClusterError::File { path: status_file.clone(), source })?;
    say(&line);

    let mut last_written = 0;
    let mut since_flush = Duration::ZERO;
    let mut last_check = std::time::Instant::now();
    let tick = Duration::from_millis(50);
    while !signals.load(Relaxed) {
        std::thread::sleep(tick);
        since_flush += tick;
        if last_check.elapsed() >= MEMBER_CHECK_INTERVAL {
            last_check = std::time::Instant::now();
            array.check_members();
        }
        if since_flush >= BITMAP_FLUSH_INTERVAL {
            since_flush = Duration::ZERO;
            let written = state.nbd.written_bytes.load(Relaxed) + state.nbd.requests.load(Relaxed);
            if written != last_written {
                last_written = written;
                if let Err(e) = array.flush() {
                    eprintln!("{tag}: periodic flush failed: {e}");
                }
            }
        }
    }
    eprintln!("{tag}: stopping: finishing requests, flushing, marking the group clean");
    server.shutdown();
    admin.stop();
    admin::wait_for_task(&state);
    array.close()?;
    let _ = std::fs::remove_file(&status_file);
    Ok(())
}
