//! The `amf` command line.

mod demo;
mod maintenance;
mod progress;
mod sim;
pub mod size;

use crate::cluster::{controller, supervisor};
use crate::raid::assemble::CreateOptions;
use crate::raid::Level;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// amf: active-active storage controllers over a shared RAID group.
#[derive(Parser, Debug)]
#[command(name = "amf", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create (if DIR holds no members) or assemble the group in DIR and serve it.
    Cluster {
        /// Group directory (member files live here).
        #[arg(long)]
        dir: PathBuf,
        /// Controllers to start.
        #[arg(long, default_value_t = 1)]
        controllers: usize,
        /// RAID level of a new group: raid0|raid1|raid5|raid6|raid10.
        #[arg(long)]
        level: Option<Level>,
        /// Members of a new group.
        #[arg(long)]
        members: Option<usize>,
        /// Size of each member file of a new group (e.g. 256M, 1G).
        #[arg(long, value_parser = size::parse)]
        member_size: Option<u64>,
        /// Chunk size of a new group.
        #[arg(long, value_parser = size::parse, default_value = "64K")]
        chunk: u64,
        /// Logical bytes per write-intent bit of a new group (more: fewer bitmap writes, longer
        /// resync after a crash).
        #[arg(long, value_parser = size::parse, default_value = "64M")]
        bitmap_region: u64,
        /// NBD port of controller 0 (controller I uses PORT+I).
        #[arg(long, default_value_t = 10809)]
        nbd_port: u16,
        /// Admin HTTP port of controller 0 (controller I uses PORT+I).
        #[arg(long, default_value_t = 9100)]
        admin_port: u16,
        /// Address hosts reach the NBD service on (the fabric and the card links of a cluster on
        /// one machine stay on loopback).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Address of the admin endpoints (loopback by default: reads need no token, and
        /// without --admin-tls the endpoint speaks plain HTTP).
        #[arg(long, default_value = "127.0.0.1")]
        admin_host: String,
        /// Start a group that cannot start as it is: one that crashed while degraded (parity of
        /// the stripes being written then may not match their data), or one whose members were
        /// failed for a transient cause (a full filesystem, a cable): the freshest of them are
        /// taken back, as few as needed, and every region written since is resynced; what was
        /// forced is printed. Like `mdadm --assemble --force`.
        #[arg(long)]
        force: bool,
        /// Card of each controller when there are several: sim (the RTL under Verilator) or
        /// model (the Rust reference model).
        #[arg(long, default_value = "sim")]
        card: CardKind,
        /// Cache budget of each controller, MiB (several controllers).
        #[arg(long, default_value_t = crate::cluster::config::CACHE_MIB_DEFAULT)]
        cache_mib: u64,
        /// Cache line (coherency resource) size, KiB (several controllers).
        #[arg(long, default_value_t = crate::cluster::config::LINE_KIB_DEFAULT)]
        line_kib: u32,
        /// How long a cache line stays dirty before its background write-back, ms (several
        /// controllers; its replica on a peer keeps it safe meanwhile).
        #[arg(long, default_value_t = crate::cluster::config::WRITEBACK_AGE_MS_DEFAULT)]
        writeback_age_ms: u64,
        /// NBD over TLS (STARTTLS): `required` (plaintext refused, the default with --tls) or
        /// `optional`. A throwaway CA and certificates are made in DIR/tls on first use, named
        /// as QEMU's tls-creds-x509 and libnbd's tls-certificates expect.
        #[arg(long, num_args = 0..=1, default_missing_value = "required")]
        tls: Option<crate::tls::TlsMode>,
        /// With --tls: hosts must present a certificate signed by DIR/tls/ca-cert.pem.
        #[arg(long, requires = "tls")]
        tls_client_certs: bool,
        /// Mutual TLS between the controllers (several controllers): on (default; a CA made for
        /// each start, in DIR/run/fabric-tls, its key not kept) or off.
        #[arg(long, default_value = "on")]
        fabric_tls: OnOff,
        /// Authenticated card link (several controllers): on (default; a key made for each
        /// start, in DIR/run/link.key; the cards seal every frame with a MAC and a counter and
        /// drop forged and replayed ones) or off.
        #[arg(long, default_value = "on")]
        link_auth: OnOff,
        /// HTTPS for the admin endpoints, with the certificates in DIR/tls (made if missing, as
        /// for --tls, valid for --admin-host too); clients trust DIR/tls/ca-cert.pem through
        /// AMF_ADMIN_CA.
        #[arg(long)]
        admin_tls: bool,
    },
    /// The main job: a 3-controller RAID5 cluster on files in a temp folder, a verified mixed
    /// workload through all three controllers at once, a report, a clean stop and a scrub.
    Demo {
        /// Workload length in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Workload seed (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
        /// Card of each controller: sim (the RTL under Verilator) or model.
        #[arg(long, default_value = "sim")]
        card: CardKind,
        /// Keep the group directory afterwards.
        #[arg(long)]
        keep: bool,
        /// Working set in 4 KiB blocks (default 16 MiB, the caches' size; more forces evictions).
        #[arg(long, default_value_t = 4096)]
        blocks: u64,
    },
    /// Run the deterministic cluster simulator: the AMF state machines with reference-model
    /// cards, a faulty fabric and link, one RAID group, and the checkers (docs/simulator.md).
    Sim {
        /// Replay one seed (prints its trace hash).
        #[arg(long)]
        seed: Option<u64>,
        /// First seed of a range.
        #[arg(long, default_value_t = 1)]
        first: u64,
        /// Seeds in the range.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// One JSON object per seed.
        #[arg(long)]
        json: bool,
        /// Break one protocol rule on purpose, to see the checkers catch it: skip-invalidate,
        /// ack-before-replica, forget-replica, yield-before-write-back, no-stripe-lock.
        #[arg(long)]
        mutate: Option<String>,
    },
    /// Run one controller of a coherent cluster from a TOML configuration.
    Serve {
        /// Configuration file (docs/cli.md describes it).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run one controller (started by `amf cluster`).
    #[command(hide = true)]
    Controller {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        index: usize,
        #[arg(long)]
        nbd: std::net::SocketAddr,
        #[arg(long)]
        admin: std::net::SocketAddr,
        #[arg(long)]
        force: bool,
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_optional: bool,
        #[arg(long, requires = "admin_tls_key")]
        admin_tls_cert: Option<PathBuf>,
        #[arg(long, requires = "admin_tls_cert")]
        admin_tls_key: Option<PathBuf>,
    },
    /// Status of a running controller: members, counters, the current maintenance task.
    Status {
        /// Group directory of the controller (its controller-0.json names the endpoint).
        #[arg(conflicts_with = "admin")]
        dir: Option<PathBuf>,
        /// Admin endpoint, e.g. http://127.0.0.1:9100.
        #[arg(long)]
        admin: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Describe the group in DIR as its superblocks record it.
    Inspect {
        /// Group directory.
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check parity (or mirror copies) of every stripe; --repair rewrites mismatches.
    Scrub {
        /// Group directory.
        dir: PathBuf,
        /// Rewrite redundancy that does not match the data.
        #[arg(long)]
        repair: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Proceed on a group that crashed while degraded.
        #[arg(long)]
        force: bool,
    },
    /// Take a member out of the group (as `mdadm --fail`): through a serving controller, which
    /// makes every controller of a cluster stop using it, or offline.
    Fail {
        /// Group directory.
        dir: PathBuf,
        /// Member index.
        #[arg(long)]
        member: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a failed or missing member onto a replacement (online if a controller serves DIR).
    Rebuild {
        /// Group directory.
        dir: PathBuf,
        /// Member index to rebuild (default: the first one not in sync).
        #[arg(long)]
        member: Option<usize>,
        /// Replacement file or block device (default: a new DIR/member-NN.img).
        #[arg(long)]
        replacement: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Rebuild a group that crashed while degraded (stripes written at the crash may
        /// rebuild wrong data).
        #[arg(long)]
        force: bool,
    },
    /// A card's registers decoded by name and field: a running controller's (--admin) or a
    /// standalone card's.
    Regs {
        /// Which standalone card: model (the reference model) or sim (the RTL under Verilator).
        #[arg(long, default_value = "model")]
        card: CardKind,
        /// A running controller's admin endpoint, e.g. http://127.0.0.1:9101: its own card.
        #[arg(long)]
        admin: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A card's state: status, rings, counters — a running controller's (--admin) or a
    /// standalone card's.
    Card {
        /// Which standalone card: model or sim.
        #[arg(long, default_value = "model")]
        card: CardKind,
        /// A running controller's admin endpoint: its own card.
        #[arg(long)]
        admin: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Make a certificate authority, a server certificate and a client certificate in DIR, named
    /// as QEMU's tls-creds-x509 and libnbd's tls-certificates expect (for trials and tests: real
    /// deployments use their own CA, docs/operations.md).
    Certs {
        /// Folder to write them in (files there are replaced).
        dir: PathBuf,
        /// Names (DNS or IP) the server certificate is valid for, besides localhost and the
        /// loopback addresses.
        #[arg(long)]
        name: Vec<String>,
    },
    /// Benchmarks against a peer on this machine.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

/// A switch.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// Card backends selectable on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CardKind {
    /// The Rust reference model.
    Model,
    /// The card's RTL under Verilator.
    Sim,
}

/// Opens a standalone card of the given kind through the driver and hands its backend to `f`.
/// GET a JSON document from a controller's admin endpoint.
fn from_admin(url: &str, path: &str) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (code, body) = crate::cluster::admin::request(url, "GET", path, None)?;
    if code != 200 {
        return Err(Box::new(crate::cluster::ClusterError::Admin {
            url: url.to_string(),
            detail: format!("HTTP {code}: {body}"),
        }));
    }
    Ok(serde_json::from_str(&body)?)
}

fn with_card<T>(
    kind: CardKind,
    f: impl FnOnce(&dyn crate::engine::Backend) -> Result<T, crate::engine::EngineError>,
) -> Result<T, Box<dyn std::error::Error>> {
    use crate::engine::{Driver, DriverConfig, ModelBackend, SimBackend};
    let cfg = DriverConfig::default();
    Ok(match kind {
        CardKind::Model => {
            let d = Driver::open(ModelBackend::new(), cfg)?;
            f(d.backend())?
        }
        CardKind::Sim => {
            let d = Driver::open(SimBackend::start("127.0.0.1:0".parse()?)?, cfg)?;
            f(d.backend())?
        }
    })
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// XOR and P+Q generation: amf kernels vs ISA-L, one core.
    Parity {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
        /// Record the table in this markdown file (between bench markers).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// The card's RTL under Verilator: latency against sharers, simulated cycles per second.
    Card {
        /// Record the tables in this markdown file (between bench markers) and the chart beside it.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Commands through the card driver: model and simulated card, host overhead per command.
    Driver {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Record the table in this markdown file (between bench markers).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// The coherent cluster: IOPS for 1 and 3 controllers, write latency to unshared vs shared
    /// data, messages per operation for 2..8 controllers.
    Cluster {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// Record the tables in this markdown file (between bench markers).
        #[arg(
            long,
            conflicts_with_all = [
                "latency_only", "beyond_cache_only", "own_regions_only", "scaling_only", "shared_only", "write_back_only"
            ]
        )]
        record: Option<PathBuf>,
        /// Only the write-latency rows (a quick look while tuning the card path).
        #[arg(long)]
        latency_only: bool,
        /// Only the rows of a shared region 4x one cache (a quick look while tuning misses
        /// and evictions).
        #[arg(long, conflicts_with = "latency_only")]
        beyond_cache_only: bool,
        /// Only the rows of one region shared by every controller that fits the caches (reads,
        /// then writes): one controller, three with Verilator cards, three with model cards.
        #[arg(long, conflicts_with_all = ["latency_only", "beyond_cache_only", "own_regions_only", "scaling_only"])]
        shared_only: bool,
        /// Only one controller against three with model cards, each client on its own region
        /// (a quick look while tuning the common case's CPU per operation).
        #[arg(long, group = "quick_rows", conflicts_with_all = ["latency_only", "beyond_cache_only"])]
        own_regions_only: bool,
        /// Only the rows of 2 to 8 controllers with model cards sharing one region, with how
        /// each stop went (a quick look at contended write-backs and leaves).
        #[arg(long, group = "quick_rows", conflicts_with_all = ["latency_only", "beyond_cache_only"])]
        scaling_only: bool,
        /// Only the rows of a sequential write through one controller, flushed: the member
        /// writes it cost (a look at write-backs of whole stripes).
        #[arg(long, conflicts_with_all = ["latency_only", "beyond_cache_only", "own_regions_only", "scaling_only", "shared_only"])]
        write_back_only: bool,
        /// With --own-regions-only or --scaling-only: one more `amf cluster` argument for the
        /// clusters of several controllers (repeat it; e.g. `--cluster-arg=--writeback-age-ms
        /// --cluster-arg=50`), to compare a setting with its default side by side.
        #[arg(long = "cluster-arg", requires = "quick_rows", allow_hyphen_values = true)]
        cluster_args: Vec<String>,
    },
    /// kill -9 of a controller under writes: the time until a survivor answers for its data.
    Takeover {
        /// Rounds per card kind (each on a fresh cluster).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Record the table in this markdown file (between bench markers).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// qemu-img bench against one amf controller (RAID5) and qemu-nbd on a raw file.
    Nbd {
        /// Requests per qemu-img bench run.
        #[arg(long, default_value_t = 200_000)]
        count: u64,
        /// Record the table in this markdown file (between bench markers).
        #[arg(long)]
        record: Option<PathBuf>,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. } | Command::Controller { .. } | Command::Cluster { .. }) {
        // A report piped into `head` ends quietly when the reader leaves, as Unix tools do.
        // The daemons keep SIGPIPE ignored: a client that leaves is an error on its socket.
        // SAFETY: restores the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("amf: error: {e}");
            let mut src = std::error::Error::source(&*e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            1
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Cluster {
            dir,
            controllers,
            level,
            members,
            member_size,
            chunk,
            bitmap_region,
            nbd_port,
            admin_port,
            host,
            admin_host,
            force,
            card,
            cache_mib,
            line_kib,
            writeback_age_ms,
            tls,
            tls_client_certs,
            fabric_tls,
            link_auth,
            admin_tls,
        } => {
            let create = match (level, members, member_size) {
                (Some(level), Some(members), Some(member_bytes)) => Some(CreateOptions {
                    chunk_bytes: chunk,
                    region_bytes: bitmap_region,
                    ..CreateOptions::new(level, members, member_bytes)
                }),
                _ => None,
            };
            supervisor::run(supervisor::ClusterOptions {
                dir,
                controllers,
                create,
                nbd_port,
                admin_port,
                host,
                admin_host,
                force,
                card: match card {
                    CardKind::Sim => crate::engine::CardKind::Sim,
                    CardKind::Model => crate::engine::CardKind::Model,
                },
                cache_mib,
                line_kib,
                writeback_age_ms,
                tls,
                tls_client_certs,
                fabric_tls: matches!(fabric_tls, OnOff::On),
                link_auth: matches!(link_auth, OnOff::On),
                admin_tls,
            })?;
        }
        Command::Demo { seconds, seed, card, keep, blocks } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1)
            });
            let card = match card {
                CardKind::Sim => "sim",
                CardKind::Model => "model",
            };
            demo::run(demo::DemoOptions { seconds, seed, card: card.into(), keep, blocks })?;
        }
        Command::Sim { seed, first, seeds, json, mutate } => {
            sim::main(sim::SimOptions { seed, first, seeds, json, mutate })?
        }
        Command::Serve { config } => {
            let cfg = crate::cluster::config::Config::load(&config)?;
            crate::cluster::serve::run(cfg)?;
        }
        Command::Controller {
            dir,
            index,
            nbd,
            admin,
            force,
            tls_cert,
            tls_key,
            tls_client_ca,
            tls_optional,
            admin_tls_cert,
            admin_tls_key,
        } => {
            let tls = tls_cert.zip(tls_key).map(|(cert, key)| crate::tls::TlsConfig {
                cert,
                key,
                client_ca: tls_client_ca,
                mode: if tls_optional { crate::tls::TlsMode::Optional } else { crate::tls::TlsMode::Required },
            });
            let admin_tls = admin_tls_cert.zip(admin_tls_key).map(|(cert, key)| crate::tls::AdminTlsConfig {
                cert,
                key,
                client_ca: None,
            });
            controller::run(controller::ControllerOptions { dir, index, nbd, admin, force, tls, admin_tls })?;
        }
        Command::Inspect { dir, json } => maintenance::inspect(&dir, json)?,
        Command::Regs { card, admin, json } => {
            let v = match admin {
                Some(url) => from_admin(&url, "/regs")?,
                None => with_card(card, crate::engine::diag::dump_registers)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", crate::engine::diag::format_registers(&v));
            }
        }
        Command::Card { card, admin, json } => {
            let v = match admin {
                Some(url) => from_admin(&url, "/card")?,
                None => with_card(card, crate::engine::diag::card_state)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "card node {} peers {:#04x} epoch {}  {}  {}",
                    v["node"],
                    v["peers"].as_u64().unwrap_or(0),
                    v["epoch"],
                    if v["enabled"] == true { "enabled" } else { "disabled" },
                    if v["error_code"] == 0 {
                        "no error".to_string()
                    } else {
                        format!("error code {}", v["error_code"])
                    }
                );
                for (name, r) in v["rings"].as_object().into_iter().flatten() {
                    println!("  {name:<10} ring at {:#x}, {} entries", r["base"].as_u64().unwrap_or(0), r["entries"]);
                }
                for (name, c) in v["counters"].as_object().into_iter().flatten() {
                    println!("  {name:<20} {c}");
                }
            }
        }
        Command::Status { dir, admin, json } => maintenance::status(dir.as_deref(), admin, json)?,
        Command::Scrub { dir, repair, json, force } => maintenance::scrub(&dir, repair, json, force)?,
        Command::Fail { dir, member, json } => maintenance::fail(&dir, member, json)?,
        Command::Rebuild { dir, member, replacement, json, force } => {
            maintenance::rebuild(&dir, member, replacement, json, force)?
        }
        Command::Certs { dir, name } => {
            crate::tls::generate(&dir, &name)?;
            println!("certificates in {}", dir.display());
        }
        Command::Bench { what: BenchCommand::Parity { seconds, record } } => {
            let (machine, rows) = crate::bench::parity::run(std::time::Duration::from_secs_f64(seconds))?;
            let mut table = crate::bench::parity::markdown(&machine, &rows, "amf bench parity");
            println!("{table}");
            if let Some(path) = record {
                // The chart goes beside the report, named after the section.
                let svg = path.with_file_name("bench-parity.svg");
                crate::bench::parity::plot(&rows, &svg)?;
                table += "\n![parity: amf vs ISA-L](bench-parity.svg)\n";
                crate::bench::record(&path, "parity", &table)?;
            }
        }
        Command::Bench { what: BenchCommand::Card { record } } => {
            let (mut table, rows) = crate::bench::card::run()?;
            println!("{table}");
            if let Some(path) = record {
                let svg = path.with_file_name("bench-card.svg");
                crate::bench::card::plot(&rows, &svg)?;
                table += "\n![card: latency against sharers](bench-card.svg)\n";
                crate::bench::record(&path, "card", &table)?;
            }
        }
        Command::Bench { what: BenchCommand::Driver { seconds, record } } => {
            let table = crate::bench::driver::run_all(std::time::Duration::from_secs_f64(seconds))?;
            println!("{table}");
            if let Some(path) = record {
                crate::bench::record(&path, "driver", &table)?;
            }
        }
        Command::Bench { what: BenchCommand::Cluster { latency_only: true, .. } } => {
            let base = std::env::temp_dir().join(format!("amf-bench-latency-{}", std::process::id()));
            let rows = crate::bench::cluster::latency_rows(&base);
            let _ = std::fs::remove_dir_all(&base);
            println!("{}", rows?);
        }
        Command::Bench { what: BenchCommand::Cluster { seconds, beyond_cache_only: true, .. } } => {
            let base = std::env::temp_dir().join(format!("amf-bench-beyond-{}", std::process::id()));
            let rows = crate::bench::cluster::beyond_cache(&base, seconds);
            let _ = std::fs::remove_dir_all(&base);
            println!("{}", rows?);
        }
        Command::Bench { what: BenchCommand::Cluster { write_back_only: true, .. } } => {
            let base = std::env::temp_dir().join(format!("amf-bench-write-back-{}", std::process::id()));
            let rows = crate::bench::write_back::sequential(&base);
            let _ = std::fs::remove_dir_all(&base);
            println!("{}", rows?);
        }
        Command::Bench { what: BenchCommand::Cluster { seconds, shared_only: true, .. } } => {
            let base = std::env::temp_dir().join(format!("amf-bench-shared-{}", std::process::id()));
            let rows = crate::bench::cluster::shared_rows(&base, seconds);
            let _ = std::fs::remove_dir_all(&base);
            println!("{}", rows?);
        }
        Command::Bench { what: BenchCommand::Cluster { seconds, own_regions_only: true, cluster_args, .. } } => {
            let base = std::env::temp_dir().join(format!("amf-bench-own-{}", std::process::id()));
            let rows = crate::bench::cluster::own_regions(&base, seconds, true, &cluster_args);
            let _ = std::fs::remove_dir_all(&base);
            println!("{}", rows?);
        }
        Command::Bench { what: BenchCommand::Cluster { seconds, scaling_only: true, cluster_args, .. } } => {
            let base = std::env::temp_dir().join(format!("amf-bench-scaling-{}", std::process::id()));
            let rows = crate::bench::cluster::scaling(&base, seconds, &cluster_args);
            let _ = std::fs::remove_dir_all(&base);
            println!("{}", rows?.0);
        }
        Command::Bench { what: BenchCommand::Cluster { seconds, record, .. } } => {
            let (mut table, scaling) = crate::bench::cluster::run(seconds)?;
            println!("{table}");
            if let Some(path) = record {
                let svg = path.with_file_name("bench-cluster.svg");
                crate::bench::cluster::plot(&scaling, &svg)?;
                table += "\n![cluster: IOPS against controllers](bench-cluster.svg)\n";
                crate::bench::record(&path, "cluster", &table)?;
            }
        }
        Command::Bench { what: BenchCommand::Takeover { rounds, record } } => {
            let table = crate::bench::takeover::run(rounds)?;
            println!("{table}");
            if let Some(path) = record {
                crate::bench::record(&path, "takeover", &table)?;
            }
        }
        Command::Bench { what: BenchCommand::Nbd { count, record } } => {
            let (mut table, rows) = crate::bench::nbd::run(count)?;
            println!("{table}");
            if let Some(path) = record {
                let svg = path.with_file_name("bench-nbd.svg");
                crate::bench::nbd::plot(&rows, &svg)?;
                table += "\n![NBD: amf vs qemu-nbd](bench-nbd.svg)\n";
                crate::bench::record(&path, "nbd", &table)?;
            }
        }
    }
    Ok(())
}
