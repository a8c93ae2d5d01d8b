//! A replica's snapshot files: their format, and writing, finding, publishing and keeping them.
//!
//! A snapshot file is a short header with openraft's snapshot meta (magic, length, meta), followed
//! by the ledger's own snapshot format (`tally_state_machine::snapshot`), named after the
//! snapshot's id. Files being written or received end in `.partial` and are removed at open; a
//! complete one is fsynced, then renamed into place, and the older ones removed.
//!
//! This module owns the folder of snapshot files and their layout. It must never decide when a
//! snapshot is made or installed: that is openraft's and the state machine's.

use std::fs;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::direct_io::DirectFileWriter;
use crate::ledger_store::LedgerReadView;
use crate::types::{SnapshotMeta, decode, encode};

/// The folder of a replica's snapshot files, inside its data directory.
pub(crate) const SNAPSHOT_DIRECTORY: &str = "snapshots";
/// Complete snapshot files end with this; files being written or received end otherwise and are
/// removed at open.
pub(crate) const SNAPSHOT_EXTENSION: &str = "snapshot";
const PARTIAL_EXTENSION: &str = "partial";
const SNAPSHOT_MAGIC: &[u8; 8] = b"TALLYRSN";
/// The largest snapshot meta header accepted from a file (it holds a membership of a few nodes).
const SNAPSHOT_META_BYTES_MAX: u32 = 1024 * 1024;

pub(crate) fn remove_if_present(path: &Path) -> Result<(), String> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(format!("cannot remove {}: {error}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Reads the snapshot meta header, leaving `reader` at the start of the ledger snapshot.
pub(crate) fn read_snapshot_header(reader: &mut impl Read) -> io::Result<SnapshotMeta> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic)?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a Tally replica snapshot"));
    }
    let mut length = [0u8; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_le_bytes(length);
    if length > SNAPSHOT_META_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("snapshot meta of {length} bytes")));
    }
    let mut bytes = vec![0u8; length as usize];
    reader.read_exact(&mut bytes)?;
    decode(&bytes, "snapshot meta").map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// Makes renames and removals in `directory` durable.
pub(crate) fn sync_directory(directory: &Path) -> io::Result<()> {
    fs::File::open(directory)?.sync_all()
}

/// Tells apart the partial files of writers that run at the same time.
static PARTIAL_FILES: AtomicU64 = AtomicU64::new(0);

pub(crate) fn partial_path(directory: &Path, what: &str) -> PathBuf {
    let number = PARTIAL_FILES.fetch_add(1, Ordering::Relaxed);
    directory.join(format!("{what}-{number}.{PARTIAL_EXTENSION}"))
}

/// The complete snapshot files in the snapshot folder `snapshots`, by name.
pub(crate) fn complete_snapshot_files(snapshots: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(snapshots)? {
        let path = entry?.path();
        if path.extension().is_some_and(|extension| extension == SNAPSHOT_EXTENSION) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Moves a complete, fsynced snapshot file into place as `meta`'s file and removes the older
/// ones (a reader still holding one keeps it open).
pub(crate) fn publish_snapshot_file(directory: &Path, partial: &Path, meta: &SnapshotMeta) -> io::Result<PathBuf> {
    let complete = directory.join(format!("{}.{SNAPSHOT_EXTENSION}", meta.snapshot_id));
    fs::rename(partial, &complete)?;
    for older in complete_snapshot_files(directory)? {
        if older != complete {
            remove_if_present(&older).map_err(io::Error::other)?;
        }
    }
    sync_directory(directory)?;
    Ok(complete)
}

/// Writes a complete snapshot file of `view` (whose state `meta` names); returns its path and a
/// handle opened before it was moved into place (so that a newer file replacing it at once cannot
/// take it from the caller).
pub(crate) fn write_snapshot_file(
    directory: &Path,
    view: &LedgerReadView,
    meta: &SnapshotMeta,
) -> io::Result<(PathBuf, fs::File)> {
    let started = Instant::now();
    let partial = partial_path(directory, "building");
    let written = (|| {
        // Around the page cache: the file is written once and read again only to catch a peer up.
        let mut out = DirectFileWriter::create(&partial)?;
        let header = encode(meta);
        out.write_all(SNAPSHOT_MAGIC)?;
        out.write_all(&u32::try_from(header.len()).expect("a small header").to_le_bytes())?;
        out.write_all(&header)?;
        let summary = tally_state_machine::snapshot::write_snapshot(view, &mut out)?;
        out.finish()?;
        Ok((summary, fs::File::open(&partial)?))
    })();
    let (summary, file) = match written {
        Ok(written) => written,
        Err(error) => {
            // A full disk, say: leave no partial file behind to make it fuller.
            let _ = fs::remove_file(&partial);
            return Err(error);
        }
    };
    let complete = publish_snapshot_file(directory, &partial, meta)?;
    tracing::info!(
        snapshot = %meta.snapshot_id,
        bytes = summary.bytes,
        transfers = summary.transfers,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "wrote a snapshot file for a peer"
    );
    Ok((complete, file))
}

/// The newest complete snapshot file in `directory` (by the log id it covers), with its meta.
pub(crate) fn newest_snapshot_file(directory: &Path) -> io::Result<Option<(SnapshotMeta, PathBuf)>> {
    let mut newest: Option<(SnapshotMeta, PathBuf)> = None;
    for path in complete_snapshot_files(directory)? {
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            // Replaced by a newer one meanwhile.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        let meta = read_snapshot_header(&mut BufReader::new(file))
            .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", path.display())))?;
        if newest.as_ref().is_none_or(|(newest, _)| meta.last_log_id > newest.last_log_id) {
            newest = Some((meta, path));
        }
    }
    Ok(newest)
}

/// Keeps an installed snapshot `file` in `snapshots` as the replica's snapshot file. The file
/// received from the leader (`received`) is moved into place; any other (the data of a snapshot
/// handed over in process, as openraft's storage suite does) is copied.
pub(crate) fn keep_snapshot_file(
    snapshots: &Path,
    file: &mut fs::File,
    received: Option<&Path>,
    meta: &SnapshotMeta,
) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let installed = file.metadata()?;
    let same_file = |path: &Path| {
        fs::metadata(path).is_ok_and(|metadata| metadata.dev() == installed.dev() && metadata.ino() == installed.ino())
    };
    if let Some(received) = received.filter(|path| same_file(path)) {
        file.sync_all()?;
        publish_snapshot_file(snapshots, received, meta)?;
        return Ok(());
    }
    if let Some(abandoned) = received {
        remove_if_present(abandoned).map_err(io::Error::other)?;
    }
    file.seek(SeekFrom::Start(0))?;
    let copy = partial_path(snapshots, "installed");
    let mut out = fs::File::create(&copy)?;
    io::copy(file, &mut out)?;
    out.sync_all()?;
    publish_snapshot_file(snapshots, &copy, meta)?;
    Ok(())
}
