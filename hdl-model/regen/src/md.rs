//! docs/registers.md.

use crate::spec::{RegSpec, StructSpec, HEADER};
use std::fmt::Write;

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub(crate) fn doc(r: &RegSpec, s: &StructSpec) -> String {
    let mut o = format!(
        "# Card register map and formats\n\n<!-- {} -->\n\nBAR0 holds {} blocks of {} bytes. Every block starts with three read-only words; a driver \
         walks the chain from offset 0 through NEXT, finds blocks by TYPE and refuses VERSION majors it does not know.\n\n\
         | offset | name | meaning |\n|---|---|---|\n",
        crate::HEADER_NOTE,
        r.blocks.len(),
        r.device.block_bytes
    );
    for (name, off, d) in HEADER {
        let _ = writeln!(o, "| {off:#04x} | {} | {} |", name.to_uppercase(), cell(d));
    }
    for (i, b) in r.blocks.iter().enumerate() {
        let _ = writeln!(
            o,
            "\n## Block `{}` (TYPE {:#010x}, VERSION {}.{}, at {:#05x})\n\n{}\n\n| offset | register | access | reset | description |\n|---|---|---|---|---|",
            b.name,
            b.type_id,
            b.version[0],
            b.version[1],
            r.block_base(i),
            b.description
        );
        for reg in &b.regs {
            let _ = writeln!(
                o,
                "| {:#04x} | {} | {} | {:#x} | {} |",
                reg.offset,
                reg.name,
                reg.access.name(),
                reg.reset_value(),
                cell(&reg.description)
            );
        }
        for reg in b.regs.iter().filter(|r| !r.fields.is_empty()) {
            let _ = writeln!(
                o,
                "\n`{}.{}` fields:\n\n| bits | field | access | description |\n|---|---|---|---|",
                b.name, reg.name
            );
            for f in &reg.fields {
                let mut d = cell(&f.description);
                for v in &f.values {
                    let _ = write!(
                        d,
                        "<br>{} = {}{}",
                        v.value,
                        v.name,
                        if v.description.is_empty() { String::new() } else { format!(": {}", cell(&v.description)) }
                    );
                }
                let _ = writeln!(
                    o,
                    "| {}:{} | {} | {} | {} |",
                    f.bits[0],
                    f.bits[1],
                    f.name,
                    f.access.unwrap_or(reg.access).name(),
                    d
                );
            }
        }
    }
    o += "\n# Structs\n\nLittle-endian; fields from bit 0 upward.\n";
    for st in &s.structs {
        let _ = writeln!(
            o,
            "\n## `{}` ({} bytes)\n\n{}\n\n| bits | field | description |\n|---|---|---|",
            st.name, st.bytes, st.description
        );
        let mut off = 0;
        for f in &st.fields {
            let d = match &f.enumeration {
                Some(e) => format!("{} (enum `{e}`)", cell(&f.description)),
                None => cell(&f.description),
            };
            let _ = writeln!(o, "| {}:{} | {} | {} |", off + f.bits - 1, off, f.name, d.trim());
            off += f.bits;
        }
    }
    o += "\n# Enumerations\n";
    for e in &s.enums {
        let _ = writeln!(
            o,
            "\n## `{}` ({} bits)\n\n{}\n\n| value | name | meaning |\n|---|---|---|",
            e.name, e.bits, e.description
        );
        for v in &e.values {
            let _ = writeln!(o, "| {} | {} | {} |", v.value, v.name, cell(&v.description));
        }
    }
    o
}
