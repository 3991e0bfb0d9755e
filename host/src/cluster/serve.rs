//! `amf serve --config FILE`: one controller of a coherent cluster. Every controller is alike:
//! it assembles the group itself (its own write-intent slot), starts its card (the Verilator
//! RTL or the reference model) with the link on UDP, finds its peers, and runs the AMF state
//! machine in its shell (amf::shell): NBD requests, card completions and events, fabric messages
//! and member I/O all go through one event loop. It serves once every peer has said hello (the
//! lowest controller resyncs a group that crashed before it says it). SIGINT/SIGTERM: stop
//! taking requests, write every dirty line back, wait (bounded) for the peers to do the same,
//! mark the group clean if every one did, exit 0.

use super::admin::{self};
use super::config::{rendezvous, Config};
use super::controller::{nbd_uri, ready_line, say, ControllerState};
use super::dirlock::{controller_file, DirLock};
use super::lease::rules::Timing;
use super::lease::{find_running, wait_until_out, AnyOf, LeaseConfig, LeaseState, LeaseThread, LeaseWatch, Running};
use super::ClusterError;
use crate::amf::shell::{DeathWatch, Shell, ShellConfig};
use crate::engine::{AnyCard, CardKind};
use crate::nbd::ServerConfig;
use crate::raid::assemble::{assemble_as, check_write_hole, lease_offset, resync};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a controller waits for its peers to appear (rendezvous).
pub const PEER_WAIT: Duration = Duration::from_secs(120);
/// How long a card broadcast waits for answers before it reports the silent peers (the
/// machine then asks again): longer than a holder's write-back under load.
const ACK_TIMEOUT: Duration = Duration::from_millis(500);
/// Member I/O threads per controller.
const MEMBER_WORKERS: usize = 4;
/// How often the lowest survivor looks again for a rebuild a dead controller left.
const RESUME_CHECK_INTERVAL: Duration = Duration::from_secs(1);

fn bind(addr: SocketAddr) -> Result<TcpListener, ClusterError> {
    TcpListener::bind(addr).map_err(|source| ClusterError::Bind { addr: addr.to_string(), source })
}

/// Card cycles for `t` on this card's clock.
fn card_cycles(kind: CardKind, t: Duration) -> u32 {
    match kind {
        CardKind::Model => crate::engine::link::CLOCK_HZ / 1000 * t.as_millis() as u64,
        // The RTL's clock runs near 1 M cycles/s under Verilator here while the card works,
        // and at a pace of about 160 k while it only waits for its peers' answers
        // (verilator/src/device.rs): a silent peer's timeout takes 2-3 s of wall time, inside
        // the lease's 4 s that proves a death. Counted at the waiting pace, a card kept busy
        // by other traffic would time out a slow holder's answer early.
        CardKind::Sim => 1000 * t.as_millis() as u64,
    }
    .clamp(10_000, u32::MAX as u64) as u32
}

/// Runs one controller until SIGINT or SIGTERM.
pub fn run(cfg: Config) -> Result<(), ClusterError> {
    let signals = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signals.clone()).map_err(ClusterError::Signals)?;
    }
    let tag = format!("amf: controller {}", cfg.node);
    let _lock = DirLock::acquire_shared(&cfg.group)?;
    // Held while this process lives: the peers' proof of its death when it is gone.
    let _life = super::membership::LifeLock::take(&cfg.group, cfg.node)?;
    // Certificates first: a bad file is a configuration error before anything is touched.
    let tls = cfg.tls.as_ref().map(|t| t.load()).transpose()?;
    let fabric_tls = cfg.fabric_tls.as_ref().map(|t| t.load(cfg.node).map(Arc::new)).transpose()?;
    let link_key = cfg.card.load_link_key()?;
    let admin_tls = cfg.admin_tls.as_ref().map(|t| t.load()).transpose()?;
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
    let line_bytes = cfg.line_kib as u64 * 1024;

    // Every controller assembles the group, with its own write-intent slot, one at a time (the
    // assembly writes the superblocks).
    let superblocks = DirLock::superblocks(&cfg.group)?;
    let asm = assemble_as(&cfg.group, cfg.force, cfg.node as usize)?;
    check_write_hole(&asm, cfg.force)?;
    for note in asm.notes() {
        eprintln!("{tag}: {note}");
    }
    let mut resynced = 0;
    // Peers that serve already (this controller restarted after a crash or a fence): it joins
    // them, and must not resync what they are writing.
    let lease_at = lease_offset(&asm.array.superblock()).filter(|_| cfg.nodes > 1);
    let joining = lease_at.is_some_and(|at| find_running(&asm.array, at, cfg.node, Timing::DEFAULT) == Running::Yes);
    // Another controller of this start may have marked the group in use already: only regions
    // recorded in some slot need the resync.
    if asm.was_dirty && !asm.dirty_regions.is_empty() && cfg.node == 0 && !joining {
        // The lowest controller resyncs before it says hello; the others serve only after
        // every hello, so nobody writes while parity is being made whole.
        eprintln!("{tag}: unclean shutdown; resyncing {} write-intent regions", asm.dirty_regions.len());
        let (done, _) = resync(&asm.array, &asm.dirty_regions, &|d, t| eprintln!("{tag}: resync {d}/{t} stripes"))?;
        eprintln!("{tag}: resynced {done} stripes");
        resynced = done;
    }
    drop(superblocks);
    let array = Arc::new(asm.array);
    if let (true, Some(at)) = (joining, lease_at) {
        eprintln!("{tag}: the other controllers serve: waiting until they took over from this controller's last run");
        wait_until_out(&array, at, cfg.node, (cfg.epoch, cfg.nodes), Timing::DEFAULT, PEER_WAIT, &signals)
            .map_err(ClusterError::Core)?;
        eprintln!("{tag}: joining the running controllers");
    }
    let capacity = array.capacity() - array.capacity() % line_bytes;
    let machine = crate::amf::Config {
        node: cfg.node,
        nodes: cfg.nodes,
        epoch: cfg.epoch,
        line_bytes,
        lines_max: ((cfg.cache_mib << 20) / line_bytes).max(1) as usize,
        stripe_bytes: array.geometry().stripe_bytes(),
        capacity,
        degraded: !array.degraded_members().is_empty(),
        writeback_age_us: cfg.writeback_age_ms * 1000,
        // The shell reads the card's.
        presence_buckets_log2: 0,
        mutation: None,
    };
    // Peers are proven dead by their life locks (same host: at once) or by their leases on
    // the members (any host: once they expire, or at once when they fenced themselves).
    let lease_state = Arc::new(LeaseState::default());
    if lease_at.is_none() && cfg.nodes > 1 {
        eprintln!(
            "{tag}: WARNING: this group's write-intent bitmaps fill the room of the controllers' leases (it was \
             made before leases): peers are proven dead only by their life locks, which holds on one host only"
        );
    }
    let mut proofs: Vec<Box<dyn DeathWatch>> = vec![Box::new(super::membership::LifeLocks::new(
        &cfg.group,
        &peers.iter().map(|p| p.node).collect::<Vec<_>>(),
    ))];
    if lease_at.is_some() {
        proofs.push(Box::new(LeaseWatch(lease_state.clone())));
    }
    let incarnation = super::lease::new_incarnation();
    let shell = Arc::new(
        Shell::start(ShellConfig {
            machine,
            card,
            ack_timeout_cycles: card_cycles(cfg.card.backend, ACK_TIMEOUT),
            array: array.clone(),
            fabric: fabric_listener,
            peers: peers.iter().map(|p| (p.node, p.fabric)).collect(),
            member_workers: MEMBER_WORKERS,
            deaths: Some(Box::new(AnyOf(proofs))),
            join: joining,
            fabric_tls: fabric_tls.clone(),
            link_key,
            incarnation,
        })
        .map_err(ClusterError::Core)?,
    );
    let lease = match lease_at {
        Some(offset) => Some(
            LeaseThread::start(
                LeaseConfig {
                    node: cfg.node,
                    nodes: cfg.nodes,
                    joining,
                    array: array.clone(),
                    offset,
                    timing: Timing::DEFAULT,
                    incarnation,
                },
                lease_state.clone(),
                shell.net.clone(),
                shell.takeover.clone(),
            )
            .map_err(|e| ClusterError::Core(format!("starting the lease: {e}")))?,
        ),
        None => None,
    };

    let nbd_addr =
        nbd_listener.local_addr().map_err(|source| ClusterError::Bind { addr: cfg.nbd.to_string(), source })?;
    let nbd_cfg = ServerConfig { tls: tls.clone(), ..ServerConfig::default() };
    let mut server = shell
        .serve_nbd(nbd_listener, nbd_cfg.clone())
        .map_err(|source| ClusterError::Bind { addr: cfg.nbd.to_string(), source })?;
    let state = Arc::new(ControllerState {
        index: cfg.node as usize,
        dir: cfg.group.clone(),
        array: Some(array.clone()),
        core: Some(shell.clone()),
        nbd: server.stats.clone(),
        task: Mutex::new(None),
        resynced_stripes: resynced,
        nbd_uri: nbd_uri(nbd_addr, tls.as_ref()),
        admin_token: super::admin::load_admin_token(&cfg.group),
        lease: lease.as_ref().map(|l| l.state.clone()),
    });
    let admin = admin::spawn(admin_listener, state.clone(), admin_tls)?;
    let pid = std::process::id();
    let status_file = controller_file(&cfg.group, cfg.node as usize);
    std::fs::write(
        &status_file,
        format!("{{\"pid\":{pid},\"nbd\":\"{}\",\"admin\":\"{}\"}}\n", state.nbd_uri, admin.url()),
    )
    .map_err(|source| ClusterError::File { path: status_file.clone(), source })?;
    say(&ready_line(cfg.node as usize, pid, &state.nbd_uri, &admin.url()));

    let mut last_check = Instant::now();
    let mut gone_seen = 0u8;
    let mut last_resume_check = Instant::now();
    let mut taken: Vec<super::service::TakenAddress> = Vec::new();
    while !signals.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if last_check.elapsed() >= super::controller::MEMBER_CHECK_INTERVAL {
            last_check = Instant::now();
            array.check_members();
        }
        // A rebuild a dead controller was running is resumed by the lowest survivor: at its
        // death, and again now and then (its record may name the rebuild only at the lease
        // reads after the death was proven: a life lock proves it at once).
        let gone = shell.takeover.gone.load(Relaxed) as u8;
        if gone != gone_seen || (gone != 0 && last_resume_check.elapsed() >= RESUME_CHECK_INTERVAL) {
            last_resume_check = Instant::now();
            let all: u8 = if cfg.nodes >= 8 { 0xff } else { (1u8 << cfg.nodes) - 1 };
            let lowest = (all & !gone).trailing_zeros() == cfg.node as u32;
            if let Some(m) = super::admin::resume_orphaned_rebuild(&state, gone, lowest) {
                eprintln!("{tag}: resuming the rebuild of member {m} that a dead controller was running");
            }
        }
        if gone != gone_seen {
            take_addresses(&cfg, &peers, gone, gone & !gone_seen, &shell, &mut taken, &nbd_cfg);
            // A controller that joined again serves its own address: give it back.
            let back = gone_seen & !gone;
            let (theirs, ours): (Vec<_>, Vec<_>) = std::mem::take(&mut taken)
                .into_iter()
                .partition(|t| peers.iter().any(|p| back & (1 << p.node) != 0 && p.nbd == Some(t.addr)));
            for t in theirs {
                eprintln!("{tag}: giving the service address {} back to the controller that joined", t.addr);
                t.release();
            }
            taken = ours;
            gone_seen = gone;
        }
    }
    eprintln!("{tag}: stopping: finishing requests, writing dirty lines back");
    server.shutdown();
    for t in taken {
        t.release();
    }
    admin.stop();
    super::admin::wait_for_task(&state);
    let report = shell.leave();
    let _ = std::fs::remove_file(&status_file);
    let clean = report.write_back_error.is_none();
    let result = finish(&cfg, &tag, &array, &shell, &report);
    // Renewed until the last superblock write; then it says whether this controller left
    // clean (nothing of it to take over) or not (it expires, and the others take over).
    if let Some(l) = lease {
        l.stop(clean);
    }
    result
}

/// Takes over the service addresses of the controllers that just left (`newly`) whose next
/// live controller in ring order is this one (the one that holds their replicas).
fn take_addresses(
    cfg: &Config,
    peers: &[super::config::PeerConfig],
    gone: u8,
    newly: u8,
    shell: &Arc<Shell>,
    taken: &mut Vec<super::service::TakenAddress>,
    nbd_cfg: &ServerConfig,
) {
    let Some(service) = &cfg.service else { return };
    let tag = format!("amf: controller {}", cfg.node);
    let n = cfg.nodes.max(1);
    for p in peers.iter().filter(|p| newly & (1 << p.node) != 0) {
        let Some(addr) = p.nbd else { continue };
        let heir = (1..n).map(|i| (p.node + i) % n).find(|q| gone & (1 << q) == 0);
        if heir != Some(cfg.node) {
            continue;
        }
        let backend: Arc<dyn crate::nbd::Backend> = shell.port();
        match super::service::TakenAddress::take(&service.dev, service.prefix, addr, backend, nbd_cfg.clone()) {
            Ok(t) => {
                eprintln!("{tag}: took over controller {}'s service address {addr} on {}", p.node, service.dev);
                taken.push(t);
            }
            Err(e) => eprintln!("{tag}: could not take over controller {}'s service address {addr}: {e}", p.node),
        }
    }
}

/// Marks the group clean if every controller wrote everything back, dirty otherwise.
fn finish(
    cfg: &Config,
    tag: &str,
    array: &crate::raid::Array,
    shell: &Shell,
    report: &crate::amf::shell::LeaveReport,
) -> Result<(), ClusterError> {
    let _superblocks = DirLock::superblocks(&cfg.group)?;
    if shell.takeover.unfinished.load(Relaxed) > 0 {
        eprintln!("{tag}: leaving the group marked dirty: the resync of a dead controller's regions did not finish");
        array.sync_members()?;
        return Ok(());
    }
    match (&report.write_back_error, report.peers_unconfirmed.is_empty()) {
        (None, true) => {
            array.close()?;
            Ok(())
        }
        (None, false) => {
            eprintln!(
                "{tag}: leaving the group marked dirty: controllers {:?} did not confirm that they wrote back every \
                 line they acknowledged",
                report.peers_unconfirmed
            );
            array.sync_members()?;
            Ok(())
        }
        (Some(e), _) => {
            eprintln!("{tag}: write-back at stop failed, leaving the group marked dirty: {e}");
            array.sync_members()?;
            Err(ClusterError::Config(format!("write-back at stop failed: {e}")))
        }
    }
}
