//! `openserver bench`: load, compare and idle-session measurements. The engine and its
//! arguments live in the `openserver-bench` crate; this file only forwards to it.

pub use openserver_bench::cli::BenchArgs;

/// Runs `openserver bench` (including its internal target and worker helpers).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    openserver_bench::cli::run(args).await
}
