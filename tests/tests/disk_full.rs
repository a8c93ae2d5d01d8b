//! Fail-stop on a full disk: one follower's data directory on a small tmpfs fills while the
//! cluster writes. That replica must stop (exit non-zero, one log line naming the error) rather
//! than linger as a member that answers `/health` and takes no part; the others go on; once space
//! is freed and it restarts, it catches up to the same digest.
//!
//! Mounting a tmpfs needs root (CI runs as root); elsewhere the test says so and does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tally_proto::v1 as wire;
use tally_tests::{LocalCluster, Settings, create_ledger_and_accounts, retry, serialised, transfer};

const ACCOUNTS: u128 = 64;

/// A tmpfs mounted over a directory, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tally-test", &path.display().to_string()])
            .status()
            .ok()?;
        mounted.success().then(|| Tmpfs { path: path.to_owned() })
    }

    fn resize(&self, size: &str) {
        let remounted = Command::new("mount")
            .args(["-o", &format!("remount,size={size}"), &self.path.display().to_string()])
            .status()
            .unwrap();
        assert!(remounted.success(), "the tmpfs could not be resized");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn copy_directory(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_directory(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|output| output.stdout.starts_with(b"0\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_disk_fills_stops_and_catches_up_after_space_is_freed() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let _serialised = serialised().await;
    let mut cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let victim = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    create_ledger_and_accounts(&cluster, leader, ACCOUNTS).await;

    // Move the victim's data onto a tmpfs too small for what follows.
    cluster.kill(victim);
    let data = cluster.data_directory(victim);
    let saved = data.with_extension("saved");
    std::fs::rename(&data, &saved).unwrap();
    let Some(tmpfs) = Tmpfs::mount(&data, "24m") else {
        eprintln!("skipped: mount -t tmpfs failed");
        return;
    };
    copy_directory(&saved, &data);
    cluster.restart(victim);
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(30)).await;

    // Write until the victim's disk is full and it stops; every write is acknowledged meanwhile
    // (two of three replicas are a majority).
    let client = cluster.writer(leader).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next_id = 1u128;
    let status = loop {
        let transfers: Vec<wire::NewTransfer> = (next_id..next_id + 4_000)
            .map(|id| transfer(id, 1 + id % ACCOUNTS, 1 + (id + 1) % ACCOUNTS, "0.01"))
            .collect();
        next_id += 4_000;
        let answer = retry(|| {
            let (mut client, transfers) = (client.clone(), transfers.clone());
            async move { client.create_transfers(wire::CreateTransfersRequest { transfers }).await }
        })
        .await;
        assert!(answer.results.iter().all(|code| *code == 0), "every transfer is created");
        if let Some(status) = cluster.wait_exit(victim, Duration::from_millis(10)) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "replica {victim} did not stop on a full disk:\n{}",
            cluster.log_tail(victim)
        );
    };
    assert_eq!(status.code(), Some(1), "a replica whose disk fills exits with the fatal code: {status}");
    let log = cluster.log(victim);
    let fatal: Vec<&str> = log.lines().filter(|line| line.contains("fatal")).collect();
    assert!(!fatal.is_empty(), "the replica names why it stopped:\n{}", cluster.log_tail(victim));
    assert!(
        fatal
            .iter()
            .any(|line| line.contains("No space left") || line.contains("ENOSPC") || line.contains("os error 28")),
        "the fatal line names the storage error: {fatal:?}"
    );

    // The others go on.
    let survivors: Vec<u64> = cluster.running();
    let more: Vec<wire::NewTransfer> = (next_id..next_id + 100).map(|id| transfer(id, 1, 2, "0.01")).collect();
    let answer = retry(|| {
        let (mut client, transfers) = (client.clone(), more.clone());
        async move { client.create_transfers(wire::CreateTransfersRequest { transfers }).await }
    })
    .await;
    assert!(answer.results.iter().all(|code| *code == 0));
    cluster.wait_converged(&survivors, Duration::from_secs(30)).await;

    // Space freed, the victim restarts and catches up to the same digest.
    tmpfs.resize("1g");
    cluster.restart(victim);
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(60)).await;
    drop(cluster);
    drop(tmpfs);
}
