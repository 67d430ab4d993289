//! `warmhouse-bench`: the benchmark of the whole pipeline on one machine.
//!
//! ```sh
//! cargo run --release -p warmhouse-bench -- --out docs/benchmarks.md
//! cargo run --release -p warmhouse-bench -- --quick
//! ```
//!
//! The phases are in the library (`src/lib.rs`); results in docs/benchmarks.md.

fn main() -> std::process::ExitCode {
    warmhouse_bench::main()
}
