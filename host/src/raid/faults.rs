//! Member fault injection: a layer over [`MemberIo`] that makes chosen member I/Os fail the way
//! real devices fail (EIO, short transfers, ENOSPC, torn writes, latency, a device that vanishes).
//! The engine's fault tests and the cluster simulator put it between the array and its members;
//! the controller never does.
//!
//! Every I/O through any member of one [`FaultPlan`] gets the next index of one counter, so a test
//! can run an operation once to count its member I/Os and then fail each of them in turn.

use super::member::MemberIo;
use std::io::{Error, ErrorKind};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How an I/O fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The I/O fails with EIO and transfers nothing.
    Eio,
    /// Half the buffer is transferred, then the I/O fails (a short read or write).
    Short,
    /// A write fails with ENOSPC and writes nothing (reads and syncs pass).
    NoSpace,
    /// A write lands half its new data and garbage over the rest, then fails (a torn write);
    /// a read returns garbage and fails.
    Torn,
    /// The I/O succeeds after a delay.
    Latency,
    /// The device disappears: this and every later I/O on the member fails with ENXIO.
    Vanish,
}

impl FaultKind {
    /// Every kind, for exhaustive tests.
    pub const ALL: [FaultKind; 6] =
        [FaultKind::Eio, FaultKind::Short, FaultKind::NoSpace, FaultKind::Torn, FaultKind::Latency, FaultKind::Vanish];

    /// True when the I/O it hits does not succeed.
    pub fn fails(self) -> bool {
        self != FaultKind::Latency
    }
}

/// Which member call an I/O is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// A read.
    Read,
    /// A write.
    Write,
    /// A write made durable before it returns (superblocks, write-intent bits).
    DurableWrite,
    /// A flush of the member.
    Sync,
}

/// Which I/Os a rule hits.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// Only the I/O with this index in the plan's count.
    pub io_index: Option<u64>,
    /// Only I/Os of this member.
    pub member: Option<usize>,
    /// Only this kind of call.
    pub op: Option<IoOp>,
    /// Only I/Os that overlap this byte range of the member.
    pub bytes: Option<Range<u64>>,
}

impl Target {
    /// The I/O with index `i`.
    pub fn io(i: u64) -> Target {
        Target { io_index: Some(i), ..Target::default() }
    }

    fn matches(&self, index: u64, member: usize, op: IoOp, offset: u64, len: u64) -> bool {
        self.io_index.is_none_or(|i| i == index)
            && self.member.is_none_or(|m| m == member)
            && self.op.is_none_or(|o| o == op)
            && self.bytes.as_ref().is_none_or(|r| offset < r.end && offset + len.max(1) > r.start)
    }
}

/// One fault to inject.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Which I/Os.
    pub target: Target,
    /// How they fail.
    pub kind: FaultKind,
    /// How many matching I/Os it hits before it is spent.
    pub times: u32,
}

/// A fault that was injected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    /// Index of the I/O.
    pub io_index: u64,
    /// Member it hit.
    pub member: usize,
    /// The call.
    pub op: IoOp,
    /// The fault.
    pub kind: FaultKind,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    vanished: Vec<usize>,
    fired: Vec<Fired>,
    /// The call of every I/O, when tracing.
    trace: Option<Vec<IoOp>>,
}

/// Longest trace kept: a fault test's operation does far fewer member I/Os.
const TRACE_IOS_MAX: usize = 1 << 20;

/// Faults shared by the members of one group.
#[derive(Default)]
pub struct FaultPlan {
    ios: AtomicU64,
    state: Mutex<State>,
    latency: Duration,
}

/// Delay of [`FaultKind::Latency`].
pub const LATENCY_DEFAULT: Duration = Duration::from_millis(2);

impl FaultPlan {
    /// A plan with no rules: it only counts I/Os.
    pub fn new() -> Arc<FaultPlan> {
        Arc::new(FaultPlan { latency: LATENCY_DEFAULT, ..FaultPlan::default() })
    }

    /// A plan with no rules that records the call of every I/O (see [`FaultPlan::trace`]).
    pub fn tracing() -> Arc<FaultPlan> {
        let plan = FaultPlan::new();
        plan.lock().trace = Some(Vec::new());
        plan
    }

    /// The call of every I/O so far, by index (empty unless made with [`FaultPlan::tracing`]).
    pub fn trace(&self) -> Vec<IoOp> {
        self.lock().trace.clone().unwrap_or_default()
    }

    /// A plan that fails the I/O with index `io_index` with `kind`.
    pub fn at(io_index: u64, kind: FaultKind) -> Arc<FaultPlan> {
        let plan = FaultPlan::new();
        plan.add(Rule { target: Target::io(io_index), kind, times: 1 });
        plan
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a rule.
    pub fn add(&self, rule: Rule) {
        self.lock().rules.push(rule);
    }

    /// Member I/Os seen so far.
    pub fn ios(&self) -> u64 {
        self.ios.load(SeqCst)
    }

    /// Faults injected so far.
    pub fn fired(&self) -> Vec<Fired> {
        self.lock().fired.clone()
    }

    /// Decides the fate of one I/O: None to pass it through.
    fn decide(&self, member: usize, op: IoOp, offset: u64, len: u64) -> Option<FaultKind> {
        let index = self.ios.fetch_add(1, SeqCst);
        let mut st = self.lock();
        if let Some(t) = st.trace.as_mut().filter(|t| t.len() < TRACE_IOS_MAX) {
            t.push(op);
        }
        if st.vanished.contains(&member) {
            return Some(FaultKind::Vanish);
        }
        let applies = |k: FaultKind| k != FaultKind::NoSpace || matches!(op, IoOp::Write | IoOp::DurableWrite);
        let rule = st
            .rules
            .iter_mut()
            .find(|r| r.times > 0 && applies(r.kind) && r.target.matches(index, member, op, offset, len))?;
        rule.times -= 1;
        let kind = rule.kind;
        if kind == FaultKind::Vanish {
            st.vanished.push(member);
        }
        st.fired.push(Fired { io_index: index, member, op, kind });
        Some(kind)
    }
}

/// A member seen through a [`FaultPlan`].
pub struct FaultyIo {
    inner: Arc<dyn MemberIo>,
    plan: Arc<FaultPlan>,
    member: usize,
}

impl std::fmt::Debug for FaultyIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyIo(member {}, {:?})", self.member, self.inner)
    }
}

fn eio() -> Error {
    Error::from_raw_os_error(libc::EIO)
}

/// Recognizable garbage for torn transfers.
const GARBAGE: u8 = 0xa5;

impl FaultyIo {
    /// `inner` as member `member` of `plan`.
    pub fn new(inner: Arc<dyn MemberIo>, plan: Arc<FaultPlan>, member: usize) -> FaultyIo {
        FaultyIo { inner, plan, member }
    }

    fn write_with(
        &self,
        op: IoOp,
        offset: u64,
        buf: &[u8],
        pass: impl Fn(u64, &[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let half = buf.len() / 2;
        match self.plan.decide(self.member, op, offset, buf.len() as u64) {
            None => pass(offset, buf),
            Some(FaultKind::Latency) => {
                std::thread::sleep(self.plan.latency);
                pass(offset, buf)
            }
            Some(FaultKind::Eio) => Err(eio()),
            Some(FaultKind::NoSpace) => Err(Error::from_raw_os_error(libc::ENOSPC)),
            Some(FaultKind::Short) => {
                pass(offset, &buf[..half])?;
                Err(Error::new(ErrorKind::WriteZero, "injected short write"))
            }
            Some(FaultKind::Torn) => {
                let mut torn = buf.to_vec();
                torn[half..].fill(GARBAGE);
                pass(offset, &torn)?;
                Err(eio())
            }
            Some(FaultKind::Vanish) => Err(Error::from_raw_os_error(libc::ENXIO)),
        }
    }
}

impl MemberIo for FaultyIo {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let half = buf.len() / 2;
        match self.plan.decide(self.member, IoOp::Read, offset, buf.len() as u64) {
            None => self.inner.read_at(offset, buf),
            Some(FaultKind::Latency) => {
                std::thread::sleep(self.plan.latency);
                self.inner.read_at(offset, buf)
            }
            Some(FaultKind::Eio) | Some(FaultKind::NoSpace) => Err(eio()),
            Some(FaultKind::Short) => {
                self.inner.read_at(offset, &mut buf[..half])?;
                Err(Error::new(ErrorKind::UnexpectedEof, "injected short read"))
            }
            Some(FaultKind::Torn) => {
                buf.fill(GARBAGE);
                Err(eio())
            }
            Some(FaultKind::Vanish) => Err(Error::from_raw_os_error(libc::ENXIO)),
        }
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.write_with(IoOp::Write, offset, buf, |o, b| self.inner.write_at(o, b))
    }

    fn write_durable(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.write_with(IoOp::DurableWrite, offset, buf, |o, b| self.inner.write_durable(o, b))
    }

    fn identity(&self) -> std::io::Result<(u64, u64)> {
        self.inner.identity()
    }

    fn sync(&self) -> std::io::Result<()> {
        match self.plan.decide(self.member, IoOp::Sync, 0, 0) {
            None | Some(FaultKind::NoSpace) => self.inner.sync(),
            Some(FaultKind::Latency) => {
                std::thread::sleep(self.plan.latency);
                self.inner.sync()
            }
            Some(FaultKind::Vanish) => Err(Error::from_raw_os_error(libc::ENXIO)),
            Some(_) => Err(eio()),
        }
    }
}
