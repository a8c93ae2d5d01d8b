//! `tally-bench`, the load generator, against a real three-replica cluster: the figures it reports
//! add up, it writes its JSON and plot, an open-loop rate is kept, a warm-up is not measured, and a
//! run it cannot do is refused.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tally_tests::{LocalCluster, Settings, Target, bench_binary, serialised};

fn bench(target: &Target, arguments: &[&str]) -> Value {
    let directory = tempfile::tempdir().unwrap();
    let json = directory.path().join("result.json");
    let plot = directory.path().join("latency.svg");
    let output = Command::new(bench_binary())
        .args([
            "--endpoints",
            &target.endpoints,
            "--accounts",
            "50",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ])
        .args(arguments)
        .envs(target.environment.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("tally-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("transfers/s") && stdout.contains("p99.9"), "{stdout}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 2, "{svg}");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_reports_consistent_figures_closed_and_open_loop() {
    let _turn = serialised().await;
    let cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let endpoints = cluster.target();

    let closed = bench(&endpoints, &["--clients", "2", "--batch", "100", "--duration", "2"]);
    let requests = closed["requests"].as_u64().unwrap();
    assert!(requests > 0);
    assert_eq!(closed["transfers_ok"].as_u64().unwrap(), requests * 100, "every transfer applied: {closed}");
    assert_eq!(closed["requests_failed"], 0);
    assert_eq!(closed["threads"], 1, "the clients run on one thread unless told otherwise");
    let latency = &closed["latency_ms"];
    let p = |name: &str| latency[name].as_f64().unwrap();
    assert!(
        0.0 < p("p50")
            && p("p50") <= p("p90")
            && p("p90") <= p("p99")
            && p("p99") <= p("p99_9")
            && p("p99_9") <= p("max")
    );
    let timeline = closed["timeline"].as_array().unwrap();
    let per_second: u64 = timeline.iter().map(|second| second["transfers"].as_u64().unwrap()).sum();
    assert_eq!(per_second, closed["transfers_ok"].as_u64().unwrap(), "the timeline adds up");

    // Open loop: 40 requests a second for 2 s, single transfers batched by the SDK, on two threads.
    let open =
        bench(&endpoints, &["--mode", "single", "--clients", "8", "--rate", "40", "--duration", "2", "--threads", "2"]);
    assert_eq!(open["threads"], 2);
    let requests = open["requests"].as_u64().unwrap();
    assert!((70..=82).contains(&requests), "the schedule of 40/s for 2 s gives about 80 requests: {requests}");
    assert_eq!(open["transfers_ok"].as_u64().unwrap(), requests);

    // A warm-up of 1 s before 1 s measured: only the requests scheduled after it count.
    let warmed =
        bench(&endpoints, &["--mode", "single", "--clients", "8", "--rate", "40", "--warmup", "1", "--duration", "1"]);
    let requests = warmed["requests"].as_u64().unwrap();
    assert!((35..=42).contains(&requests), "40/s measured for 1 s after the warm-up: {requests} requests");
    assert_eq!(warmed["warmup_seconds"].as_f64(), Some(1.0));
    let timeline = warmed["timeline"].as_array().unwrap();
    let per_second: u64 = timeline.iter().map(|second| second["transfers"].as_u64().unwrap()).sum();
    assert_eq!(per_second, warmed["transfers_ok"].as_u64().unwrap(), "the timeline adds up");
}

#[test]
fn a_load_generator_without_a_thread_is_refused_before_it_connects() {
    // Port 1 on loopback: nothing listens there, so reaching the network would fail differently.
    let output = Command::new(bench_binary())
        .args(["--endpoints", "127.0.0.1:1", "--threads", "0", "--duration", "1"])
        .output()
        .expect("tally-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--threads at least 1"), "{stderr}");
}
