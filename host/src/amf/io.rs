//! What goes into and out of the AMF state machine. Every input is something that happened
//! (a host request, a card completion or event in the card's order, a fabric message, a member
//! I/O completion, a tick of time); every output is something to do. Ids are chosen by the
//! machine and echoed back by the shell.

/// Bit that puts a resource id in the stripe namespace (parity updates and write-backs of a
/// stripe happen under its exclusive lock); line resources are plain line numbers.
pub const STRIPE_NS: u64 = 1 << 62;

/// The group resource: the members' superblocks. Member I/O is done under its shared hold and
/// a member failure is recorded under its exclusive hold, so after a record no controller does
/// member I/O with a view that still counts the failed member.
pub const GROUP_RESOURCE: u64 = 1 << 61;

/// Bit of the presence filter's own commands (`Mark`, `Unmark`, `FilterOn`): their resource is
/// this bit and a bucket number (the card reads the low bits), so that they share no command
/// order with a line's.
pub const PRESENCE_NS: u64 = 1 << 60;

/// Largest presence filter a host trusts, log2 of its buckets: 2^32 bits of card memory is
/// beyond any card, so a larger value is a broken register.
pub const PRESENCE_BUCKETS_LOG2_MAX: u32 = 32;

/// A host request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostReq {
    /// Read `len` bytes at `offset`.
    Read {
        /// Byte offset in the group.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Write `data` at `offset`; with `fua` it is on the members before the reply.
    Write {
        /// Byte offset in the group.
        offset: u64,
        /// Bytes.
        data: Vec<u8>,
        /// Force unit access.
        fua: bool,
    },
    /// Make every write acknowledged before it durable, on every controller.
    Flush,
    /// Write back this controller's dirty lines and sync (a controller that leaves).
    FlushLocal,
    /// Maintenance of one stripe (scrub, rebuild) under its lock, held from every controller.
    Stripe {
        /// Stripe index.
        stripe: u64,
        /// What to do there.
        job: StripeJob,
    },
    /// Record this controller's view of the members in the superblocks (under the group
    /// resource's exclusive hold) and answer when it is there: a rebuild that began or ended.
    Record,
}

/// Maintenance of one stripe, run by the shell on the members once the machine holds the
/// stripe's lock. Its answer is the shell's report of the stripe, encoded by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StripeJob {
    /// Check the stripe's redundancy (and with `repair` rewrite it from the data).
    Scrub {
        /// Rewrite mismatches.
        repair: bool,
    },
    /// Rebuild this member's blocks of the stripe.
    Rebuild {
        /// Member index.
        member: u32,
    },
}

/// Card commands the machine issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CardOp {
    /// Shared acquire that waits for the holders' yields.
    AcquireShared,
    /// Exclusive acquire (write-invalidate round) that waits for the holders' yields.
    AcquireExclusive,
    /// Answer deferred shared acquires (a clean shared copy is kept).
    YieldShare,
    /// Answer every deferred request (nothing is kept).
    Yield,
    /// Drop the resource (eviction).
    Release,
    /// Set the presence bit of the resource's bucket (a line held without an acquire).
    Mark,
    /// Clear the presence bit of the resource's bucket: nothing there is held or acquired.
    Unmark,
    /// Trust the presence bits (after the marks of a new membership).
    FilterOn,
}

/// Completion status as the machine needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CardStatus {
    /// Done.
    Ok,
    /// Some peers did not answer in time.
    Timeout,
    /// Lost conflicts beyond the card's retry limit.
    Conflict,
    /// The card's table had no room: the resource is not tracked.
    Untracked,
    /// The command carried an epoch the card no longer has (the membership changed while it
    /// was queued): asked again in the new one.
    StaleEpoch,
    /// Refused (bad opcode): a broken setup, not a race.
    Refused,
}

/// A card event that concerns the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CardEventKind {
    /// A peer wants the resource exclusively and waits for this node's yield.
    Invalidate,
    /// A peer wants the resource shared and waits for this node's yield.
    Share,
}

/// Fabric messages between controllers' machines.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Msg {
    /// Keep a copy of the sender's dirty line (whole line) until it reaches the members.
    Replicate {
        /// Request id (sender's).
        id: u64,
        /// Line.
        line: u64,
        /// Sender's write sequence of this content.
        wseq: u64,
        /// The whole line (as bytes: bincode copies them at once, where a sequence costs a
        /// call per byte; the encoding is the same).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The replica is kept.
    ReplicaAck {
        /// The request's id.
        id: u64,
    },
    /// The members hold the sender's line up to `wseq`: replicas at or below it can go. The
    /// sender gives the line to no one until this is answered, so a replica a survivor takes
    /// over after the sender's death is always newer than what the members hold.
    DropReplica {
        /// Request id (sender's).
        id: u64,
        /// Line.
        line: u64,
        /// Write sequence now on the members.
        wseq: u64,
    },
    /// Answer to a drop: replicas at or below its `wseq` are gone here.
    ReplicaDropped {
        /// The request's id.
        id: u64,
    },
    /// Write back every dirty line and sync the members, then answer.
    FlushReq {
        /// Request id (sender's).
        id: u64,
    },
    /// Answer to a flush request.
    FlushDone {
        /// The request's id.
        id: u64,
        /// False: a write-back failed.
        ok: bool,
    },
    /// Step 3 of a read: the sender acquired the line shared and asks a sharer for it (its
    /// cache is searched before the members).
    Fetch {
        /// Request id (sender's).
        id: u64,
        /// Line.
        line: u64,
    },
    /// Answer to a fetch: the line's clean content, or None when it is not here.
    LineData {
        /// The request's id.
        id: u64,
        /// The whole line.
        #[serde(with = "serde_bytes")]
        data: Option<Vec<u8>>,
    },
    /// Start-up: the sender has assembled the group (and resynced it, if it is the one that
    /// does) and serves; repeated as a heartbeat. `incarnation` names the sender's process: a
    /// member's hello from another process than the one met proves the first one dead.
    Hello {
        /// The sender's process (random at its start).
        incarnation: u64,
    },
    /// Stop: the sender wrote back everything it acknowledged and leaves.
    Leaving,
    /// The sender moved to this message's epoch (a controller died). Acquires the receiver
    /// made in this epoch before the sender moved were dropped by the sender's card: the
    /// receiver asks again now rather than after its card's timeout.
    ViewChanged,
    /// A restarted controller asks to join the membership whose epoch will be `target` (the
    /// receiver's epoch with the asker's change added): answered with `JoinReady` once the
    /// receiver has finished taking over from the asker's earlier life.
    JoinAsk {
        /// The epoch of the membership with the asker in.
        target: u32,
    },
    /// The sender is ready for the asker to join at `target`.
    JoinReady {
        /// As asked.
        target: u32,
    },
    /// Every member was ready: move to `target` with the sender in.
    Join {
        /// As asked.
        target: u32,
    },
    /// One write to a line whose replica the receiver holds at `base`: apply it there, making
    /// the replica the line at `wseq` (answered with `ReplicaAck`), or answer `ReplicaMissing`
    /// when the replica held is not at `base` (the sender sends the whole line).
    ReplicatePiece {
        /// Request id (sender's).
        id: u64,
        /// Line.
        line: u64,
        /// Sender's write sequence of the content after this write.
        wseq: u64,
        /// The write sequence the replica must hold for the piece to apply.
        base: u64,
        /// Where in the line the piece goes.
        off: u32,
        /// The bytes written.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The replica of a `ReplicatePiece` was not at its base: nothing was kept.
    ReplicaMissing {
        /// The request's id.
        id: u64,
    },
}

/// Inputs of the machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// A host request with the shell's id.
    Host {
        /// Echoed in the reply.
        id: u64,
        /// The request.
        req: HostReq,
    },
    /// A card command finished.
    CardDone {
        /// The machine's id of the command.
        id: u64,
        /// Outcome.
        status: CardStatus,
        /// Nodes holding the resource after the command, as the card knows them (a shared
        /// acquire: the sharers it found).
        sharers: u8,
    },
    /// A peer's request reached this node through the card.
    CardEvent {
        /// What the peer wants.
        kind: CardEventKind,
        /// Resource.
        resource: u64,
        /// Peer.
        from: u8,
    },
    /// A fabric message.
    Fabric {
        /// Sender.
        from: u8,
        /// Sender's membership epoch.
        epoch: u32,
        /// Message.
        msg: Msg,
    },
    /// A member read or write finished: read data, or an error.
    MemberDone {
        /// The machine's id.
        id: u64,
        /// Bytes read (empty for writes and syncs) or the error.
        result: Result<Vec<u8>, String>,
    },
    /// This controller's view of the members changed (one failed) and the superblocks do not
    /// say so yet. The shell feeds it before any member completion that may have seen it.
    GroupChanged,
    /// The membership changed: controllers in `live` (this one's bit included) serve the
    /// group in `epoch`. A controller that left is dead for sure (its process is gone, or its
    /// lease ran out and it fenced itself): this one takes over what it replicated here.
    View {
        /// The new membership epoch (every card frame and fabric message carries it).
        epoch: u32,
        /// Bit n: controller n is a member.
        live: u8,
    },
    /// Time passed: microseconds since the shell started.
    Tick {
        /// Now.
        now_us: u64,
    },
}

/// Outputs of the machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// Submit a card command.
    Card {
        /// Echoed in `CardDone`.
        id: u64,
        /// Command.
        op: CardOp,
        /// Resource.
        resource: u64,
    },
    /// Send a fabric message.
    Send {
        /// Receiver.
        to: u8,
        /// Message.
        msg: Msg,
    },
    /// Read the group.
    MemberRead {
        /// Echoed in `MemberDone`.
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Write the group (the machine holds the stripe locks of the range).
    MemberWrite {
        /// Echoed in `MemberDone`.
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        data: Vec<u8>,
        /// Durable before `MemberDone` (a FUA write's destage: the reply waits for it).
        fua: bool,
    },
    /// Make completed member writes durable.
    MemberSync {
        /// Echoed in `MemberDone`.
        id: u64,
    },
    /// Run a stripe's maintenance (the machine holds the stripe's lock).
    StripeJob {
        /// Echoed in `MemberDone`.
        id: u64,
        /// Stripe index.
        stripe: u64,
        /// What to do.
        job: StripeJob,
    },
    /// Write this view's member states to the superblocks (merged with theirs), or with
    /// `record` false read theirs into this view.
    Superblocks {
        /// Echoed in `MemberDone`.
        id: u64,
        /// Write (true) or read (false).
        record: bool,
    },
    /// Answer a host request: read data (empty for writes and flushes) or the error.
    Reply {
        /// The request's id.
        id: u64,
        /// Outcome.
        result: Result<Vec<u8>, HostError>,
    },
}

/// Why a host request failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum HostError {
    /// Outside the group.
    #[error("{len} bytes at {offset} are outside the group")]
    OutOfRange {
        /// Offset asked.
        offset: u64,
        /// Length asked.
        len: u64,
    },
    /// Member I/O failed.
    #[error("member I/O: {0}")]
    Member(String),
    /// The card refused or kept losing the resource.
    #[error("card: {0}")]
    Card(String),
    /// A peer did not answer a flush.
    #[error("flush: {0}")]
    Flush(String),
}
