//! `amf serve --config FILE`: one controller of a coherent cluster. It starts its card (the
//! Verilator RTL or the reference model) with the link on UDP, finds its peers, and — as the
//! primary (node 0) — assembles the group; the others reach the members through it. Then it
//! serves NBD with the coherent cache behind it, answers the fabric and the admin endpoint, and
//! writes dirty lines back in the background. SIGINT/SIGTERM: stop taking requests, write every
//! dirty line back, (primary) mark the group clean, exit 0.

use super::admin::{self};
use super::config::{rendezvous, Config};
use super::controller::{ready_line, say, ControllerState};
use super::dirlock::{controller_file, DirLock};
use super::ClusterError;
use crate::coherency::card::{AnyCard, CardPort};
use crate::coherency::disk::{Disk, Members};
use crate::coherency::{Amf, AmfConfig};
use crate::fabric::wire::{Kind, Request, Status};
use crate::fabric::{FabricServer, Peer};
use crate::nbd::{Server, ServerConfig};
use crate::raid::assemble::{assemble_with, check_write_hole, resync};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a controller waits for its peers to appear (rendezvous, the primary's fabric).
pub const PEER_WAIT: Duration = Duration::from_secs(120);
/// Longest a card command may take before the driver gives up on it.
const CARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Background write-back period.
const DESTAGE_PERIOD: Duration = Duration::from_millis(20);
/// Lines written back per background round.
const DESTAGE_BATCH: usize = 256;

fn bind(addr: SocketAddr) -> Result<TcpListener, ClusterError> {
    TcpListener::bind(addr).map_err(|source| ClusterError::Bind { addr: addr.to_string(), source })
}

/// Asks the primary for the group's size, waiting for it to come up.
/// A stop signal ends the wait.
fn primary_capacity(
    primary: &Peer,
    node: u8,
    epoch: u32,
    line_bytes: u64,
    stop: &AtomicBool,
) -> Result<u64, ClusterError> {
    let start = Instant::now();
    loop {
        if stop.load(Relaxed) {
            return Err(ClusterError::Config("stopped while waiting for the primary".into()));
        }
        let q = Request { c: line_bytes, ..Request::new(Kind::Info, node, epoch) };
        match primary.call(&q, &[]) {
            Ok((r, _)) if r.status == Status::Ok => return Ok(r.a),
            Ok((r, _)) => {
                return Err(ClusterError::Config(format!(
                    "the primary (node 0 at {}) refused this controller: {:?} (same epoch and line_kib?)",
                    primary.addr(),
                    r.status
                )))
            }
            Err(e) if start.elapsed() > PEER_WAIT => {
                return Err(ClusterError::Config(format!(
                    "the primary (node 0 at {}) did not answer: {e}",
                    primary.addr()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Runs one controller until SIGINT or SIGTERM.
pub fn run(cfg: Config) -> Result<(), ClusterError> {
    let signals = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signals.clone()).map_err(ClusterError::Signals)?;
    }
    let tag = format!("amf: controller {}", cfg.node);
    let primary = cfg.node == 0;
    let _lock = if primary { Some(DirLock::acquire(&cfg.group)?) } else { None };
    let nbd_listener = bind(cfg.nbd)?;
    let admin_listener = bind(cfg.admin)?;
    let fabric_listener = bind(cfg.fabric)?;
    let fabric_addr =
        fabric_listener.local_addr().map_err(|source| ClusterError::Bind { addr: cfg.fabric.to_string(), source })?;
    let card = AnyCard::start(cfg.card.backend, cfg.card.link)
        .map_err(|source| ClusterError::Bind { addr: cfg.card.link.to_string(), source })?;
    let link_addr =
        card.link_addr().map_err(|source| ClusterError::Bind { addr: cfg.card.link.to_string(), source })?;
    let peers = match &cfg.rendezvous {
        Some(dir) => rendezvous(dir, cfg.node, cfg.nodes, fabric_addr, link_addr, PEER_WAIT, &signals)?,
        None => cfg.peers.clone(),
    };
    for p in &peers {
        card.set_peer(p.node, p.link);
    }
    let fabric_peers: Vec<Arc<Peer>> = peers.iter().map(|p| Arc::new(Peer::new(p.node, p.fabric))).collect();
    let line_bytes = cfg.line_kib as usize * 1024;

    // The members: assembled here on the primary, reached through it elsewhere.
    let mut array = None;
    let (disk, capacity) = if primary {
        let asm = assemble_with(&cfg.group, cfg.force)?;
        check_write_hole(&asm, cfg.force)?;
        for note in asm.notes() {
            eprintln!("{tag}: {note}");
        }
        if asm.was_dirty {
            eprintln!("{tag}: unclean shutdown; resyncing {} write-intent regions", asm.dirty_regions.len());
            let (done, _) = resync(&asm.array, &asm.dirty_regions, &|d, t| eprintln!("{tag}: resync {d}/{t} stripes"))?;
            eprintln!("{tag}: resynced {done} stripes");
        }
        let a = Arc::new(asm.array);
        a.mark_dirty()?;
        let capacity = a.capacity();
        array = Some(a.clone());
        (Disk::Local(Arc::new(Members::new(a, line_bytes as u64))), capacity)
    } else {
        let p0 = fabric_peers
            .iter()
            .find(|p| p.node == 0)
            .cloned()
            .ok_or_else(|| ClusterError::Config("no address for node 0, the primary".into()))?;
        let capacity = primary_capacity(&p0, cfg.node, cfg.epoch, line_bytes as u64, &signals)?;
        (Disk::Remote { primary: p0, node: cfg.node, epoch: cfg.epoch, line_bytes: line_bytes as u64 }, capacity)
    };

    let mask = if cfg.nodes >= 8 { 0xff } else { (1u8 << cfg.nodes) - 1 };
    let port = CardPort::open(card, cfg.node, mask, cfg.epoch, CARD_TIMEOUT)?;
    let amf = Arc::new(Amf::new(
        AmfConfig {
            node: cfg.node,
            nodes: cfg.nodes,
            epoch: cfg.epoch,
            line_bytes,
            cache_bytes: (cfg.cache_mib as usize) << 20,
            capacity,
        },
        port,
        fabric_peers,
        disk,
    ));
    let fabric = FabricServer::spawn(fabric_listener, amf.clone())
        .map_err(|source| ClusterError::Bind { addr: fabric_addr.to_string(), source })?;

    let nbd_addr =
        nbd_listener.local_addr().map_err(|source| ClusterError::Bind { addr: cfg.nbd.to_string(), source })?;
    let mut server = Server::spawn(nbd_listener, amf.clone(), ServerConfig::default())
        .map_err(|source| ClusterError::Bind { addr: cfg.nbd.to_string(), source })?;
    let state = Arc::new(ControllerState {
        index: cfg.node as usize,
        dir: cfg.group.clone(),
        array: array.clone(),
        amf: Some(amf.clone()),
        nbd: server.stats.clone(),
        task: Mutex::new(None),
        resynced_stripes: 0,
        nbd_uri: format!("nbd://{nbd_addr}/amf"),
        admin_token: super::admin::load_admin_token(&cfg.group),
    });
    let admin = admin::spawn(admin_listener, state.clone())?;
    let pid = std::process::id();
    let status_file = controller_file(&cfg.group, cfg.node as usize);
    std::fs::write(
        &status_file,
        format!("{{\"pid\":{pid},\"nbd\":\"{}\",\"admin\":\"http://{}\"}}\n", state.nbd_uri, admin.addr),
    )
    .map_err(|source| ClusterError::File { path: status_file.clone(), source })?;
    say(&ready_line(cfg.node as usize, pid, nbd_addr, admin.addr));

    let mut last_error = Instant::now() - Duration::from_secs(60);
    let mut last_check = Instant::now();
    while !signals.load(Relaxed) {
        std::thread::sleep(DESTAGE_PERIOD);
        if let Some(a) = array.as_ref().filter(|_| last_check.elapsed() >= super::controller::MEMBER_CHECK_INTERVAL) {
            last_check = Instant::now();
            a.check_members();
        }
        if let Err(e) = amf.apply_events().and_then(|_| amf.destage(DESTAGE_BATCH, false)) {
            if last_error.elapsed() > Duration::from_secs(5) {
                eprintln!("{tag}: background write-back failed (will retry): {e}");
                last_error = Instant::now();
            }
        }
    }
    eprintln!("{tag}: stopping: finishing requests, writing dirty lines back");
    server.shutdown();
    admin.stop();
    let written = amf.destage_all();
    match &written {
        Err(e) => eprintln!("{tag}: write-back at stop failed: {e}"),
        Ok(_) if !primary => {
            if let Err(e) = amf.leave_clean() {
                eprintln!("{tag}: could not tell the primary that this controller left clean: {e}");
            }
        }
        Ok(_) => {}
    }
    fabric.stop();
    if let Some(a) = &array {
        super::admin::wait_for_task(&state);
        // Clean only if no controller may have left acknowledged writes unwritten: the next
        // start of a dirty group resyncs what was being written.
        let unconfirmed = amf.unconfirmed_peers();
        if written.is_ok() && unconfirmed.is_empty() {
            a.close()?;
        } else {
            eprintln!(
                "{tag}: leaving the group marked dirty: {}",
                if written.is_err() {
                    "this controller's write-back failed".to_string()
                } else {
                    format!(
                        "controllers {unconfirmed:?} did not confirm that they wrote back every line they acknowledged"
                    )
                }
            );
            a.sync_members()?;
        }
    }
    let _ = std::fs::remove_file(&status_file);
    written.map(|_| ()).map_err(ClusterError::Coherency)
}
