//! Diagnostics: every register of a card decoded by name and field from the generated spec, and
//! the card's state (rings, counters, errors).

use super::driver::discover;
use super::{Backend, EngineError};
use amf_hdl_model::gen::regs::{self, BLOCKS};
use serde_json::{json, Value};

/// Every block's registers as read now, decoded: JSON with block, register, value and fields.
pub fn dump_registers(b: &dyn Backend) -> Result<Value, EngineError> {
    discover(b)?;
    let mut blocks = vec![];
    for blk in BLOCKS {
        let mut regs_out = vec![];
        for (name, off) in
            [("type", regs::header::TYPE), ("version", regs::header::VERSION), ("next", regs::header::NEXT)]
        {
            regs_out.push(json!({ "name": name, "offset": off, "access": "ro", "value": b.read32(blk.base + off) }));
        }
        for r in blk.regs {
            let value = if r.access == "wo" { None } else { Some(b.read32(blk.base + r.offset)) };
            let fields: Vec<Value> = r
                .fields
                .iter()
                .map(|f| {
                    let v = value.map(|v| (v >> f.lsb) & ((1u64 << f.width) - 1) as u32);
                    let named = v.and_then(|v| f.values.iter().find(|x| x.value == v)).map(|x| x.name);
                    json!({ "name": f.name, "bits": format!("{}:{}", f.lsb + f.width - 1, f.lsb), "value": v, "meaning": named })
                })
                .collect();
            regs_out.push(json!({
                "name": r.name, "offset": r.offset, "access": r.access, "value": value,
                "reset": r.reset, "fields": fields, "description": r.description,
            }));
        }
        blocks.push(json!({ "block": blk.name, "base": blk.base, "registers": regs_out }));
    }
    Ok(json!({ "blocks": blocks }))
}

/// Human-readable form of [`dump_registers`].
pub fn format_registers(v: &Value) -> String {
    let mut out = String::new();
    for blk in v["blocks"].as_array().into_iter().flatten() {
        out += &format!("{} @ {:#05x}\n", blk["block"].as_str().unwrap_or(""), blk["base"].as_u64().unwrap_or(0));
        for r in blk["registers"].as_array().into_iter().flatten() {
            let value = r["value"].as_u64().map(|v| format!("{v:#010x}")).unwrap_or_else(|| "(write-only)".into());
            out += &format!(
                "  {:#04x} {:<20} {:<4} {value}",
                r["offset"].as_u64().unwrap_or(0),
                r["name"].as_str().unwrap_or(""),
                r["access"].as_str().unwrap_or("")
            );
            let fields: Vec<String> = r["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| {
                    let v = f["value"].as_u64()?;
                    Some(match f["meaning"].as_str() {
                        Some(m) => format!("{}={v} ({m})", f["name"].as_str().unwrap_or("")),
                        None => format!("{}={v}", f["name"].as_str().unwrap_or("")),
                    })
                })
                .collect();
            if !fields.is_empty() {
                out += &format!("  [{}]", fields.join(" "));
            }
            out += "\n";
        }
    }
    out
}

/// The card's state: status and error, node and epoch, ring configuration, counters, table.
pub fn card_state(b: &dyn Backend) -> Result<Value, EngineError> {
    let blocks = discover(b)?;
    let rd = |block: u32, off: u32| b.read32(block + off);
    let status = rd(blocks.device, regs::device::status::OFFSET);
    let node = rd(blocks.device, regs::device::node::OFFSET);
    let ring = |block: u32| {
        let base = (rd(block, regs::cmd_ring::base_hi::OFFSET) as u64) << 32
            | rd(block, regs::cmd_ring::base_lo::OFFSET) as u64;
        json!({ "base": base, "entries": 1u64 << (rd(block, regs::cmd_ring::size_log2::OFFSET) & 15) })
    };
    let counters: serde_json::Map<String, Value> = BLOCKS
        .iter()
        .filter(|x| x.type_id == regs::stats::TYPE || x.type_id == regs::sharer_table::TYPE)
        .flat_map(|x| x.regs.iter().map(move |r| (x, r)))
        .map(|(x, r)| (r.name.to_string(), json!(b.read32(x.base + r.offset))))
        .collect();
    Ok(json!({
        "ready": regs::device::status::ready::get(status) == 1,
        "error_code": regs::device::status::error_code::get(status),
        "enabled": regs::device::ctrl::enable::get(rd(blocks.device, regs::device::ctrl::OFFSET)) == 1,
        "node": regs::device::node::id::get(node),
        "peers": regs::device::node::peers::get(node),
        "epoch": rd(blocks.device, regs::device::epoch::OFFSET),
        "rings": { "command": ring(blocks.cmd), "completion": ring(blocks.cpl), "event": ring(blocks.evt) },
        "counters": counters,
        // Whether frames are sealed and checked (link_auth); cards before it have no block.
        "link_auth": blocks.link_auth.map(|at| regs::link_auth::ctrl::enable::get(rd(at, regs::link_auth::ctrl::OFFSET)) == 1),
    }))
}

/// The sharer table's shape from its geometry register: (sets, ways). A card that answers
/// nonsense (zero ways, more than 2^20 sets) is refused.
pub fn table_geometry(b: &dyn Backend) -> Result<(u64, usize), EngineError> {
    // A broken or dead card fails the walk before its geometry is believed.
    discover(b)?;
    let g = b.read32(regs::sharer_table::BASE + regs::sharer_table::geometry::OFFSET);
    let sets_log2 = regs::sharer_table::geometry::sets_log2::get(g);
    let ways = regs::sharer_table::geometry::ways::get(g) as usize;
    if ways == 0 || sets_log2 > 20 {
        return Err(EngineError::BrokenChain(regs::sharer_table::BASE));
    }
    Ok((1u64 << sets_log2, ways))
}
