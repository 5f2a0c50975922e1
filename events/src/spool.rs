//! The local spool: where accepted work goes while the broker is unreachable, so that "accepted"
//! survives this process being killed. Append-only segment files in `events.spool_dir`, each
//! record `[len u32 LE][crc32 u32 LE][target u8][envelope bytes]`; a batch of appends is written
//! and `fsync`'d once (group commit) before any of them is answered. Bounded by bytes
//! (`events.spool_max_bytes`): full → refused, never dropped. Segments are replayed oldest first
//! (on start and each time the broker is back) and deleted once every record in them is
//! confirmed. A record torn by a crash mid-write fails its checksum and is skipped: it was never
//! acknowledged to anyone.
//!
//! One process per directory: a lock file (`LOCK`, an OS file lock released when the process
//! dies) refuses a second one. Owns the files; the RabbitMQ bus decides when to write and replay.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use super::{WorkQueue, outbox::Target};

/// A segment is closed (replayable) beyond this many bytes: replay frees the disk as it goes and
/// holds at most one segment in memory.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Bytes of a record's header (length + checksum).
const HEADER: usize = 8;
const EXT: &str = "spool";

/// Why the spool failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// File-system trouble (the message says which file and what).
    #[error("{0}")]
    Io(String),
    /// Another process holds the directory.
    #[error("`{0}` is in use by another process (one spool per instance)")]
    Locked(PathBuf),
    /// Over `events.spool_max_bytes`.
    #[error("the spool is full ({0} bytes)")]
    Full(u64),
}

fn io_err(what: &str, path: &Path, e: &io::Error) -> SpoolError {
    SpoolError::Io(format!("{what} `{}`: {e}", path.display()))
}

fn tag(t: Target) -> u8 {
    match t {
        Target::Topic => 0,
        Target::Work(WorkQueue::PlaybackProgress) => 1,
    }
}

fn target(tag: u8) -> Option<Target> {
    match tag {
        0 => Some(Target::Topic),
        1 => Some(Target::Work(WorkQueue::PlaybackProgress)),
        _ => None,
    }
}

/// One record read back: where it goes and the envelope bytes.
pub type Record = (Target, Arc<[u8]>);

/// One record as written.
fn encode(target: Target, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + body.len());
    payload.push(tag(target));
    payload.extend_from_slice(body);
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The records of one segment's bytes, up to the first torn or corrupt one; and whether one was.
fn decode(bytes: &[u8]) -> (Vec<Record>, bool) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + HEADER) else {
            return (out, true);
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            return (out, true);
        };
        if len == 0 || crc32fast::hash(payload) != crc {
            return (out, true);
        }
        let Some(t) = target(payload[0]) else {
            return (out, true);
        };
        out.push((t, Arc::from(&payload[1..])));
        at += HEADER + len;
    }
    (out, false)
}

struct Active {
    id: u64,
    file: File,
    bytes: u64,
}

#[derive(Default)]
struct State {
    /// Segments ready to replay: id → (bytes, records).
    closed: BTreeMap<u64, (u64, u64)>,
    next_id: u64,
    /// Bytes held or reserved by accepted appends.
    bytes: u64,
    records: u64,
}

struct Job {
    record: Vec<u8>,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

enum Op {
    Append(Job),
    Rotate(oneshot::Sender<()>),
}

struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    ops: Mutex<Vec<Op>>,
    kick: Notify,
}

/// The spool of one instance. Cheap to share behind an `Arc`.
pub struct Spool {
    shared: Arc<Shared>,
    _lock: File,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.{EXT}"))
}

/// Makes a new directory entry durable (a file created and fsync'd can still vanish at a crash
/// if its directory was not synced).
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing directory", dir, &e))
}

impl Spool {
    /// Opens (creating) `dir`, takes its lock, and finds the segments a previous process left:
    /// they are replayed first. Must run inside a tokio runtime (the writer is a task).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, &e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("opening", &lock_path, &e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err("locking", &lock_path, &e)),
        }
        let mut state = State::default();
        let entries = fs::read_dir(dir).map_err(|e| io_err("listing", dir, &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("listing", dir, &e))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(EXT) {
                continue;
            }
            let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = fs::read(&path).map_err(|e| io_err("reading", &path, &e))?;
            let (records, torn) = decode(&bytes);
            if torn {
                tracing::warn!(segment = %path.display(), "spool segment ends in a torn record (a crash mid-write); it was never acknowledged and is skipped");
            }
            let len = bytes.len() as u64;
            state.closed.insert(id, (len, records.len() as u64));
            state.bytes += len;
            state.records += records.len() as u64;
            state.next_id = state.next_id.max(id + 1);
        }
        if state.records > 0 {
            tracing::info!(
                records = state.records,
                bytes = state.bytes,
                dir = %dir.display(),
                "the event spool holds events from an earlier run; they are published once the broker answers"
            );
        }
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::new(state),
            ops: Mutex::new(Vec::new()),
            kick: Notify::new(),
        });
        tokio::spawn(write_loop(shared.clone()));
        Ok(Self {
            shared,
            _lock: lock,
        })
    }

    /// Appends one event; resolves once it is on disk (written and fsync'd).
    pub async fn append(&self, target: Target, body: &[u8]) -> Result<(), SpoolError> {
        let record = encode(target, body);
        {
            let mut st = self.shared.state.lock();
            if st.bytes + record.len() as u64 > self.shared.max_bytes {
                return Err(SpoolError::Full(self.shared.max_bytes));
            }
            st.bytes += record.len() as u64;
        }
        let (done, result) = oneshot::channel();
        self.shared
            .ops
            .lock()
            .push(Op::Append(Job { record, done }));
        self.shared.kick.notify_one();
        result
            .await
            .unwrap_or_else(|_| Err(SpoolError::Io("the spool writer stopped".into())))
    }

    /// Closes the segment being appended to, so that it can be replayed.
    pub async fn rotate(&self) {
        let (done, closed) = oneshot::channel();
        self.shared.ops.lock().push(Op::Rotate(done));
        self.shared.kick.notify_one();
        let _ = closed.await;
    }

    /// Closed segments, oldest first.
    pub fn closed(&self) -> Vec<u64> {
        self.shared.state.lock().closed.keys().copied().collect()
    }

    /// The records of closed segment `id` (blocking file read: call from a blocking context).
    pub fn read(&self, id: u64) -> Result<Vec<Record>, SpoolError> {
        let path = segment_path(&self.shared.dir, id);
        let bytes = fs::read(&path).map_err(|e| io_err("reading", &path, &e))?;
        Ok(decode(&bytes).0)
    }

    /// Deletes closed segment `id`: everything in it was confirmed by the broker.
    pub fn remove(&self, id: u64) -> Result<(), SpoolError> {
        let path = segment_path(&self.shared.dir, id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &path, &e)),
        }
        let mut st = self.shared.state.lock();
        if let Some((bytes, records)) = st.closed.remove(&id) {
            st.bytes = st.bytes.saturating_sub(bytes);
            st.records = st.records.saturating_sub(records);
        }
        Ok(())
    }

    /// Records and bytes held.
    pub fn depth(&self) -> (u64, u64) {
        let st = self.shared.state.lock();
        (st.records, st.bytes)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

/// The one writer: takes every queued operation, appends the records, fsyncs once, answers.
async fn write_loop(shared: Arc<Shared>) {
    // The active segment lives here, owned by this task (no lock around file I/O).
    let mut active: Option<Active> = None;
    loop {
        let ops: Vec<Op> = std::mem::take(&mut *shared.ops.lock());
        if ops.is_empty() {
            // Stops with the last handle (only this task holds the Arc then).
            if Arc::strong_count(&shared) == 1 {
                return;
            }
            tokio::select! {
                () = shared.kick.notified() => {}
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            continue;
        }
        let s = shared.clone();
        let taken = active.take();
        let joined = tokio::task::spawn_blocking(move || apply(&s, taken, ops)).await;
        match joined {
            Ok(a) => active = a,
            Err(e) => tracing::error!(error = %e, "the spool writer panicked"),
        }
    }
}

/// Runs `ops` in order against the active segment (blocking I/O); returns the active segment.
fn apply(shared: &Shared, mut active: Option<Active>, ops: Vec<Op>) -> Option<Active> {
    let mut waiting: Vec<(Job, u64)> = Vec::new();
    let mut failed: Option<SpoolError> = None;
    let finish = |waiting: &mut Vec<(Job, u64)>,
                  active: &mut Option<Active>,
                  failed: &mut Option<SpoolError>| {
        // One fsync answers every record written since the last one.
        if failed.is_none()
            && !waiting.is_empty()
            && let Some(a) = active.as_ref()
            && let Err(e) = a.file.sync_data()
        {
            *failed = Some(io_err("syncing", &segment_path(&shared.dir, a.id), &e));
        }
        for (job, len) in waiting.drain(..) {
            let result = match failed {
                Some(e) => {
                    shared.state.lock().bytes -= len;
                    Err(e.clone())
                }
                None => {
                    shared.state.lock().records += 1;
                    Ok(())
                }
            };
            let _ = job.done.send(result);
        }
    };
    for op in ops {
        match op {
            Op::Rotate(done) => {
                finish(&mut waiting, &mut active, &mut failed);
                close(shared, &mut active);
                let _ = done.send(());
            }
            Op::Append(job) => {
                let len = job.record.len() as u64;
                if failed.is_some() {
                    waiting.push((job, len));
                    continue;
                }
                if active.as_ref().is_some_and(|a| a.bytes >= SEGMENT_BYTES) {
                    finish(&mut waiting, &mut active, &mut failed);
                    close(shared, &mut active);
                }
                if active.is_none() {
                    match create(shared) {
                        Ok(a) => active = Some(a),
                        Err(e) => failed = Some(e),
                    }
                }
                if let Some(a) = active.as_mut()
                    && failed.is_none()
                {
                    match a.file.write_all(&job.record) {
                        Ok(()) => a.bytes += len,
                        Err(e) => {
                            failed = Some(io_err("writing", &segment_path(&shared.dir, a.id), &e));
                        }
                    }
                }
                waiting.push((job, len));
            }
        }
    }
    finish(&mut waiting, &mut active, &mut failed);
    if let Some(e) = failed {
        tracing::error!(error = %e, "event spool write failed; the segment is closed");
        close(shared, &mut active);
    }
    active
}

fn create(shared: &Shared) -> Result<Active, SpoolError> {
    let id = {
        let mut st = shared.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        id
    };
    let path = segment_path(&shared.dir, id);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_err("creating", &path, &e))?;
    sync_dir(&shared.dir)?;
    Ok(Active { id, file, bytes: 0 })
}

/// Moves the active segment to the closed (replayable) ones.
fn close(shared: &Shared, active: &mut Option<Active>) {
    let Some(a) = active.take() else {
        return;
    };
    if a.bytes == 0 {
        let _ = fs::remove_file(segment_path(&shared.dir, a.id));
        return;
    }
    // Count what is really in it (a failed write may have left a partial record).
    let records = File::open(segment_path(&shared.dir, a.id))
        .and_then(|mut f| {
            let mut b = Vec::new();
            f.read_to_end(&mut b).map(|_| b)
        })
        .map(|b| decode(&b).0.len() as u64)
        .unwrap_or(0);
    shared.state.lock().closed.insert(a.id, (a.bytes, records));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bff-spool-{name}-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn appended_records_survive_a_reopen_in_order_and_a_torn_tail_is_skipped() {
        let dir = temp_dir("reopen");
        {
            let s = Spool::open(&dir, 1 << 20).unwrap();
            for i in 0..100 {
                s.append(
                    Target::Work(WorkQueue::PlaybackProgress),
                    format!("{{\"n\":{i}}}").as_bytes(),
                )
                .await
                .unwrap();
            }
            assert_eq!(s.depth().0, 100);
        }
        // A crash mid-write: half a record at the end of the last segment.
        let seg = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().and_then(|e| e.to_str()) == Some(EXT))
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&encode(Target::Topic, b"torn")[..7]).unwrap();
        drop(f);
        // The previous handle's writer task lets go of the lock when it ends; the OS lock goes
        // with the file handle, which the Spool dropped above.
        let s = Spool::open(&dir, 1 << 20).unwrap();
        let closed = s.closed();
        assert_eq!(closed.len(), 1);
        let records = s.read(closed[0]).unwrap();
        assert_eq!(records.len(), 100);
        for (i, (t, body)) in records.iter().enumerate() {
            assert_eq!(*t, Target::Work(WorkQueue::PlaybackProgress));
            assert_eq!(&**body, format!("{{\"n\":{i}}}").as_bytes());
        }
        s.remove(closed[0]).unwrap();
        assert_eq!(s.depth(), (0, 0));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_second_process_is_refused_and_the_byte_bound_holds() {
        let dir = temp_dir("lock");
        let s = Spool::open(&dir, 200).unwrap();
        assert!(matches!(Spool::open(&dir, 200), Err(SpoolError::Locked(_))));
        let body = [b'x'; 50];
        let mut ok = 0;
        let mut full = 0;
        for _ in 0..10 {
            match s.append(Target::Topic, &body).await {
                Ok(()) => ok += 1,
                Err(SpoolError::Full(200)) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        // 59 bytes a record: three fit in 200.
        assert_eq!((ok, full), (3, 7));
        s.rotate().await;
        assert_eq!(s.closed().len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_all_written() {
        let dir = temp_dir("group");
        let s = Arc::new(Spool::open(&dir, 1 << 24).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(
                    async move { s.append(Target::Topic, format!("e{i}").as_bytes()).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        s.rotate().await;
        let mut bodies: Vec<String> = s
            .closed()
            .iter()
            .flat_map(|id| s.read(*id).unwrap())
            .map(|(_, b)| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        bodies.sort();
        assert_eq!(bodies.len(), 200);
        bodies.dedup();
        assert_eq!(bodies.len(), 200);
        fs::remove_dir_all(&dir).unwrap();
    }
}
