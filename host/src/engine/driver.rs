//! The driver: discovers the card's register blocks by TYPE (refusing VERSION majors it does not
//! know), resets and initialises it, places the command, completion and event rings in DMA memory,
//! submits with posted doorbell writes only, and reaps completions and events from host memory by
//! their phase bits. Register reads happen only at setup and in explicit health checks.

use super::{Backend, EngineError};
use amf_hdl_model::gen::regs;
use amf_hdl_model::gen::structs::{Command, Completion, Event, Opcode};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::amf::io::PRESENCE_BUCKETS_LOG2_MAX;

/// The register block major version this driver speaks.
pub const KNOWN_MAJOR: u32 = 1;
/// Most blocks a chain may have before it is declared broken.
const CHAIN_BLOCKS_MAX: u32 = 64;
/// Bytes per descriptor.
const ENTRY_BYTES: u64 = 32;
/// Cycles a simulated card runs per polling step.
const POLL_CYCLES: u64 = 64;

/// Settings of one card.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// This node's id (0..=7).
    pub node: u8,
    /// Mask of the cluster's nodes (this one included).
    pub peers: u8,
    /// Membership epoch.
    pub epoch: u32,
    /// Entries per ring = 2^ring_log2 (4..=12).
    pub ring_log2: u32,
    /// Card cycles a broadcast waits for acks.
    pub ack_timeout_cycles: u32,
    /// Card cycles between heartbeats (0: none).
    pub heartbeat_cycles: u32,
    /// The cluster's link key (link_auth block): frames are sealed and checked under it. None
    /// leaves the link unauthenticated.
    pub link_key: Option<LinkKey>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            node: 0,
            peers: 1,
            epoch: 1,
            ring_log2: 8,
            ack_timeout_cycles: 100_000,
            heartbeat_cycles: 0,
            link_key: None,
        }
    }
}

/// A 128-bit link key as the four little-endian words of link_auth.key_0..3. Its Debug output
/// hides the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LinkKey(pub [u32; 4]);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

impl LinkKey {
    /// The key from its 16 bytes.
    pub fn from_bytes(b: [u8; 16]) -> LinkKey {
        LinkKey(std::array::from_fn(|i| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])))
    }

    /// The key from 32 hexadecimal digits (surrounding whitespace ignored).
    pub fn parse_hex(text: &str) -> Result<LinkKey, String> {
        let t = text.trim();
        if t.len() != 32 || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("a link key is 32 hexadecimal digits (128 bits); found {} characters", t.len()));
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(LinkKey::from_bytes(b))
    }

    /// 32 hexadecimal digits, as [`LinkKey::parse_hex`] reads them.
    pub fn to_hex(&self) -> String {
        self.0.iter().flat_map(|w| w.to_le_bytes()).map(|b| format!("{b:02x}")).collect()
    }
}

/// Offsets of the blocks the driver uses, found by walking the chain.
#[derive(Clone, Copy, Debug)]
pub struct Blocks {
    /// device block.
    pub device: u32,
    /// cmd_ring block.
    pub cmd: u32,
    /// cpl_ring block.
    pub cpl: u32,
    /// evt_ring block.
    pub evt: u32,
    /// stats block.
    pub stats: u32,
    /// link_auth block (cards before it have none).
    pub link_auth: Option<u32>,
    /// sharer_table block and its minor version (1.1 added the presence filter).
    pub sharer_table: Option<(u32, u32)>,
}

/// Walks TYPE/VERSION/NEXT from offset 0 and finds the blocks the driver needs.
pub fn discover(b: &dyn Backend) -> Result<Blocks, EngineError> {
    let mut found: HashMap<u32, (u32, u32)> = HashMap::new();
    let mut at = 0u32;
    for _ in 0..CHAIN_BLOCKS_MAX {
        let type_id = b.read32(at + regs::header::TYPE);
        if type_id == u32::MAX {
            return Err(EngineError::BrokenChain(at));
        }
        let version = b.read32(at + regs::header::VERSION);
        if let Some(info) = regs::BLOCKS.iter().find(|x| x.type_id == type_id) {
            if version >> 16 != KNOWN_MAJOR {
                return Err(EngineError::Version { block: info.name, found: version, known: KNOWN_MAJOR });
            }
            found.entry(type_id).or_insert((at, version & 0xffff));
        }
        let next = b.read32(at + regs::header::NEXT);
        if next == 0 {
            let get = |name: &'static str, t: u32| found.get(&t).map(|f| f.0).ok_or(EngineError::MissingBlock(name, t));
            return Ok(Blocks {
                device: get("device", regs::device::TYPE)?,
                cmd: get("cmd_ring", regs::cmd_ring::TYPE)?,
                cpl: get("cpl_ring", regs::cpl_ring::TYPE)?,
                evt: get("evt_ring", regs::evt_ring::TYPE)?,
                stats: get("stats", regs::stats::TYPE)?,
                link_auth: found.get(&regs::link_auth::TYPE).map(|f| f.0),
                sharer_table: found.get(&regs::sharer_table::TYPE).copied(),
            });
        }
        // Blocks only move forward, block-aligned, inside a plausible BAR.
        if next <= at || !next.is_multiple_of(regs::BLOCK_BYTES) || next >= CHAIN_BLOCKS_MAX * regs::BLOCK_BYTES {
            return Err(EngineError::BrokenChain(at));
        }
        at = next;
    }
    Err(EngineError::BrokenChain(at))
}

/// Loads the link key and turns authentication on, or turns it off without a key. A card
/// without the link_auth block cannot take a key; one whose enable bit does not read back is
/// not trusted with it either.
fn set_link_key(b: &dyn Backend, blocks: &Blocks, key: Option<LinkKey>) -> Result<(), EngineError> {
    let Some(key) = key else {
        if let Some(at) = blocks.link_auth {
            b.write32(at + regs::link_auth::ctrl::OFFSET, 0);
        }
        return Ok(());
    };
    let at = blocks.link_auth.ok_or(EngineError::MissingBlock("link_auth", regs::link_auth::TYPE))?;
    let offsets = [
        regs::link_auth::key_0::OFFSET,
        regs::link_auth::key_1::OFFSET,
        regs::link_auth::key_2::OFFSET,
        regs::link_auth::key_3::OFFSET,
    ];
    for (off, word) in offsets.iter().zip(key.0) {
        b.write32(at + off, word);
    }
    let on = regs::link_auth::ctrl::enable::set(0, 1);
    b.write32(at + regs::link_auth::ctrl::OFFSET, on);
    if b.read32(at + regs::link_auth::ctrl::OFFSET) != on {
        return Err(EngineError::LinkAuth);
    }
    Ok(())
}

/// One card under the driver.
pub struct Driver<B: Backend> {
    b: B,
    blocks: Blocks,
    cfg: DriverConfig,
    cmd_base: u64,
    cpl_base: u64,
    evt_base: u64,
    cmd_prod: u32,
    cpl_cons: u32,
    evt_cons: u32,
    next_tag: u32,
    inflight: HashMap<u32, Instant>,
    /// Where the card writes its command consumer index.
    cons_addr: u64,
}

impl<B: Backend> Driver<B> {
    /// Discovers, resets and initialises the card and its rings, then enables it.
    pub fn open(b: B, cfg: DriverConfig) -> Result<Driver<B>, EngineError> {
        let blocks = discover(&b)?;
        let dev = blocks.device;
        b.write32(dev + regs::device::ctrl::OFFSET, regs::device::ctrl::soft_reset::set(0, 1));
        let status = b.read32(dev + regs::device::status::OFFSET);
        if regs::device::status::ready::get(status) != 1 || status == u32::MAX {
            return Err(EngineError::NotReady);
        }
        let ring_bytes = (1usize << cfg.ring_log2) * ENTRY_BYTES as usize;
        let alloc = |n| b.dma_alloc(n).map_err(EngineError::Dma);
        let (cmd_base, cpl_base, evt_base) = (alloc(ring_bytes)?, alloc(ring_bytes)?, alloc(ring_bytes)?);
        let cons_addr = alloc(64)?;
        let node = regs::device::node::peers::set(regs::device::node::id::set(0, cfg.node as u32), cfg.peers as u32);
        b.write32(dev + regs::device::node::OFFSET, node);
        b.write32(dev + regs::device::epoch::OFFSET, cfg.epoch);
        b.write32(dev + regs::device::ack_timeout::OFFSET, cfg.ack_timeout_cycles);
        b.write32(dev + regs::device::heartbeat_period::OFFSET, cfg.heartbeat_cycles);
        set_link_key(&b, &blocks, cfg.link_key)?;
        for (block, base) in [(blocks.cmd, cmd_base), (blocks.cpl, cpl_base), (blocks.evt, evt_base)] {
            // base_lo, base_hi and size_log2 sit at the same offsets in the three ring blocks.
            b.write32(block + regs::cmd_ring::base_lo::OFFSET, base as u32);
            b.write32(block + regs::cmd_ring::base_hi::OFFSET, (base >> 32) as u32);
            b.write32(block + regs::cmd_ring::size_log2::OFFSET, cfg.ring_log2);
        }
        if b.interrupt().is_some() {
            // Interrupt on completions, events and errors; the driver clears the causes (a
            // posted write) before it reaps, so the next one raises the line again.
            let all = regs::device::irq::completion::set(0, 1)
                | regs::device::irq::event::set(0, 1)
                | regs::device::irq::error::set(0, 1);
            b.write32(dev + regs::device::irq_enable::OFFSET, all);
        }
        b.write32(blocks.cmd + regs::cmd_ring::cons_addr_lo::OFFSET, cons_addr as u32);
        b.write32(blocks.cmd + regs::cmd_ring::cons_addr_hi::OFFSET, (cons_addr >> 32) as u32);
        b.write32(dev + regs::device::ctrl::OFFSET, regs::device::ctrl::enable::set(0, 1));
        let drv = Driver {
            b,
            blocks,
            cfg,
            cmd_base,
            cpl_base,
            evt_base,
            cmd_prod: 0,
            cpl_cons: 0,
            evt_cons: 0,
            next_tag: 1,
            inflight: HashMap::new(),
            cons_addr,
        };
        drv.check_health()?;
        Ok(drv)
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.b
    }

    /// Commands submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn ring_size(&self) -> u32 {
        1 << self.cfg.ring_log2
    }

    /// Commands in the ring the card has not fetched yet (it writes its consumer index to host
    /// memory, so this is no MMIO read).
    pub fn unfetched(&self) -> Result<u32, EngineError> {
        let mut b = [0u8; 4];
        self.b.dma_read(self.cons_addr, &mut b).map_err(EngineError::Dma)?;
        Ok(self.cmd_prod.wrapping_sub(u32::from_le_bytes(b)))
    }

    /// The membership epoch commands carry.
    pub fn epoch(&self) -> u32 {
        self.cfg.epoch
    }

    /// Moves the card to a new membership: `epoch` and the `peers` mask (this node's bit
    /// included). Commands already in the ring carry the old epoch and would come back
    /// refused: call it only when [`Driver::unfetched`] is 0 (acquires the card runs already
    /// finish: answers from a peer that left never come, so they time out).
    pub fn set_view(&mut self, epoch: u32, peers: u8) {
        let dev = self.blocks.device;
        let node = regs::device::node::peers::set(regs::device::node::id::set(0, self.cfg.node as u32), peers as u32);
        self.b.write32(dev + regs::device::node::OFFSET, node);
        self.b.write32(dev + regs::device::epoch::OFFSET, epoch);
        self.cfg.epoch = epoch;
        self.cfg.peers = peers;
    }

    /// Buckets of the card's presence filter, log2; 0 for a card without one (its sharer_table
    /// block is older than 1.1). A value past what a resource id can index is refused as 0.
    pub fn presence_buckets_log2(&self) -> u32 {
        let Some(at) = self.presence_block() else { return 0 };
        let v = self.b.read32(at + regs::sharer_table::presence::OFFSET);
        let log2 = regs::sharer_table::presence::buckets_log2::get(v);
        if v == u32::MAX || log2 > PRESENCE_BUCKETS_LOG2_MAX {
            0
        } else {
            log2
        }
    }

    /// Peers' requests the card's presence filter answered without this host (0 without one).
    pub fn presence_filtered(&self) -> u32 {
        self.presence_block().map_or(0, |at| self.b.read32(at + regs::sharer_table::filtered::OFFSET))
    }

    /// The sharer_table block, when it is new enough (minor 1) to have the presence filter.
    fn presence_block(&self) -> Option<u32> {
        self.blocks.sharer_table.filter(|(_, minor)| *minor >= 1).map(|(at, _)| at)
    }

    /// Slow path: reads device.status and turns a card error into an error.
    pub fn check_health(&self) -> Result<(), EngineError> {
        let status = self.b.read32(self.blocks.device + regs::device::status::OFFSET);
        if status == u32::MAX {
            return Err(EngineError::NotReady);
        }
        match regs::device::status::error_code::get(status) {
            0 => Ok(()),
            code => Err(EngineError::Card(code)),
        }
    }

    /// Queues a command with one posted doorbell write; returns its tag. Back-pressure: at most
    /// ring size - 1 commands in flight (a completion slot is always free for each).
    pub fn submit(&mut self, opcode: Opcode, resource: u64) -> Result<u32, EngineError> {
        self.submit_with(opcode, resource, false, false)
    }

    /// Like [`Driver::submit`]; with `wait`, an acquire waits for each receiver's host to
    /// yield (the lock semantics of the AMF state machine).
    /// `wait`: the acquire waits for the receivers' hosts (`hold`); `filtered`: a line's acquire,
    /// which sets its presence bit and lets receivers answer from their presence filters.
    pub fn submit_with(
        &mut self,
        opcode: Opcode,
        resource: u64,
        wait: bool,
        filtered: bool,
    ) -> Result<u32, EngineError> {
        if self.inflight.len() as u32 >= self.ring_size() - 1 {
            return Err(EngineError::Busy(self.inflight.len()));
        }
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        let cmd = Command {
            opcode: opcode as u8,
            hold: wait as u8,
            filtered: filtered as u8,
            tag,
            resource,
            epoch: self.cfg.epoch,
            ..Default::default()
        };
        let slot = self.cmd_base + (self.cmd_prod & (self.ring_size() - 1)) as u64 * ENTRY_BYTES;
        self.b.dma_write(slot, &cmd.encode()).map_err(EngineError::Dma)?;
        self.cmd_prod = self.cmd_prod.wrapping_add(1);
        self.b.write32(self.blocks.cmd + regs::cmd_ring::doorbell::OFFSET, self.cmd_prod);
        self.inflight.insert(tag, Instant::now());
        Ok(tag)
    }

    fn take_ring<T>(
        &mut self,
        base: u64,
        completions: bool,
        decode: impl Fn(&[u8; 32]) -> (u8, T),
    ) -> Result<Vec<T>, EngineError> {
        let mut out = Vec::new();
        loop {
            let cons = if completions { self.cpl_cons } else { self.evt_cons };
            let slot = base + (cons & (self.ring_size() - 1)) as u64 * ENTRY_BYTES;
            let mut b = [0u8; 32];
            self.b.dma_read(slot, &mut b).map_err(EngineError::Dma)?;
            let (phase, item) = decode(&b);
            if phase != ((cons >> self.cfg.ring_log2) & 1 == 0) as u8 {
                break;
            }
            out.push(item);
            if completions {
                self.cpl_cons = cons.wrapping_add(1);
            } else {
                self.evt_cons = cons.wrapping_add(1);
            }
            if out.len() as u32 >= self.ring_size() {
                break;
            }
        }
        if !out.is_empty() {
            let (block, value) = if completions {
                (self.blocks.cpl + regs::cpl_ring::doorbell::OFFSET, self.cpl_cons)
            } else {
                (self.blocks.evt + regs::evt_ring::doorbell::OFFSET, self.evt_cons)
            };
            self.b.write32(block, value);
        }
        Ok(out)
    }

    /// Clears the card's interrupt causes before a reap (interrupt-driven backends only):
    /// whatever the card writes after this raises the line again.
    pub fn ack_interrupt(&self) {
        if self.b.interrupt().is_some() {
            self.b.write32(self.blocks.device + regs::device::irq::OFFSET, u32::MAX);
            self.b.interrupt_ack();
        }
    }

    /// New completions, found by phase bit; their tags leave the in-flight set.
    pub fn reap(&mut self) -> Result<Vec<Completion>, EngineError> {
        let done = self.take_ring(self.cpl_base, true, |b| {
            let c = Completion::decode(b);
            (c.phase, c)
        })?;
        for c in &done {
            if self.inflight.remove(&c.tag).is_none() {
                return Err(EngineError::UnknownTag(c.tag));
            }
        }
        Ok(done)
    }

    /// New events (invalidations, downgrades, peer liveness).
    pub fn events(&mut self) -> Result<Vec<Event>, EngineError> {
        Ok(self.events_indexed()?.into_iter().map(|(_, e)| e).collect())
    }

    /// New events with their position since reset (wrapping): event `i` came before a
    /// completion whose `events_before` is above `i`, after one whose is at or below it.
    pub fn events_indexed(&mut self) -> Result<Vec<(u32, Event)>, EngineError> {
        let first = self.evt_cons;
        let evs = self.take_ring(self.evt_base, false, |b| {
            let e = Event::decode(b);
            (e.phase, e)
        })?;
        Ok(evs.into_iter().enumerate().map(|(i, e)| (first.wrapping_add(i as u32), e)).collect())
    }

    /// Lets the card run one polling step (simulated cards advance their clock).
    pub fn poll(&self) {
        self.b.run(POLL_CYCLES);
    }

    /// Submits a command and waits for its completion (other completions reaped meanwhile are
    /// returned too), polling the card; `pump` runs between polls (a link, other cards).
    pub fn call(
        &mut self,
        opcode: Opcode,
        resource: u64,
        timeout: Duration,
        pump: &mut dyn FnMut(),
    ) -> Result<(Completion, Vec<Completion>), EngineError> {
        let tag = self.submit(opcode, resource)?;
        let start = Instant::now();
        let mut others = Vec::new();
        loop {
            self.poll();
            pump();
            for c in self.reap()? {
                if c.tag == tag {
                    return Ok((c, others));
                }
                others.push(c);
            }
            if start.elapsed() > timeout {
                self.inflight.remove(&tag);
                return Err(EngineError::Timeout { tag, waited_ms: start.elapsed().as_millis() as u64 });
            }
        }
    }
}
