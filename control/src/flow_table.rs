//! The flow table: exact 5-tuple rules and destination prefix rules, held by
//! the control plane and projected into the classifier's `FLOWS` and
//! `PREFIXES` maps.
//!
//! # Ownership
//!
//! - The [`FlowTable`] in memory is the source of truth. Its state files are
//!   its durable copy; the BPF maps are its projection. Neither is ever read
//!   back to decide what the table holds, except once: [`FlowTable::sync`]
//!   of a table that found no state file on disk adopts the rules it finds
//!   in the pinned maps (a daemon that lost its state file but not its
//!   maps), so they are not silently dropped.
//! - The table is the only writer of `FLOWS`, `PREFIXES` and
//!   `Config.active_gen`. The rest of `Config` belongs to whoever configured
//!   the classifier; the switch rewrites it unchanged. The table holds no
//!   classifier: every call that touches maps takes `&mut Classifier`, so
//!   writers are serialised by whoever owns both (the daemon: one mutex).
//!   The table is `Send` and not internally synchronised.
//! - The XDP program reads `Config.active_gen` once per frame and looks up
//!   only entries of that generation (see `xdpath_common`, Generations).
//! - One table per state file: [`FlowTable::load`] takes an exclusive lock
//!   (`<state>.lock`) that lasts as long as the table.
//!
//! # States of one rule
//!
//! ```text
//!  (absent) --validate--> VALID --map write--> WRITTEN --journal fsync--> ACTIVE
//!     ^                     |                     |                         |
//!     +-- error: nothing ---+-- error: rolled ----+                  delete: map entry
//!         changed               back (entry removed)                 removed, journal
//!                                                                    fsync, forgotten
//! ```
//!
//! - VALID: checked against the rule syntax ([`crate::rules`]), the id space
//!   (unique, 1 or more), the match space (no other rule of the same kind
//!   matches exactly the same frames) and the capacity. Nothing has been
//!   written.
//! - WRITTEN: the entry is in the active generation of the map (one map
//!   update: atomic per entry) but not yet durable. If the journal cannot be
//!   written, the entry is removed again and the call fails.
//! - ACTIVE: durable, listed by [`FlowTable::flows`] / [`FlowTable::prefixes`]
//!   and in the map. Only ACTIVE rules are visible through the API.
//!
//! # States of the table (one projection)
//!
//! ```text
//!  UNPROJECTED --sync--> PROJECTED(g) --replace--> STAGED --flip--> SWITCHED --snapshot--> PROJECTED(g^1)
//!       ^                    ^  |                     |                |
//!       |                    |  +-- single add/delete in generation g  |
//!       |                    +------- error: staged entries removed ---+ (flipped back first)
//!       +----------- a rollback failed: maps no longer trusted ----------
//! ```
//!
//! - UNPROJECTED: after [`FlowTable::load`], or after a failure that could
//!   not be rolled back. The next call that touches maps runs
//!   [`FlowTable::sync`] first.
//! - PROJECTED(g): generation `g` holds exactly the table and is active;
//!   generation `g^1` is empty ("clean"), unless deleting it after a switch
//!   failed, in which case the next switch empties it first.
//! - STAGED: a bulk replace (or sync) has written the complete new table,
//!   flows and prefixes, into generation `g^1`; the program does not see it.
//! - SWITCHED: `Config.active_gen` was flipped with one map update, and
//!   [`Classifier::wait_for_readers`] returned, so no frame is still being
//!   classified against generation `g`. The snapshot is written next; if
//!   that fails, the flip is undone and the call fails.
//! - Then generation `g` is deleted and the table is PROJECTED(g^1).
//!
//! A frame therefore sees either the whole old table or the whole new one,
//! never a mix, and a failed call leaves the table, the state files and
//! (after rollback) the maps as they were.
//!
//! # Persistence
//!
//! `<state>` (the path given to [`FlowTable::load`]) is a JSON snapshot:
//! `{"format": "xdpath-flow-table", "version": 1, "epoch": N, "flows": [...],
//! "prefixes": [...]}` with rules in the wire format of [`crate::rules`]. It
//! is only ever replaced whole: written to a temporary file in the same
//! directory, fsynced, renamed over, directory fsynced.
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
//! naming the file: nothing is ever silently lost.

use crate::classifier::{BatchError, Classifier, ClassifierError};
use crate::rules::{FlowRule, FlowRuleSpec, PrefixRule, PrefixRuleSpec, RuleError, RuleKind};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::Hash;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use xdpath_common::{FlowKey, PrefixData, RuleValue, MAX_FLOWS, MAX_PREFIXES};

const FORMAT: &str = "xdpath-flow-table";
const VERSION: u32 = 1;
/// Compaction happens once the journal has at least this many entries and
/// at least as many as the table has rules.
const COMPACT_MIN: usize = 1024;

/// Errors of the flow table. [`FlowTableError::http_status`] gives the
/// status the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum FlowTableError {
    /// A rule is not valid (400).
    #[error(transparent)]
    Invalid(#[from] RuleError),
    /// The id is taken, or given twice in one list (409).
    #[error("{} rule id {id} is already taken.", title(*kind))]
    DuplicateId {
        /// Flow or prefix.
        kind: RuleKind,
        /// The id.
        id: u32,
    },
    /// Another rule of the same kind matches exactly the same frames (409).
    #[error(
        "{} rule {id} matches {} as {kind} rule {existing}; change or delete that one instead.",
        title(*kind),
        match kind { RuleKind::Flow => "the same 5-tuple", RuleKind::Prefix => "the same prefix" }
    )]
    Conflict {
        /// Flow or prefix.
        kind: RuleKind,
        /// The id of the refused rule.
        id: u32,
        /// The id of the rule it collides with.
        existing: u32,
    },
    /// No rule has this id (404).
    #[error("There is no {kind} rule with id {id}.")]
    UnknownId {
        /// Flow or prefix.
        kind: RuleKind,
        /// The id.
        id: u32,
    },
    /// The change would exceed the table's capacity (507).
    #[error("The table holds at most {limit} {kind} rules; this change would make {requested}.")]
    Capacity {
        /// Flow or prefix.
        kind: RuleKind,
        /// The limit (`MAX_FLOWS` or `MAX_PREFIXES`).
        limit: u32,
        /// The size the change asked for.
        requested: usize,
    },
    /// A map operation failed; the change was rolled back (500).
    #[error("Writing the classifier maps failed; the table is unchanged: {0}")]
    Map(#[from] ClassifierError),
    /// The state files could not be read, written or locked (500).
    #[error("State file {}: {detail}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong, as a sentence.
        detail: String,
    },
}

fn title(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::Flow => "Flow",
        RuleKind::Prefix => "Prefix",
    }
}

impl FlowTableError {
    /// The JSON field at fault, if one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid(e) => Some(e.field()),
            Self::DuplicateId { .. } | Self::UnknownId { .. } => Some("id"),
            _ => None,
        }
    }

    /// The HTTP status of the API's answer: 400 invalid, 404 unknown id,
    /// 409 duplicate id or conflicting rule, 507 capacity, 500 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::UnknownId { .. } => 404,
            Self::DuplicateId { .. } | Self::Conflict { .. } => 409,
            Self::Capacity { .. } => 507,
            Self::Map(_) | Self::State { .. } => 500,
        }
    }
}

type Result<T> = std::result::Result<T, FlowTableError>;

/// What the table needs to know about a rule type.
trait TableRule: Copy + Serialize {
    /// What two rules must not share: they would match the same frames.
    type Match: Hash + Eq + Copy;
    const KIND: RuleKind;
    const LIMIT: u32;
    fn id(&self) -> u32;
    fn matches(&self) -> Self::Match;
}

impl TableRule for FlowRule {
    type Match = FlowKey;
    const KIND: RuleKind = RuleKind::Flow;
    const LIMIT: u32 = MAX_FLOWS;
    fn id(&self) -> u32 {
        self.id
    }
    fn matches(&self) -> FlowKey {
        self.bpf_key(0)
    }
}

impl TableRule for PrefixRule {
    type Match = (u8, [u8; 16], u32);
    const KIND: RuleKind = RuleKind::Prefix;
    const LIMIT: u32 = MAX_PREFIXES;
    fn id(&self) -> u32 {
        self.id
    }
    fn matches(&self) -> Self::Match {
        let (len, d) = self.bpf_key(0);
        (d.family, d.addr, len)
    }
}

/// The rules of one kind, by id and by what they match.
#[derive(Clone, Debug)]
struct RuleSet<R: TableRule> {
    by_id: BTreeMap<u32, R>,
    by_match: HashMap<R::Match, u32>,
}

impl<R: TableRule> Default for RuleSet<R> {
    fn default() -> Self {
        Self {
            by_id: BTreeMap::new(),
            by_match: HashMap::new(),
        }
    }
}

impl<R: TableRule> RuleSet<R> {
    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn rules(&self) -> impl Iterator<Item = &R> {
        self.by_id.values()
    }

    /// Why `r` cannot join the set, if it cannot.
    fn refuse(&self, r: &R) -> Option<FlowTableError> {
        if self.by_id.contains_key(&r.id()) {
            return Some(FlowTableError::DuplicateId {
                kind: R::KIND,
                id: r.id(),
            });
        }
        self.by_match
            .get(&r.matches())
            .map(|&existing| FlowTableError::Conflict {
                kind: R::KIND,
                id: r.id(),
                existing,
            })
    }

    fn insert(&mut self, r: R) -> Result<()> {
        if let Some(e) = self.refuse(&r) {
            return Err(e);
        }
        self.by_match.insert(r.matches(), r.id());
        self.by_id.insert(r.id(), r);
        Ok(())
    }

    fn remove(&mut self, id: u32) -> Option<R> {
        let r = self.by_id.remove(&id)?;
        self.by_match.remove(&r.matches());
        Some(r)
    }

    fn check_capacity(requested: usize) -> Result<()> {
        if requested > R::LIMIT as usize {
            return Err(FlowTableError::Capacity {
                kind: R::KIND,
                limit: R::LIMIT,
                requested,
            });
        }
        Ok(())
    }

    /// The id a new rule gets: one more than the highest, or the lowest
    /// free one once the highest is `u32::MAX`.
    fn next_id(&self) -> u32 {
        match self.by_id.last_key_value() {
            None => 1,
            Some((&max, _)) if max < u32::MAX => max + 1,
            Some(_) => (1..u32::MAX)
                .find(|i| !self.by_id.contains_key(i))
                .unwrap_or(u32::MAX),
        }
    }

    /// Validates a whole list into a new set: ids given must be unique,
    /// missing ones are assigned after the highest given one, no two rules
    /// may match the same frames, and the size must fit.
    fn plan<S>(
        specs: &[S],
        spec_id: impl Fn(&S) -> Option<u32>,
        validate: impl Fn(&S, u32) -> std::result::Result<R, RuleError>,
    ) -> Result<Self> {
        Self::check_capacity(specs.len())?;
        let mut given = HashSet::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            if let Some(id) = spec_id(s) {
                if id == 0 {
                    return Err(RuleError::new("id", "rule ids start at 1.").at(i).into());
                }
                if !given.insert(id) {
                    return Err(FlowTableError::DuplicateId { kind: R::KIND, id });
                }
            }
        }
        let missing = specs.len() - given.len();
        let max_given = given.iter().copied().max().unwrap_or(0);
        let mut fresh: Box<dyn Iterator<Item = u32>> = if (u32::MAX - max_given) as usize >= missing
        {
            Box::new(max_given + 1..=u32::MAX)
        } else {
            Box::new((1..=u32::MAX).filter(|i| !given.contains(i)))
        };
        let mut set = Self::default();
        set.by_match.reserve(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let assign = match spec_id(s) {
                Some(id) => id,
                // Capacity is far below the id space: there is always one.
                None => fresh.next().unwrap_or(u32::MAX),
            };
            let r = validate(s, assign).map_err(|e| e.at(i))?;
            set.insert(r)?;
        }
        Ok(set)
    }
}

impl<R: TableRule> Serialize for RuleSet<R> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.by_id.values())
    }
}

fn flow_entries(set: &RuleSet<FlowRule>, gen: u8) -> Vec<(FlowKey, RuleValue)> {
    set.rules()
        .map(|r| (r.bpf_key(gen), r.bpf_value()))
        .collect()
}

fn prefix_entries(set: &RuleSet<PrefixRule>, gen: u8) -> Vec<(u32, PrefixData, RuleValue)> {
    set.rules()
        .map(|r| {
            let (len, d) = r.bpf_key(gen);
            (len, d, r.bpf_value())
        })
        .collect()
}

/// Where the table's projection stands.
#[derive(Clone, Copy, Debug)]
struct Projection {
    /// Kernel ids of FLOWS and PREFIXES: the maps this projection is in.
    maps: (u32, u32),
    /// The active generation, holding exactly the table.
    gen: u8,
    /// The other generation is known to be empty.
    inactive_clean: bool,
}

// ----- state files -----

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

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum JournalOp {
    AddFlow { rule: FlowRule },
    DeleteFlow { id: u32 },
    AddPrefix { rule: PrefixRule },
    DeletePrefix { id: u32 },
}

/// The snapshot, the journal and the lock.
#[derive(Debug)]
struct Store {
    path: PathBuf,
    journal_path: PathBuf,
    /// Held for the table's lifetime (flock).
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
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn state_err(path: &Path, detail: impl Into<String>) -> FlowTableError {
    FlowTableError::State {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn fsync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

impl Store {
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

    /// Replaces the snapshot with the given table at `epoch`.
    fn write_snapshot(
        &self,
        epoch: u64,
        flows: &RuleSet<FlowRule>,
        prefixes: &RuleSet<PrefixRule>,
    ) -> Result<()> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.path.with_file_name(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let f = File::create(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
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
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)?;
            fsync_dir(&self.path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            state_err(&self.path, format!("cannot be written: {e}."))
        })
    }

    /// The snapshot of `epoch` is on disk: forget the old journal.
    fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.journal = None;
        self.journal_len = 0;
        self.journal_ops = 0;
        self.journal_broken = false;
        // Stale now (older epoch); removing it is tidiness, not correctness.
        if let Err(e) = std::fs::remove_file(&self.journal_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.journal_path.display(), "removing the stale journal: {e}");
            }
        }
    }

    /// Appends one operation and fsyncs it. On failure the journal is cut
    /// back to what it was.
    fn append(&mut self, op: &JournalOp) -> Result<()> {
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
        if self.journal.is_none() {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.journal_path)
                .map_err(err)?;
            // Cuts off a torn tail, or a stale journal when starting anew.
            f.set_len(self.journal_len).map_err(err)?;
            f.seek(SeekFrom::Start(self.journal_len)).map_err(err)?;
            if self.journal_len == 0 {
                // A new file must survive a crash too.
                fsync_dir(&self.journal_path).map_err(err)?;
            }
            self.journal = Some(f);
        }
        let Some(f) = self.journal.as_mut() else {
            return Err(err(std::io::Error::other("journal not open")));
        };
        let res = f.write_all(&line).and_then(|()| f.sync_data());
        if let Err(e) = res {
            let cut = f
                .set_len(self.journal_len)
                .and_then(|()| f.seek(SeekFrom::Start(self.journal_len)).map(|_| ()))
                .and_then(|()| f.sync_data());
            if let Err(e2) = cut {
                tracing::warn!(path = %self.journal_path.display(), "cutting a failed append off the journal: {e2}");
                self.journal = None;
                self.journal_broken = true;
            }
            return Err(err(e));
        }
        self.journal_len += line.len() as u64;
        self.journal_ops += 1;
        Ok(())
    }
}

/// The flow table. See the module docs for the ownership rules, the states
/// and the persistence.
#[derive(Debug)]
pub struct FlowTable {
    store: Store,
    flows: RuleSet<FlowRule>,
    prefixes: RuleSet<PrefixRule>,
    /// `None`: UNPROJECTED.
    proj: Option<Projection>,
    /// No state file existed at load and nothing changed since: `sync`
    /// adopts the rules of the pinned maps.
    may_adopt: bool,
}

impl FlowTable {
    /// Loads the table from `state_path` (and its journal), creating the
    /// directory if needed. A missing state file is an empty table; a file
    /// that cannot be read, parsed or validated is an error naming it (and
    /// left as it is). The table is UNPROJECTED until [`FlowTable::sync`].
    pub fn load(state_path: &Path) -> Result<Self> {
        if let Some(dir) = state_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| state_err(state_path, format!("directory cannot be created: {e}.")))?;
        }
        let lock = Store::lock(state_path)?;
        let mut t = FlowTable {
            store: Store {
                path: state_path.to_path_buf(),
                journal_path: with_suffix(state_path, ".journal"),
                _lock: lock,
                epoch: 0,
                journal: None,
                journal_len: 0,
                journal_ops: 0,
                journal_broken: false,
            },
            flows: RuleSet::default(),
            prefixes: RuleSet::default(),
            proj: None,
            may_adopt: false,
        };
        let snapshot_found = t.load_snapshot()?;
        let journal_found = t.replay_journal()?;
        t.may_adopt = !snapshot_found && !journal_found;
        tracing::info!(
            path = %state_path.display(),
            flows = t.flows.len(),
            prefixes = t.prefixes.len(),
            epoch = t.store.epoch,
            journal_ops = t.store.journal_ops,
            "flow table loaded"
        );
        Ok(t)
    }

    fn load_snapshot(&mut self) -> Result<bool> {
        let path = self.store.path.clone();
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
            self.flows.insert(r).map_err(|e| corrupt(e.to_string()))?;
        }
        for r in snap.prefixes {
            self.prefixes
                .insert(r)
                .map_err(|e| corrupt(e.to_string()))?;
        }
        self.store.epoch = snap.epoch;
        Ok(true)
    }

    fn replay_journal(&mut self) -> Result<bool> {
        let path = self.store.journal_path.clone();
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
                if h.epoch < self.store.epoch {
                    tracing::info!(path = %path.display(), "ignoring a stale journal (a newer snapshot replaced it)");
                    return Ok(false);
                }
                if h.epoch > self.store.epoch {
                    return Err(corrupt(
                        1,
                        format!(
                            "it continues snapshot epoch {} but the snapshot is epoch {}",
                            h.epoch, self.store.epoch
                        ),
                    ));
                }
            } else {
                let op: JournalOp =
                    serde_json::from_slice(line).map_err(|e| corrupt(line_no, e.to_string()))?;
                self.apply(op)
                    .map_err(|e| corrupt(line_no, e.to_string()))?;
                ops += 1;
            }
            valid += nl + 1;
        }
        self.store.journal_len = valid as u64;
        self.store.journal_ops = ops;
        Ok(valid > 0)
    }

    /// Applies a journal entry to memory only (replay).
    fn apply(&mut self, op: JournalOp) -> Result<()> {
        match op {
            JournalOp::AddFlow { rule } => {
                RuleSet::<FlowRule>::check_capacity(self.flows.len() + 1)?;
                self.flows.insert(rule)
            }
            JournalOp::DeleteFlow { id } => {
                self.flows
                    .remove(id)
                    .map(|_| ())
                    .ok_or(FlowTableError::UnknownId {
                        kind: RuleKind::Flow,
                        id,
                    })
            }
            JournalOp::AddPrefix { rule } => {
                RuleSet::<PrefixRule>::check_capacity(self.prefixes.len() + 1)?;
                self.prefixes.insert(rule)
            }
            JournalOp::DeletePrefix { id } => {
                self.prefixes
                    .remove(id)
                    .map(|_| ())
                    .ok_or(FlowTableError::UnknownId {
                        kind: RuleKind::Prefix,
                        id,
                    })
            }
        }
    }

    /// The state file this table was loaded from.
    pub fn state_path(&self) -> &Path {
        &self.store.path
    }

    /// The active generation of the last projection (0 before the first).
    pub fn generation(&self) -> u8 {
        self.proj.map_or(0, |p| p.gen)
    }

    /// Exact rules, sorted by id.
    pub fn flows(&self) -> Vec<FlowRule> {
        self.flows.rules().copied().collect()
    }

    /// Prefix rules, sorted by id.
    pub fn prefixes(&self) -> Vec<PrefixRule> {
        self.prefixes.rules().copied().collect()
    }

    /// One exact rule.
    pub fn flow(&self, id: u32) -> Option<FlowRule> {
        self.flows.by_id.get(&id).copied()
    }

    /// One prefix rule.
    pub fn prefix(&self, id: u32) -> Option<PrefixRule> {
        self.prefixes.by_id.get(&id).copied()
    }

    /// Number of exact rules.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Number of prefix rules.
    pub fn prefix_count(&self) -> usize {
        self.prefixes.len()
    }

    /// Projects the whole table into `c`'s maps: afterwards the active
    /// generation holds exactly the table and the other one nothing. If the
    /// maps already hold exactly that, nothing is written; otherwise the
    /// table is written into the inactive generation (after clearing it) and
    /// switched to atomically, and everything else is deleted.
    ///
    /// A table that found no state file at load adopts the valid rules of
    /// the maps' active generation first (and writes them to the state file).
    pub fn sync(&mut self, c: &mut Classifier) -> Result<()> {
        let maps = c.flow_map_ids()?;
        let active = (c.config()?.active_gen & 1) as u8;
        let flows_now = c.flow_entries()?;
        let prefixes_now = c.prefix_entries()?;
        if self.may_adopt {
            self.adopt(active, &flows_now, &prefixes_now)?;
        }

        let want_f: HashMap<FlowKey, RuleValue> =
            flow_entries(&self.flows, active).into_iter().collect();
        let want_p: HashMap<(u32, [u8; 18]), RuleValue> = prefix_entries(&self.prefixes, active)
            .into_iter()
            .map(|(l, d, v)| ((l, prefix_bytes(&d)), v))
            .collect();
        let exact = flows_now.len() == want_f.len()
            && prefixes_now.len() == want_p.len()
            && flows_now.iter().all(|(k, v)| want_f.get(k) == Some(v))
            && prefixes_now
                .iter()
                .all(|(l, d, v)| want_p.get(&(*l, prefix_bytes(d))) == Some(v));
        if exact {
            self.proj = Some(Projection {
                maps,
                gen: active,
                inactive_clean: true,
            });
            tracing::info!(gen = active, "flow table: the maps already hold the table");
            return Ok(());
        }

        let foreign = flows_now
            .iter()
            .filter(|(k, v)| k.gen == active && want_f.get(k) != Some(v))
            .count()
            + prefixes_now
                .iter()
                .filter(|(l, d, v)| {
                    d.gen == active && want_p.get(&(*l, prefix_bytes(d))) != Some(v)
                })
                .count();
        if foreign > 0 {
            tracing::warn!(
                entries = foreign,
                "flow table: the maps hold rules the table does not; they are replaced by the table"
            );
        }
        // From here on the maps are not trusted until the switch is done.
        self.proj = None;
        // Everything outside the active generation goes first, so the
        // inactive one is clean for the switch.
        let junk_f: Vec<FlowKey> = flows_now
            .iter()
            .filter(|(k, _)| k.gen != active)
            .map(|(k, _)| *k)
            .collect();
        let junk_p: Vec<(u32, PrefixData)> = prefixes_now
            .iter()
            .filter(|(_, d, _)| d.gen != active)
            .map(|(l, d, _)| (*l, *d))
            .collect();
        c.remove_flows(&junk_f).map_err(|e| e.source)?;
        c.remove_prefixes(&junk_p).map_err(|e| e.source)?;
        let mut proj = Projection {
            maps,
            gen: active,
            inactive_clean: true,
        };
        let res = switch(
            &mut self.store,
            c,
            &mut proj,
            &self.flows,
            &self.prefixes,
            false,
        );
        // Whatever else the old generation held (entries the table does not
        // know, e.g. written around it) goes too.
        if res.is_ok() {
            let old_f: Vec<FlowKey> = flows_now
                .iter()
                .filter(|(k, _)| k.gen == active)
                .map(|(k, _)| *k)
                .collect();
            let old_p: Vec<(u32, PrefixData)> = prefixes_now
                .iter()
                .filter(|(_, d, _)| d.gen == active)
                .map(|(l, d, _)| (*l, *d))
                .collect();
            if let Err(e) = c
                .remove_flows(&old_f)
                .and_then(|_| c.remove_prefixes(&old_p))
            {
                tracing::warn!("flow table: clearing the old generation after sync: {e}");
                proj.inactive_clean = false;
            }
            self.proj = Some(proj);
            tracing::info!(
                gen = proj.gen,
                flows = self.flows.len(),
                prefixes = self.prefixes.len(),
                "flow table projected into the maps"
            );
        }
        res.map_err(|e| e.error)
    }

    /// Adopts the valid rules of generation `gen` of the maps into an empty
    /// table and writes them to the state file.
    fn adopt(
        &mut self,
        gen: u8,
        flows: &[(FlowKey, RuleValue)],
        prefixes: &[(u32, PrefixData, RuleValue)],
    ) -> Result<()> {
        let mut fs = RuleSet::<FlowRule>::default();
        let mut ps = RuleSet::<PrefixRule>::default();
        let mut skipped = 0usize;
        for (k, v) in flows.iter().filter(|(k, _)| k.gen == gen) {
            if let Err(e) = FlowRule::from_bpf(k, v)
                .map_err(FlowTableError::from)
                .and_then(|r| fs.insert(r))
            {
                tracing::warn!("not adopting a FLOWS entry of the pinned maps: {e}");
                skipped += 1;
            }
        }
        for (l, d, v) in prefixes.iter().filter(|(_, d, _)| d.gen == gen) {
            if let Err(e) = PrefixRule::from_bpf(*l, d, v)
                .map_err(FlowTableError::from)
                .and_then(|r| ps.insert(r))
            {
                tracing::warn!("not adopting a PREFIXES entry of the pinned maps: {e}");
                skipped += 1;
            }
        }
        if fs.len() + ps.len() > 0 {
            let epoch = self.store.epoch + 1;
            self.store.write_snapshot(epoch, &fs, &ps)?;
            self.store.start_epoch(epoch);
            tracing::info!(
                flows = fs.len(),
                prefixes = ps.len(),
                skipped,
                "flow table: no state file; adopted the rules of the pinned maps"
            );
            self.flows = fs;
            self.prefixes = ps;
        }
        self.may_adopt = false;
        Ok(())
    }

    /// The active generation of `c`'s maps, syncing first if this table is
    /// not projected into them.
    fn projected(&mut self, c: &mut Classifier) -> Result<u8> {
        let maps = c.flow_map_ids()?;
        match self.proj {
            Some(p) if p.maps == maps => Ok(p.gen),
            _ => {
                self.sync(c)?;
                Ok(self.generation())
            }
        }
    }

    /// A bulk replace: the new table is switched to by [`switch`] and the
    /// old generation deleted; `None` keeps that kind as it is.
    fn replace(
        &mut self,
        c: &mut Classifier,
        flows: Option<RuleSet<FlowRule>>,
        prefixes: Option<RuleSet<PrefixRule>>,
    ) -> Result<()> {
        let Some(mut proj) = self.proj else {
            return Err(state_err(
                &self.store.path,
                "is not projected (internal error).",
            ));
        };
        let old = proj.gen;
        let res = switch(
            &mut self.store,
            c,
            &mut proj,
            flows.as_ref().unwrap_or(&self.flows),
            prefixes.as_ref().unwrap_or(&self.prefixes),
            true,
        );
        if let Err(e) = res {
            self.proj = e.maps_as_before.then_some(proj);
            return Err(e.error);
        }
        let old_flows = flows.map(|f| std::mem::replace(&mut self.flows, f));
        let old_prefixes = prefixes.map(|p| std::mem::replace(&mut self.prefixes, p));
        self.may_adopt = false;
        let fk: Vec<FlowKey> = old_flows
            .as_ref()
            .unwrap_or(&self.flows)
            .rules()
            .map(|r| r.bpf_key(old))
            .collect();
        let pk: Vec<(u32, PrefixData)> = old_prefixes
            .as_ref()
            .unwrap_or(&self.prefixes)
            .rules()
            .map(|r| r.bpf_key(old))
            .collect();
        match c.remove_flows(&fk).and_then(|_| c.remove_prefixes(&pk)) {
            Ok(_) => proj.inactive_clean = true,
            Err(e) => tracing::warn!(
                "flow table: deleting the old generation {old}: {e}; the next switch clears it"
            ),
        }
        self.proj = Some(proj);
        Ok(())
    }

    fn persist_op(&mut self, op: &JournalOp) -> Result<()> {
        if self.store.journal_broken {
            self.compact()?;
        }
        self.store.append(op)
    }

    fn compact(&mut self) -> Result<()> {
        let epoch = self.store.epoch + 1;
        self.store
            .write_snapshot(epoch, &self.flows, &self.prefixes)?;
        self.store.start_epoch(epoch);
        Ok(())
    }

    fn maybe_compact(&mut self) {
        let n = self.store.journal_ops;
        if n >= COMPACT_MIN && n >= self.flows.len() + self.prefixes.len() {
            if let Err(e) = self.compact() {
                tracing::warn!("flow table: compacting the journal: {e}; will retry");
            }
        }
    }

    /// Adds one exact rule (id assigned if the spec has none) in the active
    /// generation. Returns the rule as stored.
    pub fn add_flow(&mut self, c: &mut Classifier, spec: FlowRuleSpec) -> Result<FlowRule> {
        let gen = self.projected(c)?;
        let rule = spec.validate(self.flows.next_id())?;
        if let Some(e) = self.flows.refuse(&rule) {
            return Err(e);
        }
        RuleSet::<FlowRule>::check_capacity(self.flows.len() + 1)?;
        let key = rule.bpf_key(gen);
        c.insert_flow(&key, &rule.bpf_value())?;
        if let Err(e) = self.persist_op(&JournalOp::AddFlow { rule }) {
            if let Err(e2) = c.remove_flow(&key) {
                tracing::error!("flow table: rolling back flow rule {}: {e2}", rule.id);
                self.proj = None;
            }
            return Err(e);
        }
        self.flows.insert(rule)?;
        self.may_adopt = false;
        self.maybe_compact();
        Ok(rule)
    }

    /// Deletes exact rule `id`.
    pub fn delete_flow(&mut self, c: &mut Classifier, id: u32) -> Result<()> {
        let gen = self.projected(c)?;
        let Some(rule) = self.flow(id) else {
            return Err(FlowTableError::UnknownId {
                kind: RuleKind::Flow,
                id,
            });
        };
        let key = rule.bpf_key(gen);
        if c.remove_flows(std::slice::from_ref(&key))
            .map_err(|e| e.source)?
            == 0
        {
            tracing::warn!(id, "flow table: flow rule was missing from the map");
        }
        if let Err(e) = self.persist_op(&JournalOp::DeleteFlow { id }) {
            if let Err(e2) = c.insert_flow(&key, &rule.bpf_value()) {
                tracing::error!("flow table: rolling back the delete of flow rule {id}: {e2}");
                self.proj = None;
            }
            return Err(e);
        }
        self.flows.remove(id);
        self.maybe_compact();
        Ok(())
    }

    /// Replaces all exact rules at once: the prefix rules stay, the program
    /// sees the old table or the new one, never a mix. Ids given must be
    /// unique; missing ones are assigned after the highest given one.
    pub fn replace_flows(
        &mut self,
        c: &mut Classifier,
        rules: Vec<FlowRuleSpec>,
    ) -> Result<Vec<FlowRule>> {
        RuleSet::<FlowRule>::check_capacity(rules.len())?;
        self.projected(c)?;
        let set = RuleSet::plan(&rules, |s| s.id, FlowRuleSpec::validate)?;
        self.replace(c, Some(set), None)?;
        Ok(self.flows())
    }

    /// Adds one prefix rule (id assigned if the spec has none) in the active
    /// generation. Returns the rule as stored.
    pub fn add_prefix(&mut self, c: &mut Classifier, spec: PrefixRuleSpec) -> Result<PrefixRule> {
        let gen = self.projected(c)?;
        let rule = spec.validate(self.prefixes.next_id())?;
        if let Some(e) = self.prefixes.refuse(&rule) {
            return Err(e);
        }
        RuleSet::<PrefixRule>::check_capacity(self.prefixes.len() + 1)?;
        let (len, data) = rule.bpf_key(gen);
        c.insert_prefix(len, &data, &rule.bpf_value())?;
        if let Err(e) = self.persist_op(&JournalOp::AddPrefix { rule }) {
            if let Err(e2) = c.remove_prefix(len, &data) {
                tracing::error!("flow table: rolling back prefix rule {}: {e2}", rule.id);
                self.proj = None;
            }
            return Err(e);
        }
        self.prefixes.insert(rule)?;
        self.may_adopt = false;
        self.maybe_compact();
        Ok(rule)
    }

    /// Deletes prefix rule `id`.
    pub fn delete_prefix(&mut self, c: &mut Classifier, id: u32) -> Result<()> {
        let gen = self.projected(c)?;
        let Some(rule) = self.prefix(id) else {
            return Err(FlowTableError::UnknownId {
                kind: RuleKind::Prefix,
                id,
            });
        };
        let key = rule.bpf_key(gen);
        if c.remove_prefixes(std::slice::from_ref(&key))
            .map_err(|e| e.source)?
            == 0
        {
            tracing::warn!(id, "flow table: prefix rule was missing from the map");
        }
        if let Err(e) = self.persist_op(&JournalOp::DeletePrefix { id }) {
            if let Err(e2) = c.insert_prefix(key.0, &key.1, &rule.bpf_value()) {
                tracing::error!("flow table: rolling back the delete of prefix rule {id}: {e2}");
                self.proj = None;
            }
            return Err(e);
        }
        self.prefixes.remove(id);
        self.maybe_compact();
        Ok(())
    }

    /// Replaces all prefix rules at once: the exact rules stay, the program
    /// sees the old table or the new one, never a mix. Ids given must be
    /// unique; missing ones are assigned after the highest given one.
    pub fn replace_prefixes(
        &mut self,
        c: &mut Classifier,
        rules: Vec<PrefixRuleSpec>,
    ) -> Result<Vec<PrefixRule>> {
        RuleSet::<PrefixRule>::check_capacity(rules.len())?;
        self.projected(c)?;
        let set = RuleSet::plan(&rules, |s| s.id, PrefixRuleSpec::validate)?;
        self.replace(c, None, Some(set))?;
        Ok(self.prefixes())
    }
}

/// A failed [`switch`].
struct SwitchError {
    error: FlowTableError,
    /// The maps are as they were before the switch (otherwise a rollback
    /// failed and the table must be projected again).
    maps_as_before: bool,
}

/// Writes `flows` + `prefixes` into the generation after `proj.gen`
/// (STAGED), flips to it (SWITCHED), waits for readers, writes the snapshot
/// (if `persist`) and moves `proj` to the new generation, whose old one is
/// then still populated (the caller deletes it). On error the maps are as
/// before, unless `maps_as_before` says a rollback failed.
fn switch(
    store: &mut Store,
    c: &mut Classifier,
    proj: &mut Projection,
    flows: &RuleSet<FlowRule>,
    prefixes: &RuleSet<PrefixRule>,
    persist: bool,
) -> std::result::Result<(), SwitchError> {
    let fail = |error: FlowTableError| SwitchError {
        error,
        maps_as_before: true,
    };
    let old = proj.gen;
    let new = old ^ 1;
    if !proj.inactive_clean {
        purge_generation(c, new).map_err(fail)?;
        proj.inactive_clean = true;
    }
    let fe = flow_entries(flows, new);
    let pe = prefix_entries(prefixes, new);
    let fk: Vec<FlowKey> = fe.iter().map(|(k, _)| *k).collect();
    let pk: Vec<(u32, PrefixData)> = pe.iter().map(|(l, d, _)| (*l, *d)).collect();
    // STAGED.
    let staged = c
        .insert_flows(&fe)
        .map_err(|e| (e, false))
        .and_then(|()| c.insert_prefixes(&pe).map_err(|e| (e, true)));
    if let Err((BatchError { done, source }, in_prefixes)) = staged {
        let undone = if in_prefixes {
            c.remove_flows(&fk)
                .and_then(|_| c.remove_prefixes(&pk[..done]))
        } else {
            c.remove_flows(&fk[..done])
        };
        if let Err(e) = undone {
            tracing::warn!("flow table: removing a partly staged generation: {e}");
            proj.inactive_clean = false;
        }
        return Err(fail(source.into()));
    }
    let unstage = |c: &mut Classifier, proj: &mut Projection| {
        if let Err(e) = c.remove_flows(&fk).and_then(|_| c.remove_prefixes(&pk)) {
            tracing::warn!("flow table: removing a staged generation: {e}");
            proj.inactive_clean = false;
        }
    };
    // SWITCHED.
    if let Err(e) = c.set_active_gen(new) {
        unstage(c, proj);
        return Err(fail(e.into()));
    }
    c.wait_for_readers();
    if persist {
        let epoch = store.epoch + 1;
        if let Err(e) = store.write_snapshot(epoch, flows, prefixes) {
            return Err(match c.set_active_gen(old) {
                Ok(()) => {
                    c.wait_for_readers();
                    unstage(c, proj);
                    fail(e)
                }
                Err(e2) => {
                    tracing::error!(
                        "flow table: switching back after a failed snapshot: {e2}; \
                         the maps will be projected again on the next change"
                    );
                    SwitchError {
                        error: e,
                        maps_as_before: false,
                    }
                }
            });
        }
        store.start_epoch(epoch);
    }
    proj.gen = new;
    // The old generation is still populated until the caller deletes it.
    proj.inactive_clean = false;
    Ok(())
}

fn prefix_bytes(d: &PrefixData) -> [u8; 18] {
    let mut o = [0u8; 18];
    o[0] = d.gen;
    o[1] = d.family;
    o[2..].copy_from_slice(&d.addr);
    o
}

/// Deletes every entry of generation `gen` (found by scanning the maps).
fn purge_generation(c: &mut Classifier, gen: u8) -> Result<()> {
    let fk: Vec<FlowKey> = c
        .flow_entries()?
        .into_iter()
        .filter(|(k, _)| k.gen == gen)
        .map(|(k, _)| k)
        .collect();
    let pk: Vec<(u32, PrefixData)> = c
        .prefix_entries()?
        .into_iter()
        .filter(|(_, d, _)| d.gen == gen)
        .map(|(l, d, _)| (l, d))
        .collect();
    c.remove_flows(&fk).map_err(|e| e.source)?;
    c.remove_prefixes(&pk).map_err(|e| e.source)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("xdpath-ft-unit-{}-{name}", std::process::id()));
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
        s.validate(id).unwrap()
    }

    fn prefix(id: u32, p: &str) -> PrefixRule {
        PrefixRuleSpec::new(p, "drop").validate(id).unwrap()
    }

    /// What `add_flow` does after its map write.
    fn add(t: &mut FlowTable, r: FlowRule) {
        t.persist_op(&JournalOp::AddFlow { rule: r }).unwrap();
        t.flows.insert(r).unwrap();
        t.maybe_compact();
    }

    fn del(t: &mut FlowTable, id: u32) {
        t.persist_op(&JournalOp::DeleteFlow { id }).unwrap();
        t.flows.remove(id).unwrap();
        t.maybe_compact();
    }

    fn contents(t: &FlowTable) -> (Vec<FlowRule>, Vec<PrefixRule>) {
        (t.flows(), t.prefixes())
    }

    #[test]
    fn the_table_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<FlowTable>();
        send::<FlowTableError>();
    }

    #[test]
    fn a_missing_state_file_is_an_empty_table() {
        let d = Dir::new("missing");
        let t = FlowTable::load(&d.state()).unwrap();
        assert_eq!(contents(&t), (vec![], vec![]));
        assert!(t.may_adopt);
        assert_eq!(t.generation(), 0);
        assert!(!d.state().exists(), "loading writes nothing");
    }

    #[test]
    fn journal_and_snapshot_round_trip() {
        let d = Dir::new("roundtrip");
        let want = {
            let mut t = FlowTable::load(&d.state()).unwrap();
            for i in 1..=3 {
                add(&mut t, flow(i, i as u16));
            }
            t.persist_op(&JournalOp::AddPrefix {
                rule: prefix(1, "10.88.0.0/16"),
            })
            .unwrap();
            t.prefixes.insert(prefix(1, "10.88.0.0/16")).unwrap();
            del(&mut t, 2);
            assert!(!d.state().exists() && d.journal().exists());
            contents(&t)
        };
        let mut t = FlowTable::load(&d.state()).unwrap();
        assert_eq!(contents(&t), want);
        assert!(!t.may_adopt, "a journal is state");
        // A snapshot supersedes the journal; later changes go to a new one.
        t.compact().unwrap();
        assert!(d.state().exists() && !d.journal().exists());
        add(&mut t, flow(9, 9));
        let want = contents(&t);
        drop(t);
        let t = FlowTable::load(&d.state()).unwrap();
        assert_eq!(contents(&t), want);
        assert_eq!(t.store.epoch, 1);
        assert_eq!(t.store.journal_ops, 1);
    }

    #[test]
    fn the_journal_is_compacted_once_it_outgrows_the_table() {
        let d = Dir::new("compact");
        let mut t = FlowTable::load(&d.state()).unwrap();
        add(&mut t, flow(1, 1));
        for _ in 0..COMPACT_MIN {
            add(&mut t, flow(2, 2));
            del(&mut t, 2);
        }
        assert!(t.store.journal_ops < COMPACT_MIN, "compacted");
        assert!(t.store.epoch >= 1);
        let want = contents(&t);
        drop(t);
        assert_eq!(contents(&FlowTable::load(&d.state()).unwrap()), want);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_cut_off() {
        let d = Dir::new("torn");
        let mut t = FlowTable::load(&d.state()).unwrap();
        add(&mut t, flow(1, 1));
        drop(t);
        let mut j = std::fs::read(d.journal()).unwrap();
        j.extend_from_slice(br#"{"op":"add_flow","rule":{"id":2,"#);
        std::fs::write(d.journal(), &j).unwrap();
        let mut t = FlowTable::load(&d.state()).unwrap();
        assert_eq!(t.flows(), vec![flow(1, 1)]);
        // The next append cuts the torn bytes off first.
        add(&mut t, flow(3, 3));
        drop(t);
        let t = FlowTable::load(&d.state()).unwrap();
        assert_eq!(t.flows(), vec![flow(1, 1), flow(3, 3)]);
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
            let e = FlowTable::load(&d.state()).expect_err(says);
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
            let e = FlowTable::load(&d.state()).expect_err(says);
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
        let t = FlowTable::load(&d.state()).unwrap();
        assert_eq!(t.flows(), vec![flow(1, 1)]);
    }

    #[test]
    fn one_table_per_state_file() {
        let d = Dir::new("lock");
        let t = FlowTable::load(&d.state()).unwrap();
        let e = FlowTable::load(&d.state()).expect_err("locked");
        assert!(e.to_string().contains("in use"), "{e}");
        drop(t);
        FlowTable::load(&d.state()).expect("the lock goes with the table");
    }

    #[test]
    fn bulk_plans_assign_ids_and_refuse_duplicates() {
        let spec = |id: Option<u32>, port: u16| {
            let mut s = FlowRuleSpec::new("10.0.0.2", "10.0.0.1", "udp", "drop");
            s.id = id;
            s.dst_port = port;
            s
        };
        let plan =
            |v: &[FlowRuleSpec]| RuleSet::<FlowRule>::plan(v, |s| s.id, FlowRuleSpec::validate);
        let set = plan(&[
            spec(None, 1),
            spec(Some(10), 2),
            spec(None, 3),
            spec(Some(4), 4),
        ])
        .unwrap();
        let ids: Vec<u32> = set.rules().map(|r| r.id).collect();
        assert_eq!(ids, vec![4, 10, 11, 12]);
        assert_eq!(set.by_id[&11].dst_port, 1, "missing ids in list order");
        assert!(matches!(
            plan(&[spec(Some(3), 1), spec(Some(3), 2)]),
            Err(FlowTableError::DuplicateId { id: 3, .. })
        ));
        assert!(matches!(
            plan(&[spec(Some(3), 1), spec(None, 1)]),
            Err(FlowTableError::Conflict {
                existing: 3,
                id: 4,
                ..
            })
        ));
        match plan(&[spec(None, 1), spec(Some(0), 2)]) {
            Err(FlowTableError::Invalid(e)) => assert_eq!((e.field(), e.index()), ("id", Some(1))),
            other => panic!("{other:?}"),
        }
        let mut bad = spec(None, 2);
        bad.src = "x".into();
        match plan(&[spec(None, 1), bad]) {
            Err(e @ FlowTableError::Invalid(_)) => {
                assert_eq!(e.field(), Some("src"));
                assert!(e.to_string().starts_with("Rule 1: field `src`"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // Ids near the top of the range fall back to the lowest free ones.
        let set = plan(&[spec(Some(u32::MAX), 1), spec(None, 2)]).unwrap();
        assert_eq!(
            set.by_id.keys().copied().collect::<Vec<_>>(),
            vec![1, u32::MAX]
        );
        let big = vec![spec(None, 1); MAX_FLOWS as usize + 1];
        match plan(&big) {
            Err(e @ FlowTableError::Capacity { .. }) => {
                assert!(e.to_string().contains(&MAX_FLOWS.to_string()), "{e}");
                assert_eq!(e.http_status(), 507);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn next_id_continues_after_the_highest() {
        let mut s = RuleSet::<PrefixRule>::default();
        assert_eq!(s.next_id(), 1);
        s.insert(prefix(5, "10.0.0.0/8")).unwrap();
        assert_eq!(s.next_id(), 6);
        s.insert(prefix(u32::MAX, "10.1.0.0/16")).unwrap();
        assert_eq!(s.next_id(), 1);
        assert!(matches!(
            s.insert(prefix(9, "10.0.0.0/8")),
            Err(FlowTableError::Conflict { existing: 5, .. })
        ));
        s.remove(5);
        s.insert(prefix(9, "10.0.0.0/8")).unwrap();
    }

    #[test]
    fn errors_map_to_http_statuses() {
        let kind = RuleKind::Flow;
        let cases: [(FlowTableError, u16, Option<&str>); 6] = [
            (RuleError::new("dst", "bad.").into(), 400, Some("dst")),
            (FlowTableError::UnknownId { kind, id: 1 }, 404, Some("id")),
            (FlowTableError::DuplicateId { kind, id: 1 }, 409, Some("id")),
            (
                FlowTableError::Conflict {
                    kind,
                    id: 2,
                    existing: 1,
                },
                409,
                None,
            ),
            (
                FlowTableError::Capacity {
                    kind,
                    limit: 1,
                    requested: 2,
                },
                507,
                None,
            ),
            (state_err(Path::new("/x"), "is broken."), 500, None),
        ];
        for (e, status, field) in cases {
            assert_eq!((e.http_status(), e.field()), (status, field), "{e}");
            assert!(e.to_string().ends_with('.'), "{e}");
        }
    }
}
