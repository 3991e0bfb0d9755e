//! Builds each simulated top with Debian's Verilator 5 (`verilator --cc --build`), then compiles
//! the extern "C" shims and Verilator's runtime with the cc crate and links the model archives.
//! (The `verilator`/`verilated` crates do not support Verilator 5.)

use std::path::{Path, PathBuf};
use std::process::Command;

/// (top module, RTL files relative to hdl-model/rtl, shim, parameters).
type Top = (&'static str, &'static [&'static str], &'static str, &'static [&'static str]);

const TOPS: &[Top] = &[
    ("amf_sharer_table", &["amf_sharer_table.sv"], "csrc/sharer_table_shim.cpp", &[]),
    (
        "amf_frame_check",
        &["../gen/sv/amf_structs_pkg.sv", "amf_crc_pkg.sv", "amf_siphash.sv", "amf_frame_check.sv"],
        "csrc/frame_check_shim.cpp",
        // The checker alone is simulated in the iCE40 report's configuration (a MAC of half
        // rounds, 32 cycles); the card and the sender in the card's (a round per cycle).
        &["-GMacHalfRounds=1'b1"],
    ),
    ("amf_regs", &["../gen/sv/amf_regs_pkg.sv", "amf_regs.sv"], "csrc/regs_shim.cpp", &[]),
    ("amf_ring_writer", &["../gen/sv/amf_regs_pkg.sv", "amf_ring_writer.sv"], "csrc/ring_writer_shim.cpp", &[]),
    ("amf_cmd_fetch", &["../gen/sv/amf_regs_pkg.sv", "amf_cmd_fetch.sv"], "csrc/cmd_fetch_shim.cpp", &[]),
    ("amf_frame_tx", &["amf_crc_pkg.sv", "amf_siphash.sv", "amf_frame_tx.sv"], "csrc/frame_tx_shim.cpp", &[]),
    ("amf_dma_arb", &["amf_dma_arb.sv"], "csrc/dma_arb_shim.cpp", &[]),
    (
        "amf_card",
        &[
            "../gen/sv/amf_regs_pkg.sv",
            "../gen/sv/amf_structs_pkg.sv",
            "amf_crc_pkg.sv",
            "amf_regs.sv",
            "amf_cmd_fetch.sv",
            "amf_ring_writer.sv",
            "amf_dma_arb.sv",
            "amf_siphash.sv",
            "amf_frame_check.sv",
            "amf_frame_tx.sv",
            "amf_sharer_table.sv",
            "amf_engine.sv",
            "amf_card.sv",
        ],
        "csrc/card_shim.cpp",
        &[],
    ),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let rtl = manifest.join("../hdl-model/rtl");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = verilator_root();
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed={}", rtl.display());
    println!("cargo:rerun-if-changed={}", rtl.join("../gen/sv").display());
    let mut shims = cc::Build::new();
    shims
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .include(root.join("include"))
        .include(root.join("include/vltstd"))
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-sign-compare")
        .flag_if_supported("-faligned-new")
        .file(root.join("include/verilated.cpp"))
        .file(root.join("include/verilated_threads.cpp"));
    for (top, files, shim, params) in TOPS {
        let mdir = out.join(format!("obj_{top}"));
        let mut cmd = Command::new("verilator");
        cmd.args([
            "--cc",
            "--build",
            "-j",
            "2",
            "-O3",
            "-Wall",
            "--assert",
            "--x-assign",
            "fast",
            "--x-initial",
            "fast",
            // Verilator's makefile builds the per-cycle code with -Os; the simulation is the
            // product here, so trade code size for speed.
            "-MAKEFLAGS",
            "OPT_FAST=-O2",
        ])
        .args(params.iter())
        .args(["--top-module", top, "-Mdir"])
        .arg(&mdir)
        .arg(format!("-I{}", rtl.display()))
        .arg(format!("-I{}", rtl.join("gen").display()));
        for f in *files {
            cmd.arg(rtl.join(f));
        }
        let status = cmd.status().unwrap_or_else(|e| {
            panic!("cannot run verilator ({e}); install it with `apt-get install verilator` (Debian's 5.006)")
        });
        assert!(status.success(), "verilator failed for {top}");
        shims.include(&mdir).file(manifest.join(shim));
        // Verilator names the archive without the "lib" prefix the linker looks for.
        let archive = format!("V{top}__ALL");
        std::fs::copy(mdir.join(format!("{archive}.a")), out.join(format!("lib{archive}.a")))
            .unwrap_or_else(|e| panic!("copy {archive}.a: {e}"));
        println!("cargo:rustc-link-search=native={}", out.display());
        println!("cargo:rustc-link-lib=static={archive}");
    }
    shims.compile("amf_verilator_shims");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rustc-link-lib=dylib=pthread");
    println!("cargo:rustc-link-lib=dylib=atomic");
}

fn verilator_root() -> PathBuf {
    let out = Command::new("verilator").arg("--getenv").arg("VERILATOR_ROOT").output();
    match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => Path::new("/usr/share/verilator").to_path_buf(),
    }
}
