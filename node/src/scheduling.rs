//! Sharing a host between replicas: while a replica follows, its process group runs at a lower CPU
//! priority (`scheduling.follower_nice`); while it leads, at the normal one.
//!
//! Seven replicas on one two-core host, each in its own session, get an even share of the CPU when
//! all are busy. The leader needs the most (it answers clients and sends every follower its
//! entries), and with an even share it was what every write waited for: with the followers' groups
//! at nice 5, one client's batched writes had a p99 of 104-106 ms instead of 141-175 ms
//! (BENCHMARKS.md). Linux keeps one nice value per session's group (autogroup), set through
//! `/proc/self/autogroup`; any process may raise it or bring it back down to 0, at most ten times a
//! second without privileges.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;

use crate::replica::Replica;

const AUTOGROUP: &str = "/proc/self/autogroup";
/// Linux refuses a second change within 100 ms to unprivileged processes (`EAGAIN`).
const RETRY_AFTER: Duration = Duration::from_millis(110);

/// Keeps the process group's nice value at `follower_nice` while this replica is not the leader,
/// and at 0 while it is. Does nothing when `follower_nice` is 0.
pub async fn yield_host_while_following(replica: Arc<Replica>, follower_nice: u8) {
    if follower_nice == 0 {
        return;
    }
    match leads_own_session() {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                "scheduling.follower_nice needs the replica to lead its own session (start it with setsid); ignored"
            );
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "cannot tell whether the replica leads its own session; scheduling.follower_nice ignored");
            return;
        }
    }
    let mut watch = replica.raft.metrics();
    let mut current = None;
    loop {
        let state = watch.borrow_and_update().state;
        let wanted = if state == ServerState::Leader { 0 } else { follower_nice };
        while current != Some(wanted) {
            match std::fs::write(AUTOGROUP, wanted.to_string()) {
                Ok(()) => {
                    tracing::info!(nice = wanted, role = ?state, "set the process group's CPU priority");
                    current = Some(wanted);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => tokio::time::sleep(RETRY_AFTER).await,
                Err(error) => {
                    tracing::warn!(%error, "cannot set the process group's CPU priority; leaving it as it is");
                    return;
                }
            }
        }
        if state == ServerState::Shutdown || watch.changed().await.is_err() {
            return;
        }
    }
}

fn leads_own_session() -> io::Result<bool> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let session = session_of(&stat).ok_or_else(|| io::Error::other("/proc/self/stat has no session field"))?;
    Ok(session == std::process::id())
}

/// The session id in a `/proc/<pid>/stat` line: the fourth field after the command name, which is
/// in parentheses and may itself hold spaces and parentheses.
fn session_of(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tally (node) 1) S 1 4242 4240 0 -1 4194560 2316 0 0 0 3 1 0 0 20 0 9 0";
        assert_eq!(session_of(stat), Some(4240));
        assert_eq!(session_of("4242 (tally) S 1"), None);
        assert_eq!(session_of("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(session_of(&own).is_some(), "this process's own stat line: {own}");
    }
}
