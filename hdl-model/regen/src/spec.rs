//! The spec files' schema and its validation.

use serde::Deserialize;

/// Errors reading or validating a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not match the schema.
    #[error("{path}: {source}")]
    Parse {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// The spec contradicts itself.
    #[error("{0}")]
    Invalid(String),
}

/// Access type of a register or field.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read-only.
    Ro,
    /// Read-write.
    Rw,
    /// Write-only (reads 0).
    Wo,
    /// Write 1 to clear.
    W1c,
}

impl Access {
    /// Name used in generated code and docs.
    pub fn name(self) -> &'static str {
        match self {
            Access::Ro => "ro",
            Access::Rw => "rw",
            Access::Wo => "wo",
            Access::W1c => "w1c",
        }
    }
}

/// One enumerated field value.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnumValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: u64,
    /// Meaning.
    #[serde(default)]
    pub description: String,
}

/// A register field.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// Name.
    pub name: String,
    /// [msb, lsb].
    pub bits: [u32; 2],
    /// Overrides the register's access.
    pub access: Option<Access>,
    /// Reset value of the field.
    #[serde(default)]
    pub reset: u64,
    /// Meaning.
    #[serde(default)]
    pub description: String,
    /// Named values.
    #[serde(default, rename = "enum")]
    pub values: Vec<EnumValue>,
}

impl Field {
    /// Lowest bit.
    pub fn lsb(&self) -> u32 {
        self.bits[1]
    }
    /// Width in bits.
    pub fn width(&self) -> u32 {
        self.bits[0] - self.bits[1] + 1
    }
}

/// A 32-bit register.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reg {
    /// Name.
    pub name: String,
    /// Byte offset within its block.
    pub offset: u32,
    /// Access.
    pub access: Access,
    /// Reset value (fields' resets are OR-ed in).
    #[serde(default)]
    pub reset: u64,
    /// Meaning.
    #[serde(default)]
    pub description: String,
    /// Fields; none means one field covering the whole register.
    #[serde(default, rename = "field")]
    pub fields: Vec<Field>,
}

impl Reg {
    /// Reset value including the fields'.
    pub fn reset_value(&self) -> u32 {
        self.fields.iter().fold(self.reset as u32, |acc, f| acc | ((f.reset as u32) << f.lsb()))
    }
}

/// A register block.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    /// Name.
    pub name: String,
    /// TYPE value.
    #[serde(rename = "type")]
    pub type_id: u32,
    /// [major, minor].
    pub version: [u16; 2],
    /// Meaning.
    #[serde(default)]
    pub description: String,
    /// Registers after the header.
    #[serde(default, rename = "reg")]
    pub regs: Vec<Reg>,
}

/// Device-wide settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Name.
    pub name: String,
    /// Bytes per block.
    pub block_bytes: u32,
}

/// registers.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegSpec {
    /// Device settings.
    pub device: Device,
    /// Blocks in BAR order.
    #[serde(rename = "block")]
    pub blocks: Vec<Block>,
}

/// Offsets of the header every block starts with.
pub const HEADER: [(&str, u32, &str); 3] = [
    ("type", 0x00, "Block type: identifies the block to a driver walking the chain."),
    ("version", 0x04, "major << 16 | minor; a driver refuses majors it does not know."),
    ("next", 0x08, "Byte offset of the next block in BAR0, 0 for the last block."),
];

/// A named enumeration used by struct fields.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enum {
    /// Name.
    pub name: String,
    /// Width.
    pub bits: u32,
    /// Meaning.
    #[serde(default)]
    pub description: String,
    /// Values.
    #[serde(rename = "value")]
    pub values: Vec<EnumValue>,
}

/// A field of a struct.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StructField {
    /// Name.
    pub name: String,
    /// Width.
    pub bits: u32,
    /// Enumeration of its values.
    #[serde(rename = "enum")]
    pub enumeration: Option<String>,
    /// Meaning.
    #[serde(default)]
    pub description: String,
}

/// A fixed-size little-endian struct.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Struct {
    /// Name.
    pub name: String,
    /// Size.
    pub bytes: u32,
    /// Meaning.
    #[serde(default)]
    pub description: String,
    /// Fields from bit 0 upward.
    #[serde(rename = "field")]
    pub fields: Vec<StructField>,
}

/// structs.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StructSpec {
    /// Enumerations.
    #[serde(rename = "enum")]
    pub enums: Vec<Enum>,
    /// Structs.
    #[serde(rename = "struct")]
    pub structs: Vec<Struct>,
}

fn invalid(msg: String) -> SpecError {
    SpecError::Invalid(msg)
}

fn ident_ok(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl RegSpec {
    /// Byte offset of block `i` in BAR0.
    pub fn block_base(&self, i: usize) -> u32 {
        i as u32 * self.device.block_bytes
    }

    /// Checks names, offsets, overlaps and widths.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut types = std::collections::HashSet::new();
        for b in &self.blocks {
            if !ident_ok(&b.name) || !types.insert(b.type_id) {
                return Err(invalid(format!("block {}: bad name or duplicate type", b.name)));
            }
            let mut offsets = std::collections::HashSet::new();
            for r in &b.regs {
                if !ident_ok(&r.name) {
                    return Err(invalid(format!("{}.{}: bad name", b.name, r.name)));
                }
                if r.offset < 0x0c || !r.offset.is_multiple_of(4) || r.offset + 4 > self.device.block_bytes {
                    return Err(invalid(format!(
                        "{}.{}: offset {:#x} not word-aligned after the header",
                        b.name, r.name, r.offset
                    )));
                }
                if !offsets.insert(r.offset) {
                    return Err(invalid(format!("{}.{}: offset {:#x} used twice", b.name, r.name, r.offset)));
                }
                let mut used = 0u64;
                for f in &r.fields {
                    if f.bits[0] < f.bits[1] || f.bits[0] > 31 || !ident_ok(&f.name) {
                        return Err(invalid(format!("{}.{}.{}: bad bits or name", b.name, r.name, f.name)));
                    }
                    let mask = ((1u64 << f.width()) - 1) << f.lsb();
                    if used & mask != 0 {
                        return Err(invalid(format!("{}.{}.{}: overlaps another field", b.name, r.name, f.name)));
                    }
                    used |= mask;
                    for v in &f.values {
                        if v.value >> f.width() != 0 {
                            return Err(invalid(format!(
                                "{}.{}.{}: value {} too wide",
                                b.name, r.name, f.name, v.name
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl StructSpec {
    /// Checks that fields fill each struct exactly and enums exist and fit.
    pub fn validate(&self) -> Result<(), SpecError> {
        for e in &self.enums {
            for v in &e.values {
                if v.value >> e.bits != 0 {
                    return Err(invalid(format!("enum {}: {} does not fit {} bits", e.name, v.name, e.bits)));
                }
            }
        }
        for s in &self.structs {
            let total: u32 = s.fields.iter().map(|f| f.bits).sum();
            if total != s.bytes * 8 {
                return Err(invalid(format!("struct {}: fields cover {total} bits, not {}", s.name, s.bytes * 8)));
            }
            for f in &s.fields {
                if f.bits == 0 || f.bits > 128 || !ident_ok(&f.name) {
                    return Err(invalid(format!("struct {}.{}: bad width or name", s.name, f.name)));
                }
                if let Some(e) = &f.enumeration {
                    let Some(en) = self.enums.iter().find(|x| &x.name == e) else {
                        return Err(invalid(format!("struct {}.{}: no enum {e}", s.name, f.name)));
                    };
                    if en.bits != f.bits {
                        return Err(invalid(format!("struct {}.{}: enum {e} is {} bits", s.name, f.name, en.bits)));
                    }
                }
            }
        }
        Ok(())
    }
}
