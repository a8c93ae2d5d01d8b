//! `tally-bench`: drives a running Tally cluster through the SDK and reports throughput and
//! request latency.
//!
//! Closed loop by default: `--clients` tasks each send a request and wait for its answer. With
//! `--rate`, open loop: requests start on a fixed schedule whether or not earlier ones finished
//! (at most `--clients` in flight), and latency is measured from the scheduled start, so a stall
//! shows in the figures instead of quietly slowing the load (no coordinated omission).
//! With `--warmup`, the load runs that long first and only requests begun after it are measured:
//! a freshly started cluster spends its first seconds growing its caches and memory.
//! The clients run on one thread unless `--threads` says otherwise: the load generator usually
//! shares its host with the replicas it measures.
//!
//!     scripts/cluster.sh up
//!     cargo run --release -p tally-benches --bin tally-bench -- --clients 4 --batch 8190 --duration 20
//!     cargo run --release -p tally-benches --bin tally-bench -- --mode single --clients 1000 --duration 20
//!     cargo run --release -p tally-benches --bin tally-bench -- --batch 1 --clients 1 --rate 200 --json out.json --plot out.svg

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use serde_json::json;
use tally_client::{Client, NewAccount, NewLedger, NewTransfer, ResultCode, new_id};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The allocator the replicas use: in `--mode single` every call allocates its reply channel and
/// queue entry, and glibc's malloc was a tenth of the load generator's CPU there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tally-bench", about = "Load generator for a Tally cluster")]
struct Arguments {
    /// Replicas, comma-separated host:port.
    #[arg(
        long,
        env = "TALLY_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103,127.0.0.1:7104,127.0.0.1:7105,127.0.0.1:7106,127.0.0.1:7107"
    )]
    endpoints: Vec<String>,
    /// `batch`: each request carries --batch transfers (create_transfers). `single`: each task
    /// calls create_transfer for one transfer, and the SDK batches concurrent calls.
    #[arg(long, value_enum, default_value = "batch")]
    mode: Mode,
    /// Concurrent clients (tasks); with --rate, the most requests in flight.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Transfers per request in `batch` mode, 1..=8190.
    #[arg(long, default_value_t = 8_190)]
    batch: usize,
    /// Seconds to run (unless --requests is reached first).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of load before the measured `--duration`; requests begun during them are not
    /// counted.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Stop after this many requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: requests started per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Accounts the transfers move between (created on the first run, reused later).
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// The share of transfers that touch one of the first --hot-accounts accounts (0..=1).
    #[arg(long, default_value_t = 0.0)]
    hot_fraction: f64,
    #[arg(long, default_value_t = 10)]
    hot_accounts: u64,
    /// The ledger to use (created if missing).
    #[arg(long, default_value_t = 1)]
    ledger: u32,
    /// Each request's deadline, seconds.
    #[arg(long, default_value_t = 10.0)]
    deadline: f64,
    /// Write the results (and the per-second timeline) as JSON here.
    #[arg(long)]
    json: Option<String>,
    /// Write a latency-over-time plot (SVG) here.
    #[arg(long)]
    plot: Option<String>,
    /// Threads the load generator runs its clients on. 1 (the default) runs every client task on
    /// one thread: on a host it shares with the cluster it takes the least from the replicas, and
    /// the callers woken by one answer all call again before the SDK sends its next batch.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Batch,
    Single,
}

/// The first account id; accounts are `ACCOUNT_BASE + 1 ..= ACCOUNT_BASE + accounts`.
const ACCOUNT_BASE: u128 = 1 << 64;
const LATENCY_MAX_MICROSECONDS: u64 = 600_000_000;

#[derive(Debug)]
struct Recorder {
    /// When measuring begins (after the warm-up).
    started: Instant,
    latency: Histogram<u64>,
    /// Per second since the start: (transfers acknowledged, requests, latency histogram).
    seconds: Vec<(u64, u64, Histogram<u64>)>,
    transfers_ok: u64,
    transfers_rejected: u64,
    requests_failed: u64,
    last_error: Option<String>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_MICROSECONDS, 3).expect("valid histogram bounds")
}

impl Recorder {
    /// Records a request begun (or, open loop, scheduled) at `begun`, unless that was during the
    /// warm-up.
    fn record(&mut self, begun: Instant, finished: Instant, outcome: &Result<Vec<ResultCode>, tally_client::Error>) {
        if begun < self.started {
            return;
        }
        let latency = finished - begun;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_MAX_MICROSECONDS);
        self.latency.record(micros).expect("clamped into range");
        let second = usize::try_from(finished.duration_since(self.started).as_secs()).unwrap_or(usize::MAX);
        while self.seconds.len() <= second {
            self.seconds.push((0, 0, histogram()));
        }
        let slot = &mut self.seconds[second];
        slot.1 += 1;
        slot.2.record(micros).expect("clamped into range");
        match outcome {
            Ok(codes) => {
                let ok = codes.iter().filter(|code| **code == ResultCode::Ok).count() as u64;
                self.transfers_ok += ok;
                self.transfers_rejected += codes.len() as u64 - ok;
                slot.0 += ok;
            }
            Err(error) => {
                self.requests_failed += 1;
                self.last_error = Some(error.to_string());
            }
        }
    }
}

/// Transfers of 0.01 between accounts; `hot_fraction` of them debit a hot account.
fn transfers(arguments: &Arguments, count: usize) -> Vec<NewTransfer> {
    let amount = Decimal::from_str("0.01").expect("a literal");
    (0..count)
        .map(|_| {
            let debit = if arguments.hot_fraction > 0.0 && fastrand::f64() < arguments.hot_fraction {
                fastrand::u64(1..=arguments.hot_accounts.min(arguments.accounts))
            } else {
                fastrand::u64(1..=arguments.accounts)
            };
            let mut credit = fastrand::u64(1..=arguments.accounts);
            if credit == debit {
                credit = debit % arguments.accounts + 1;
            }
            NewTransfer::new(
                new_id(),
                ACCOUNT_BASE + u128::from(debit),
                ACCOUNT_BASE + u128::from(credit),
                amount,
                arguments.ledger,
                1,
            )
        })
        .collect()
}

async fn send(client: &Client, arguments: &Arguments) -> Result<Vec<ResultCode>, tally_client::Error> {
    match arguments.mode {
        Mode::Batch => client.create_transfers(&transfers(arguments, arguments.batch)).await,
        Mode::Single => {
            let transfer = transfers(arguments, 1).pop().expect("one transfer");
            client.create_transfer(transfer).await.map(|code| vec![code])
        }
    }
}

async fn setup(client: &Client, arguments: &Arguments) -> Result<(), String> {
    let ledger = client
        .create_ledgers(&[NewLedger::new(arguments.ledger, "EUR", 2)])
        .await
        .map_err(|error| error.to_string())?;
    if !ledger[0].is_success() {
        return Err(format!("ledger {}: {}", arguments.ledger, ledger[0].description()));
    }
    let accounts: Vec<NewAccount> = (1..=u128::from(arguments.accounts))
        .map(|id| NewAccount::new(ACCOUNT_BASE + id, arguments.ledger, 1))
        .collect();
    for chunk in accounts.chunks(8_190) {
        let codes = client.create_accounts(chunk).await.map_err(|error| error.to_string())?;
        if let Some(code) = codes.iter().find(|code| !code.is_success()) {
            return Err(format!("creating accounts: {} ({})", code.name(), code.description()));
        }
    }
    Ok(())
}

fn percentile(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1_000.0
}

/// A small SVG of per-second p50 and p99 request latency.
fn plot(recorder: &Recorder, title: &str) -> String {
    let (width, height, margin) = (900.0, 420.0, 60.0);
    let points: Vec<(f64, f64, f64)> = recorder
        .seconds
        .iter()
        .enumerate()
        .filter(|(_, (_, requests, _))| *requests > 0)
        .map(|(second, (_, _, histogram))| (second as f64, percentile(histogram, 0.5), percentile(histogram, 0.99)))
        .collect();
    let x_max = points.iter().map(|point| point.0).fold(1.0, f64::max);
    let y_max = points.iter().map(|point| point.2).fold(1.0, f64::max) * 1.1;
    let x = |value: f64| margin + value / x_max * (width - 2.0 * margin);
    let y = |value: f64| height - margin - value / y_max * (height - 2.0 * margin);
    let line = |pick: fn(&(f64, f64, f64)) -> f64| {
        points.iter().map(|point| format!("{:.1},{:.1}", x(point.0), y(pick(point)))).collect::<Vec<_>>().join(" ")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{margin}\" y=\"24\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{margin}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"black\"/>\n\
         <line x1=\"{margin}\" y1=\"{margin}\" x2=\"{margin}\" y2=\"{bottom}\" stroke=\"black\"/>\n\
         <text x=\"{right}\" y=\"{label_y}\" text-anchor=\"end\">seconds</text>\n\
         <text x=\"10\" y=\"{margin}\">ms</text>\n",
        bottom = height - margin,
        right = width - margin,
        label_y = height - 20.0,
    );
    for step in 0..=4 {
        let value = y_max * f64::from(step) / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{value:.1}</text>",
            margin - 6.0,
            y(value) + 4.0
        );
        let seconds = x_max * f64::from(step) / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{seconds:.0}</text>",
            x(seconds),
            height - margin + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>",
        line(|point| point.1)
    );
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"1.5\" points=\"{}\"/>",
        line(|point| point.2)
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"44\" fill=\"#1f77b4\">p50</text><text x=\"{:.1}\" y=\"44\" fill=\"#d62728\">p99</text>",
        width - 140.0,
        width - 100.0
    );
    svg.push_str("</svg>\n");
    svg
}

fn main() -> std::process::ExitCode {
    let arguments = Arguments::parse();
    if arguments.batch == 0
        || arguments.batch > tally_client::EVENTS_PER_REQUEST_MAX
        || arguments.clients == 0
        || arguments.threads == 0
        || arguments.accounts < 2
        || !(arguments.warmup >= 0.0 && arguments.warmup.is_finite())
    {
        eprintln!(
            "tally-bench: --batch must be 1..=8190, --clients and --threads at least 1, --accounts at least 2, --warmup at least 0"
        );
        return std::process::ExitCode::from(2);
    }
    if !(0.0..=1.0).contains(&arguments.hot_fraction) || arguments.rate.is_some_and(|rate| rate <= 0.0) {
        eprintln!("tally-bench: --hot-fraction must be within 0..=1 and --rate positive");
        return std::process::ExitCode::from(2);
    }
    let threads = arguments.threads;
    tally_benches::run_on_threads("tally-bench", threads, run(arguments))
}

async fn run(arguments: Arguments) -> std::process::ExitCode {
    // TLS from TALLY_CA, TALLY_CERT and TALLY_KEY (a principal's certificate), as tallyctl takes it,
    // or TALLY_INSECURE_PLAINTEXT=1 for a development cluster.
    let security = match tally_client::Security::from_env() {
        Ok(security) => security,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    // On a secured cluster, writes are signed with TALLY_SIGNING_KEY (TALLY_SIGNING_PASSPHRASE_FILE).
    let signing = match tally_client::RequestSigning::from_env(&security) {
        Ok(signing) => signing,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let client = match Client::connect_signed(&arguments.endpoints, security, signing).await {
        Ok(client) => client.with_deadline(Duration::from_secs_f64(arguments.deadline)),
        Err(error) => {
            eprintln!("tally-bench: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(error) = setup(&client, &arguments).await {
        eprintln!("tally-bench: setting up the ledger and accounts failed: {error}");
        return std::process::ExitCode::from(4);
    }
    let arguments = Arc::new(arguments);
    let duration = Duration::from_secs_f64(arguments.duration);
    let warmup = Duration::from_secs_f64(arguments.warmup);
    let started = Instant::now() + warmup;
    let stop_at = started + duration;
    let recorder = Arc::new(Mutex::new(Recorder {
        started,
        latency: histogram(),
        seconds: Vec::new(),
        transfers_ok: 0,
        transfers_rejected: 0,
        requests_failed: 0,
        last_error: None,
    }));
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = indicatif::ProgressBar::new((warmup + duration).as_secs().max(1));
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}").expect("a valid template"),
    );
    let take_request = {
        let issued = Arc::clone(&issued);
        let limit = arguments.requests;
        move || {
            let previous = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            limit.is_none_or(|limit| previous < limit) && Instant::now() < stop_at
        }
    };
    let mut tasks = Vec::new();
    match arguments.rate {
        None => {
            for _ in 0..arguments.clients {
                let (client, arguments, recorder, take_request) =
                    (client.clone(), Arc::clone(&arguments), Arc::clone(&recorder), take_request.clone());
                tasks.push(tokio::spawn(async move {
                    while take_request() {
                        let begun = Instant::now();
                        let outcome = send(&client, &arguments).await;
                        let finished = Instant::now();
                        recorder.lock().expect("recorder lock").record(begun, finished, &outcome);
                    }
                }));
            }
        }
        Some(rate) => {
            let (client, arguments, recorder) = (client.clone(), Arc::clone(&arguments), Arc::clone(&recorder));
            tasks.push(tokio::spawn(async move {
                let in_flight = Arc::new(Semaphore::new(arguments.clients));
                let interval = Duration::from_secs_f64(1.0 / rate);
                let mut spawned = Vec::new();
                let mut scheduled = Instant::now();
                while take_request() {
                    tokio::time::sleep_until(scheduled).await;
                    // Waiting for a free slot counts in the latency: it is measured from `scheduled`.
                    let permit = Arc::clone(&in_flight).acquire_owned().await.expect("never closed");
                    let (client, arguments, recorder) = (client.clone(), Arc::clone(&arguments), Arc::clone(&recorder));
                    let intended = scheduled;
                    spawned.push(tokio::spawn(async move {
                        let _permit = permit;
                        let outcome = send(&client, &arguments).await;
                        let finished = Instant::now();
                        recorder.lock().expect("recorder lock").record(intended, finished, &outcome);
                    }));
                    scheduled += interval;
                }
                for task in spawned {
                    let _ = task.await;
                }
            }));
        }
    }
    let ticker = {
        let (recorder, progress) = (Arc::clone(&recorder), progress.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let recorder = recorder.lock().expect("recorder lock");
                progress.set_position((Instant::now() + warmup).saturating_duration_since(recorder.started).as_secs());
                if Instant::now() < recorder.started {
                    progress.set_message("warming up");
                    continue;
                }
                let elapsed = recorder.started.elapsed().as_secs_f64().max(0.001);
                progress.set_message(format!(
                    "{:.0} transfers/s, p99 {:.1} ms, {} failed",
                    recorder.transfers_ok as f64 / elapsed,
                    percentile(&recorder.latency, 0.99),
                    recorder.requests_failed
                ));
            }
        })
    };
    for task in tasks {
        let _ = task.await;
    }
    ticker.abort();
    progress.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64().max(0.001);
    let recorder = recorder.lock().expect("recorder lock");
    let requests = recorder.latency.len();
    let transfers_per_second = recorder.transfers_ok as f64 / elapsed;
    let summary = json!({
        "mode": format!("{:?}", arguments.mode).to_lowercase(),
        "clients": arguments.clients,
        "threads": arguments.threads,
        "transfers_per_request": if arguments.mode == Mode::Batch { arguments.batch } else { 1 },
        "rate": arguments.rate,
        "accounts": arguments.accounts,
        "hot_fraction": arguments.hot_fraction,
        "warmup_seconds": arguments.warmup,
        "seconds": elapsed,
        "requests": requests,
        "requests_failed": recorder.requests_failed,
        "transfers_ok": recorder.transfers_ok,
        "transfers_rejected": recorder.transfers_rejected,
        "transfers_per_second": transfers_per_second,
        "requests_per_second": requests as f64 / elapsed,
        "latency_ms": {
            "p50": percentile(&recorder.latency, 0.5),
            "p90": percentile(&recorder.latency, 0.9),
            "p99": percentile(&recorder.latency, 0.99),
            "p99_9": percentile(&recorder.latency, 0.999),
            "max": recorder.latency.max() as f64 / 1_000.0,
        },
        "timeline": recorder.seconds.iter().enumerate().map(|(second, (transfers, requests, latency))| json!({
            "second": second,
            "transfers": transfers,
            "requests": requests,
            "p50_ms": percentile(latency, 0.5),
            "p99_ms": percentile(latency, 0.99),
        })).collect::<Vec<_>>(),
    });
    println!(
        "{} transfers in {elapsed:.2} s: {transfers_per_second:.0} transfers/s, {:.0} requests/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {} rejected, {} requests failed",
        recorder.transfers_ok,
        requests as f64 / elapsed,
        percentile(&recorder.latency, 0.5),
        percentile(&recorder.latency, 0.9),
        percentile(&recorder.latency, 0.99),
        percentile(&recorder.latency, 0.999),
        recorder.latency.max() as f64 / 1_000.0,
        recorder.transfers_rejected,
        recorder.requests_failed,
    );
    if let Some(error) = &recorder.last_error {
        eprintln!("last request error: {error}");
    }
    if let Some(path) = &arguments.json
        && let Err(error) = std::fs::write(path, format!("{summary:#}\n"))
    {
        eprintln!("tally-bench: cannot write {path}: {error}");
        return std::process::ExitCode::FAILURE;
    }
    if let Some(path) = &arguments.plot {
        let title =
            format!("{transfers_per_second:.0} transfers/s, {} clients, {:?} mode", arguments.clients, arguments.mode);
        if let Err(error) = std::fs::write(path, plot(&recorder, &title)) {
            eprintln!("tally-bench: cannot write {path}: {error}");
            return std::process::ExitCode::FAILURE;
        }
    }
    if recorder.requests_failed > 0 { std::process::ExitCode::from(4) } else { std::process::ExitCode::SUCCESS }
}
