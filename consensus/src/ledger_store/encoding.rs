//! The three binary encodings the store packs rows with: transfer blocks, transfer-id chunks and
//! account-index runs.
//!
//! Each packs many small records into one redb value read in place (binary searches, no decoding
//! of the rest), because rows per record were most of the store's time (BENCHMARKS.md). This
//! module owns the byte layouts and the sizes that fit them to redb's pages; it must never open a
//! table or decide when to write: that is the commit's and the account index's work.

/// Transfers per stored block: 130,944 bytes, so that a block with its key and redb's leaf header
/// fits one 128 KiB page (a block of exactly a power of two takes the next page size up). redb's
/// cost per row is paid once per 1,023 transfers, and a full block is written around the page
/// cache ([`DirectWriteBackend`](crate::direct_io::DirectWriteBackend)) instead of being copied into fresh cache pages. With blocks of
/// 63 (8 KiB pages, buffered) the seven-replica cluster spent 20-28% more CPU per transfer
/// (BENCHMARKS.md). A point read binary-searches one block, which redb caches whole.
pub(super) const TRANSFERS_PER_BLOCK: usize = 1023;

/// Entries per transfer-id chunk: 4,032 bytes, so that a full chunk with its key and redb's leaf
/// header fits one 4 KiB page.
pub(super) const TRANSFER_IDS_PER_CHUNK: usize = 168;

/// Encoded transfers as stored in a block.
pub(super) mod transfer_blocks {
    use tally_state_machine::codec::{TRANSFER_SIZE, transfer_timestamp};
    use tally_state_machine::storage::TimestampRange;

    pub type Encoded = [u8; TRANSFER_SIZE];

    pub fn records(block: &[u8]) -> &[Encoded] {
        let (records, rest) = block.as_chunks::<TRANSFER_SIZE>();
        assert!(rest.is_empty(), "a transfer block of {} bytes is not whole transfers", block.len());
        records
    }

    pub fn find(block: &[Encoded], timestamp: u64) -> Option<&Encoded> {
        block.binary_search_by_key(&timestamp, transfer_timestamp).ok().map(|position| &block[position])
    }

    pub fn within(block: &[Encoded], range: TimestampRange) -> &[Encoded] {
        let start = block.partition_point(|encoded| transfer_timestamp(encoded) < range.min);
        let end = block.partition_point(|encoded| transfer_timestamp(encoded) <= range.max);
        &block[start..end.max(start)]
    }
}

/// The encoding of transfer-id chunks: each entry is 24 bytes, the transfer id then its timestamp,
/// both big-endian, so byte order is id order.
pub(super) mod transfer_ids {
    pub const ENTRY_BYTES: usize = 24;
    pub type Entry = [u8; ENTRY_BYTES];

    pub fn encode(id: u128, timestamp: u64) -> Entry {
        let mut entry = [0; ENTRY_BYTES];
        entry[..16].copy_from_slice(&id.to_be_bytes());
        entry[16..].copy_from_slice(&timestamp.to_be_bytes());
        entry
    }

    pub fn decode(entry: &Entry) -> (u128, u64) {
        let (id, timestamp) = entry.split_at(16);
        (
            u128::from_be_bytes(id.try_into().expect("16 bytes")),
            u64::from_be_bytes(timestamp.try_into().expect("8 bytes")),
        )
    }

    /// The entries of a stored chunk; a chunk that is not a whole number of entries is corrupt.
    pub fn records(chunk: &[u8]) -> &[Entry] {
        let (records, rest) = chunk.as_chunks::<ENTRY_BYTES>();
        assert!(rest.is_empty(), "a transfer-id chunk of {} bytes is not whole entries", chunk.len());
        records
    }

    /// The timestamp of transfer `id`, if the chunk holds it.
    pub fn find(chunk: &[Entry], id: u128) -> Option<u64> {
        let key = id.to_be_bytes();
        let position = chunk.binary_search_by(|entry| entry[..16].cmp(&key[..])).ok()?;
        Some(decode(&chunk[position]).1)
    }

    /// Splits sorted `entries` into the fewest chunks of at most `per_chunk` (one when they fit),
    /// as even as possible, so that a chunk split by an insert in its middle does not leave a
    /// sliver behind.
    pub fn split(entries: &[(u128, u64)], per_chunk: usize) -> impl Iterator<Item = &[(u128, u64)]> {
        let pieces = entries.len().div_ceil(per_chunk).max(1);
        let (size, larger) = (entries.len() / pieces, entries.len() % pieces);
        let mut rest = entries;
        (0..pieces).map(move |piece| {
            let (taken, left) = rest.split_at(size + usize::from(piece < larger));
            rest = left;
            taken
        })
    }
}

/// The encoding of an account-index run: a directory of the run's accounts, then their timestamps.
///
/// `accounts: u32` (little-endian), then for each account in ascending id order its id (`u128`,
/// big-endian) and the end of its timestamps (`u32`, little-endian: one past its last), then every
/// timestamp (`u64`, little-endian), grouped by account and ascending within each. A lookup
/// binary-searches the directory and then the account's timestamps, in place. An account's id is
/// written once per run rather than once per posting: 8 bytes a posting plus 20 an account, where
/// the earlier `(account, timestamp)` postings took 24, and the runs were a quarter of the bytes the
/// store wrote (BENCHMARKS.md).
pub(super) mod postings {
    use tally_state_machine::storage::TimestampRange;

    pub const DIRECTORY_ENTRY_BYTES: usize = 20;
    pub type DirectoryEntry = [u8; DIRECTORY_ENTRY_BYTES];
    pub type Timestamp = [u8; 8];

    /// Encodes `postings`, sorted by `(account, timestamp)`, into `out` (cleared first).
    pub fn encode(postings: &[(u128, u64)], out: &mut Vec<u8>) {
        out.clear();
        let accounts = postings.chunk_by(|left, right| left.0 == right.0);
        let count = u32::try_from(accounts.clone().count()).expect("fewer than 2^32 accounts in a run");
        out.extend_from_slice(&count.to_le_bytes());
        let mut end = 0_usize;
        for account_postings in accounts {
            end += account_postings.len();
            out.extend_from_slice(&account_postings[0].0.to_be_bytes());
            out.extend_from_slice(&u32::try_from(end).expect("fewer than 2^32 postings in a run").to_le_bytes());
        }
        for (_, timestamp) in postings {
            out.extend_from_slice(&timestamp.to_le_bytes());
        }
    }

    /// A stored run, read in place.
    #[derive(Clone, Copy, Debug)]
    pub struct Run<'a> {
        directory: &'a [DirectoryEntry],
        timestamps: &'a [Timestamp],
    }

    fn account_of(entry: &DirectoryEntry) -> u128 {
        u128::from_be_bytes(entry[..16].try_into().expect("16 bytes"))
    }

    fn end_of(entry: &DirectoryEntry) -> usize {
        u32::from_le_bytes(entry[16..].try_into().expect("4 bytes")) as usize
    }

    pub fn timestamp(bytes: &Timestamp) -> u64 {
        u64::from_le_bytes(*bytes)
    }

    impl<'a> Run<'a> {
        /// Reads a stored run; one whose parts do not add up is corrupt.
        pub fn parse(run: &'a [u8]) -> Run<'a> {
            let (count, rest) = run.split_first_chunk::<4>().expect("an account-index run starts with its count");
            let accounts = u32::from_le_bytes(*count) as usize;
            let (directory, timestamps) = rest.split_at(accounts * DIRECTORY_ENTRY_BYTES);
            let (directory, none) = directory.as_chunks::<DIRECTORY_ENTRY_BYTES>();
            let (timestamps, rest) = timestamps.as_chunks::<8>();
            assert!(none.is_empty() && rest.is_empty(), "an account-index run of {} bytes is corrupt", run.len());
            assert_eq!(directory.last().map_or(0, end_of), timestamps.len(), "an account-index run is corrupt");
            Run { directory, timestamps }
        }

        /// Postings in the run.
        pub fn len(&self) -> usize {
            self.timestamps.len()
        }

        /// The timestamps of `account_id` within `range`, ascending.
        pub fn account_range(&self, account_id: u128, range: TimestampRange) -> &'a [Timestamp] {
            let Ok(position) = self.directory.binary_search_by_key(&account_id, account_of) else { return &[] };
            let timestamps = self.timestamps_at(position);
            let first = timestamps.partition_point(|bytes| timestamp(bytes) < range.min);
            let last = timestamps.partition_point(|bytes| timestamp(bytes) <= range.max).max(first);
            &timestamps[first..last]
        }

        /// The position in the run's directory of its first account from `account` on.
        pub fn position_from(&self, account: u128) -> usize {
            self.directory.partition_point(|entry| account_of(entry) < account)
        }

        /// The account of the `position`th entry of the run's directory, if it has that many.
        pub fn account_at(&self, position: usize) -> Option<u128> {
            self.directory.get(position).map(account_of)
        }

        /// The timestamps of the `position`th account of the run's directory, ascending.
        pub fn timestamps_at(&self, position: usize) -> &'a [Timestamp] {
            let start = if position == 0 { 0 } else { end_of(&self.directory[position - 1]) };
            &self.timestamps[start..end_of(&self.directory[position])]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{TRANSFER_IDS_PER_CHUNK, postings, transfer_ids};
    use tally_state_machine::storage::TimestampRange;

    #[test]
    fn transfer_id_chunks_split_into_the_fewest_even_pieces_within_the_limit() {
        for len in
            [1, 2, TRANSFER_IDS_PER_CHUNK, TRANSFER_IDS_PER_CHUNK + 1, 3 * TRANSFER_IDS_PER_CHUNK - 1, 8_190 + 168]
        {
            let entries: Vec<(u128, u64)> = (0..len as u64).map(|id| (u128::from(id), id)).collect();
            let pieces: Vec<&[(u128, u64)]> = transfer_ids::split(&entries, TRANSFER_IDS_PER_CHUNK).collect();
            assert_eq!(pieces.len(), len.div_ceil(TRANSFER_IDS_PER_CHUNK), "{len} entries");
            assert_eq!(pieces.concat(), entries, "{len} entries, in order, each once");
            let sizes: Vec<usize> = pieces.iter().map(|piece| piece.len()).collect();
            assert!(sizes.iter().all(|size| *size <= TRANSFER_IDS_PER_CHUNK), "{len}: {sizes:?}");
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{len}: {sizes:?}");
        }
        let chunk: Vec<u8> = [(3_u128, 30_u64), (9, 90), (1 << 90, 7)]
            .iter()
            .flat_map(|(id, timestamp)| transfer_ids::encode(*id, *timestamp))
            .collect();
        let entries = transfer_ids::records(&chunk);
        assert_eq!(transfer_ids::find(entries, 9), Some(90));
        assert_eq!(transfer_ids::find(entries, 1 << 90), Some(7));
        assert_eq!(transfer_ids::find(entries, 4), None);
        assert_eq!(transfer_ids::find(entries, 256), None, "ids compare as numbers, not by their low bytes");
    }

    #[test]
    fn an_account_index_run_finds_each_accounts_timestamps_in_place() {
        let sorted = [(2_u128, 10_u64), (2, 20), (2, 30), (7, 15), (1 << 100, 5), (1 << 100, 25)];
        let mut encoded = Vec::new();
        postings::encode(&sorted, &mut encoded);
        assert_eq!(encoded.len(), 4 + 3 * postings::DIRECTORY_ENTRY_BYTES + sorted.len() * 8);
        let run = postings::Run::parse(&encoded);
        assert_eq!(run.len(), sorted.len());
        // A merge walks the directory: each account in turn, with its timestamps; every posting comes
        // back, in order.
        let directory: Vec<(u128, Vec<u64>)> = (0..)
            .map_while(|position| {
                let account = run.account_at(position)?;
                Some((account, run.timestamps_at(position).iter().map(postings::timestamp).collect()))
            })
            .collect();
        assert_eq!(directory, [(2, vec![10, 20, 30]), (7, vec![15]), (1 << 100, vec![5, 25])]);
        let walked: Vec<(u128, u64)> = directory
            .iter()
            .flat_map(|(account, timestamps)| timestamps.iter().map(move |timestamp| (*account, *timestamp)))
            .collect();
        assert_eq!(walked, sorted, "every posting back, in order");
        assert_eq!(run.position_from(3), 1);
        assert_eq!(run.position_from(1 << 101), 3);
        let timestamps = |account, min, max| -> Vec<u64> {
            run.account_range(account, TimestampRange { min, max }).iter().map(postings::timestamp).collect()
        };
        assert_eq!(timestamps(2, 0, u64::MAX), [10, 20, 30]);
        assert_eq!(timestamps(2, 11, 30), [20, 30]);
        assert_eq!(timestamps(2, 31, 40), Vec::<u64>::new());
        assert_eq!(timestamps(7, 0, u64::MAX), [15], "an account's timestamps stop where the next account's begin");
        assert_eq!(timestamps(1 << 100, 6, 25), [25]);
        assert_eq!(timestamps(3, 0, u64::MAX), Vec::<u64>::new(), "an account not in the run");
        assert_eq!(timestamps(1 << 101, 0, u64::MAX), Vec::<u64>::new());
        let mut empty = Vec::new();
        postings::encode(&[], &mut empty);
        assert_eq!(postings::Run::parse(&empty).len(), 0);
    }

    #[test]
    #[should_panic(expected = "corrupt")]
    fn an_account_index_run_whose_directory_and_timestamps_disagree_is_refused() {
        let mut encoded = Vec::new();
        postings::encode(&[(2, 10), (2, 20), (7, 15)], &mut encoded);
        encoded.truncate(encoded.len() - 8);
        let _ = postings::Run::parse(&encoded);
    }
}
