//! Writing around the page cache must not change a byte of what is stored: the redb backend and the
//! snapshot writer, read back through the page cache and by redb's own file backend.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use tally_consensus::direct_io::{DIRECT_WRITE_BYTES_MIN, DirectFileWriter, DirectWriteBackend};

const VALUES: TableDefinition<u64, &[u8]> = TableDefinition::new("values");

/// On the disk of the build (`target/`), not a tmpfs `/tmp` that would refuse direct I/O.
fn directory() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory")
}

fn direct_io_supported(directory: &Path) -> bool {
    let probe = directory.join("probe");
    std::fs::write(&probe, b"").unwrap();
    OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&probe).is_ok()
}

/// A value that differs for every key and every byte position, large enough to go direct or not.
fn value(key: u64, large: bool) -> Vec<u8> {
    let len = if large { DIRECT_WRITE_BYTES_MIN * 8 + 100 } else { 300 + usize::try_from(key).unwrap() };
    (0..len).map(|index| (index as u64 * 31 + key * 7).to_le_bytes()[0]).collect()
}

fn insert(database: &Database, keys: impl Iterator<Item = (u64, bool)>) {
    let transaction = database.begin_write().unwrap();
    {
        let mut table = transaction.open_table(VALUES).unwrap();
        for (key, large) in keys {
            table.insert(key, value(key, large).as_slice()).unwrap();
        }
    }
    transaction.commit().unwrap();
}

fn assert_values(database: &Database, expected: &[(u64, bool)]) {
    let transaction = database.begin_read().unwrap();
    let table = transaction.open_table(VALUES).unwrap();
    assert_eq!(table.len().unwrap(), expected.len() as u64);
    for &(key, large) in expected {
        let stored = table.get(key).unwrap().unwrap_or_else(|| panic!("key {key} is missing"));
        assert!(stored.value() == value(key, large).as_slice(), "key {key} reads back different bytes");
    }
}

#[test]
fn a_database_written_through_the_direct_backend_reads_back_everywhere() {
    let directory = directory();
    let path = directory.path().join("log.redb");
    let mut expected: Vec<(u64, bool)> = (0..8).map(|key| (key, key % 2 == 0)).collect();
    {
        // A tiny cache: reads go to the file, some of it written around the page cache.
        let backend = DirectWriteBackend::open(&path).unwrap();
        let database = Database::builder().set_cache_size(64 * 1024).create_with_backend(backend).unwrap();
        insert(&database, expected.iter().copied());
        // Free large pages and write small ones (and new large ones) where they were, as a log does
        // when it is purged and appended to again.
        let transaction = database.begin_write().unwrap();
        {
            let mut table = transaction.open_table(VALUES).unwrap();
            for key in [0, 2, 4] {
                table.remove(key).unwrap();
            }
        }
        transaction.commit().unwrap();
        expected.retain(|(key, _)| ![0, 2, 4].contains(key));
        let added: Vec<(u64, bool)> = (100..140).map(|key| (key, key % 10 == 0)).collect();
        insert(&database, added.iter().copied());
        expected.extend(added);
        assert_values(&database, &expected);
    }
    // redb's own file backend sees the same database.
    let database = Database::open(&path).unwrap();
    assert_values(&database, &expected);
}

#[test]
fn the_snapshot_writer_writes_every_byte_in_order() {
    let directory = directory();
    let path = directory.path().join("out.snapshot");
    let content: Vec<u8> =
        (0..(2 * 1024 * 1024 + 512 * 1024 + 123)).map(|index: usize| (index % 251).to_le_bytes()[0]).collect();
    let mut writer = DirectFileWriter::create(&path).unwrap();
    // Pieces of an odd size, so chunks fill across write calls.
    for piece in content.chunks(1000) {
        writer.write_all(piece).unwrap();
    }
    let direct_bytes = writer.direct_bytes();
    writer.finish().unwrap();
    assert!(std::fs::read(&path).unwrap() == content, "the file differs from what was written");
    if direct_io_supported(directory.path()) {
        assert_eq!(direct_bytes, 2 * 1024 * 1024, "two full chunks go around the page cache, the tail does not");
    }
}
