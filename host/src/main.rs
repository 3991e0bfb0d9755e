//! The `amf` command.

fn main() {
    std::process::exit(amf::cli::main());
}
