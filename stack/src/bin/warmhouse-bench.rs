//! `warmhouse-bench`: the benchmark of the whole pipeline on one machine.
//!
//! ```sh
//! cargo run --release -p warmhouse-stack --bin warmhouse-bench -- --out docs/benchmarks.md
//! cargo run --release -p warmhouse-stack --bin warmhouse-bench -- --quick
//! ```
//!
//! See `src/bench/mod.rs` for the phases and docs/benchmarks.md for results.

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> std::process::ExitCode {
    bench::main()
}
