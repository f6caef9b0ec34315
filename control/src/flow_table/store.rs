//! The durable store of the flow table: the snapshot, the journal and the
//! lock, and the fault-injection seam its tests use.
//!
//! # Files
//!
//! `<state>` (the path given to [`FlowTable::load`](super::FlowTable::load))
//! is a JSON snapshot: `{"format": "xdpath-flow-table", "version": 1,
//! "epoch": N, "flows": [...], "prefixes": [...]}` with rules in the wire
//! format of [`crate::rules`]. It is only ever replaced whole: written to
//! `.<name>.tmp` in the same directory and fsynced; the current snapshot is
//! kept as `.<name>.prev` (a hard link); the temporary file is renamed over
//! `<state>` and the directory fsynced, and only then is `.<name>.prev`
//! removed. If the directory cannot be fsynced, `.<name>.prev` is renamed
//! back: a failed snapshot write leaves `<state>` as it was.
//!
//! Single adds and deletes append one line to `<state>.journal` and fsync it
//! before the call returns, so a table of a million rules does not rewrite
//! a million rules per add. The journal's first line names the snapshot
//! epoch it continues; a journal of an older epoch is stale (a snapshot
//! replaced it) and ignored. A bulk replace writes a new snapshot (epoch
//! N+1) and starts a new journal; so does compaction, when the journal has
//! grown as long as the table. Loading replays the journal over the
//! snapshot; a last line without its newline is an append that never
//! completed (its call failed or never returned) and is dropped with a
//! warning; anything else that does not parse, validate or fit is an error
//! naming the file: nothing is ever silently lost. A failed append is cut
//! off again (or, for the journal's first line, the file removed), so the
//! journal is as it was.
//!
//! # Durability
//!
//! An operation is acknowledged (its call returns `Ok`) only once what it
//! wrote is durable: file contents fsynced, and every change to the
//! directory it depends on (the snapshot renamed into place, a new journal)
//! followed by a successful fsync of the directory. When a directory fsync
//! fails, whatever the store did to the directory since the last good one
//! may or may not survive a crash: after a failed snapshot commit the
//! previous snapshot is renamed back, but that rename is no more durable
//! than the first, and a crash could bring back the new snapshot (a newer
//! epoch), next to which the journal's later entries would be stale and
//! ignored. So after a failed directory fsync the store is *unsure*, and
//! the next journal append or snapshot first fsyncs the directory again;
//! until that succeeds nothing more is acknowledged. Each acknowledged
//! operation therefore survives a reload, and a crash, after any single
//! failing disk step: the table's tests check every step of every
//! operation against a model of what a crash can leave (see
//! `control/tests/flow_table_rollback.rs`).
//!
//! `<state>.lock` is held (flock) for the store's lifetime: one table per
//! state file.
//!
//! Guest entries are not stored here: the daemon's configuration is their
//! source.
//!
//! # Fault injection
//!
//! Every disk operation that changes something is a [`StoreStep`], counted
//! by a [`StoreFaults`] plan if the table has one
//! ([`FlowTable::set_store_faults`](super::FlowTable::set_store_faults)).
//! The plan can make the Nth step (of all, or of one kind) fail with `EIO`
//! before it touches the disk, and can call a watcher after every step with
//! its outcome ([`StoreFaults::watch`]: a test can look at the directory at
//! every point). Without a plan a step costs one test of an `Option`.

use super::rule_set::{RuleSet, Rules};
use super::{FlowTableError, Result};
use crate::rules::{FlowRule, PrefixRule, RuleKind};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

const FORMAT: &str = "xdpath-flow-table";
const VERSION: u32 = 1;

#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: &'static str,
    version: u32,
    epoch: u64,
    flows: &'a RuleSet<FlowRule>,
    prefixes: &'a RuleSet<PrefixRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotIn {
    format: String,
    version: u32,
    epoch: u64,
    flows: Vec<FlowRule>,
    prefixes: Vec<PrefixRule>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalHeader {
    journal: String,
    epoch: u64,
}

/// One journal line: a single change.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum JournalOp {
    AddFlow { rule: FlowRule },
    DeleteFlow { id: u32 },
    AddPrefix { rule: PrefixRule },
    DeletePrefix { id: u32 },
}

impl JournalOp {
    /// Applies the change to `rules` (replay).
    fn apply(self, rules: &mut Rules) -> Result<()> {
        match self {
            JournalOp::AddFlow { rule } => {
                RuleSet::<FlowRule>::check_capacity(rules.flows.len() + 1)?;
                rules.flows.insert(rule)
            }
            JournalOp::DeleteFlow { id } => {
                rules
                    .flows
                    .remove(id)
                    .map(|_| ())
                    .ok_or(FlowTableError::UnknownId {
                        kind: RuleKind::Flow,
                        id,
                    })
            }
            JournalOp::AddPrefix { rule } => {
                RuleSet::<PrefixRule>::check_capacity(rules.prefixes.len() + 1)?;
                rules.prefixes.insert(rule)
            }
            JournalOp::DeletePrefix { id } => {
                rules
                    .prefixes
                    .remove(id)
                    .map(|_| ())
                    .ok_or(FlowTableError::UnknownId {
                        kind: RuleKind::Prefix,
                        id,
                    })
            }
        }
    }
}

// ----- fault injection -----

/// A disk operation of the store: what [`StoreFaults`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreStep {
    /// Creating or opening a file for writing.
    Open,
    /// One `write` call on a file.
    Write,
    /// Cutting a file to a length.
    Truncate,
    /// fsync (or fdatasync) of a file.
    Fsync,
    /// Making a hard link (the previous snapshot, kept until the new one is
    /// durable).
    Link,
    /// Renaming a file.
    Rename,
    /// fsync of the directory holding the state files.
    FsyncDir,
    /// Removing a file.
    Remove,
}

#[derive(Clone, Copy, Debug)]
struct Fault {
    /// Count only steps of this kind (all steps if `None`).
    kind: Option<StoreStep>,
    /// The (absolute) count of such steps at which failing starts.
    at: u64,
    /// Every later such step fails too, until healed.
    sticky: bool,
}

/// What [`StoreFaults::watch`] calls after every step.
type Watcher = Arc<dyn Fn(StoreStep, &Path, bool) + Send + Sync>;

#[derive(Default)]
struct FaultPlan {
    /// Every step attempted, failed ones included, in order.
    log: Vec<(StoreStep, PathBuf)>,
    fault: Option<Fault>,
    watcher: Option<Watcher>,
}

impl std::fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultPlan")
            .field("log", &self.log)
            .field("fault", &self.fault)
            .finish_non_exhaustive()
    }
}

impl FaultPlan {
    fn count(&self, kind: Option<StoreStep>) -> u64 {
        match kind {
            None => self.log.len() as u64,
            Some(k) => self.log.iter().filter(|(s, _)| *s == k).count() as u64,
        }
    }
}

/// A plan of store failures, for tests: shared between the test and the
/// table ([`FlowTable::set_store_faults`](super::FlowTable::set_store_faults)),
/// so the test can place faults and read the log while the table runs.
///
/// Steps are counted from 1 in the order they are attempted; a failing
/// step fails with `EIO` ("Input/output error") before it touches the disk.
#[derive(Clone, Debug, Default)]
pub struct StoreFaults(Arc<Mutex<FaultPlan>>);

impl StoreFaults {
    /// A plan with no fault.
    pub fn new() -> Self {
        Self::default()
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, FaultPlan> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn place(&self, kind: Option<StoreStep>, n: u64, sticky: bool) {
        let mut p = self.plan();
        let at = p.count(kind) + n.max(1);
        p.fault = Some(Fault { kind, at, sticky });
    }

    /// The `n`th step from now (1 = the next one) fails, once. Replaces any
    /// planned fault.
    pub fn fail_at(&self, n: u64) {
        self.place(None, n, false);
    }

    /// The `n`th step from now and every one after it fail, until
    /// [`StoreFaults::heal`].
    pub fn fail_from(&self, n: u64) {
        self.place(None, n, true);
    }

    /// The `n`th step of kind `kind` from now fails, once (e.g. the second
    /// fsync).
    pub fn fail_nth(&self, kind: StoreStep, n: u64) {
        self.place(Some(kind), n, false);
    }

    /// Cancels any planned fault.
    pub fn heal(&self) {
        self.plan().fault = None;
    }

    /// Steps attempted so far.
    pub fn steps(&self) -> u64 {
        self.plan().count(None)
    }

    /// Every step attempted so far, with the file it was on.
    pub fn log(&self) -> Vec<(StoreStep, PathBuf)> {
        self.plan().log.clone()
    }

    /// Calls `f(step, path, succeeded)` after every step from now on, once
    /// it is done (an injected failure included), outside the plan's lock.
    pub fn watch(&self, f: impl Fn(StoreStep, &Path, bool) + Send + Sync + 'static) {
        self.plan().watcher = Some(Arc::new(f));
    }

    fn done(&self, step: StoreStep, path: &Path, ok: bool) {
        let w = self.plan().watcher.clone();
        if let Some(w) = w {
            w(step, path, ok);
        }
    }

    fn check(&self, step: StoreStep, path: &Path) -> std::io::Result<()> {
        let mut p = self.plan();
        p.log.push((step, path.to_path_buf()));
        let Some(f) = p.fault else {
            return Ok(());
        };
        if f.kind.is_some_and(|k| k != step) {
            return Ok(());
        }
        let n = p.count(f.kind);
        if n == f.at || (f.sticky && n > f.at) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

/// The store's disk operations, each one a [`StoreStep`].
#[derive(Debug, Default)]
struct Io {
    faults: Option<StoreFaults>,
}

impl Io {
    /// Runs `op` as step `step` on `path`: counted (and maybe failed)
    /// first, reported to the watcher after.
    fn run<T>(
        &self,
        step: StoreStep,
        path: &Path,
        op: impl FnOnce() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let Some(f) = &self.faults else {
            return op();
        };
        let r = f.check(step, path).and_then(|()| op());
        f.done(step, path, r.is_ok());
        r
    }

    fn create(&self, path: &Path) -> std::io::Result<File> {
        self.run(StoreStep::Open, path, || File::create(path))
    }

    fn open_append(&self, path: &Path) -> std::io::Result<File> {
        self.run(StoreStep::Open, path, || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
        })
    }

    fn set_len(&self, f: &File, path: &Path, len: u64) -> std::io::Result<()> {
        self.run(StoreStep::Truncate, path, || f.set_len(len))
    }

    fn sync_data(&self, f: &File, path: &Path) -> std::io::Result<()> {
        self.run(StoreStep::Fsync, path, || f.sync_data())
    }

    fn sync_all(&self, f: &File, path: &Path) -> std::io::Result<()> {
        self.run(StoreStep::Fsync, path, || f.sync_all())
    }

    fn link(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.run(StoreStep::Link, to, || std::fs::hard_link(from, to))
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.run(StoreStep::Rename, to, || std::fs::rename(from, to))
    }

    /// Removes `path`; a missing file is no error.
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.run(StoreStep::Remove, path, || {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
    }

    /// fsyncs the directory that holds `path`.
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        self.run(StoreStep::FsyncDir, dir, || File::open(dir)?.sync_all())
    }
}

/// A file being written, each `write` call one [`StoreStep::Write`].
struct StepWriter<'a> {
    file: &'a mut File,
    io: &'a Io,
    path: &'a Path,
}

impl Write for StepWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let file = &mut *self.file;
        self.io.run(StoreStep::Write, self.path, || file.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

// ----- the store -----

pub(super) fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `dir/.<name><suffix>`: a hidden file next to `p`.
fn hidden_sibling(p: &Path, suffix: &str) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.with_file_name(format!(".{name}{suffix}"))
}

pub(super) fn state_err(path: &Path, detail: impl Into<String>) -> FlowTableError {
    FlowTableError::State {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// The snapshot, the journal and the lock.
#[derive(Debug)]
pub(super) struct Store {
    path: PathBuf,
    journal_path: PathBuf,
    /// Held for the store's lifetime (flock).
    _lock: File,
    /// Epoch of the snapshot on disk (0: none yet).
    epoch: u64,
    /// The journal, open for writing at `journal_len`, once appended to.
    journal: Option<File>,
    /// Valid bytes of the journal (0: it must start with a header).
    journal_len: u64,
    /// Operations in the journal.
    journal_ops: usize,
    /// An append failed and could not be cut off again: the journal must
    /// not be appended to before a compaction supersedes it.
    journal_broken: bool,
    /// A directory fsync failed: the directory's entries (which snapshot
    /// `<state>` is, whether the journal exists) are not known to be
    /// durable until the next one succeeds (module docs, Durability).
    /// A `Cell` because a snapshot is written through `&self`.
    unsure: std::cell::Cell<bool>,
    io: Io,
}

/// What [`Store::open`] found on disk.
pub(super) struct Loaded {
    pub(super) rules: Rules,
    /// A snapshot or a journal was there.
    pub(super) found: bool,
}

impl Store {
    /// Locks `path` and loads the snapshot and the journal. A missing state
    /// file is an empty table; a file that cannot be read, parsed or
    /// validated is an error naming it (and left as it is).
    pub(super) fn open(path: &Path) -> Result<(Self, Loaded)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| state_err(path, format!("directory cannot be created: {e}.")))?;
        }
        let lock = Self::lock(path)?;
        let mut store = Store {
            path: path.to_path_buf(),
            journal_path: with_suffix(path, ".journal"),
            _lock: lock,
            epoch: 0,
            journal: None,
            journal_len: 0,
            journal_ops: 0,
            journal_broken: false,
            unsure: std::cell::Cell::new(false),
            io: Io::default(),
        };
        let mut rules = Rules::default();
        let snapshot_found = store.load_snapshot(&mut rules)?;
        let journal_found = store.replay_journal(&mut rules)?;
        Ok((
            store,
            Loaded {
                rules,
                found: snapshot_found || journal_found,
            },
        ))
    }

    fn lock(path: &Path) -> Result<File> {
        let lock_path = with_suffix(path, ".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| state_err(&lock_path, format!("cannot be opened: {e}.")))?;
        // SAFETY: flock on a valid open fd; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(state_err(
                path,
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    format!(
                        "is in use by another flow table (lock {} is held).",
                        lock_path.display()
                    )
                } else {
                    format!("cannot be locked through {}: {e}.", lock_path.display())
                },
            ));
        }
        Ok(f)
    }

    pub(super) fn set_faults(&mut self, faults: Option<StoreFaults>) {
        self.io.faults = faults;
    }

    /// The state file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Epoch of the snapshot on disk (0: none yet).
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Operations in the journal.
    pub(super) fn journal_ops(&self) -> usize {
        self.journal_ops
    }

    /// The journal cannot be appended to before a snapshot supersedes it.
    pub(super) fn journal_broken(&self) -> bool {
        self.journal_broken
    }

    /// fsyncs the state directory, recording whether its entries are known
    /// to be durable now.
    fn sync_dir(&self) -> std::io::Result<()> {
        let r = self.io.sync_dir(&self.path);
        self.unsure.set(r.is_err());
        r
    }

    /// If a directory fsync failed before, fsyncs the directory now: what
    /// is about to be acknowledged must not stand on directory entries that
    /// may not survive a crash.
    fn settle(&self) -> std::io::Result<()> {
        if self.unsure.get() {
            self.sync_dir()?;
            tracing::info!(path = %self.path.display(), "the state directory is synced again");
        }
        Ok(())
    }

    fn load_snapshot(&mut self, rules: &mut Rules) -> Result<bool> {
        let path = self.path.clone();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(state_err(&path, format!("cannot be read: {e}."))),
        };
        let corrupt = |what: String| {
            state_err(
                &path,
                format!(
                    "is not a valid flow-table state file: {}. It was left as it is; \
                     repair it or move it away to start with an empty table.",
                    what.trim_end_matches('.')
                ),
            )
        };
        let snap: SnapshotIn =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if snap.format != FORMAT || snap.version != VERSION {
            return Err(corrupt(format!(
                "format {:?} version {} (this build reads {FORMAT:?} version {VERSION})",
                snap.format, snap.version
            )));
        }
        RuleSet::<FlowRule>::check_capacity(snap.flows.len())
            .and_then(|()| RuleSet::<PrefixRule>::check_capacity(snap.prefixes.len()))
            .map_err(|e| corrupt(e.to_string()))?;
        for r in snap.flows {
            rules.flows.insert(r).map_err(|e| corrupt(e.to_string()))?;
        }
        for r in snap.prefixes {
            rules
                .prefixes
                .insert(r)
                .map_err(|e| corrupt(e.to_string()))?;
        }
        self.epoch = snap.epoch;
        Ok(true)
    }

    fn replay_journal(&mut self, rules: &mut Rules) -> Result<bool> {
        let path = self.journal_path.clone();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(state_err(&path, format!("cannot be read: {e}."))),
        };
        let corrupt = |line: usize, what: String| {
            state_err(
                &path,
                format!(
                    "line {line} is not a valid journal entry: {}. It was left as it is; \
                     repair it or move it away (losing the changes it holds).",
                    what.trim_end_matches('.')
                ),
            )
        };
        let mut valid = 0usize;
        let mut ops = 0usize;
        let mut rest = &bytes[..];
        let mut line_no = 0;
        while !rest.is_empty() {
            line_no += 1;
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                tracing::warn!(
                    path = %path.display(),
                    line = line_no,
                    "dropping an incomplete last journal line (an append that never returned)"
                );
                break;
            };
            let line = &rest[..nl];
            rest = &rest[nl + 1..];
            if line_no == 1 {
                let h: JournalHeader =
                    serde_json::from_slice(line).map_err(|e| corrupt(1, e.to_string()))?;
                if h.journal != FORMAT {
                    return Err(corrupt(1, format!("format {:?}", h.journal)));
                }
                if h.epoch < self.epoch {
                    tracing::info!(path = %path.display(), "ignoring a stale journal (a newer snapshot replaced it)");
                    return Ok(false);
                }
                if h.epoch > self.epoch {
                    return Err(corrupt(
                        1,
                        format!(
                            "it continues snapshot epoch {} but the snapshot is epoch {}",
                            h.epoch, self.epoch
                        ),
                    ));
                }
            } else {
                let op: JournalOp =
                    serde_json::from_slice(line).map_err(|e| corrupt(line_no, e.to_string()))?;
                op.apply(rules)
                    .map_err(|e| corrupt(line_no, e.to_string()))?;
                ops += 1;
            }
            valid += nl + 1;
        }
        self.journal_len = valid as u64;
        self.journal_ops = ops;
        Ok(valid > 0)
    }

    /// Replaces the snapshot with `rules` at `epoch` (see the module docs
    /// for the steps). On error `<state>` is as it was. The journal is not
    /// touched: [`Store::start_epoch`] follows once the caller commits.
    pub(super) fn write_snapshot(
        &self,
        epoch: u64,
        flows: &RuleSet<FlowRule>,
        prefixes: &RuleSet<PrefixRule>,
    ) -> Result<()> {
        let tmp = hidden_sibling(&self.path, ".tmp");
        let prev = hidden_sibling(&self.path, ".prev");
        let io = &self.io;
        let fail = |e: std::io::Error| state_err(&self.path, format!("cannot be written: {e}."));
        // Best effort: a leftover temporary or previous file is harmless
        // and replaced next time.
        let tidy = |p: &Path| {
            if let Err(e) = io.remove(p) {
                tracing::warn!(path = %p.display(), "removing a leftover file: {e}");
            }
        };
        self.settle().map_err(fail)?;
        let write = || -> std::io::Result<()> {
            let mut f = io.create(&tmp)?;
            let mut w = BufWriter::with_capacity(
                1 << 20,
                StepWriter {
                    file: &mut f,
                    io,
                    path: &tmp,
                },
            );
            serde_json::to_writer(
                &mut w,
                &SnapshotOut {
                    format: FORMAT,
                    version: VERSION,
                    epoch,
                    flows,
                    prefixes,
                },
            )?;
            w.write_all(b"\n")?;
            w.into_inner().map_err(|e| e.into_error())?;
            io.sync_all(&f, &tmp)
        };
        if let Err(e) = write() {
            tidy(&tmp);
            return Err(fail(e));
        }
        // Keep the current snapshot until the new one is durable.
        let had_state = self.path.exists();
        if had_state {
            let linked = io.remove(&prev).and_then(|()| io.link(&self.path, &prev));
            if let Err(e) = linked {
                tidy(&tmp);
                return Err(fail(e));
            }
        }
        if let Err(e) = io.rename(&tmp, &self.path) {
            tidy(&tmp);
            if had_state {
                tidy(&prev);
            }
            return Err(fail(e));
        }
        if let Err(e) = self.sync_dir() {
            // The new snapshot is in place but may not be durable: put the
            // previous one back, so the state file still matches the table.
            // That is no more durable than the first rename: the store is
            // unsure until a directory fsync succeeds (module docs).
            let restored = if had_state {
                io.rename(&prev, &self.path)
            } else {
                io.remove(&self.path)
            };
            return match restored {
                Ok(()) => Err(fail(e)),
                Err(e2) => {
                    // The new snapshot stays in place: the caller must
                    // commit, or the table and its file would disagree.
                    tracing::error!(
                        path = %self.path.display(),
                        "the state directory could not be synced ({e}) and the previous \
                         snapshot could not be put back ({e2}); the new snapshot stays, but \
                         may not survive a crash"
                    );
                    Ok(())
                }
            };
        }
        if had_state {
            tidy(&prev);
        }
        Ok(())
    }

    /// The snapshot of `epoch` is on disk: forget the old journal.
    pub(super) fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.journal = None;
        self.journal_len = 0;
        self.journal_ops = 0;
        self.journal_broken = false;
        // Stale now (older epoch); removing it is tidiness, not correctness.
        if let Err(e) = self.io.remove(&self.journal_path) {
            tracing::warn!(path = %self.journal_path.display(), "removing the stale journal: {e}");
        }
    }

    /// Appends one operation and fsyncs it. On failure the journal is as it
    /// was: the append is cut off again, or the file removed if this append
    /// created it.
    pub(super) fn append(&mut self, op: &JournalOp) -> Result<()> {
        let jp = self.journal_path.clone();
        let err = |e: std::io::Error| state_err(&jp, format!("cannot be appended to: {e}."));
        let mut line = Vec::with_capacity(160);
        if self.journal_len == 0 {
            serde_json::to_writer(
                &mut line,
                &JournalHeader {
                    journal: FORMAT.into(),
                    epoch: self.epoch,
                },
            )
            .map_err(|e| err(e.into()))?;
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, op).map_err(|e| err(e.into()))?;
        line.push(b'\n');
        self.settle().map_err(err)?;
        let created = self.journal.is_none() && !jp.exists();
        let res = self.write_line(&line);
        if let Err(e) = res {
            self.undo_append(created);
            return Err(err(e));
        }
        self.journal_len += line.len() as u64;
        self.journal_ops += 1;
        Ok(())
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let io = &self.io;
        let jp = &self.journal_path;
        if self.journal.is_none() {
            let f = io.open_append(jp)?;
            // Cuts off a torn tail, or a stale journal when starting anew.
            io.set_len(&f, jp, self.journal_len)?;
            let mut f = f;
            f.seek(SeekFrom::Start(self.journal_len))?;
            if self.journal_len == 0 {
                // A new file must survive a crash too.
                let r = io.sync_dir(jp);
                self.unsure.set(r.is_err());
                r?;
            }
            self.journal = Some(f);
        }
        let Some(f) = self.journal.as_mut() else {
            return Err(std::io::Error::other("journal not open"));
        };
        StepWriter {
            file: &mut *f,
            io,
            path: jp,
        }
        .write_all(line)?;
        io.sync_data(f, jp)
    }

    /// Puts the journal back as it was before a failed append.
    fn undo_append(&mut self, created: bool) {
        let jp = self.journal_path.clone();
        if created {
            self.journal = None;
            if let Err(e) = self.io.remove(&jp) {
                // Harmless: an empty or torn journal of this epoch replays
                // to nothing, and the next append cuts it to length.
                tracing::warn!(path = %jp.display(), "removing a journal whose first append failed: {e}");
            }
            return;
        }
        let len = self.journal_len;
        let cut = match self.journal.as_mut() {
            None => Ok(()),
            Some(f) => self
                .io
                .set_len(f, &jp, len)
                .and_then(|()| f.seek(SeekFrom::Start(len)).map(|_| ()))
                .and_then(|()| self.io.sync_data(f, &jp)),
        };
        if let Err(e) = cut {
            tracing::warn!(path = %jp.display(), "cutting a failed append off the journal: {e}");
            self.journal = None;
            self.journal_broken = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::LegacyIds;
    use crate::rules::{FlowRuleSpec, PrefixRuleSpec};

    /// A private directory, removed on drop.
    pub(crate) struct Dir(PathBuf);

    impl Dir {
        pub(crate) fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("xdpath-ft-store-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            Self(p)
        }

        fn state(&self) -> PathBuf {
            self.0.join("flows.json")
        }

        fn journal(&self) -> PathBuf {
            self.0.join("flows.json.journal")
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn flow(id: u32, port: u16) -> FlowRule {
        let mut s = FlowRuleSpec::new("10.0.0.2", "10.0.0.1", "udp", "guest");
        s.dst_port = port;
        s.validate(id, &LegacyIds).unwrap()
    }

    fn prefix(id: u32, p: &str) -> PrefixRule {
        PrefixRuleSpec::new(p, "drop")
            .validate(id, &LegacyIds)
            .unwrap()
    }

    fn contents(r: &Rules) -> (Vec<FlowRule>, Vec<PrefixRule>) {
        (
            r.flows.rules().copied().collect(),
            r.prefixes.rules().copied().collect(),
        )
    }

    fn open(d: &Dir) -> (Store, Rules) {
        let (s, l) = Store::open(&d.state()).unwrap();
        (s, l.rules)
    }

    /// What a single add does to the store and memory.
    fn add(s: &mut Store, r: &mut Rules, f: FlowRule) {
        s.append(&JournalOp::AddFlow { rule: f }).unwrap();
        r.flows.insert(f).unwrap();
    }

    fn compact(s: &mut Store, r: &Rules) {
        let epoch = s.epoch() + 1;
        s.write_snapshot(epoch, &r.flows, &r.prefixes).unwrap();
        s.start_epoch(epoch);
    }

    #[test]
    fn a_missing_state_file_is_an_empty_table() {
        let d = Dir::new("missing");
        let (_s, l) = Store::open(&d.state()).unwrap();
        assert_eq!(contents(&l.rules), (vec![], vec![]));
        assert!(!l.found);
        assert!(!d.state().exists(), "loading writes nothing");
    }

    #[test]
    fn journal_and_snapshot_round_trip() {
        let d = Dir::new("roundtrip");
        let want = {
            let (mut s, mut r) = open(&d);
            for i in 1..=3 {
                add(&mut s, &mut r, flow(i, i as u16));
            }
            s.append(&JournalOp::AddPrefix {
                rule: prefix(1, "10.88.0.0/16"),
            })
            .unwrap();
            r.prefixes.insert(prefix(1, "10.88.0.0/16")).unwrap();
            s.append(&JournalOp::DeleteFlow { id: 2 }).unwrap();
            r.flows.remove(2).unwrap();
            assert!(!d.state().exists() && d.journal().exists());
            contents(&r)
        };
        let (mut s, l) = Store::open(&d.state()).unwrap();
        assert_eq!(contents(&l.rules), want);
        assert!(l.found, "a journal is state");
        let mut r = l.rules;
        // A snapshot supersedes the journal; later changes go to a new one.
        compact(&mut s, &r);
        assert!(d.state().exists() && !d.journal().exists());
        add(&mut s, &mut r, flow(9, 9));
        let want = contents(&r);
        drop(s);
        let (s, l) = Store::open(&d.state()).unwrap();
        assert_eq!(contents(&l.rules), want);
        assert_eq!(s.epoch(), 1);
        assert_eq!(s.journal_ops(), 1);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_cut_off() {
        let d = Dir::new("torn");
        let (mut s, mut r) = open(&d);
        add(&mut s, &mut r, flow(1, 1));
        drop(s);
        let mut j = std::fs::read(d.journal()).unwrap();
        j.extend_from_slice(br#"{"op":"add_flow","rule":{"id":2,"#);
        std::fs::write(d.journal(), &j).unwrap();
        let (mut s, mut r) = open(&d);
        assert_eq!(contents(&r).0, vec![flow(1, 1)]);
        // The next append cuts the torn bytes off first.
        add(&mut s, &mut r, flow(3, 3));
        drop(s);
        let (_s, r) = open(&d);
        assert_eq!(contents(&r).0, vec![flow(1, 1), flow(3, 3)]);
        let text = std::fs::read_to_string(d.journal()).unwrap();
        assert!(!text.contains("\"id\":2,"), "{text}");
    }

    #[test]
    fn corrupt_files_are_errors_naming_them_and_stay_untouched() {
        let d = Dir::new("corrupt");
        std::fs::create_dir_all(&d.0).unwrap();
        let r1 = serde_json::to_string(&flow(1, 1)).unwrap();
        let r1b = serde_json::to_string(&flow(1, 2)).unwrap();
        let r2 = serde_json::to_string(&flow(2, 1)).unwrap();
        let snap = |flows: &str| {
            format!(
                r#"{{"format":"xdpath-flow-table","version":1,"epoch":1,"flows":[{flows}],"prefixes":[]}}"#
            )
        };
        let cases = [
            ("not JSON".to_string(), "not a valid"),
            (snap(&format!("{r1},{r1b}")), "already taken"),
            (snap(&format!("{r1},{r2}")), "same 5-tuple"),
            (snap(r#"{"id":1}"#), "Field `src`"),
            (
                snap(&r1).replace("\"version\":1", "\"version\":2"),
                "version 2",
            ),
            (
                snap(&r1).replace("\"epoch\":1", "\"epoch\":1,\"x\":1"),
                "unknown field",
            ),
        ];
        for (text, says) in cases {
            std::fs::write(d.state(), &text).unwrap();
            let e = Store::open(&d.state()).map(|_| ()).expect_err(says);
            let msg = e.to_string();
            assert!(msg.contains(&d.state().display().to_string()), "{msg}");
            assert!(msg.contains(says), "{says}: {msg}");
            assert_eq!(e.http_status(), 500);
            assert_eq!(std::fs::read_to_string(d.state()).unwrap(), text);
        }
        std::fs::write(d.state(), snap(&r1)).unwrap();
        let header = r#"{"journal":"xdpath-flow-table","epoch":1}"#;
        let jcases = [
            (
                format!("{header}\nxx\n{{\"op\":\"delete_flow\",\"id\":1}}\n"),
                "line 2",
            ),
            (
                format!("{header}\n{{\"op\":\"delete_flow\",\"id\":5}}\n"),
                "no flow rule with id 5",
            ),
            (
                format!("{header}\n{{\"op\":\"add_flow\",\"rule\":{r1}}}\n"),
                "already taken",
            ),
            (
                r#"{"journal":"xdpath-flow-table","epoch":7}"#.to_string() + "\n",
                "epoch 7",
            ),
        ];
        for (text, says) in jcases {
            std::fs::write(d.journal(), &text).unwrap();
            let e = Store::open(&d.state()).map(|_| ()).expect_err(says);
            let msg = e.to_string();
            assert!(msg.contains(&d.journal().display().to_string()), "{msg}");
            assert!(msg.contains(says), "{says}: {msg}");
            assert_eq!(std::fs::read_to_string(d.journal()).unwrap(), text);
        }
        // A journal of an older epoch was superseded: ignored.
        std::fs::write(
            d.journal(),
            r#"{"journal":"xdpath-flow-table","epoch":0}"#.to_string()
                + "\n{\"op\":\"delete_flow\",\"id\":1}\n",
        )
        .unwrap();
        let (_s, r) = open(&d);
        assert_eq!(contents(&r).0, vec![flow(1, 1)]);
    }

    #[test]
    fn one_store_per_state_file() {
        let d = Dir::new("lock");
        let s = Store::open(&d.state()).unwrap();
        let e = Store::open(&d.state()).map(|_| ()).expect_err("locked");
        assert!(e.to_string().contains("in use"), "{e}");
        drop(s);
        Store::open(&d.state()).expect("the lock goes with the store");
    }

    /// Everything on disk that belongs to the table.
    fn disk(d: &Dir) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        (
            std::fs::read(d.state()).ok(),
            std::fs::read(d.journal()).ok(),
        )
    }

    #[test]
    fn every_failing_step_of_an_append_leaves_the_journal_as_it_was() {
        let d = Dir::new("append-faults");
        for with_journal in [false, true] {
            let _ = std::fs::remove_dir_all(&d.0);
            let (mut s, mut r) = open(&d);
            if with_journal {
                add(&mut s, &mut r, flow(1, 1));
            }
            let faults = StoreFaults::new();
            s.set_faults(Some(faults.clone()));
            for n in 1.. {
                assert!(n < 50, "bounded");
                let before = disk(&d);
                faults.fail_at(n);
                let start = faults.steps();
                match s.append(&JournalOp::AddFlow { rule: flow(2, 2) }) {
                    Ok(()) => {
                        assert!(faults.steps() - start < n, "the fault never fired");
                        break;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        assert!(msg.contains(&d.journal().display().to_string()), "{msg}");
                        assert!(msg.contains("Input/output error"), "{msg}");
                        assert_eq!(disk(&d), before, "step {n}: {msg}");
                    }
                }
            }
            faults.heal();
            drop(s);
            let (_s, r) = open(&d);
            let want = if with_journal {
                vec![flow(1, 1), flow(2, 2)]
            } else {
                vec![flow(2, 2)]
            };
            assert_eq!(contents(&r).0, want);
        }
    }

    #[test]
    fn every_failing_step_of_a_snapshot_leaves_the_state_file_as_it_was() {
        let d = Dir::new("snapshot-faults");
        for with_snapshot in [false, true] {
            let _ = std::fs::remove_dir_all(&d.0);
            let (mut s, mut r) = open(&d);
            if with_snapshot {
                add(&mut s, &mut r, flow(1, 1));
                compact(&mut s, &r);
            }
            let faults = StoreFaults::new();
            s.set_faults(Some(faults.clone()));
            let mut next = r.clone();
            next.flows.insert(flow(2, 2)).unwrap();
            let epoch = s.epoch() + 1;
            for n in 1.. {
                assert!(n < 50, "bounded");
                let before = disk(&d);
                faults.fail_at(n);
                let start = faults.steps();
                match s.write_snapshot(epoch, &next.flows, &next.prefixes) {
                    Ok(()) => {
                        let log = faults.log();
                        if faults.steps() - start >= n {
                            // Only the tidying after the commit may fail
                            // without failing the write.
                            let (kind, path) = &log[(start + n - 1) as usize];
                            assert_eq!(*kind, StoreStep::Remove, "step {n} swallowed");
                            assert!(path.ends_with(".flows.json.prev"), "{path:?}");
                            continue;
                        }
                        break;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        assert!(msg.contains(&d.state().display().to_string()), "{msg}");
                        assert!(msg.contains("Input/output error"), "{msg}");
                        assert_eq!(disk(&d), before, "step {n}: {msg}");
                    }
                }
            }
            let kinds: Vec<StoreStep> = faults.log().iter().map(|(k, _)| *k).collect();
            for k in [
                StoreStep::Open,
                StoreStep::Write,
                StoreStep::Fsync,
                StoreStep::Rename,
                StoreStep::FsyncDir,
            ] {
                assert!(kinds.contains(&k), "{k:?} was exercised: {kinds:?}");
            }
            if with_snapshot {
                assert!(kinds.contains(&StoreStep::Link), "{kinds:?}");
            }
            s.start_epoch(epoch);
            drop(s);
            let (_s, r) = open(&d);
            assert_eq!(contents(&r), contents(&next));
            let leftovers: Vec<_> = std::fs::read_dir(&d.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");
        }
    }

    #[test]
    fn after_a_failed_directory_fsync_nothing_is_acknowledged_before_the_next_good_one() {
        let d = Dir::new("unsure");
        let (mut s, mut r) = open(&d);
        add(&mut s, &mut r, flow(1, 1));
        compact(&mut s, &r);
        add(&mut s, &mut r, flow(2, 2));
        let faults = StoreFaults::new();
        s.set_faults(Some(faults.clone()));
        let mut next = r.clone();
        next.flows.insert(flow(3, 3)).unwrap();
        faults.fail_nth(StoreStep::FsyncDir, 1);
        s.write_snapshot(s.epoch() + 1, &next.flows, &next.prefixes)
            .expect_err("the directory fsync fails");
        // The next append first makes the directory durable (the previous
        // snapshot, renamed back), then writes.
        let start = faults.log().len();
        faults.fail_nth(StoreStep::FsyncDir, 1);
        s.append(&JournalOp::AddFlow { rule: flow(4, 4) })
            .expect_err("still unsure: not acknowledged");
        let kinds: Vec<StoreStep> = faults.log()[start..].iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [StoreStep::FsyncDir], "nothing written");
        let start = faults.log().len();
        add(&mut s, &mut r, flow(4, 4));
        let kinds: Vec<StoreStep> = faults.log()[start..].iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [StoreStep::FsyncDir, StoreStep::Write, StoreStep::Fsync],
            "synced, then appended"
        );
        let start = faults.log().len();
        add(&mut s, &mut r, flow(5, 5));
        let kinds: Vec<StoreStep> = faults.log()[start..].iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [StoreStep::Write, StoreStep::Fsync], "sure again");
        drop(s);
        let (_s, loaded) = open(&d);
        assert_eq!(contents(&loaded), contents(&r));
    }

    #[test]
    fn a_fault_can_target_one_kind_of_step() {
        let d = Dir::new("kind");
        let (mut s, r) = open(&d);
        let faults = StoreFaults::new();
        s.set_faults(Some(faults.clone()));
        faults.fail_nth(StoreStep::Rename, 1);
        let e = s
            .write_snapshot(1, &r.flows, &r.prefixes)
            .expect_err("the rename fails");
        assert!(e.to_string().contains("Input/output error"), "{e}");
        assert!(!d.state().exists());
        s.write_snapshot(1, &r.flows, &r.prefixes).expect("once");
        assert!(d.state().exists());
    }
}
