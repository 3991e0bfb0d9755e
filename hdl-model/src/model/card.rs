//! Reference model of the whole card at transaction level: BAR0 registers, the command,
//! completion and event rings in host memory, link frames, the sharer table, broadcasts with ack
//! collection and timeouts, conflict ordering (docs/protocol.md), heartbeats. Time is counted in
//! card clock cycles so timeouts match the RTL.

use super::link_auth::{self, link_seal, Window, WireFrame};
use super::ring::{RingError, RingReader, RingWriter};
use super::sharer_table::SharerTable;
use crate::gen::regs;
use crate::gen::structs::{Command, Completion, Event, EventKind, FrameKind, LinkFrame, Opcode, Status};
use std::collections::VecDeque;

/// Host memory as the card's DMA engine sees it.
pub trait HostMemory {
    /// Reads `buf.len()` bytes at a DMA address.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Writes bytes at a DMA address.
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), DmaError>;
}

/// A DMA access the host memory refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("DMA access to {addr:#x} (+{len}) refused")]
pub struct DmaError {
    /// Address.
    pub addr: u64,
    /// Length.
    pub len: usize,
}

/// Most nodes a cluster has (sharer masks are 8 bits).
pub const NODES_MAX: u8 = 8;
/// Commands in flight (waiting for acks) at once.
pub const INFLIGHT_MAX: usize = 16;
/// Received frames held while the event ring is full.
pub const DEFERRED_MAX: usize = 64;
/// Retries of an acquire that lost a conflict before it completes with status `conflict`.
pub const RETRIES_MAX: u8 = 16;
/// Requests held for the host (`hold`) at once; past it a request is refused with a nack and
/// its sender retries. 16 overflowed with 8 controllers of 3 clients each (nack storms: 100-200
/// card frames per operation in `amf bench cluster`); the RTL's `OwedMax` is the same.
pub const OWED_MAX: usize = 32;
/// Cycles of back-off per retry.
pub const BACKOFF_CYCLES: u64 = 64;
/// Heartbeat periods of silence before a peer is reported down.
pub const DOWN_PERIODS: u64 = 4;
/// Largest retry count a completion reports (its `retries` field saturates).
pub const RETRIES_REPORTED_MAX: u8 = (1 << crate::gen::structs::Completion::RETRIES_BITS) - 1;
/// Sharer table shape of the model (the RTL's default parameters).
pub const TABLE_SETS_LOG2: u32 = 6;
/// Ways of the model's table.
pub const TABLE_WAYS: usize = 4;
/// Buckets of the presence filter (the RTL's default `PresenceLog2`): a line's bucket is its
/// resource id modulo 2^this.
pub const PRESENCE_BUCKETS_LOG2: u32 = 14;

/// A frame leaving the card: one transmit slot, delivered by the link to every node in
/// `dst_mask` (multicast).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Destination nodes (bit n: node n), as in the frame's dst field.
    pub dst_mask: u8,
    /// The frame as the link carries it (link frame, then seal).
    pub bytes: WireFrame,
}

/// An acquire, search or other command waiting for answers.
#[derive(Clone, Debug)]
struct Pending {
    cmd: Command,
    kind: FrameKind,
    seq: u32,
    stamp: u32,
    targets: u8,
    answered: u8,
    sharers_seen: u8,
    owner_seen: u8,
    start: u64,
    deadline: u64,
    retries: u8,
    /// Lost a conflict: retry at `retry_at` instead of completing.
    aborted: bool,
    retry_at: Option<u64>,
}

/// A peer's request (sent with `hold`) that is answered when the host yields the resource.
#[derive(Clone, Copy, Debug)]
struct Owed {
    resource: u64,
    src: u8,
    seq: u32,
    stamp: u32,
    exclusive: bool,
}

/// Counters of the stats block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames sent.
    pub frames_tx: u32,
    /// Frames accepted.
    pub frames_rx: u32,
    /// Dropped: bad CRC.
    pub crc_errors: u32,
    /// Dropped: other epoch.
    pub stale_epoch: u32,
    /// Dropped: bad kind or field.
    pub malformed: u32,
    /// Commands with a bad opcode.
    pub bad_commands: u32,
    /// Acquires that broadcast.
    pub broadcasts: u32,
    /// Acquires decided locally.
    pub broadcasts_skipped: u32,
    /// Broadcasts completed with peers missing.
    pub ack_timeouts: u32,
    /// Dropped: MAC did not verify.
    pub forged: u32,
    /// Dropped: counter already seen in this epoch.
    pub replayed: u32,
    /// Peers' requests the presence filter answered without the host.
    pub filtered: u32,
}

/// One card (cloned by tests that look ahead).
#[derive(Clone)]
pub struct Card {
    ctrl_enable: bool,
    node: u32,
    epoch: u32,
    ack_timeout: u32,
    heartbeat_period: u32,
    irq: u32,
    irq_enable: u32,
    scratch: u32,
    error_code: u32,
    cmd: RingReader,
    cpl: RingWriter,
    evt: RingWriter,
    table: SharerTable,
    stats: Stats,
    cycle: u64,
    clock: u32,
    next_seq: u32,
    pending: Vec<Pending>,
    /// Slots as in the RTL (lowest free slot first, answered in slot order).
    owed: [Option<Owed>; OWED_MAX],
    deferred: VecDeque<LinkFrame>,
    out: Vec<Outgoing>,
    last_seen: [u64; NODES_MAX as usize],
    peer_up: u8,
    next_heartbeat: u64,
    /// Events posted since reset (reported in every completion).
    events_posted: u32,
    /// link_auth.ctrl.enable.
    auth_enable: bool,
    /// link_auth.key_0..3.
    key: [u32; 4],
    /// Frames sealed in this epoch.
    tx_counter: u64,
    /// Counters accepted in this epoch, per sender.
    windows: [Window; NODES_MAX as usize],
    /// The presence filter's bits, one per bucket: the host may hold or be acquiring a line
    /// there. Kept across a soft reset, as block RAM is (a stale set bit only costs a message).
    presence: Vec<u64>,
    /// The filter answers `filtered` requests (`filter_on`; off at an epoch write or reset).
    filter_on: bool,
    /// Buckets of the filter, log2 (the RTL's `PresenceLog2`).
    presence_log2: u32,
}

impl Default for Card {
    fn default() -> Self {
        Self::new()
    }
}

fn crc(bytes: &[u8; 32]) -> u32 {
    crc32c::crc32c(&bytes[..28])
}

/// What the receive path decides about a frame, in check order (the RTL's `amf_frame_check`
/// uses the same codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    /// Accept.
    Ok = 0,
    /// CRC-32C of bytes 0..28 does not match.
    BadCrc = 1,
    /// Unknown kind, impossible source, or not addressed to this node.
    Malformed = 2,
    /// Another membership epoch.
    StaleEpoch = 3,
    /// The MAC does not verify under the link key (link_auth enabled).
    Forged = 4,
    /// A counter of the current epoch the sender's window has seen (link_auth enabled).
    Replayed = 5,
}

/// What a receiving card checks a seal against: its key and its senders' windows.
#[derive(Clone, Copy, Debug)]
pub struct Auth<'a> {
    /// link_auth.key_0..3.
    pub key: [u32; 4],
    /// Counters accepted per sender in this epoch.
    pub windows: &'a [Window; NODES_MAX as usize],
}

/// Classifies a frame as the link carries it: the checks of [`classify`], then with `auth` the
/// MAC (before the epoch, so that a frame from outside the cluster counts as forged whatever
/// epoch it names) and, for a frame of the current epoch, its sender's window.
pub fn classify_wire(wire: &WireFrame, node: u8, peers: u8, epoch: u32, auth: Option<Auth>) -> Verdict {
    let raw = link_auth::head(wire);
    let v = classify(&raw, node, peers, epoch);
    let Some(auth) = auth else { return v };
    if matches!(v, Verdict::BadCrc | Verdict::Malformed) {
        return v;
    }
    if !link_auth::verifies(wire, auth.key) {
        return Verdict::Forged;
    }
    if v != Verdict::Ok {
        return v;
    }
    let src = LinkFrame::decode(&raw).src;
    if !auth.windows[src as usize % NODES_MAX as usize].is_new(link_seal(wire).counter) {
        return Verdict::Replayed;
    }
    Verdict::Ok
}

/// Classifies a received frame for node `node` whose cluster is `peers` (a mask that may include
/// the node itself) in epoch `epoch`.
pub fn classify(raw: &[u8; 32], node: u8, peers: u8, epoch: u32) -> Verdict {
    let f = LinkFrame::decode(raw);
    if f.crc != crc(raw) {
        return Verdict::BadCrc;
    }
    let others = peers & !(1u8 << (node & 7));
    if FrameKind::from_raw(f.kind).is_none()
        || f.src >= NODES_MAX
        || others & (1 << f.src) == 0
        || f.dst & (1 << (node & 7)) == 0
    {
        return Verdict::Malformed;
    }
    if f.epoch != epoch {
        return Verdict::StaleEpoch;
    }
    Verdict::Ok
}

impl Card {
    /// A card out of reset, with the card's presence filter (2^`PRESENCE_BUCKETS_LOG2` buckets).
    pub fn new() -> Card {
        Card::with_presence_buckets_log2(PRESENCE_BUCKETS_LOG2)
    }

    /// A card whose presence filter has 2^`log2` buckets (1..=20), as the RTL's `PresenceLog2`
    /// parameter makes one: the simulator makes lines share buckets with a small filter.
    pub fn with_presence_buckets_log2(log2: u32) -> Card {
        let log2 = log2.clamp(1, 20);
        Card {
            ctrl_enable: false,
            node: 0,
            epoch: 0,
            ack_timeout: regs::device::ack_timeout::RESET,
            heartbeat_period: regs::device::heartbeat_period::RESET,
            irq: 0,
            irq_enable: 0,
            scratch: 0,
            error_code: 0,
            cmd: RingReader { size_log2: regs::cmd_ring::size_log2::RESET, ..RingReader::default() },
            cpl: RingWriter { size_log2: regs::cpl_ring::size_log2::RESET, ..RingWriter::default() },
            evt: RingWriter { size_log2: regs::evt_ring::size_log2::RESET, ..RingWriter::default() },
            table: SharerTable::new(TABLE_SETS_LOG2, TABLE_WAYS),
            stats: Stats::default(),
            cycle: 0,
            clock: 0,
            next_seq: 1,
            pending: Vec::new(),
            owed: [None; OWED_MAX],
            deferred: VecDeque::new(),
            out: Vec::new(),
            last_seen: [0; NODES_MAX as usize],
            peer_up: 0,
            next_heartbeat: 0,
            events_posted: 0,
            auth_enable: false,
            key: [0; 4],
            tx_counter: 0,
            windows: [Window::default(); NODES_MAX as usize],
            presence: vec![0; (1usize << log2).div_ceil(64)],
            filter_on: false,
            presence_log2: log2,
        }
    }

    /// The presence bucket of resource `r` and its bit.
    fn bucket(&self, r: u64) -> (usize, u64) {
        let b = (r & ((1u64 << self.presence_log2) - 1)) as usize;
        (b / 64, 1u64 << (b % 64))
    }

    fn set_present(&mut self, r: u64, on: bool) {
        let (w, bit) = self.bucket(r);
        if on {
            self.presence[w] |= bit;
        } else {
            self.presence[w] &= !bit;
        }
    }

    /// Whether the presence filter answers a `filtered` request for `r` itself.
    fn filters(&self, r: u64) -> bool {
        let (w, bit) = self.bucket(r);
        self.filter_on && self.presence[w] & bit == 0
    }

    fn node_id(&self) -> u8 {
        regs::device::node::id::get(self.node) as u8
    }

    fn peers(&self) -> u8 {
        regs::device::node::peers::get(self.node) as u8 & !(1 << self.node_id())
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Cycles run.
    pub fn cycle(&self) -> u64 {
        self.cycle
    }

    fn status(&self) -> u32 {
        let s = regs::device::status::ready::set(0, 1);
        let s = regs::device::status::ring_error::set(s, (self.error_code != 0) as u32);
        regs::device::status::error_code::set(s, self.error_code)
    }

    fn fail(&mut self, code: u32) {
        if self.error_code == 0 {
            self.error_code = code;
            self.irq |= 1 << regs::device::irq::error::LSB;
        }
    }

    /// A 32-bit MMIO read of BAR0. Unmapped offsets inside the BAR read 0, outside all-ones
    /// (as a PCIe read of nothing would).
    pub fn mmio_read(&self, addr: u32) -> u32 {
        if addr >= regs::BAR_BYTES || !addr.is_multiple_of(4) {
            return u32::MAX;
        }
        let bi = (addr / regs::BLOCK_BYTES) as usize;
        let b = &regs::BLOCKS[bi];
        let off = addr % regs::BLOCK_BYTES;
        match off {
            regs::header::TYPE => return b.type_id,
            regs::header::VERSION => return b.version,
            regs::header::NEXT => {
                return if bi + 1 < regs::BLOCKS.len() { regs::BLOCKS[bi + 1].base } else { 0 };
            }
            _ => {}
        }
        use regs::*;
        match (b.type_id, off) {
            (device::TYPE, device::ctrl::OFFSET) => self.ctrl_enable as u32,
            (device::TYPE, device::status::OFFSET) => self.status(),
            (device::TYPE, device::node::OFFSET) => self.node,
            (device::TYPE, device::epoch::OFFSET) => self.epoch,
            (device::TYPE, device::ack_timeout::OFFSET) => self.ack_timeout,
            (device::TYPE, device::heartbeat_period::OFFSET) => self.heartbeat_period,
            (device::TYPE, device::irq::OFFSET) => self.irq,
            (device::TYPE, device::irq_enable::OFFSET) => self.irq_enable,
            (device::TYPE, device::scratch::OFFSET) => self.scratch,
            (cmd_ring::TYPE, cmd_ring::base_lo::OFFSET) => self.cmd.base as u32,
            (cmd_ring::TYPE, cmd_ring::base_hi::OFFSET) => (self.cmd.base >> 32) as u32,
            (cmd_ring::TYPE, cmd_ring::size_log2::OFFSET) => self.cmd.size_log2,
            (cmd_ring::TYPE, cmd_ring::cons_addr_lo::OFFSET) => self.cmd.cons_addr as u32,
            (cmd_ring::TYPE, cmd_ring::cons_addr_hi::OFFSET) => (self.cmd.cons_addr >> 32) as u32,
            (cpl_ring::TYPE, cpl_ring::base_lo::OFFSET) => self.cpl.base as u32,
            (cpl_ring::TYPE, cpl_ring::base_hi::OFFSET) => (self.cpl.base >> 32) as u32,
            (cpl_ring::TYPE, cpl_ring::size_log2::OFFSET) => self.cpl.size_log2,
            (evt_ring::TYPE, evt_ring::base_lo::OFFSET) => self.evt.base as u32,
            (evt_ring::TYPE, evt_ring::base_hi::OFFSET) => (self.evt.base >> 32) as u32,
            (evt_ring::TYPE, evt_ring::size_log2::OFFSET) => self.evt.size_log2,
            (sharer_table::TYPE, sharer_table::geometry::OFFSET) => {
                let g = sharer_table::geometry::sets_log2::set(0, TABLE_SETS_LOG2);
                sharer_table::geometry::ways::set(g, TABLE_WAYS as u32)
            }
            (sharer_table::TYPE, sharer_table::occupancy::OFFSET) => self.table.occupancy(),
            (sharer_table::TYPE, sharer_table::full_fallbacks::OFFSET) => self.table.full_fallbacks(),
            (sharer_table::TYPE, sharer_table::presence::OFFSET) => {
                let p = sharer_table::presence::buckets_log2::set(0, self.presence_log2);
                sharer_table::presence::on::set(p, self.filter_on as u32)
            }
            (sharer_table::TYPE, sharer_table::filtered::OFFSET) => self.stats.filtered,
            (stats::TYPE, stats::frames_tx::OFFSET) => self.stats.frames_tx,
            (stats::TYPE, stats::frames_rx::OFFSET) => self.stats.frames_rx,
            (stats::TYPE, stats::crc_errors::OFFSET) => self.stats.crc_errors,
            (stats::TYPE, stats::stale_epoch::OFFSET) => self.stats.stale_epoch,
            (stats::TYPE, stats::malformed::OFFSET) => self.stats.malformed,
            (stats::TYPE, stats::bad_commands::OFFSET) => self.stats.bad_commands,
            (stats::TYPE, stats::broadcasts::OFFSET) => self.stats.broadcasts,
            (stats::TYPE, stats::broadcasts_skipped::OFFSET) => self.stats.broadcasts_skipped,
            (stats::TYPE, stats::ack_timeouts::OFFSET) => self.stats.ack_timeouts,
            (stats::TYPE, stats::forged::OFFSET) => self.stats.forged,
            (stats::TYPE, stats::replayed::OFFSET) => self.stats.replayed,
            (link_auth::TYPE, link_auth::ctrl::OFFSET) => self.auth_enable as u32,
            _ => 0,
        }
    }

    /// A 32-bit MMIO write of BAR0 (posted: no answer). Writes to read-only or unmapped
    /// offsets are ignored.
    pub fn mmio_write(&mut self, addr: u32, value: u32) {
        if addr >= regs::BAR_BYTES || !addr.is_multiple_of(4) {
            return;
        }
        let b = &regs::BLOCKS[(addr / regs::BLOCK_BYTES) as usize];
        let off = addr % regs::BLOCK_BYTES;
        let lo = |x: u64| (x & !0xffff_ffff) | value as u64;
        let hi = |x: u64| (x & 0xffff_ffff) | (value as u64) << 32;
        use regs::*;
        match (b.type_id, off) {
            (device::TYPE, device::ctrl::OFFSET) => {
                self.ctrl_enable = device::ctrl::enable::get(value) == 1;
                if device::ctrl::soft_reset::get(value) == 1 {
                    self.soft_reset();
                }
            }
            (device::TYPE, device::node::OFFSET) => {
                self.node = value & (device::node::id::MASK | device::node::peers::MASK << device::node::peers::LSB)
            }
            (device::TYPE, device::epoch::OFFSET) => {
                if value != self.epoch {
                    // Counters are per epoch: a restarted controller joins under a new one.
                    self.tx_counter = 0;
                    self.windows = [Window::default(); NODES_MAX as usize];
                    // A new membership can give the host lines without commands (taken over
                    // from a dead controller's replicas): its bits are not the truth until it
                    // says so again.
                    self.filter_on = false;
                }
                self.epoch = value;
            }
            (device::TYPE, device::ack_timeout::OFFSET) => self.ack_timeout = value,
            (device::TYPE, device::heartbeat_period::OFFSET) => self.heartbeat_period = value,
            (device::TYPE, device::irq::OFFSET) => self.irq &= !value,
            (device::TYPE, device::irq_enable::OFFSET) => self.irq_enable = value & 7,
            (device::TYPE, device::scratch::OFFSET) => self.scratch = value,
            (cmd_ring::TYPE, cmd_ring::base_lo::OFFSET) => self.cmd.base = lo(self.cmd.base),
            (cmd_ring::TYPE, cmd_ring::base_hi::OFFSET) => self.cmd.base = hi(self.cmd.base),
            (cmd_ring::TYPE, cmd_ring::size_log2::OFFSET) => self.cmd.size_log2 = value,
            (cmd_ring::TYPE, cmd_ring::cons_addr_lo::OFFSET) => self.cmd.cons_addr = lo(self.cmd.cons_addr),
            (cmd_ring::TYPE, cmd_ring::cons_addr_hi::OFFSET) => self.cmd.cons_addr = hi(self.cmd.cons_addr),
            (cmd_ring::TYPE, cmd_ring::doorbell::OFFSET) => {
                if let Err(e) = self.cmd.doorbell(value) {
                    self.ring_failed(e);
                }
            }
            (cpl_ring::TYPE, cpl_ring::base_lo::OFFSET) => self.cpl.base = lo(self.cpl.base),
            (cpl_ring::TYPE, cpl_ring::base_hi::OFFSET) => self.cpl.base = hi(self.cpl.base),
            (cpl_ring::TYPE, cpl_ring::size_log2::OFFSET) => self.cpl.size_log2 = value,
            (cpl_ring::TYPE, cpl_ring::doorbell::OFFSET) => self.host_consumed(true, value),
            (evt_ring::TYPE, evt_ring::base_lo::OFFSET) => self.evt.base = lo(self.evt.base),
            (evt_ring::TYPE, evt_ring::base_hi::OFFSET) => self.evt.base = hi(self.evt.base),
            (evt_ring::TYPE, evt_ring::size_log2::OFFSET) => self.evt.size_log2 = value,
            (evt_ring::TYPE, evt_ring::doorbell::OFFSET) => self.host_consumed(false, value),
            (link_auth::TYPE, link_auth::ctrl::OFFSET) => self.auth_enable = link_auth::ctrl::enable::get(value) == 1,
            (link_auth::TYPE, link_auth::key_0::OFFSET) => self.key[0] = value,
            (link_auth::TYPE, link_auth::key_1::OFFSET) => self.key[1] = value,
            (link_auth::TYPE, link_auth::key_2::OFFSET) => self.key[2] = value,
            (link_auth::TYPE, link_auth::key_3::OFFSET) => self.key[3] = value,
            _ => {}
        }
    }

    fn host_consumed(&mut self, completions: bool, value: u32) {
        let ring = if completions { &mut self.cpl } else { &mut self.evt };
        if let Err(e) = ring.host_consumed(value) {
            self.ring_failed(e);
        }
    }

    fn ring_failed(&mut self, e: RingError) {
        self.fail(e.code());
    }

    fn soft_reset(&mut self) {
        self.cmd.reset();
        self.cpl.reset();
        self.evt.reset();
        self.table.clear();
        self.stats = Stats::default();
        self.pending.clear();
        self.owed = [None; OWED_MAX];
        self.deferred.clear();
        self.error_code = 0;
        self.irq = 0;
        self.peer_up = 0;
        self.events_posted = 0;
        self.filter_on = false;
    }

    /// True when the card would do something on `tick` without new input.
    pub fn busy(&self) -> bool {
        self.ctrl_enable
            && self.error_code == 0
            && (self.cmd.pending() || !self.pending.is_empty() || !self.deferred.is_empty())
    }

    /// The first cycle at which `tick` would do something without new input (a host write or
    /// a frame), or `None` when nothing is timed: a clock driving the model may sleep until
    /// then. At or before the current cycle when work waits now.
    pub fn next_due(&self) -> Option<u64> {
        if !self.ctrl_enable || self.error_code != 0 {
            return None;
        }
        if self.cmd.pending() || !self.deferred.is_empty() {
            return Some(self.cycle);
        }
        let timers = self.pending.iter().map(|p| p.retry_at.unwrap_or(p.deadline));
        let period = self.heartbeat_period as u64;
        let heartbeat = (period != 0).then_some(self.next_heartbeat);
        let down = Self::each_peer(self.peers() & self.peer_up)
            .filter(|_| period != 0)
            .map(|p| self.last_seen[p as usize] + DOWN_PERIODS * period + 1);
        timers.chain(heartbeat).chain(down).min()
    }

    /// The interrupt line (an MSI-X vector's trigger): a cause is set that the host enabled.
    pub fn irq_line(&self) -> bool {
        self.irq & self.irq_enable != 0
    }

    /// Frames the card sent since the last call.
    pub fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.out)
    }

    /// Sends one frame to every node in `dst_mask` (nothing when it is empty).
    fn send(&mut self, dst_mask: u8, mut f: LinkFrame) {
        if dst_mask == 0 {
            return;
        }
        f.src = self.node_id();
        f.dst = dst_mask;
        f.epoch = self.epoch;
        f.crc = crc(&f.encode());
        let key = if self.auth_enable {
            self.tx_counter += 1;
            Some(self.key)
        } else {
            None
        };
        let bytes = link_auth::seal(&f.encode(), key, self.tx_counter);
        self.stats.frames_tx = self.stats.frames_tx.wrapping_add(1);
        self.out.push(Outgoing { dst_mask, bytes });
    }

    fn each_peer(mask: u8) -> impl Iterator<Item = u8> {
        (0..NODES_MAX).filter(move |n| mask & (1 << n) != 0)
    }

    /// Advances the card by `cycles` clock cycles, serving host memory through `mem`.
    pub fn tick(&mut self, cycles: u64, mem: &mut dyn HostMemory) {
        self.cycle += cycles;
        if !self.ctrl_enable || self.error_code != 0 {
            return;
        }
        self.heartbeats(mem);
        while let Some(f) = self.deferred.pop_front() {
            if !self.handle_frame(f, mem) {
                self.deferred.push_front(f);
                break;
            }
        }
        self.expire(mem);
        self.fetch_commands(mem);
    }

    fn heartbeats(&mut self, mem: &mut dyn HostMemory) {
        let period = self.heartbeat_period as u64;
        if period == 0 {
            return;
        }
        if self.cycle >= self.next_heartbeat {
            self.next_heartbeat = self.cycle + period;
            self.send(self.peers(), LinkFrame { kind: FrameKind::Heartbeat as u8, ..Default::default() });
        }
        for p in Self::each_peer(self.peers() & self.peer_up) {
            if self.cycle > self.last_seen[p as usize] + DOWN_PERIODS * period {
                self.peer_up &= !(1 << p);
                self.post_event(mem, Event { kind: EventKind::PeerDown as u8, node: p, ..Default::default() });
            }
        }
    }

    /// Writes an event; false if the ring is full or failed (the caller retries later).
    fn post_event(&mut self, mem: &mut dyn HostMemory, e: Event) -> bool {
        match self.evt.post(mem, e.encode()) {
            Ok(true) => {
                self.events_posted = self.events_posted.wrapping_add(1);
                self.irq |= 1 << regs::device::irq::event::LSB;
                true
            }
            Ok(false) => false,
            Err(err) => {
                self.ring_failed(err);
                false
            }
        }
    }

    /// Writes a completion; command fetch reserved its slot.
    fn complete(&mut self, mem: &mut dyn HostMemory, mut c: Completion) {
        c.events_before = self.events_posted;
        match self.cpl.post(mem, c.encode()) {
            Ok(true) => self.irq |= 1 << regs::device::irq::completion::LSB,
            Ok(false) => self.ring_failed(RingError::DoorbellOverrun),
            Err(err) => self.ring_failed(err),
        }
    }

    fn fetch_commands(&mut self, mem: &mut dyn HostMemory) {
        while self.cmd.pending() && self.pending.len() < INFLIGHT_MAX {
            if !self.cpl.valid() {
                self.ring_failed(RingError::BadSize);
                return;
            }
            // Room for every completion in flight plus this one.
            if self.cpl.space() <= self.pending.len() as u32 {
                return;
            }
            match self.cmd.fetch(mem) {
                Ok(Some(b)) => self.execute(Command::decode(&b), mem),
                Ok(None) => return,
                Err(e) => {
                    self.ring_failed(e);
                    return;
                }
            }
        }
    }

    fn done(&self, cmd: &Command, status: Status) -> Completion {
        Completion {
            opcode: cmd.opcode,
            status: status as u8,
            tag: cmd.tag,
            resource: cmd.resource,
            ..Default::default()
        }
    }

    /// Whether this node holds `r`, and the recorded owner + 1 (for checkers).
    pub fn debug_holds(&self, r: u64) -> (bool, u8) {
        let (held, _, owner) = self.holds(r);
        (held, owner)
    }

    fn holds(&self, r: u64) -> (bool, u8, u8) {
        let e = self.table.lookup(r);
        let me = 1u8 << self.node_id();
        (e.hit && e.sharers & me != 0, e.sharers, e.owner)
    }

    fn execute(&mut self, cmd: Command, mem: &mut dyn HostMemory) {
        let Some(op) = Opcode::from_raw(cmd.opcode) else {
            self.stats.bad_commands = self.stats.bad_commands.wrapping_add(1);
            let c = self.done(&cmd, Status::BadOpcode);
            self.complete(mem, c);
            return;
        };
        // The presence bits describe this host, not the membership: no epoch check.
        if matches!(op, Opcode::Mark | Opcode::Unmark) {
            self.set_present(cmd.resource, op == Opcode::Mark);
            let c = self.done(&cmd, Status::Ok);
            self.complete(mem, c);
            return;
        }
        if op != Opcode::Nop && cmd.epoch != self.epoch {
            let c = self.done(&cmd, Status::StaleEpoch);
            self.complete(mem, c);
            return;
        }
        if cmd.filtered != 0 && matches!(op, Opcode::AcquireShared | Opcode::AcquireExclusive) {
            self.set_present(cmd.resource, true);
        }
        let me = 1u8 << self.node_id();
        let (held, sharers, owner) = self.holds(cmd.resource);
        let local = |c: &mut Completion, sharers: u8, owner: u8| {
            c.no_broadcast = 1;
            c.sharers = sharers;
            c.owner = owner;
        };
        match op {
            Opcode::Nop | Opcode::Mark | Opcode::Unmark => {
                let c = self.done(&cmd, Status::Ok);
                self.complete(mem, c);
            }
            Opcode::FilterOn => {
                self.filter_on = true;
                let c = self.done(&cmd, Status::Ok);
                self.complete(mem, c);
            }
            Opcode::AcquireShared if held => {
                self.stats.broadcasts_skipped += 1;
                let mut c = self.done(&cmd, Status::Ok);
                local(&mut c, sharers, owner);
                self.complete(mem, c);
            }
            Opcode::AcquireExclusive if held && (owner == self.node_id() + 1 || sharers & !me == 0) => {
                self.stats.broadcasts_skipped += 1;
                // Same entry, so it cannot find the set full.
                self.table.update(cmd.resource, me, self.node_id() + 1);
                let mut c = self.done(&cmd, Status::Ok);
                local(&mut c, me, self.node_id() + 1);
                self.complete(mem, c);
            }
            Opcode::AcquireShared | Opcode::AcquireExclusive => {
                // Holders know the exact sharers; everyone else asks every peer.
                let targets = if held { sharers & !me & self.peers() } else { self.peers() };
                let kind = if op == Opcode::AcquireShared { FrameKind::AcquireShared } else { FrameKind::Invalidate };
                self.stats.broadcasts += 1;
                self.clock = self.clock.wrapping_add(1);
                let stamp = self.clock;
                self.start(cmd, kind, targets, stamp, 0, mem);
            }
            Opcode::Release => {
                if held {
                    self.send(
                        sharers & !me & self.peers(),
                        LinkFrame { kind: FrameKind::Release as u8, resource: cmd.resource, ..Default::default() },
                    );
                    self.table.update(cmd.resource, 0, 0);
                }
                let c = self.done(&cmd, Status::Ok);
                self.complete(mem, c);
            }
            Opcode::Search => {
                self.clock = self.clock.wrapping_add(1);
                let stamp = self.clock;
                self.start(cmd, FrameKind::Search, self.peers(), stamp, 0, mem);
            }
            Opcode::Heartbeat => {
                self.send(self.peers(), LinkFrame { kind: FrameKind::Heartbeat as u8, ..Default::default() });
                let c = self.done(&cmd, Status::Ok);
                self.complete(mem, c);
            }
            Opcode::YieldShare | Opcode::Yield => {
                let all = op == Opcode::Yield;
                if all && held {
                    self.table.update(cmd.resource, 0, 0);
                }
                let (held, sharers, owner) = self.holds(cmd.resource);
                // As for an immediate answer: a shared acquire of ours in flight makes us a
                // sharer the requester must learn.
                let coming = self
                    .pending
                    .iter()
                    .any(|p| p.cmd.resource == cmd.resource && p.kind == FrameKind::AcquireShared && !p.aborted);
                // yield_share: the host keeps a clean copy, whether or not the table has room
                // to say so; the requester must learn it, or a later upgrade of its own could
                // skip this node.
                let (sharers, owner) = match (held, all) {
                    (true, _) => (sharers | me, owner),
                    (false, false) => (me, 0),
                    (false, true) => (if coming { me } else { 0 }, 0),
                };
                for i in 0..OWED_MAX {
                    let Some(o) = self.owed[i] else { continue };
                    if o.resource != cmd.resource || (o.exclusive && !all) {
                        continue;
                    }
                    self.owed[i] = None;
                    let ack = LinkFrame {
                        kind: FrameKind::Ack as u8,
                        seq: o.seq,
                        stamp: o.stamp,
                        resource: o.resource,
                        sharers: if o.exclusive { 0 } else { sharers },
                        owner: if o.exclusive { 0 } else { owner },
                        ..Default::default()
                    };
                    self.send(1 << o.src, ack);
                }
                let c = self.done(&cmd, Status::Ok);
                self.complete(mem, c);
            }
        }
    }

    /// Requests waiting for this card's host to yield (for status and checkers).
    pub fn owed(&self) -> usize {
        self.owed.iter().flatten().count()
    }

    fn start(&mut self, cmd: Command, kind: FrameKind, targets: u8, stamp: u32, retries: u8, mem: &mut dyn HostMemory) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let p = Pending {
            cmd,
            kind,
            seq,
            stamp,
            targets,
            answered: 0,
            sharers_seen: 0,
            owner_seen: 0,
            start: self.cycle,
            deadline: self.cycle + self.ack_timeout as u64,
            retries,
            aborted: false,
            retry_at: None,
        };
        self.send(
            targets,
            LinkFrame {
                kind: kind as u8,
                hold: (cmd.hold != 0 && kind != FrameKind::Search) as u8,
                filtered: (cmd.filtered != 0 && kind != FrameKind::Search) as u8,
                seq,
                stamp,
                resource: cmd.resource,
                ..Default::default()
            },
        );
        self.pending.push(p);
        if targets == 0 {
            self.finish_ready(mem);
        }
    }

    /// Completes pending operations that have every answer, retries aborted ones.
    fn finish_ready(&mut self, mem: &mut dyn HostMemory) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            if p.retry_at.is_some() || p.answered & p.targets != p.targets {
                i += 1;
                continue;
            }
            let p = self.pending.remove(i);
            if p.aborted {
                self.retry(p, mem);
                continue;
            }
            let me = 1u8 << self.node_id();
            let mut c = self.done(&p.cmd, Status::Ok);
            c.peers_asked = p.targets;
            c.retries = p.retries.min(RETRIES_REPORTED_MAX);
            c.cycles = (self.cycle - p.start) as u32;
            match p.kind {
                FrameKind::AcquireShared => {
                    let sharers = p.sharers_seen | me;
                    if self.table.update(p.cmd.resource, sharers, 0).full {
                        c.untracked = 1;
                    }
                    c.sharers = sharers;
                }
                FrameKind::Invalidate => {
                    if self.table.update(p.cmd.resource, me, self.node_id() + 1).full {
                        c.untracked = 1;
                    }
                    c.sharers = me;
                    c.owner = self.node_id() + 1;
                }
                _ => {
                    c.sharers = p.sharers_seen;
                    c.owner = p.owner_seen;
                }
            }
            self.complete(mem, c);
        }
    }

    fn retry(&mut self, mut p: Pending, mem: &mut dyn HostMemory) {
        if p.retries >= RETRIES_MAX {
            let mut c = self.done(&p.cmd, Status::Conflict);
            c.retries = p.retries.min(RETRIES_REPORTED_MAX);
            self.complete(mem, c);
            return;
        }
        p.retries += 1;
        p.aborted = false;
        p.retry_at = Some(self.cycle + BACKOFF_CYCLES * p.retries as u64);
        self.pending.push(p);
    }

    fn expire(&mut self, mem: &mut dyn HostMemory) {
        // Back-offs that ended: send again with the same priority (stamp).
        let due: Vec<usize> =
            (0..self.pending.len()).filter(|&i| self.pending[i].retry_at.is_some_and(|t| self.cycle >= t)).collect();
        for i in due.into_iter().rev() {
            let p = self.pending.remove(i);
            let (held, sharers, _) = self.holds(p.cmd.resource);
            let me = 1u8 << self.node_id();
            let targets = if held { sharers & !me & self.peers() } else { self.peers() };
            self.start(p.cmd, p.kind, targets, p.stamp, p.retries, mem);
        }
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            if p.retry_at.is_none() && self.cycle >= p.deadline {
                let p = self.pending.remove(i);
                self.stats.ack_timeouts += 1;
                let mut c = self.done(&p.cmd, Status::Timeout);
                c.peers_asked = p.targets;
                c.missing = p.targets & !p.answered;
                c.cycles = (self.cycle - p.start) as u32;
                self.complete(mem, c);
            } else {
                i += 1;
            }
        }
    }

    /// Delivers a frame from the link. Returns false if it was dropped (bad CRC, stale epoch,
    /// malformed) — counted in the stats either way.
    pub fn receive(&mut self, bytes: &[u8], mem: &mut dyn HostMemory) -> bool {
        let Ok(wire) = <WireFrame>::try_from(bytes) else {
            self.stats.malformed = self.stats.malformed.wrapping_add(1);
            return false;
        };
        let auth = self.auth_enable.then_some(Auth { key: self.key, windows: &self.windows });
        let counter = match classify_wire(&wire, self.node_id(), self.peers(), self.epoch, auth) {
            Verdict::Ok => None,
            Verdict::BadCrc => Some(&mut self.stats.crc_errors),
            Verdict::Malformed => Some(&mut self.stats.malformed),
            Verdict::StaleEpoch => Some(&mut self.stats.stale_epoch),
            Verdict::Forged => Some(&mut self.stats.forged),
            Verdict::Replayed => Some(&mut self.stats.replayed),
        };
        if let Some(c) = counter {
            *c = c.wrapping_add(1);
            return false;
        }
        let f = link_auth::link_frame(&wire);
        if self.auth_enable {
            self.windows[f.src as usize % NODES_MAX as usize].accept(link_seal(&wire).counter);
        }
        self.stats.frames_rx = self.stats.frames_rx.wrapping_add(1);
        if !self.ctrl_enable {
            return true;
        }
        self.last_seen[f.src as usize] = self.cycle;
        if self.peer_up & (1 << f.src) == 0
            && self.post_event(
                mem,
                Event { kind: EventKind::PeerUp as u8, node: f.src, epoch: f.epoch, ..Default::default() },
            )
        {
            self.peer_up |= 1 << f.src;
        }
        self.clock = self.clock.max(f.stamp).wrapping_add(1);
        if !self.handle_frame(f, mem) {
            if self.deferred.len() < DEFERRED_MAX {
                self.deferred.push_back(f);
            } else {
                self.stats.malformed = self.stats.malformed.wrapping_add(1);
                return false;
            }
        }
        true
    }

    /// Acts on a valid frame; false if it must wait (event ring full).
    fn handle_frame(&mut self, f: LinkFrame, mem: &mut dyn HostMemory) -> bool {
        let me = 1u8 << self.node_id();
        let Some(kind) = FrameKind::from_raw(f.kind) else { return true };
        let reply = |kind: FrameKind, sharers: u8, owner: u8| LinkFrame {
            kind: kind as u8,
            seq: f.seq,
            stamp: f.stamp,
            resource: f.resource,
            sharers,
            owner,
            ..Default::default()
        };
        match kind {
            FrameKind::AcquireShared | FrameKind::Invalidate => {
                let exclusive = kind == FrameKind::Invalidate;
                // Conflict with our own acquire of the same resource in flight.
                let theirs = (f.stamp, f.src);
                let my_node = self.node_id();
                let mut nack = false;
                for p in self.pending.iter_mut().filter(|p| {
                    p.cmd.resource == f.resource && matches!(p.kind, FrameKind::AcquireShared | FrameKind::Invalidate)
                }) {
                    if !(exclusive || p.kind == FrameKind::Invalidate) {
                        continue; // two shared acquires do not conflict
                    }
                    if (p.stamp, my_node) < theirs {
                        nack = true;
                    } else {
                        p.aborted = true;
                    }
                }
                if nack {
                    self.send(1 << f.src, reply(FrameKind::Nack, 0, 0));
                    return true;
                }
                // A shared acquire of ours in flight for the same resource will hold it together
                // with the requester: each must learn the other, or a later upgrade by either
                // could skip the other's invalidation.
                let mut coming = 0u8;
                if !exclusive {
                    for p in self
                        .pending
                        .iter_mut()
                        .filter(|p| p.cmd.resource == f.resource && p.kind == FrameKind::AcquireShared && !p.aborted)
                    {
                        p.sharers_seen |= 1 << f.src;
                        coming = me;
                    }
                }
                let (held, sharers, owner) = self.holds(f.resource);
                // The presence filter answers as the host's yield would: the host holds
                // nothing in the bucket and acquires nothing there.
                let filtered = f.hold != 0 && f.filtered != 0 && !held && self.filters(f.resource);
                if filtered {
                    self.stats.filtered = self.stats.filtered.wrapping_add(1);
                } else if f.hold != 0 {
                    return self.defer(f, exclusive, held, sharers, mem);
                }
                if exclusive {
                    if held {
                        if !self.post_event(
                            mem,
                            Event {
                                kind: EventKind::Invalidate as u8,
                                node: f.src,
                                epoch: f.epoch,
                                resource: f.resource,
                                seq: f.seq,
                                ..Default::default()
                            },
                        ) {
                            return false;
                        }
                        self.table.update(f.resource, 0, 0);
                    }
                    self.send(
                        1 << f.src,
                        reply(FrameKind::Ack, if held { sharers } else { 0 }, if held { owner } else { 0 }),
                    );
                } else {
                    if held {
                        if owner == self.node_id() + 1
                            && !self.post_event(
                                mem,
                                Event {
                                    kind: EventKind::Downgrade as u8,
                                    node: f.src,
                                    epoch: f.epoch,
                                    resource: f.resource,
                                    seq: f.seq,
                                    ..Default::default()
                                },
                            )
                        {
                            return false;
                        }
                        self.table.update(f.resource, sharers | 1 << f.src, 0);
                    }
                    self.send(
                        1 << f.src,
                        reply(FrameKind::Ack, if held { sharers | me } else { coming }, if held { owner } else { 0 }),
                    );
                }
            }
            FrameKind::Ack | FrameKind::Nack | FrameKind::SearchReply => {
                if let Some(p) = self
                    .pending
                    .iter_mut()
                    .find(|p| p.seq == f.seq && p.targets & (1 << f.src) != 0 && p.retry_at.is_none())
                {
                    p.answered |= 1 << f.src;
                    p.sharers_seen |= f.sharers;
                    if f.owner != 0 {
                        p.owner_seen = f.owner;
                    }
                    if kind == FrameKind::Nack {
                        p.aborted = true;
                    }
                }
                self.finish_ready(mem);
            }
            FrameKind::Search => {
                let (held, sharers, owner) = self.holds(f.resource);
                self.send(
                    1 << f.src,
                    reply(FrameKind::SearchReply, if held { sharers } else { 0 }, if held { owner } else { 0 }),
                );
            }
            // Advisory: a release can be overtaken by the same node's next acquire, so acting on
            // it could shrink a holder's sharer set below the truth. Sets shrink only through
            // invalidation; a node named in a set it left just gets one needless invalidate.
            FrameKind::Release => {}
            FrameKind::Heartbeat => {}
        }
        true
    }

    /// A request sent with `hold`: the host hears of it whatever the table says (it knows its
    /// own lines; the table is a filter) and the answer waits for its yield. False if the event
    /// ring is full (the frame waits).
    fn defer(&mut self, f: LinkFrame, exclusive: bool, held: bool, sharers: u8, mem: &mut dyn HostMemory) -> bool {
        let known = self.owed.iter().position(|o| o.is_some_and(|o| o.resource == f.resource && o.src == f.src));
        let slot = known.or_else(|| self.owed.iter().position(|o| o.is_none()));
        let Some(slot) = slot else {
            let nack = LinkFrame {
                kind: FrameKind::Nack as u8,
                seq: f.seq,
                stamp: f.stamp,
                resource: f.resource,
                ..Default::default()
            };
            self.send(1 << f.src, nack);
            return true;
        };
        let kind = if exclusive { EventKind::Invalidate } else { EventKind::Downgrade };
        let e = Event {
            kind: kind as u8,
            node: f.src,
            hold: 1,
            epoch: f.epoch,
            resource: f.resource,
            seq: f.seq,
            ..Default::default()
        };
        if !self.post_event(mem, e) {
            return false;
        }
        if held {
            let after = if exclusive { 0 } else { sharers | 1 << f.src };
            self.table.update(f.resource, after, 0);
        }
        self.owed[slot] = Some(Owed { resource: f.resource, src: f.src, seq: f.seq, stamp: f.stamp, exclusive });
        true
    }
}
