//! `amf serve --config FILE`: one controller of a coherent cluster, described in TOML.
//!
//! ```toml
//! node = 1                      # this controller (node 0 resyncs a crashed group at start)
//! nodes = 3                     # controllers in the cluster, ids 0..nodes
//! epoch = 1                     # membership epoch, carried by every card frame and fabric call
//! group = "/srv/amf/group0"     # the group directory (its member files or device links)
//! members = ["member-0.img"]    # optional: members this controller expects (checked)
//! nbd = "0.0.0.0:10809"
//! admin = "127.0.0.1:8080"
//! fabric = "10.0.0.2:7000"      # controller-to-controller data path
//! cache_mib = 256
//! line_kib = 16                 # cache line = coherency resource
//! writeback_age_ms = 1000       # a dirty line is written back this long after its first write
//!
//! [card]
//! backend = "sim"               # sim (Verilator RTL) or model (Rust reference model)
//! link = "10.0.0.2:7100"        # the card's link port (UDP)
//! link_key = "/etc/amf/link.key"  # optional: 32 hex digits, the same on every controller;
//!                               # cards seal and check every frame under it (MAC, replays)
//!
//! [tls]                         # optional: NBD over TLS (STARTTLS)
//! cert = "/etc/amf/server-cert.pem"
//! key = "/etc/amf/server-key.pem"
//! client_ca = "/etc/amf/hosts-ca.pem"   # optional: hosts must present a certificate it signed
//! mode = "required"             # or "optional" (plaintext served too)
//!
//! [fabric_tls]                  # optional: mutual TLS between controllers
//! ca = "/etc/amf/cluster-ca.pem"
//! cert = "/etc/amf/node-1-cert.pem"    # valid for the DNS name amf-node-1
//! key = "/etc/amf/node-1-key.pem"
//!
//! [admin_tls]                   # optional: HTTPS for the admin endpoint
//! cert = "/etc/amf/admin-cert.pem"
//! key = "/etc/amf/admin-key.pem"
//! client_ca = "/etc/amf/operators-ca.pem"   # optional: clients need a certificate it signed
//!
//! [[peer]]                      # every other controller, or `rendezvous = "DIR"` instead
//! node = 0
//! fabric = "10.0.0.1:7000"
//! link = "10.0.0.1:7100"
//! ```
//!
//! With `rendezvous = "DIR"` the controllers bind whatever ports they are given (port 0 too),
//! write their addresses to DIR/node-N.json and read each other's: that is how `amf cluster`
//! starts a cluster on one machine without choosing ports.

use super::ClusterError;
use crate::engine::CardKind;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most controllers (the card's node id is 3 bits).
pub const NODES_MAX: u8 = 8;

fn default_epoch() -> u32 {
    1
}
/// Each controller's cache by default, MiB.
pub const CACHE_MIB_DEFAULT: u64 = 256;
/// The cache line (the unit of coherency) by default, KiB: measured in docs/benchmarks.md
/// (16 KiB served 1.4-1.6x the operations of 64 KiB with each host on its own data, where a
/// 4 KiB write to a 64 KiB line moves 16x its data to the replica).
pub const LINE_KIB_DEFAULT: u32 = 16;

/// How long a line stays dirty before its background write-back by default, ms.
pub const WRITEBACK_AGE_MS_DEFAULT: u64 = crate::amf::WRITEBACK_AGE_US_DEFAULT / 1000;
/// The longest write-back age a configuration may ask for, ms (dirty data waits on two
/// controllers' memory meanwhile; a takeover writes back what the dead one left).
pub const WRITEBACK_AGE_MS_MAX: u64 = 60_000;

fn default_writeback_age_ms() -> u64 {
    WRITEBACK_AGE_MS_DEFAULT
}
fn default_cache_mib() -> u64 {
    CACHE_MIB_DEFAULT
}
fn default_line_kib() -> u32 {
    LINE_KIB_DEFAULT
}

/// The card section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CardConfig {
    /// Which card.
    #[serde(default = "default_backend")]
    pub backend: CardKind,
    /// Its link port.
    pub link: SocketAddr,
    /// A file holding the cluster's link key (32 hexadecimal digits): the cards seal every
    /// frame under it and drop forged and replayed ones. Every controller needs the same key,
    /// or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_key: Option<PathBuf>,
}

impl CardConfig {
    /// Reads the link key file, if one is configured. A key file others can read is refused:
    /// whoever reads it can forge frames.
    pub fn load_link_key(&self) -> Result<Option<crate::engine::LinkKey>, ClusterError> {
        let Some(path) = &self.link_key else { return Ok(None) };
        let file = |source| ClusterError::File { path: path.clone(), source };
        let meta = std::fs::metadata(path).map_err(file)?;
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad(format!(
                "{}: the link key must be readable by its owner only (chmod 600)",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(file)?;
        crate::engine::LinkKey::parse_hex(&text).map(Some).map_err(|e| bad(format!("{}: {e}", path.display())))
    }
}

fn default_backend() -> CardKind {
    CardKind::Sim
}

/// Another controller.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its node id.
    pub node: u8,
    /// Its fabric address.
    pub fabric: SocketAddr,
    /// Its card's link port.
    pub link: SocketAddr,
    /// Its NBD service address, which a survivor takes over if it dies (needs `[service]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<SocketAddr>,
}

/// Where service addresses move: a controller that takes over a dead peer adds the peer's NBD
/// address to this interface, announces it (gratuitous ARP) and serves it, as Pacemaker's
/// IPaddr2 does.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The interface (it must be on the hosts' network).
    pub dev: String,
    /// The prefix length of the addresses added.
    pub prefix: u8,
}

/// One controller's configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This controller.
    pub node: u8,
    /// Controllers in the cluster.
    pub nodes: u8,
    /// Membership epoch.
    #[serde(default = "default_epoch")]
    pub epoch: u32,
    /// Group directory.
    pub group: PathBuf,
    /// Members this controller expects to find in the group (file names or paths).
    #[serde(default)]
    pub members: Vec<PathBuf>,
    /// NBD listen address.
    pub nbd: SocketAddr,
    /// Admin HTTP listen address.
    pub admin: SocketAddr,
    /// Fabric listen address.
    pub fabric: SocketAddr,
    /// Cache budget.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u64,
    /// Cache line size.
    #[serde(default = "default_line_kib")]
    pub line_kib: u32,
    /// How long a line stays dirty before its background write-back.
    #[serde(default = "default_writeback_age_ms")]
    pub writeback_age_ms: u64,
    /// Serve a group that crashed while degraded.
    #[serde(default)]
    pub force: bool,
    /// The card.
    pub card: CardConfig,
    /// The other controllers.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
    /// Exchange addresses through files in this directory instead of `peer` entries.
    pub rendezvous: Option<PathBuf>,
    /// Take over dead peers' NBD addresses (their `nbd` in `[[peer]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceConfig>,
    /// TLS for the hosts' NBD connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Mutual TLS between the controllers (every controller of a cluster needs it, or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric_tls: Option<crate::tls::fabric::FabricTlsConfig>,
    /// HTTPS for the admin endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_tls: Option<crate::tls::AdminTlsConfig>,
}

fn bad(msg: String) -> ClusterError {
    ClusterError::Config(msg)
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::File { path: path.into(), source })?;
        Config::parse(&text).map_err(|e| match e {
            ClusterError::Config(m) => bad(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parses and checks a configuration's text.
    pub fn parse(text: &str) -> Result<Config, ClusterError> {
        let cfg: Config = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// The checks that need no other process: ids, sizes, peers, members.
    pub fn check(&self) -> Result<(), ClusterError> {
        if !(1..=NODES_MAX).contains(&self.nodes) {
            return Err(bad(format!("nodes = {}: a cluster has 1 to {NODES_MAX} controllers", self.nodes)));
        }
        if self.node >= self.nodes {
            return Err(bad(format!("node = {} is not below nodes = {}", self.node, self.nodes)));
        }
        if !self.line_kib.is_power_of_two() || !(4..=1024).contains(&self.line_kib) {
            return Err(bad(format!("line_kib = {}: a power of two from 4 to 1024", self.line_kib)));
        }
        if !(1..=WRITEBACK_AGE_MS_MAX).contains(&self.writeback_age_ms) {
            return Err(bad(format!("writeback_age_ms = {}: 1 to {WRITEBACK_AGE_MS_MAX}", self.writeback_age_ms)));
        }
        if self.cache_mib == 0 || self.cache_mib > 1 << 20 {
            return Err(bad(format!("cache_mib = {}: 1 to 1048576", self.cache_mib)));
        }
        if self.epoch == 0 {
            return Err(bad("epoch = 0 is reserved (a card out of reset)".into()));
        }
        match (&self.rendezvous, self.peers.is_empty()) {
            (Some(_), false) => return Err(bad("give either [[peer]] entries or rendezvous, not both".into())),
            (None, _) => {
                let mut seen = vec![false; NODES_MAX as usize];
                seen[self.node as usize] = true;
                for p in &self.peers {
                    if p.node >= self.nodes {
                        return Err(bad(format!("peer node {} is not below nodes = {}", p.node, self.nodes)));
                    }
                    if std::mem::replace(&mut seen[p.node as usize], true) {
                        return Err(bad(format!("node id {} appears twice (this node is {})", p.node, self.node)));
                    }
                }
                if let Some(missing) = (0..self.nodes).find(|n| !seen[*n as usize]) {
                    return Err(bad(format!("no [[peer]] entry for node {missing} (nodes = {})", self.nodes)));
                }
            }
            (Some(_), true) => {}
        }
        if let Some(s) = &self.service {
            if s.dev.is_empty() || s.dev.len() > 15 || s.prefix > 32 {
                return Err(bad(format!(
                    "[service]: dev {:?} (1 to 15 characters), prefix {} (0 to 32)",
                    s.dev, s.prefix
                )));
            }
            if let Some(p) = self.peers.iter().find(|p| p.nbd.is_some_and(|a| !a.is_ipv4())) {
                return Err(bad(format!("peer {}: service addresses are IPv4 here", p.node)));
            }
        }
        self.check_members()
    }

    /// Every named member must be one of the group's members.
    fn check_members(&self) -> Result<(), ClusterError> {
        if self.members.is_empty() {
            return Ok(());
        }
        let scanned = crate::raid::assemble::scan(&self.group)?;
        let uuid = scanned.iter().find_map(|s| s.result.as_ref().ok().map(|(_, sb)| sb.uuid));
        for m in &self.members {
            let path = if m.is_absolute() { m.clone() } else { self.group.join(m) };
            let canon = std::fs::canonicalize(&path).ok();
            let found = scanned.iter().find(|s| {
                let sb_uuid = s.result.as_ref().ok().map(|(_, sb)| sb.uuid);
                canon.is_some() && std::fs::canonicalize(&s.path).ok() == canon && sb_uuid.is_some() && sb_uuid == uuid
            });
            if found.is_none() {
                return Err(bad(format!(
                    "member {} is not a member of the group in {}",
                    path.display(),
                    self.group.display()
                )));
            }
        }
        Ok(())
    }
}

/// Addresses one controller publishes at a rendezvous.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct Published {
    fabric: SocketAddr,
    link: SocketAddr,
}

/// Publishes this node's addresses in `dir` and waits (at most `wait`) for every other node's.
pub fn rendezvous(
    dir: &Path,
    node: u8,
    nodes: u8,
    fabric: SocketAddr,
    link: SocketAddr,
    wait: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Vec<PeerConfig>, ClusterError> {
    std::fs::create_dir_all(dir).map_err(|source| ClusterError::File { path: dir.into(), source })?;
    let mine = dir.join(format!("node-{node}.json"));
    let tmp = dir.join(format!(".node-{node}.json.tmp"));
    let body = serde_json::to_string(&Published { fabric, link }).unwrap_or_default();
    std::fs::write(&tmp, body)
        .and_then(|_| std::fs::rename(&tmp, &mine))
        .map_err(|source| ClusterError::File { path: mine.clone(), source })?;
    let start = Instant::now();
    let mut peers = Vec::new();
    for n in (0..nodes).filter(|n| *n != node) {
        let path = dir.join(format!("node-{n}.json"));
        loop {
            if let Some(p) =
                std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str::<Published>(&t).ok())
            {
                peers.push(PeerConfig { node: n, fabric: p.fabric, link: p.link, nbd: None });
                break;
            }
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(bad("stopped while waiting for the other controllers".into()));
            }
            if start.elapsed() > wait {
                return Err(bad(format!(
                    "node {n} did not publish its addresses in {} within {wait:?}",
                    dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> String {
        "node = 1\nnodes = 3\ngroup = \"/nonexistent\"\nnbd = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         fabric = \"127.0.0.1:0\"\n[card]\nlink = \"127.0.0.1:0\"\n"
            .into()
    }
    fn peer(n: u8) -> String {
        format!(
            "[[peer]]\nnode = {n}\nfabric = \"127.0.0.1:{}\"\nlink = \"127.0.0.1:{}\"\n",
            7000 + n as u16,
            7100 + n as u16
        )
    }
    fn check(text: &str) -> Result<(), String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check().map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_config_passes_and_defaults_apply() {
        let text = base() + &peer(0) + &peer(2);
        check(&text).unwrap();
        let c: Config = toml::from_str(&text).unwrap();
        assert_eq!(
            (c.epoch, c.cache_mib, c.line_kib, c.card.backend),
            (1, super::CACHE_MIB_DEFAULT, super::LINE_KIB_DEFAULT, CardKind::Sim)
        );
    }

    #[test]
    fn broken_configs_say_what_is_wrong() {
        let cases = [
            (base() + &peer(0) + &peer(0), "appears twice"),
            (base() + &peer(0) + &peer(1), "appears twice"),
            (base() + &peer(0), "no [[peer]] entry for node 2"),
            (base() + &peer(0) + &peer(5), "not below nodes"),
            (base().replace("nodes = 3", "nodes = 9") + &peer(0), "1 to 8 controllers"),
            (base().replace("[card]", "line_kib = 3\n[card]") + &peer(0) + &peer(2), "power of two"),
            (base().replace("[card]", "cache_mib = 0\n[card]") + &peer(0) + &peer(2), "cache_mib = 0"),
            (base().replace("[card]", "writeback_age_ms = 0\n[card]") + &peer(0) + &peer(2), "writeback_age_ms = 0"),
            (base().replace("[card]", "writeback_age_ms = 60001\n[card]") + &peer(0) + &peer(2), "1 to 60000"),
            (base().replace("[card]", "epoch = 0\n[card]") + &peer(0) + &peer(2), "epoch = 0"),
            (base().replace("[card]", "colour = 1\n[card]"), "unknown field"),
            (base().replace("[card]\nlink = \"127.0.0.1:0\"\n", ""), "missing field `card`"),
            (base() + "backend = \"fpga\"\n", "unknown variant"),
            (base().replace("[card]", "rendezvous = \"/tmp\"\n[card]") + &peer(0) + &peer(2), "not both"),
        ];
        for (text, want) in cases {
            let e = check(&text).expect_err(&text);
            assert!(e.contains(want), "{text}\n-> {e}\n(wanted {want})");
        }
    }

    /// The link key file: 32 hex digits, readable by its owner only; anything else is refused
    /// with the file's name and the reason.
    #[test]
    fn the_link_key_is_checked_before_use() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let card = |path: &Path| CardConfig {
            backend: CardKind::Model,
            link: "127.0.0.1:0".parse().unwrap(),
            link_key: Some(path.to_path_buf()),
        };
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let good = write("good", "000102030405060708090a0b0c0d0e0f\n", 0o600);
        let key = card(&good).load_link_key().unwrap().unwrap();
        assert_eq!(key.0, [0x0302_0100, 0x0706_0504, 0x0b0a_0908, 0x0f0e_0d0c]);
        assert_eq!(key.to_hex(), "000102030405060708090a0b0c0d0e0f");
        assert_eq!(format!("{key:?}"), "LinkKey(..)", "Debug hides the key");
        for (name, text, mode, want) in [
            ("open", "000102030405060708090a0b0c0d0e0f", 0o644, "owner only"),
            ("short", "0001", 0o600, "32 hexadecimal digits"),
            ("garbage", "zz0102030405060708090a0b0c0d0e0f", 0o600, "32 hexadecimal digits"),
        ] {
            let e = card(&write(name, text, mode)).load_link_key().unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(name), "{name}: {e}");
        }
        let e = card(&dir.path().join("missing")).load_link_key().unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        let none = CardConfig { link_key: None, ..card(&good) };
        assert!(none.load_link_key().unwrap().is_none());
    }

    #[test]
    fn members_must_belong_to_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::raid::assemble::CreateOptions::new(crate::raid::Level::Raid1, 2, 4 << 20);
        crate::raid::assemble::create(dir.path(), &opts).unwrap();
        let stranger = dir.path().join("stranger.img");
        std::fs::write(&stranger, vec![0u8; 4096]).unwrap();
        let first = crate::raid::assemble::member_path(dir.path(), 0);
        let mk = |m: &Path| {
            format!(
                "node = 0\nnodes = 1\ngroup = {:?}\nmembers = [{:?}]\nnbd = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nfabric = \"127.0.0.1:0\"\n[card]\nlink = \"127.0.0.1:0\"\n",
                dir.path(),
                m
            )
        };
        check(&mk(&first)).unwrap();
        let e = check(&mk(&stranger)).unwrap_err();
        assert!(e.contains("is not a member of the group"), "{e}");
    }
}
