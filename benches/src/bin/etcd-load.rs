//! `etcd-load`: replicated durable writes against an etcd cluster, for the side-by-side figures in
//! BENCHMARKS.md (`scripts/bench-peers.sh`).
//!
//! `--clients` tasks each put a `--value-bytes` value (128 by default: the size of one Tally
//! transfer) under one of `--keys` keys and wait for the answer, in a closed loop, for
//! `--duration` seconds. etcd answers a put once it is committed (fsynced on a majority) and
//! applied, as Tally answers a transfer. Tasks are spread over the endpoints; a follower forwards
//! the proposal to the leader, as etcd's own benchmark tool lets it. Prints one line:
//! `<writes> writes in <s> s: <n> writes/s; latency p50 ..., p99 ..., max ...; <e> errors`.
//!
//!     etcd-load --endpoints 127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399 --clients 32 --duration 15

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

use etcdserverpb::PutRequest;
use etcdserverpb::kv_client::KvClient;

/// The allocator `tally-bench` uses, so that both load generators cost their host alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "etcd-load", about = "Closed-loop put load against an etcd cluster")]
struct Arguments {
    /// etcd client endpoints, comma-separated host:port.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrent clients (tasks), each with one put in flight.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Distinct keys written (uniformly).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
    /// Threads the clients run on; 1 (the default) as `tally-bench`.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// The longest a single put may take before it counts as an error.
const PUT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Totals {
    latency_us: Histogram<u64>,
    errors: u64,
    last_error: Option<String>,
}

async fn run_client(
    mut client: KvClient<Channel>,
    arguments: Arc<Arguments>,
    until: Instant,
    totals: Arc<Mutex<Totals>>,
) {
    let value = vec![0x5a_u8; arguments.value_bytes];
    let mut latency_us = Histogram::<u64>::new(3).expect("a histogram");
    let mut errors = 0;
    let mut last_error = None;
    while Instant::now() < until {
        let key = format!("account/{:08}", fastrand::u64(1..=arguments.keys)).into_bytes();
        let started = Instant::now();
        let mut request = tonic::Request::new(PutRequest { key, value: value.clone() });
        request.set_timeout(PUT_TIMEOUT);
        match client.put(request).await {
            Ok(_) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                latency_us.record(micros.max(1)).expect("a latency within the histogram's range");
            }
            Err(status) => {
                errors += 1;
                last_error = Some(status.to_string());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let mut totals = totals.lock().expect("the totals lock is never poisoned");
    totals.latency_us.add(&latency_us).expect("histograms of the same range");
    totals.errors += errors;
    if last_error.is_some() {
        totals.last_error = last_error;
    }
}

fn main() -> std::process::ExitCode {
    let arguments = Arguments::parse();
    if arguments.clients == 0 || arguments.threads == 0 || arguments.keys == 0 || arguments.duration <= 0.0 {
        eprintln!("etcd-load: --clients, --threads, --keys and --duration must be positive");
        return std::process::ExitCode::from(2);
    }
    let threads = arguments.threads;
    tally_benches::run_on_threads("etcd-load", threads, run(Arc::new(arguments)))
}

async fn run(arguments: Arc<Arguments>) -> std::process::ExitCode {
    let mut channels = Vec::new();
    for address in &arguments.endpoints {
        let endpoint = match Endpoint::from_shared(format!("http://{address}")) {
            Ok(endpoint) => endpoint.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true),
            Err(error) => {
                eprintln!("etcd-load: invalid endpoint {address}: {error}");
                return std::process::ExitCode::from(2);
            }
        };
        match endpoint.connect().await {
            Ok(channel) => channels.push(channel),
            Err(error) => {
                eprintln!("etcd-load: cannot connect to {address}: {error}");
                return std::process::ExitCode::from(4);
            }
        }
    }
    let totals = Arc::new(Mutex::new(Totals {
        latency_us: Histogram::new(3).expect("a histogram"),
        errors: 0,
        last_error: None,
    }));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(arguments.duration);
    let tasks: Vec<_> = (0..arguments.clients)
        .map(|index| {
            let client = KvClient::new(channels[index % channels.len()].clone());
            tokio::spawn(run_client(client, Arc::clone(&arguments), until, Arc::clone(&totals)))
        })
        .collect();
    for task in tasks {
        task.await.expect("a client task does not panic");
    }
    let seconds = started.elapsed().as_secs_f64();
    let totals = totals.lock().expect("the totals lock is never poisoned");
    let latency = &totals.latency_us;
    let millis = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "{} writes in {seconds:.2} s: {:.0} writes/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} errors",
        latency.len(),
        latency.len() as f64 / seconds,
        millis(0.5),
        millis(0.99),
        latency.max() as f64 / 1000.0,
        totals.errors,
    );
    if let Some(error) = &totals.last_error {
        eprintln!("last error: {error}");
    }
    if latency.is_empty() { std::process::ExitCode::from(1) } else { std::process::ExitCode::SUCCESS }
}
