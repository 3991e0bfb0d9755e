//! Fails when a generated file differs from what the specs generate now.

#[test]
fn generated_files_are_fresh() {
    let root = amf_regen::workspace_root();
    let files = amf_regen::generate(&root).expect("specs must load and validate");
    let mut stale = Vec::new();
    for (path, text) in files {
        let on_disk = std::fs::read_to_string(root.join(&path)).unwrap_or_default();
        if on_disk != text {
            stale.push(path.display().to_string());
        }
    }
    assert!(stale.is_empty(), "stale generated files (run `cargo run -p amf-regen`): {stale:?}");
}

#[test]
fn a_broken_spec_is_refused_with_the_reason() {
    let bad = r#"
[device]
name = "x"
block_bytes = 256
[[block]]
name = "b"
type = 1
version = [1, 0]
  [[block.reg]]
  name = "r"
  offset = 0x0c
  access = "rw"
    [[block.reg.field]]
    name = "a"
    bits = [3, 0]
    [[block.reg.field]]
    name = "b"
    bits = [4, 2]
"#;
    let spec: amf_regen::spec::RegSpec = toml::from_str(bad).unwrap();
    let err = spec.validate().unwrap_err().to_string();
    assert!(err.contains("overlaps"), "{err}");
}
