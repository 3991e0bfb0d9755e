//! SystemVerilog packages (lowRISC style: CamelCase localparams, `_e` enums, `_t` structs).

use crate::camel;
use crate::spec::{RegSpec, StructSpec, HEADER};
use std::fmt::Write;

/// A package of constants has constants no module uses.
const LINT_OFF: &str = "/* verilator lint_off UNUSEDPARAM */\n";
const LINT_ON: &str = "/* verilator lint_on UNUSEDPARAM */\n";

pub(crate) fn regs(s: &RegSpec) -> String {
    let mut o = format!("// {}\n\n{LINT_OFF}package amf_regs_pkg;\n\n", crate::HEADER_NOTE);
    let _ = writeln!(o, "  localparam int unsigned BlockBytes = {};", s.device.block_bytes);
    let _ = writeln!(o, "  localparam int unsigned NumBlocks = {};", s.blocks.len());
    let _ = writeln!(o, "  localparam int unsigned BarBytes = {};", s.device.block_bytes as usize * s.blocks.len());
    for (name, off, _) in HEADER {
        let _ = writeln!(o, "  localparam logic [7:0] Header{}Offset = 8'h{off:02x};", camel(name));
    }
    for (i, b) in s.blocks.iter().enumerate() {
        let p = camel(&b.name);
        let next = if i + 1 < s.blocks.len() { s.block_base(i + 1) } else { 0 };
        let _ = writeln!(o, "\n  // {}: {}", b.name, b.description);
        let _ = writeln!(o, "  localparam logic [31:0] {p}Base = 32'h{:08x};", s.block_base(i));
        let _ = writeln!(o, "  localparam logic [31:0] {p}Type = 32'h{:08x};", b.type_id);
        let _ = writeln!(o, "  localparam logic [31:0] {p}Version = 32'h{:04x}{:04x};", b.version[0], b.version[1]);
        let _ = writeln!(o, "  localparam logic [31:0] {p}Next = 32'h{next:08x};");
        for r in &b.regs {
            let rp = format!("{p}{}", camel(&r.name));
            let _ = writeln!(o, "  localparam logic [7:0] {rp}Offset = 8'h{:02x};", r.offset);
            let _ = writeln!(o, "  localparam logic [31:0] {rp}Reset = 32'h{:08x};", r.reset_value());
            for f in &r.fields {
                let fp = format!("{rp}{}", camel(&f.name));
                let _ = writeln!(o, "  localparam int unsigned {fp}Lsb = {};", f.lsb());
                let _ = writeln!(o, "  localparam int unsigned {fp}Width = {};", f.width());
                if !f.values.is_empty() {
                    let _ = writeln!(o, "  typedef enum logic [{}:0] {{", f.width() - 1);
                    for (k, v) in f.values.iter().enumerate() {
                        let comma = if k + 1 < f.values.len() { "," } else { "" };
                        let _ = writeln!(o, "    {fp}{} = {}'d{}{comma}", camel(&v.name), f.width(), v.value);
                    }
                    let _ = writeln!(o, "  }} {}_{}_{}_e;", b.name, r.name, f.name);
                }
            }
        }
    }
    o += "\nendpackage\n";
    o += LINT_ON;
    o
}

pub(crate) fn structs(s: &StructSpec) -> String {
    let mut o = format!("// {}\n\n{LINT_OFF}package amf_structs_pkg;\n", crate::HEADER_NOTE);
    for e in &s.enums {
        let _ = writeln!(o, "\n  // {}", e.description);
        let _ = writeln!(o, "  typedef enum logic [{}:0] {{", e.bits - 1);
        for (k, v) in e.values.iter().enumerate() {
            let comma = if k + 1 < e.values.len() { "," } else { "" };
            let _ = writeln!(o, "    {}{} = {}'d{}{comma}", camel(&e.name), camel(&v.name), e.bits, v.value);
        }
        let _ = writeln!(o, "  }} {}_e;", e.name);
    }
    for st in &s.structs {
        let _ = writeln!(o, "\n  // {} ({} bytes, little-endian; first field at bit 0)", st.description, st.bytes);
        let _ = writeln!(o, "  localparam int unsigned {}Bytes = {};", camel(&st.name), st.bytes);
        // Field positions as plain constants, for tools without full struct support (yosys).
        let mut off = 0;
        for f in &st.fields {
            let _ = writeln!(o, "  localparam int unsigned {}{}Lsb = {off};", camel(&st.name), camel(&f.name));
            let _ = writeln!(o, "  localparam int unsigned {}{}Width = {};", camel(&st.name), camel(&f.name), f.bits);
            off += f.bits;
        }
        let _ = writeln!(o, "  typedef struct packed {{");
        for f in st.fields.iter().rev() {
            let ty = match &f.enumeration {
                Some(e) => format!("{e}_e"),
                None if f.bits == 1 => "logic".to_string(),
                None => format!("logic [{}:0]", f.bits - 1),
            };
            let _ = writeln!(o, "    {ty} {};", f.name);
        }
        let _ = writeln!(o, "  }} {}_t;", st.name);
    }
    o += "\nendpackage\n";
    o += LINT_ON;
    o
}
