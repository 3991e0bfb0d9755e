//! `amf cluster`: creates or assembles the group, starts one `amf controller` process per
//! controller, prints each one's ready line, and on SIGINT/SIGTERM stops them all cleanly.

use super::controller::say;
use super::ClusterError;
use crate::raid::assemble::{create, has_members, CreateOptions};
use std::io::{BufRead, BufReader};
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
    /// Where hosts reach the NBD service.
    pub host: String,
    /// Where the admin endpoint listens (loopback unless asked otherwise: it has no TLS).
    pub admin_host: String,
    /// Passed to the controllers: start a group that crashed while degraded.
    pub force: bool,
    /// Card of each controller (several controllers).
    pub card: crate::engine::CardKind,
    /// Cache budget per controller (several controllers).
    pub cache_mib: u64,
    /// Cache line size (several controllers).
    pub line_kib: u32,
    /// How long a line stays dirty before its background write-back, ms.
    pub writeback_age_ms: u64,
    /// NBD over TLS with a throwaway CA in `DIR/tls` (made if missing).
    pub tls: Option<crate::tls::TlsMode>,
    /// With TLS: hosts must present a certificate the CA signed (`DIR/tls/client-cert.pem`).
    pub tls_client_certs: bool,
    /// Mutual TLS between the controllers (several controllers), with a CA made for this run.
    pub fabric_tls: bool,
    /// Authenticated card link (several controllers), with a key made for this run.
    pub link_auth: bool,
    /// HTTPS for the admin endpoints, with the certificates in `DIR/tls`.
    pub admin_tls: bool,
}

/// Where `amf cluster --tls` keeps its certificates (QEMU's and libnbd's file names).
pub fn tls_dir(dir: &std::path::Path) -> PathBuf {
    dir.join("tls")
}

/// The controllers' TLS settings: the CA and certificates in `DIR/tls`, made on first use for
/// the listen host.
fn local_tls(opts: &ClusterOptions) -> Result<Option<crate::tls::TlsConfig>, ClusterError> {
    let Some(mode) = opts.tls else { return Ok(None) };
    let dir = local_ca(opts)?;
    Ok(Some(crate::tls::TlsConfig::from_dir(&dir, mode, opts.tls_client_certs)))
}

/// `DIR/tls` with a throwaway CA and a server certificate valid for `--host` and
/// `--admin-host`, made on first use.
fn local_ca(opts: &ClusterOptions) -> Result<PathBuf, ClusterError> {
    let dir = tls_dir(&opts.dir);
    if !dir.join(crate::tls::CA_CERT).exists() || !dir.join(crate::tls::SERVER_KEY).exists() {
        crate::tls::generate(&dir, &[opts.host.clone(), opts.admin_host.clone()])?;
        eprintln!("amf: made a throwaway certificate authority and certificates in {}", dir.display());
    }
    Ok(dir)
}

struct Running {
    index: usize,
    child: Child,
    /// Reaped already: its pid may belong to someone else now.
    exited: bool,
}

/// How long a stop waits for controllers to finish cleanly before it kills them: the cluster
/// stops within about twice this whatever its clients do.
pub const STOP_GRACE: Duration = Duration::from_secs(4);

fn signal(p: &Running, sig: libc::c_int) {
    if !p.exited {
        // SAFETY: kill(2) on a pid we spawned and have not reaped; no memory is involved.
        unsafe {
            libc::kill(p.child.id() as libc::pid_t, sig);
        }
    }
}

/// SIGTERM to `procs`, then waits up to `grace` for them; those still running get SIGKILL.
/// Every one is reaped. Returns false if any stopped uncleanly.
fn stop_all(procs: &mut [&mut Running], grace: Duration) -> bool {
    for p in procs.iter() {
        signal(p, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    let mut clean = true;
    for p in procs.iter_mut().filter(|p| !p.exited) {
        let status = loop {
            match p.child.try_wait() {
                Ok(Some(s)) => break Ok(s),
                Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    eprintln!("amf: controller {} did not stop within {grace:?}; killing it", p.index);
                    signal(p, libc::SIGKILL);
                    break p.child.wait();
                }
                Err(e) => break Err(e),
            }
        };
        p.exited = true;
        match status {
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
    clean
}

/// Stops every controller started so far (a start that failed part-way).
fn terminate(procs: &mut [Running]) {
    let mut all: Vec<&mut Running> = procs.iter_mut().collect();
    stop_all(&mut all, STOP_GRACE);
}

/// Runs the cluster until a signal; Ok when every controller stopped cleanly.
pub fn run(opts: ClusterOptions) -> Result<(), ClusterError> {
    if !(1..=super::config::NODES_MAX as usize).contains(&opts.controllers) {
        return Err(ClusterError::Unsupported(format!(
            "--controllers {}: a cluster has 1 to {} controllers",
            opts.controllers,
            super::config::NODES_MAX
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
    // Several controllers meet through files here (fresh for every start: old addresses would
    // point at processes that are gone).
    let run_dir = opts.dir.join("run");
    if opts.controllers > 1 {
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(run_dir.join("rendezvous"))
            .map_err(|source| ClusterError::File { path: run_dir.clone(), source })?;
    }
    // A fresh admin token for this run: the controllers read it, and so do `amf scrub` and
    // `amf rebuild`, which need it to change the group through a controller.
    super::admin::create_admin_token(&opts.dir)?;
    let tls = local_tls(&opts)?;
    let admin_tls = if opts.admin_tls {
        let dir = local_ca(&opts)?;
        Some(crate::tls::AdminTlsConfig {
            cert: dir.join(crate::tls::SERVER_CERT),
            key: dir.join(crate::tls::SERVER_KEY),
            client_ca: None,
        })
    } else {
        None
    };
    // A CA for this run only (its key is not kept) and a certificate per controller.
    let fabric_tls = if opts.controllers > 1 && opts.fabric_tls {
        crate::tls::fabric::generate_cluster(&run_dir.join("fabric-tls"), opts.controllers as u8)?
    } else {
        Vec::new()
    };
    // A link key for this run, in a file only this user reads.
    let link_key = if opts.controllers > 1 && opts.link_auth {
        let path = run_dir.join("link.key");
        super::admin::write_secret(&path, 16)?;
        Some(path)
    } else {
        None
    };
    let mut procs: Vec<Running> = Vec::new();
    let mut outputs = Vec::new();
    for index in 0..opts.controllers {
        let mut cmd = Command::new(&exe);
        if opts.controllers == 1 {
            cmd.arg("controller")
                .arg("--dir")
                .arg(&opts.dir)
                .arg("--index")
                .arg(index.to_string())
                .arg("--nbd")
                .arg(format!("{}:{}", opts.host, opts.nbd_port as usize + index))
                .arg("--admin")
                .arg(format!("{}:{}", opts.admin_host, opts.admin_port as usize + index))
                .args(opts.force.then_some("--force"));
            if let Some(t) = &admin_tls {
                cmd.arg("--admin-tls-cert").arg(&t.cert).arg("--admin-tls-key").arg(&t.key);
            }
            if let Some(t) = &tls {
                cmd.arg("--tls-cert").arg(&t.cert).arg("--tls-key").arg(&t.key);
                if let Some(ca) = &t.client_ca {
                    cmd.arg("--tls-client-ca").arg(ca);
                }
                if t.mode == crate::tls::TlsMode::Optional {
                    cmd.arg("--tls-optional");
                }
            }
        } else {
            let secrets = Secrets {
                tls: tls.clone(),
                fabric_tls: fabric_tls.get(index).cloned(),
                link_key: link_key.clone(),
                admin_tls: admin_tls.clone(),
            };
            let path = match write_config(&opts, index, &run_dir, secrets) {
                Ok(p) => p,
                Err(e) => {
                    terminate(&mut procs);
                    return Err(e);
                }
            };
            cmd.arg("serve").arg("--config").arg(path);
        }
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
        // which is async-signal-safe. A controller must not outlive its supervisor (it would
        // hold the ports and the group and join the next cluster started on the folder).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = cmd
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
        procs.push(Running { index, child, exited: false });
        outputs.push(BufReader::new(out).lines());
    }
    // Ready lines in controller order (several controllers start together: they wait for each
    // other at the rendezvous before any is ready).
    for (i, mut lines) in outputs.into_iter().enumerate() {
        let ready = lines.by_ref().map_while(Result::ok).find(|l| l.starts_with("controller "));
        match ready {
            Some(line) => {
                say(&line);
                // Keep forwarding whatever the controller prints later.
                std::thread::spawn(move || {
                    for l in lines.map_while(Result::ok) {
                        say(&l);
                    }
                });
            }
            None => {
                let p = &mut procs[i];
                let status = p.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                p.exited = true;
                terminate(&mut procs);
                return Err(ClusterError::ControllerDied { index: i, status });
            }
        }
    }
    // A controller that dies is taken over by the others, which keep serving; one alone has
    // nobody to take over from it, and the cluster stops.
    let mut died = None;
    while !stop.load(Relaxed) && procs.iter().any(|p| !p.exited) && (died.is_none() || opts.controllers > 1) {
        std::thread::sleep(Duration::from_millis(100));
        for p in procs.iter_mut().filter(|p| !p.exited) {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.exited = true;
                if status.code() == Some(crate::raid::fence::FENCED_EXIT_CODE) {
                    eprintln!("amf: controller {} fenced itself and died ({status}); the others take over", p.index);
                } else {
                    eprintln!("amf: controller {} died ({status}); the others take over", p.index);
                }
                died.get_or_insert(ClusterError::ControllerDied { index: p.index, status: status.to_string() });
            }
        }
    }
    // All at once: each writes its dirty lines back (which needs its peers' cards and stripe
    // locks), tells the others, and waits a bounded time for theirs before it marks the group
    // clean.
    let mut all: Vec<&mut Running> = procs.iter_mut().collect();
    let clean = stop_all(&mut all, STOP_GRACE * 2);
    match died {
        Some(e) => Err(e),
        None if clean => Ok(()),
        None => Err(ClusterError::ControllerDied { index: 0, status: "unclean stop".into() }),
    }
}

/// A controller's keys and certificates (files).
struct Secrets {
    tls: Option<crate::tls::TlsConfig>,
    fabric_tls: Option<crate::tls::fabric::FabricTlsConfig>,
    link_key: Option<PathBuf>,
    admin_tls: Option<crate::tls::AdminTlsConfig>,
}

/// Writes controller `index`'s configuration for a cluster on this machine: NBD on `opts.host`
/// and admin on `opts.admin_host`, ports as for one controller (port + index, or 0); fabric and
/// card link on loopback, port 0 (the controllers are all on this machine: nothing else needs
/// to reach them), peers found through the rendezvous directory.
fn write_config(
    opts: &ClusterOptions,
    index: usize,
    run_dir: &std::path::Path,
    secrets: Secrets,
) -> Result<PathBuf, ClusterError> {
    let Secrets { tls, fabric_tls, link_key, admin_tls } = secrets;
    let port = |base: u16| if base == 0 { 0 } else { base as usize + index };
    let at = |host: &str, flag: &str, p: usize| -> Result<std::net::SocketAddr, ClusterError> {
        format!("{host}:{p}").parse().map_err(|e| ClusterError::Config(format!("{flag} {host}: {e}")))
    };
    let addr = |p: usize| at(&opts.host, "--host", p);
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let cfg = super::config::Config {
        node: index as u8,
        nodes: opts.controllers as u8,
        epoch: 1,
        group: opts.dir.clone(),
        members: Vec::new(),
        nbd: addr(port(opts.nbd_port))?,
        admin: at(&opts.admin_host, "--admin-host", port(opts.admin_port))?,
        fabric: loopback,
        cache_mib: opts.cache_mib,
        line_kib: opts.line_kib,
        writeback_age_ms: opts.writeback_age_ms,
        force: opts.force,
        card: super::config::CardConfig { backend: opts.card, link: loopback, link_key },
        peers: Vec::new(),
        rendezvous: Some(run_dir.join("rendezvous")),
        service: None,
        tls,
        fabric_tls,
        admin_tls,
    };
    cfg.check()?;
    let text = toml::to_string(&cfg).map_err(|e| ClusterError::Config(e.to_string()))?;
    let path = run_dir.join(format!("controller-{index}.toml"));
    std::fs::write(&path, text).map_err(|source| ClusterError::File { path: path.clone(), source })?;
    Ok(path)
}
