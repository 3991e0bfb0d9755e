//! Checker of a block read/write history: every read must return the latest acknowledged write
//! of its block or a write concurrent with the read — never data that a later write, begun
//! after it was acknowledged and itself acknowledged before the read began, had replaced. And
//! never torn or invented data.

use std::collections::HashMap;

/// One write: its value id, when it was issued and when it was acknowledged (ns since start).
#[derive(Clone, Copy, Debug)]
pub struct WriteRec {
    /// Block.
    pub block: u64,
    /// Value id (unique per write, 0 = the block's initial content).
    pub id: u64,
    /// Issued.
    pub start_ns: u64,
    /// Acknowledged (None: failed or never answered).
    pub ack_ns: Option<u64>,
}

/// One read: the value id it returned (None: the bytes were not any well-formed value).
#[derive(Clone, Copy, Debug)]
pub struct ReadRec {
    /// Block.
    pub block: u64,
    /// Value read.
    pub id: Option<u64>,
    /// Issued.
    pub start_ns: u64,
    /// Answered.
    pub end_ns: u64,
    /// Which client and controller read (for the report).
    pub client: usize,
}

/// Checks a history; returns one line per violation (at most `max`).
pub fn check(writes: &[WriteRec], reads: &[ReadRec], max: usize) -> Vec<String> {
    let mut by_block: HashMap<u64, Vec<&WriteRec>> = HashMap::new();
    for w in writes {
        by_block.entry(w.block).or_default().push(w);
    }
    let mut out = Vec::new();
    for r in reads {
        if out.len() >= max {
            break;
        }
        let ws = by_block.get(&r.block).map(|v| v.as_slice()).unwrap_or(&[]);
        let Some(id) = r.id else {
            out.push(format!(
                "client {} read block {} and got bytes no write produced (torn or foreign)",
                r.client, r.block
            ));
            continue;
        };
        // The value read: the initial content (issued and acknowledged at 0) or a write.
        let v = if id == 0 {
            WriteRec { block: r.block, id: 0, start_ns: 0, ack_ns: Some(0) }
        } else {
            match ws.iter().find(|w| w.id == id) {
                Some(w) => **w,
                None => {
                    out.push(format!(
                        "client {} read value {id} from block {}, which was never written there",
                        r.client, r.block
                    ));
                    continue;
                }
            }
        };
        if v.start_ns > r.end_ns {
            out.push(format!("client {} read value {id} of block {} before it was written", r.client, r.block));
            continue;
        }
        let Some(v_ack) = v.ack_ns else { continue };
        if let Some(newer) =
            ws.iter().find(|w| w.id != id && w.start_ns > v_ack && w.ack_ns.is_some_and(|a| a < r.start_ns))
        {
            out.push(format!(
                "client {} read stale value {id} of block {} at {} ns: value {} was written after it and acknowledged at {} ns",
                r.client,
                r.block,
                r.start_ns,
                newer.id,
                newer.ack_ns.unwrap_or(0)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: u64, start_ns: u64, ack: u64) -> WriteRec {
        WriteRec { block: 1, id, start_ns, ack_ns: Some(ack) }
    }
    fn r(id: u64, start_ns: u64, end_ns: u64) -> ReadRec {
        ReadRec { block: 1, id: Some(id), start_ns, end_ns, client: 0 }
    }

    #[test]
    fn latest_and_concurrent_values_pass() {
        let ws = [w(1, 10, 20), w(2, 30, 40)];
        assert!(check(&ws, &[r(0, 0, 5), r(1, 21, 25), r(2, 41, 50), r(1, 35, 45), r(2, 35, 39)], 10).is_empty());
    }

    #[test]
    fn stale_future_unknown_and_torn_values_fail() {
        let ws = [w(1, 10, 20), w(2, 30, 40)];
        let bad =
            check(&ws, &[r(1, 41, 50), r(0, 41, 50), r(2, 1, 5), r(9, 50, 60), ReadRec { id: None, ..r(0, 1, 2) }], 10);
        assert_eq!(bad.len(), 5, "{bad:#?}");
        assert!(bad[0].contains("stale value 1") && bad[1].contains("stale value 0"));
        assert!(bad[2].contains("before it was written") && bad[3].contains("never written"));
        assert!(bad[4].contains("torn"));
    }
}
