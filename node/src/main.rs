//! `tally-node --config <file> [--bootstrap]`: one Tally replica. Everything but argument parsing, logging and
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
    /// Initialise a new cluster of the config's `initial_members`: once per cluster, on one member,
    /// with every data directory empty. Ignored by a replica that is already part of a cluster.
    #[arg(long)]
    bootstrap: bool,
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
/// Exit code for a replica that stopped taking part: a storage error (EIO, ENOSPC, a failed fsync)
/// or a broken invariant. Its log on disk is intact up to the last fsync; it recovers on restart.
const EXIT_FATAL: u8 = 1;

/// Fail-stop: a panic anywhere (a storage error the ledger store cannot answer for, a broken
/// invariant) ends the process with one log line, instead of ending one task and leaving a replica
/// that answers `/health` but no longer takes part. Nothing is retried: a failed fsync may have
/// dropped the pages it was to write, and only the log on disk, replayed on restart, is trusted.
fn stop_on_panic() {
    std::panic::set_hook(Box::new(|panic| {
        let payload = panic.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        let location = panic.location().map(|at| format!(" at {}:{}", at.file(), at.line())).unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        // stderr rather than the log: it works before logging is set up and from any thread.
        eprintln!("tally-node: fatal: {message} (thread {thread}{location}); the replica stops");
        std::process::exit(i32::from(EXIT_FATAL));
    }));
}

fn main() -> ExitCode {
    keep_freed_memory();
    stop_on_panic();
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
    config.bootstrap = arguments.bootstrap;
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
        // `run` has logged it, in one line.
        Err(tally_node::NodeError::Fatal(_)) => ExitCode::from(EXIT_FATAL),
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
