//! `tally-node --config <file>`: one Tally replica. Everything but argument parsing, logging and
//! signals lives in the library, so that tests can run replicas in-process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tally_node::NodeConfig;

#[derive(Debug, Parser)]
#[command(name = "tally-node", version, about = "A replica of a Tally ledger cluster")]
struct Arguments {
    /// The replica's TOML configuration.
    #[arg(long, env = "TALLY_CONFIG")]
    config: PathBuf,
    /// Heap to write once at startup, overriding `[memory] pretouch_bytes` (benchmarks set it on
    /// the local cluster, whose configs leave it off).
    #[arg(long, env = "TALLY_PRETOUCH_BYTES")]
    pretouch_bytes: Option<usize>,
}

/// mimalloc rather than glibc's malloc: batches of thousands of transfers make buffers of
/// megabytes, which glibc maps and unmaps for every request, so the kernel zeroed fresh pages for
/// about a third of a loaded cluster's CPU time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The mimalloc options libmimalloc-sys does not name, found by name in its mimalloc.h (build.rs).
include!(concat!(env!("OUT_DIR"), "/mimalloc_options.rs"));

/// Tells mimalloc never to return freed memory to the kernel. With its default (purge after a
/// second), a loaded follower gave back and faulted in again hundreds of megabytes a second (redb's
/// page buffers), and the kernel spent a fifth of the replica's CPU zeroing the fresh pages
/// (BENCHMARKS.md). The resident size is then the replica's peak working set, which its limits
/// (cache size, batch and in-flight limits) bound.
#[allow(unsafe_code, reason = "mimalloc's option API is C; called once, before any other thread exists")]
fn keep_freed_memory() {
    // SAFETY: `mi_option_set` takes an option number and a value and has no other preconditions.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // SAFETY: as above.
    let purge_delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    assert_eq!(purge_delay, -1, "mimalloc did not take the purge delay option");
}

/// Exit code for a configuration or data directory the replica refuses to start with.
const EXIT_REFUSED: u8 = 2;

fn main() -> ExitCode {
    keep_freed_memory();
    let arguments = Arguments::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let mut config = match NodeConfig::load(&arguments.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tally-node: {error}");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    if let Some(bytes) = arguments.pretouch_bytes {
        config.memory.pretouch_bytes = bytes;
    }
    // Before the runtime's threads exist, so that what they allocate later is carved from memory
    // already touched (node/src/memory.rs).
    match tally_node::memory::pretouch(config.memory.pretouch_bytes) {
        Ok(done) if done.bytes > 0 => {
            tracing::info!(mib = done.bytes / (1024 * 1024), elapsed = ?done.elapsed, "memory pretouched");
        }
        Ok(_) => {}
        Err(error) => {
            eprintln!("tally-node: {error}");
            return ExitCode::from(EXIT_REFUSED);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(tally_node::run_from_config(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tally-node: {error}");
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
