//! Who is at the other end of a peer connection, so that no replica takes part under its old id
//! after losing its data ("no amnesia").
//!
//! Why: Raft counts a follower's acknowledgement towards a majority because the follower keeps what
//! it acknowledged, and its vote because it remembers whom it voted for. A replica restarted under
//! its old id on an empty data directory (an orchestrator that lost a volume) has forgotten both;
//! if it took part again, an entry committed with its help could lose its majority. openraft 0.9
//! does not catch this (it checks that a follower's log never goes backwards only in debug builds).
//!
//! So each data directory has a random [`Incarnation`], made when the directory is created, and
//! every peer connection opens with a [`Hello`] each way: cluster name, the sender's id and
//! incarnation, and the id and incarnation the sender remembers for the receiver. A replica
//! remembers, durably (`peers.toml`), the incarnation it first saw for each member and refuses one
//! that changed. The replica so refused learns it from the refusal, or from a hello that remembers
//! it otherwise, and stops: [`PeerIdentity::stop_reason`] says why and names the replacement
//! procedure (come back under a new id). New members and new clusters have nothing remembered
//! against them and are accepted on first contact.
//!
//! An *older copy* of a data directory (restored from a backup or a volume snapshot) keeps its
//! incarnation, so hellos also carry the sender's [`HeldIndex`] and the index up to which the
//! sender saw the receiver acknowledge committed entries. A leader records, about once a second,
//! each member's acknowledged index (the lesser of what it matched and what the leader applied:
//! committed entries, which no new leader ever truncates); a replica that holds less than was seen
//! acknowledged has lost committed entries and is stopped the same way. What was acknowledged since
//! the last record escapes this check, so a copy less than about a second old may pass it.
//!
//! Must never: send or answer a Raft request on a connection whose hellos were not both accepted;
//! accept an incarnation for a member before it is on disk (a restart would forget it).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};

use crate::log_store::HeldIndex;
use crate::types::NodeId;

/// The largest hello or hello answer a replica reads: names and ids, nothing more.
pub const HELLO_BYTES_MAX: usize = 4096;

/// Where a replica keeps the incarnation it first saw for each member.
pub const KNOWN_INCARNATIONS_FILE: &str = "peers.toml";

/// A data directory's random identity, 128 bits, written as 32 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(u128);

impl Incarnation {
    /// A fresh incarnation from the operating system's random source.
    pub fn random() -> io::Result<Incarnation> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|error| io::Error::other(format!("no random bytes: {error}")))?;
        Ok(Incarnation(u128::from_le_bytes(bytes)))
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:032x}", self.0)
    }
}

impl FromStr for Incarnation {
    type Err = String;

    fn from_str(text: &str) -> Result<Incarnation, String> {
        if text.len() != 32 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(format!("an incarnation is 32 hex digits, not {text:?}"));
        }
        u128::from_str_radix(text, 16).map(Incarnation).map_err(|error| error.to_string())
    }
}

impl Serialize for Incarnation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Incarnation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Incarnation, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What each side of a peer connection says first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster_name: String,
    /// The fingerprint of the sender's genesis file, if the cluster has one: replicas of one
    /// cluster hold the same genesis.
    pub genesis: Option<[u8; 32]>,
    pub node_id: NodeId,
    pub incarnation: Incarnation,
    /// The node the sender means to talk to.
    pub to_node_id: NodeId,
    /// The receiver's incarnation as the sender remembers it, if it has met it before.
    pub to_incarnation: Option<Incarnation>,
    /// The highest log index the sender holds on disk.
    pub held_index: u64,
    /// The index up to which the sender saw the receiver acknowledge committed entries (0: never).
    pub to_acknowledged: u64,
}

/// Why a hello was not accepted; the answer sent back instead of one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("replica of cluster {ours:?} refused a peer of cluster {theirs:?}")]
    OtherCluster { ours: String, theirs: String },
    #[error("replica with genesis {ours} refused a peer with genesis {theirs}: they are not one cluster")]
    OtherGenesis { ours: String, theirs: String },
    #[error("node {ours} was addressed as node {addressed}: the address configured for node {addressed} is wrong")]
    OtherNode { ours: NodeId, addressed: NodeId },
    #[error("a peer presenting replica {certified}'s certificate said it is node {claimed}")]
    NotCertified { certified: NodeId, claimed: NodeId },
    #[error(
        "node {node} was known as incarnation {remembered} and presented incarnation {presented}: \
         its data directory is not the one it acknowledged entries from"
    )]
    IncarnationChanged { node: NodeId, remembered: Incarnation, presented: Incarnation },
    #[error(
        "node {node} was seen to acknowledge committed log entries up to index {acknowledged} and holds entries \
         only up to index {held}: its data directory is an older copy (restored from a backup or a volume snapshot)"
    )]
    LogBehind { node: NodeId, acknowledged: u64, held: u64 },
    #[error("node {node} cannot take part: {reason}")]
    Stopped { node: NodeId, reason: String },
}

/// This replica's identity on the peer protocol, and what it remembers of its peers'.
#[derive(Debug)]
pub struct PeerIdentity {
    cluster_name: String,
    /// The fingerprint of the cluster's genesis file ([`PeerIdentity::with_genesis`]).
    genesis: Option<[u8; 32]>,
    node_id: NodeId,
    incarnation: Incarnation,
    known_path: PathBuf,
    known: Mutex<Known>,
    held: HeldIndex,
    /// Set once this replica must stop taking part; read by the node's health check.
    stop_reason: OnceLock<String>,
}

/// What this replica remembers of its peers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Known {
    incarnations: BTreeMap<NodeId, Incarnation>,
    /// The index up to which each member was seen to acknowledge committed entries.
    acknowledged: BTreeMap<NodeId, u64>,
}

/// `peers.toml`: keys are node ids (TOML keys are strings).
#[derive(Debug, Default, Serialize, Deserialize)]
struct KnownFile {
    incarnations: BTreeMap<String, Incarnation>,
    #[serde(default)]
    acknowledged: BTreeMap<String, u64>,
}

fn by_node_id<T>(path: &Path, map: BTreeMap<String, T>) -> io::Result<BTreeMap<NodeId, T>> {
    map.into_iter()
        .map(|(id, value)| {
            id.parse::<NodeId>().map(|id| (id, value)).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} names node {id:?}, which is not a node id", path.display()),
                )
            })
        })
        .collect()
}

impl PeerIdentity {
    /// Opens the identity of the replica whose data directory is `directory`, reading what it
    /// remembers of its peers.
    /// remembers of its peers. `held` is its log's [`HeldIndex`].
    pub fn open(
        directory: &Path,
        cluster_name: &str,
        node_id: NodeId,
        incarnation: Incarnation,
        held: HeldIndex,
    ) -> io::Result<PeerIdentity> {
        let known_path = directory.join(KNOWN_INCARNATIONS_FILE);
        let known = match std::fs::read_to_string(&known_path) {
            Ok(text) => {
                let file: KnownFile = toml::from_str(&text).map_err(|error| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("{} is damaged: {error}", known_path.display()))
                })?;
                Known {
                    incarnations: by_node_id(&known_path, file.incarnations)?,
                    acknowledged: by_node_id(&known_path, file.acknowledged)?,
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Known::default(),
            Err(error) => return Err(error),
        };
        Ok(PeerIdentity {
            cluster_name: cluster_name.to_owned(),
            genesis: None,
            node_id,
            incarnation,
            known_path,
            known: Mutex::new(known),
            held,
            stop_reason: OnceLock::new(),
        })
    }

    /// This replica's own log's held index (raised by the node as entries are applied).
    pub fn held_index(&self) -> &HeldIndex {
        &self.held
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The incarnation remembered for `node`, if this replica has met it.
    pub fn remembered(&self, node: NodeId) -> Option<Incarnation> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner).incarnations.get(&node).copied()
    }

    /// The index up to which `node` was seen to acknowledge committed entries (0: never).
    pub fn acknowledged(&self, node: NodeId) -> u64 {
        self.known.lock().unwrap_or_else(PoisonError::into_inner).acknowledged.get(&node).copied().unwrap_or(0)
    }

    /// Records (durably) what a leader saw its members acknowledge: pairs of member and the index
    /// up to which it holds committed entries. Writes only when one went up. A failed write stops
    /// this replica, as any storage error does.
    pub fn record_acknowledged(&self, acknowledged: impl IntoIterator<Item = (NodeId, u64)>) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let mut updated = known.clone();
        for (node, index) in acknowledged {
            if node != self.node_id {
                let recorded = updated.acknowledged.entry(node).or_insert(0);
                *recorded = (*recorded).max(index);
            }
        }
        if updated == *known {
            return;
        }
        match self.write_known(&updated) {
            Ok(()) => *known = updated,
            Err(error) => {
                let _ = self.stop_reason.set(format!("{}: cannot be written: {error}", self.known_path.display()));
            }
        }
    }

    /// Why this replica must stop taking part, once it must.
    pub fn stop_reason(&self) -> Option<&str> {
        self.stop_reason.get().map(String::as_str)
    }

    /// This replica's cluster has the genesis of this fingerprint: a peer must present the same.
    pub fn with_genesis(mut self, fingerprint: [u8; 32]) -> PeerIdentity {
        self.genesis = Some(fingerprint);
        self
    }

    /// The hello this replica sends to (or answers) node `to`.
    pub fn hello(&self, to: NodeId) -> Hello {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        Hello {
            cluster_name: self.cluster_name.clone(),
            genesis: self.genesis,
            node_id: self.node_id,
            incarnation: self.incarnation,
            to_node_id: to,
            to_incarnation: known.incarnations.get(&to).copied(),
            held_index: self.held.get(),
            to_acknowledged: known.acknowledged.get(&to).copied().unwrap_or(0),
        }
    }

    /// Checks a peer's hello: as the server of a connection (`dialed: None`), or as the dialer of
    /// node `dialed`. A member met for the first time is remembered (on disk) before this returns.
    ///
    /// `certified`: the replica the connection's certificate names, which the hello must be from.
    pub fn check(&self, hello: &Hello, dialed: Option<NodeId>, certified: Option<NodeId>) -> Result<(), Refusal> {
        if let Some(reason) = self.stop_reason() {
            return Err(Refusal::Stopped { node: self.node_id, reason: reason.to_owned() });
        }
        if let Some(certified) = certified
            && hello.node_id != certified
        {
            return Err(Refusal::NotCertified { certified, claimed: hello.node_id });
        }
        if hello.cluster_name != self.cluster_name {
            return Err(Refusal::OtherCluster { ours: self.cluster_name.clone(), theirs: hello.cluster_name.clone() });
        }
        if hello.genesis != self.genesis {
            let name = |genesis: Option<[u8; 32]>| match genesis {
                Some(bytes) => bytes[..8].iter().map(|byte| format!("{byte:02x}")).collect(),
                None => "none".to_owned(),
            };
            return Err(Refusal::OtherGenesis { ours: name(self.genesis), theirs: name(hello.genesis) });
        }
        if hello.to_node_id != self.node_id {
            return Err(Refusal::OtherNode { ours: self.node_id, addressed: hello.to_node_id });
        }
        if let Some(dialed) = dialed
            && hello.node_id != dialed
        {
            return Err(Refusal::OtherNode { ours: hello.node_id, addressed: dialed });
        }
        if let Some(remembered) = hello.to_incarnation
            && remembered != self.incarnation
        {
            let refusal = Refusal::IncarnationChanged { node: self.node_id, remembered, presented: self.incarnation };
            self.stop_for(&refusal, hello.node_id);
            return Err(refusal);
        }
        let held = self.held.get();
        if hello.to_acknowledged > held {
            let refusal = Refusal::LogBehind { node: self.node_id, acknowledged: hello.to_acknowledged, held };
            self.stop_for(&refusal, hello.node_id);
            return Err(refusal);
        }
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let acknowledged = known.acknowledged.get(&hello.node_id).copied().unwrap_or(0);
        if acknowledged > hello.held_index {
            return Err(Refusal::LogBehind { node: hello.node_id, acknowledged, held: hello.held_index });
        }
        match known.incarnations.get(&hello.node_id) {
            Some(&remembered) if remembered == hello.incarnation => Ok(()),
            Some(&remembered) => {
                Err(Refusal::IncarnationChanged { node: hello.node_id, remembered, presented: hello.incarnation })
            }
            None => {
                let mut updated = known.clone();
                updated.incarnations.insert(hello.node_id, hello.incarnation);
                if let Err(error) = self.write_known(&updated) {
                    let reason = format!("cannot record node {}'s incarnation: {error}", hello.node_id);
                    let _ = self.stop_reason.set(format!("{}: {reason}", self.known_path.display()));
                    return Err(Refusal::Stopped { node: self.node_id, reason });
                }
                *known = updated;
                tracing::info!(node = hello.node_id, incarnation = %hello.incarnation, "met a member for the first time");
                Ok(())
            }
        }
    }

    /// Takes in a peer's refusal of this replica's hello: one that says this replica's incarnation
    /// changed stops it.
    pub fn refused(&self, refusal: &Refusal, by: NodeId) {
        if let Refusal::IncarnationChanged { node, .. } | Refusal::LogBehind { node, .. } = refusal
            && *node == self.node_id
        {
            self.stop_for(refusal, by);
        }
    }

    fn stop_for(&self, refusal: &Refusal, by: NodeId) {
        let id = self.node_id;
        let _ = self.stop_reason.set(format!(
            "node {by} refused this replica: {refusal}. A replica that lost its data must not take part under its old \
             id. To replace it: remove node {id} (tallyctl cluster remove {id}), start the replacement on an empty data \
             directory under a new node id, add it as a learner (tallyctl cluster add-learner --node-id <new id> \
             --address <host:port> --site <site>) and promote it once it has caught up (tallyctl cluster promote <new id>)"
        ));
    }

    fn write_known(&self, known: &Known) -> io::Result<()> {
        let file = KnownFile {
            incarnations: known.incarnations.iter().map(|(id, incarnation)| (id.to_string(), *incarnation)).collect(),
            acknowledged: known.acknowledged.iter().map(|(id, index)| (id.to_string(), *index)).collect(),
        };
        let text = format!(
            "# What this replica remembers of each member: the incarnation it first saw (a member presenting\n\
             # another is refused) and the index up to which it saw it acknowledge committed entries.\n{}",
            toml::to_string(&file).map_err(io::Error::other)?
        );
        write_durably(&self.known_path, text.as_bytes())
    }
}

/// Writes a small file so that it is either the old file or the new one, never half of each, and
/// on disk when this returns: a temporary file, fsynced, renamed over it, and the directory fsynced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let mut writing = std::fs::File::create(&temporary)?;
    writing.write_all(bytes)?;
    writing.sync_all()?;
    std::fs::rename(&temporary, path)?;
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(directory: &Path, node_id: NodeId, incarnation: u128) -> PeerIdentity {
        PeerIdentity::open(directory, "test", node_id, Incarnation(incarnation), HeldIndex::default()).unwrap()
    }

    fn holding(directory: &Path, node_id: NodeId, incarnation: u128, held: u64) -> PeerIdentity {
        let index = HeldIndex::default();
        index.raise(held);
        PeerIdentity::open(directory, "test", node_id, Incarnation(incarnation), index).unwrap()
    }

    #[test]
    fn a_replica_holding_less_than_it_was_seen_to_acknowledge_is_refused_and_stops() {
        let (leader_directory, follower_directory) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader = identity(leader_directory.path(), 1, 10);
        let follower = holding(follower_directory.path(), 2, 20, 500);
        assert_eq!(leader.check(&follower.hello(1), None, None), Ok(()));
        leader.record_acknowledged([(2, 400), (1, 900)]);
        assert_eq!((leader.acknowledged(2), leader.acknowledged(1)), (400, 0), "only peers are recorded");
        let leader = identity(leader_directory.path(), 1, 10);
        assert_eq!(leader.acknowledged(2), 400, "recorded on disk");
        leader.record_acknowledged([(2, 300)]);
        assert_eq!(leader.acknowledged(2), 400, "never lowered");

        // An older copy of node 2's directory: the same incarnation, entries up to 350 only.
        let copy = holding(tempfile::tempdir().unwrap().path(), 2, 20, 350);
        let refusal = leader.check(&copy.hello(1), None, None).unwrap_err();
        assert_eq!(refusal, Refusal::LogBehind { node: 2, acknowledged: 400, held: 350 });
        copy.refused(&refusal, 1);
        assert!(copy.stop_reason().unwrap().contains("older copy"), "{:?}", copy.stop_reason());
        let dialed_copy = holding(tempfile::tempdir().unwrap().path(), 2, 20, 350);
        assert!(matches!(dialed_copy.check(&leader.hello(2), Some(1), None), Err(Refusal::LogBehind { node: 2, .. })));
        assert!(dialed_copy.stop_reason().is_some(), "a copy told by its peer's hello stops itself");

        // The intact follower (it holds more than it acknowledged) is accepted both ways.
        assert_eq!(leader.check(&follower.hello(1), None, None), Ok(()));
        assert_eq!(follower.check(&leader.hello(2), Some(1), None), Ok(()));
        assert_eq!(leader.stop_reason(), None);
    }

    #[test]
    fn an_incarnation_is_written_and_read_as_32_hex_digits() {
        let incarnation = Incarnation::random().unwrap();
        assert_eq!(incarnation.to_string().parse::<Incarnation>(), Ok(incarnation));
        assert_ne!(Incarnation::random().unwrap(), incarnation);
        assert!("12".parse::<Incarnation>().is_err());
        assert!("+0000000000000000000000000000001".parse::<Incarnation>().is_err());
    }

    #[test]
    fn a_member_is_remembered_on_disk_and_refused_once_its_incarnation_changes() {
        let directory = tempfile::tempdir().unwrap();
        let (one, two) = (identity(directory.path(), 1, 10), tempfile::tempdir().unwrap());
        let two_first = identity(two.path(), 2, 20);
        assert_eq!(one.check(&two_first.hello(1), None, None), Ok(()));
        assert_eq!(one.remembered(2), Some(Incarnation(20)));

        // Reopened (a restart): still remembered; node 2 wiped comes back as incarnation 21.
        let one = identity(directory.path(), 1, 10);
        assert_eq!(one.remembered(2), Some(Incarnation(20)));
        let two_wiped = identity(tempfile::tempdir().unwrap().path(), 2, 21);
        let refusal = one.check(&two_wiped.hello(1), None, None).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::IncarnationChanged { node: 2, remembered: Incarnation(20), presented: Incarnation(21) }
        );
        assert_eq!(one.stop_reason(), None, "the replica that refuses goes on");
        two_wiped.refused(&refusal, 1);
        let reason = two_wiped.stop_reason().expect("the refused replica stops");
        assert!(reason.contains("under a new node id"), "{reason}");
        assert!(two_wiped.check(&one.hello(2), Some(1), None).is_err(), "a stopped replica accepts no hello");
    }

    #[test]
    fn a_hello_that_remembers_this_replica_otherwise_stops_it() {
        let directory = tempfile::tempdir().unwrap();
        let leader = identity(directory.path(), 1, 10);
        let old = identity(tempfile::tempdir().unwrap().path(), 3, 30);
        assert_eq!(leader.check(&old.hello(1), None, None), Ok(()));
        let wiped = identity(tempfile::tempdir().unwrap().path(), 3, 31);
        let refusal = wiped.check(&leader.hello(3), Some(1), None).unwrap_err();
        assert!(matches!(refusal, Refusal::IncarnationChanged { node: 3, .. }), "{refusal}");
        assert!(wiped.stop_reason().is_some());
    }

    #[test]
    fn other_clusters_and_misaddressed_nodes_are_refused_and_not_remembered() {
        let one = identity(tempfile::tempdir().unwrap().path(), 1, 10);
        let other = tempfile::tempdir().unwrap();
        let stranger = PeerIdentity::open(other.path(), "other", 2, Incarnation(20), HeldIndex::default()).unwrap();
        assert!(matches!(one.check(&stranger.hello(1), None, None), Err(Refusal::OtherCluster { .. })));
        let two = identity(tempfile::tempdir().unwrap().path(), 2, 20);
        assert_eq!(one.check(&two.hello(3), None, None), Err(Refusal::OtherNode { ours: 1, addressed: 3 }));
        assert_eq!(two.check(&one.hello(2), Some(4), None), Err(Refusal::OtherNode { ours: 1, addressed: 4 }));
        assert_eq!(
            one.check(&two.hello(1), None, Some(3)),
            Err(Refusal::NotCertified { certified: 3, claimed: 2 }),
            "a hello must come from the replica the connection's certificate names"
        );
        assert_eq!(one.remembered(2), None);
        assert_eq!(one.stop_reason(), None);
    }

    #[test]
    fn replicas_of_other_geneses_refuse_each_other_and_those_of_one_genesis_meet() {
        let directories: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let one = identity(directories[0].path(), 1, 10).with_genesis([1; 32]);
        let same = identity(directories[1].path(), 2, 20).with_genesis([1; 32]);
        let other = identity(directories[2].path(), 3, 30).with_genesis([2; 32]);
        let none = identity(directories[3].path(), 4, 40);
        assert_eq!(one.check(&same.hello(1), None, None), Ok(()));
        assert_eq!(
            one.check(&other.hello(1), None, None),
            Err(Refusal::OtherGenesis { ours: "0101010101010101".into(), theirs: "0202020202020202".into() })
        );
        assert_eq!(
            one.check(&none.hello(1), None, None),
            Err(Refusal::OtherGenesis { ours: "0101010101010101".into(), theirs: "none".into() }),
            "a replica without a genesis is not of a cluster with one"
        );
        assert!(matches!(none.check(&one.hello(4), None, None), Err(Refusal::OtherGenesis { .. })));
        assert_eq!(one.remembered(3), None, "a refused peer is not remembered");
    }
}
