//! Regenerates every file derived from hdl-model/spec.

fn main() {
    let root = amf_regen::workspace_root();
    let files = match amf_regen::generate(&root) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("amf-regen: {e}");
            std::process::exit(1);
        }
    };
    for (path, text) in files {
        let full = root.join(&path);
        if let Some(dir) = full.parent() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("amf-regen: {}: {e}", dir.display());
                std::process::exit(1);
            }
        }
        let old = std::fs::read_to_string(&full).unwrap_or_default();
        if old != text {
            if let Err(e) = std::fs::write(&full, &text) {
                eprintln!("amf-regen: {}: {e}", full.display());
                std::process::exit(1);
            }
            println!("wrote {}", path.display());
        }
    }
}
