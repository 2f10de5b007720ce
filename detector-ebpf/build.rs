use which::which;

fn main() {
    // Rebuild when bpf-linker changes: it is not tracked as a dependency, and a new linker
    // can change the object the agent embeds.
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!(
            "cargo:warning=bpf-linker not found on PATH ({e}); `cargo xtask build` installs it"
        ),
    }
}
