//! The data of a snapshot as openraft handles it: a file, or a view of the ledger that becomes a
//! file only when someone reads it.
//!
//! A replica's periodic snapshot is a *checkpoint*: it makes the ledger store durable and writes no
//! file (`raft_state_machine`). The whole ledger is written out only when a lagging or new peer
//! needs it, on the first read or seek of the [`SnapshotData`] that `get_current_snapshot` handed
//! out. Every reader of that snapshot shares the one file, written once; each opens it on its own,
//! so readers sending to different peers never share a file offset.

use std::fmt;
use std::future::Future;
use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::sync::OnceCell;

use crate::ledger_store::LedgerReadView;
use crate::types::SnapshotMeta;

type Opening = Pin<Box<dyn Future<Output = io::Result<tokio::fs::File>> + Send>>;

/// A snapshot's bytes: openraft reads them to send a snapshot, and a replica receiving one writes
/// them (always into a file).
pub struct SnapshotData {
    state: State,
    /// A seek asked for before the file was there, made once it is.
    seek_wanted: Option<SeekFrom>,
}

enum State {
    File(tokio::fs::File),
    Unwritten(Arc<UnwrittenSnapshot>),
    Opening { snapshot: Arc<UnwrittenSnapshot>, opening: Opening },
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::File(file) => formatter.debug_tuple("SnapshotData::File").field(file).finish(),
            State::Unwritten(snapshot) | State::Opening { snapshot, .. } => {
                formatter.debug_tuple("SnapshotData::Unwritten").field(&snapshot.meta.snapshot_id).finish()
            }
        }
    }
}

impl SnapshotData {
    /// Data in a file (a snapshot being received, or one already written).
    pub fn file(file: tokio::fs::File) -> SnapshotData {
        SnapshotData { state: State::File(file), seek_wanted: None }
    }

    /// Data to be written from a ledger view when first read.
    pub(crate) fn unwritten(snapshot: Arc<UnwrittenSnapshot>) -> SnapshotData {
        SnapshotData { state: State::Unwritten(snapshot), seek_wanted: None }
    }

    /// The snapshot as a file, written first if it is not yet.
    pub async fn into_file(self) -> io::Result<tokio::fs::File> {
        match self.state {
            State::File(file) => Ok(file),
            State::Unwritten(snapshot) => snapshot.open().await,
            State::Opening { opening, .. } => opening.await,
        }
    }

    /// Drives the file into existence; ready once `self.state` is `File`.
    fn poll_file(&mut self, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                State::File(_) => return Poll::Ready(Ok(())),
                State::Unwritten(snapshot) => {
                    let snapshot = Arc::clone(snapshot);
                    let opening = Box::pin(Arc::clone(&snapshot).open());
                    self.state = State::Opening { snapshot, opening };
                }
                State::Opening { snapshot, opening } => {
                    let opened = ready!(opening.as_mut().poll(context));
                    let snapshot = Arc::clone(snapshot);
                    match opened {
                        Ok(file) => self.state = State::File(file),
                        Err(error) => {
                            // A later read tries again (the shared cell keeps no failure).
                            self.state = State::Unwritten(snapshot);
                            return Poll::Ready(Err(error));
                        }
                    }
                }
            }
        }
    }

    fn opened_file(&mut self) -> Pin<&mut tokio::fs::File> {
        match &mut self.state {
            State::File(file) => Pin::new(file),
            State::Unwritten(_) | State::Opening { .. } => unreachable!("used only after poll_file is ready"),
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_file(context))?;
        if this.seek_wanted.is_some() {
            // A read between start_seek and poll_complete: tokio's File refuses it too.
            return Poll::Ready(Err(io::Error::other("read while a seek is in progress")));
        }
        this.opened_file().poll_read(context, buffer)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::File(file) => Pin::new(file).start_seek(position),
            State::Unwritten(_) | State::Opening { .. } => {
                this.seek_wanted = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        ready!(this.poll_file(context))?;
        if let Some(position) = this.seek_wanted.take() {
            this.opened_file().start_seek(position)?;
        }
        this.opened_file().poll_complete(context)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().state {
            State::File(file) => Pin::new(file).poll_write(context, bytes),
            State::Unwritten(_) | State::Opening { .. } => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "a snapshot of this replica's own ledger is read-only",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::File(file) => Pin::new(file).poll_flush(context),
            State::Unwritten(_) | State::Opening { .. } => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::File(file) => Pin::new(file).poll_shutdown(context),
            State::Unwritten(_) | State::Opening { .. } => Poll::Ready(Ok(())),
        }
    }
}

/// A snapshot of a ledger view not yet written to a file.
pub(crate) struct UnwrittenSnapshot {
    pub(crate) meta: SnapshotMeta,
    directory: PathBuf,
    /// The view to write; released once the file is written, so that redb may reuse the pages it
    /// holds.
    view: Mutex<Option<LedgerReadView>>,
    /// The written file, kept open: a newer snapshot's file may replace it on disk while readers
    /// of this one still start.
    written: OnceCell<WrittenFile>,
}

struct WrittenFile {
    path: PathBuf,
    file: std::fs::File,
}

impl WrittenFile {
    /// A handle of the reader's own (its own file offset) on the written file, even if a newer
    /// snapshot's file has replaced it on disk since: Linux reopens a file, removed or not,
    /// through its descriptor in `/proc/self/fd`.
    fn reopen(&self) -> io::Result<std::fs::File> {
        use std::os::fd::AsRawFd;
        let descriptor = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
        std::fs::File::open(descriptor).or_else(|_| std::fs::File::open(&self.path))
    }
}

impl fmt::Debug for UnwrittenSnapshot {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("UnwrittenSnapshot").field("snapshot_id", &self.meta.snapshot_id).finish()
    }
}

impl UnwrittenSnapshot {
    pub(crate) fn new(meta: SnapshotMeta, view: LedgerReadView, directory: PathBuf) -> Arc<UnwrittenSnapshot> {
        Arc::new(UnwrittenSnapshot { meta, directory, view: Mutex::new(Some(view)), written: OnceCell::new() })
    }

    /// Writes the file (once, whoever asks first) and opens it for this reader.
    async fn open(self: Arc<Self>) -> io::Result<tokio::fs::File> {
        let writer = Arc::clone(&self);
        let written = self
            .written
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || writer.write()).await.map_err(io::Error::other)?
            })
            .await?;
        Ok(tokio::fs::File::from_std(written.reopen()?))
    }

    fn write(&self) -> io::Result<WrittenFile> {
        let mut view = self.view.lock().expect("the snapshot view lock is never poisoned");
        let (path, file) = {
            let view = view.as_ref().expect("the view is released only after the file is written");
            super::file::write_snapshot_file(&self.directory, view, &self.meta)?
        };
        *view = None;
        Ok(WrittenFile { path, file })
    }
}
