//! den-bench: see the README.
fn main() {}
