//! Rust definitions: register constants and field accessors, a description table for
//! diagnostics, and encode/decode for the structs.

use crate::camel;
use crate::spec::{RegSpec, StructSpec, HEADER};
use std::fmt::Write;

fn doc(o: &mut String, indent: &str, text: &str) {
    let text = if text.is_empty() { "(undocumented)" } else { text };
    let _ = writeln!(o, "{indent}/// {text}");
}

pub(crate) fn regs(s: &RegSpec) -> String {
    let mut o = format!("// {}\n\n", crate::HEADER_NOTE);
    o += "/// Bytes per register block.\n";
    let _ = writeln!(o, "pub const BLOCK_BYTES: u32 = {};", s.device.block_bytes);
    o += "/// Bytes of BAR0 the blocks occupy.\n";
    let _ = writeln!(o, "pub const BAR_BYTES: u32 = {};", s.device.block_bytes as usize * s.blocks.len());
    o += "\n/// Offsets of the header words every block starts with.\npub mod header {\n";
    for (name, off, d) in HEADER {
        doc(&mut o, "    ", d);
        let _ = writeln!(o, "    pub const {}: u32 = {off:#04x};", name.to_uppercase());
    }
    o += "}\n";
    for (i, b) in s.blocks.iter().enumerate() {
        o += "\n";
        doc(&mut o, "", &b.description);
        let _ = writeln!(o, "pub mod {} {{", b.name);
        o += "    /// Value of the TYPE header word.\n";
        let _ = writeln!(o, "    pub const TYPE: u32 = {:#010x};", b.type_id);
        o += "    /// Value of the VERSION header word.\n";
        let _ =
            writeln!(o, "    pub const VERSION: u32 = {:#010x};", (b.version[0] as u32) << 16 | b.version[1] as u32);
        o += "    /// Byte offset of the block in BAR0 (drivers discover it by TYPE instead).\n";
        let _ = writeln!(o, "    pub const BASE: u32 = {:#x};", s.block_base(i));
        for r in &b.regs {
            doc(&mut o, "    ", &r.description);
            let _ = writeln!(o, "    pub mod {} {{", r.name);
            o += "        /// Offset within the block.\n";
            let _ = writeln!(o, "        pub const OFFSET: u32 = {:#04x};", r.offset);
            o += "        /// Reset value.\n";
            let _ = writeln!(o, "        pub const RESET: u32 = {:#x};", r.reset_value());
            for f in &r.fields {
                doc(&mut o, "        ", &f.description);
                let _ = writeln!(o, "        pub mod {} {{", f.name);
                let mask: u64 = (1u64 << f.width()) - 1;
                o += "            /// Lowest bit.\n";
                let _ = writeln!(o, "            pub const LSB: u32 = {};", f.lsb());
                o += "            /// Width in bits.\n";
                let _ = writeln!(o, "            pub const WIDTH: u32 = {};", f.width());
                o += "            /// Mask of the field's value (not shifted).\n";
                let _ = writeln!(o, "            pub const MASK: u32 = {mask:#x};");
                o += "            /// The field's value in a register value.\n";
                o += "            pub const fn get(reg: u32) -> u32 {\n                (reg >> LSB) & MASK\n            }\n";
                o += "            /// `reg` with the field set to `value`.\n";
                o += "            pub const fn set(reg: u32, value: u32) -> u32 {\n                (reg & !(MASK << LSB)) | ((value & MASK) << LSB)\n            }\n";
                for v in &f.values {
                    doc(&mut o, "            ", &v.description);
                    let _ = writeln!(o, "            pub const {}: u32 = {};", v.name.to_uppercase(), v.value);
                }
                o += "        }\n";
            }
            o += "    }\n";
        }
        o += "}\n";
    }
    // Description tables.
    o += r#"
/// A named field value, for decoding.
#[derive(Debug)]
pub struct ValueInfo {
    /// Name.
    pub name: &'static str,
    /// Value.
    pub value: u32,
}

/// A field, for decoding.
#[derive(Debug)]
pub struct FieldInfo {
    /// Name.
    pub name: &'static str,
    /// Lowest bit.
    pub lsb: u32,
    /// Width.
    pub width: u32,
    /// Access ("ro", "rw", "wo", "w1c").
    pub access: &'static str,
    /// Meaning.
    pub description: &'static str,
    /// Named values.
    pub values: &'static [ValueInfo],
}

/// A register, for decoding.
#[derive(Debug)]
pub struct RegInfo {
    /// Name.
    pub name: &'static str,
    /// Offset within the block.
    pub offset: u32,
    /// Access.
    pub access: &'static str,
    /// Reset value.
    pub reset: u32,
    /// Meaning.
    pub description: &'static str,
    /// Fields (empty: the whole register is one value).
    pub fields: &'static [FieldInfo],
}

/// A block, for decoding.
#[derive(Debug)]
pub struct BlockInfo {
    /// Name.
    pub name: &'static str,
    /// TYPE value.
    pub type_id: u32,
    /// VERSION value.
    pub version: u32,
    /// Offset in BAR0.
    pub base: u32,
    /// Registers after the header.
    pub regs: &'static [RegInfo],
}

/// Every block, in BAR order.
pub static BLOCKS: &[BlockInfo] = &[
"#;
    for (i, b) in s.blocks.iter().enumerate() {
        let _ = writeln!(
            o,
            "    BlockInfo {{ name: {:?}, type_id: {:#010x}, version: {:#010x}, base: {:#x}, regs: &[",
            b.name,
            b.type_id,
            (b.version[0] as u32) << 16 | b.version[1] as u32,
            s.block_base(i)
        );
        for r in &b.regs {
            let _ = writeln!(
                o,
                "        RegInfo {{ name: {:?}, offset: {:#04x}, access: {:?}, reset: {:#x}, description: {:?}, fields: &[",
                r.name,
                r.offset,
                r.access.name(),
                r.reset_value(),
                r.description
            );
            for f in &r.fields {
                let values: Vec<String> = f
                    .values
                    .iter()
                    .map(|v| format!("ValueInfo {{ name: {:?}, value: {} }}", v.name, v.value))
                    .collect();
                let _ = writeln!(
                    o,
                    "            FieldInfo {{ name: {:?}, lsb: {}, width: {}, access: {:?}, description: {:?}, values: &[{}] }},",
                    f.name,
                    f.lsb(),
                    f.width(),
                    f.access.unwrap_or(r.access).name(),
                    f.description,
                    values.join(", ")
                );
            }
            o += "        ] },\n";
        }
        o += "    ] },\n";
    }
    o += "];\n";
    o
}

fn rust_ty(bits: u32) -> &'static str {
    match bits {
        0..=8 => "u8",
        9..=16 => "u16",
        17..=32 => "u32",
        33..=64 => "u64",
        _ => "u128",
    }
}

pub(crate) fn structs(s: &StructSpec) -> String {
    let mut o = format!("// {}\n\n", crate::HEADER_NOTE);
    o += r#"/// The low `width` bits set.
fn mask(width: u32) -> u128 {
    if width >= 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

/// Reads `width` bits at bit `offset` of a little-endian byte string: the bytes it spans at
/// once (every frame and descriptor passes here, so no loop per bit).
fn get_bits(b: &[u8], offset: u32, width: u32) -> u128 {
    let (first, shift) = ((offset / 8) as usize, offset % 8);
    if shift + width > 128 {
        // A 128-bit field off a byte boundary spans 17 bytes: bit by bit.
        return (0..width).filter(|i| b[((offset + i) / 8) as usize] >> ((offset + i) % 8) & 1 == 1).fold(0, |v, i| v | 1 << i);
    }
    let last = (offset + width).div_ceil(8) as usize;
    let v = b[first..last].iter().rev().fold(0u128, |v, byte| v << 8 | *byte as u128);
    v >> shift & mask(width)
}

/// Writes the low `width` bits of `v` at bit `offset` (the bytes it spans at once).
fn put_bits(b: &mut [u8], offset: u32, width: u32, v: u128) {
    let (first, shift) = ((offset / 8) as usize, offset % 8);
    if shift + width > 128 {
        for i in 0..width {
            let (byte, bit) = (((offset + i) / 8) as usize, (offset + i) % 8);
            b[byte] = b[byte] & !(1 << bit) | (((v >> i) & 1) as u8) << bit;
        }
        return;
    }
    let last = (offset + width).div_ceil(8) as usize;
    let (m, v) = (mask(width) << shift, (v & mask(width)) << shift);
    for (k, byte) in b[first..last].iter_mut().enumerate() {
        let (mk, vk) = ((m >> (8 * k)) as u8, (v >> (8 * k)) as u8);
        *byte = *byte & !mk | vk;
    }
}
"#;
    for e in &s.enums {
        let ty = rust_ty(e.bits);
        o += "\n";
        doc(&mut o, "", &e.description);
        let _ =
            writeln!(o, "#[derive(Clone, Copy, Debug, PartialEq, Eq)]\n#[repr({ty})]\npub enum {} {{", camel(&e.name));
        for v in &e.values {
            doc(&mut o, "    ", &v.description);
            let _ = writeln!(o, "    {} = {},", camel(&v.name), v.value);
        }
        o += "}\n";
        let _ = writeln!(o, "\nimpl {} {{", camel(&e.name));
        o += "    /// The value with this raw encoding, if any.\n";
        let _ = writeln!(o, "    pub fn from_raw(raw: {ty}) -> Option<Self> {{\n        match raw {{");
        for v in &e.values {
            let _ = writeln!(o, "            {} => Some(Self::{}),", v.value, camel(&v.name));
        }
        o += "            _ => None,\n        }\n    }\n";
        o += "    /// Every value.\n";
        let list: Vec<String> = e.values.iter().map(|v| format!("Self::{}", camel(&v.name))).collect();
        let _ = writeln!(o, "    pub const ALL: [Self; {}] = [{}];", e.values.len(), list.join(", "));
        o += "}\n";
    }
    for st in &s.structs {
        let name = camel(&st.name);
        o += "\n";
        doc(&mut o, "", &st.description);
        o += "/// Fields hold raw values (enum fields too) so that garbage from a peer or a card can be\n/// represented and rejected.\n";
        let _ = writeln!(o, "#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]\npub struct {name} {{");
        for f in &st.fields {
            let d = match &f.enumeration {
                Some(e) => format!("{} (raw [`{}`]).", f.description.trim_end_matches('.'), camel(e)),
                None => f.description.clone(),
            };
            doc(&mut o, "    ", d.trim_start_matches(" (raw").trim());
            let _ = writeln!(o, "    pub {}: {},", f.name, rust_ty(f.bits));
        }
        o += "}\n";
        let _ = writeln!(o, "\nimpl {name} {{");
        o += "    /// Encoded size.\n";
        let _ = writeln!(o, "    pub const BYTES: usize = {};", st.bytes);
        for f in &st.fields {
            let _ = writeln!(o, "    /// Width of `{}` in bits.", f.name);
            let _ = writeln!(o, "    pub const {}_BITS: u32 = {};", f.name.to_uppercase(), f.bits);
        }
        o += "    /// Little-endian encoding.\n";
        let _ =
            writeln!(o, "    pub fn encode(&self) -> [u8; {}] {{\n        let mut b = [0u8; {}];", st.bytes, st.bytes);
        let mut off = 0;
        for f in &st.fields {
            let _ = writeln!(o, "        put_bits(&mut b, {off}, {}, self.{} as u128);", f.bits, f.name);
            off += f.bits;
        }
        o += "        b\n    }\n";
        o += "    /// Decodes; every bit pattern decodes (validation is the receiver's job).\n";
        let _ = writeln!(o, "    pub fn decode(b: &[u8; {}]) -> Self {{\n        Self {{", st.bytes);
        let mut off = 0;
        for f in &st.fields {
            let _ = writeln!(o, "            {}: get_bits(b, {off}, {}) as {},", f.name, f.bits, rust_ty(f.bits));
            off += f.bits;
        }
        o += "        }\n    }\n}\n";
    }
    o
}
