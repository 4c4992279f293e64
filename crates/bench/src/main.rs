//! braid-bench: placeholder, replaced by the before/after harness (issue 3).

fn main() {
    eprintln!("braid-bench: not built yet (issue 3)");
    std::process::exit(2);
}
