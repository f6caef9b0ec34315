//! Target `flow_table_load`: `FlowTable::load` on arbitrary snapshot and
//! journal bytes, as the daemon meets them at start-up.
//!
//! Input: a flags byte (bit 0: no snapshot file, bit 1: no journal file),
//! the snapshot's length (`u16`) and bytes, then the journal's bytes (the
//! rest).
//!
//! The files live in a private directory of this process on tmpfs
//! (`/dev/shm` when there is one), emptied before every input.
//!
//! Properties:
//! - no panic;
//! - an error is a state-file error that names the file at fault (the
//!   snapshot, the journal or the lock) and leaves the files as they were;
//! - a table that loads round-trips: loading again gives the same rules;
//!   its rules replaced into a fresh table (through fake maps), saved
//!   and loaded again, are the same rules;
//! - nothing leaks: the fds return to what they were (the lock is
//!   released with the table).

use crate::input::Reader;
use crate::process;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use xdpath_control::flow_table::{FlowTable, FlowTableError};
use xdpath_control::maps::FakeMaps;
use xdpath_control::rules::LegacyIds;

/// The process's private directory.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        root.join(format!("xdpath-fuzz-flow-table-{}", std::process::id()))
    })
}

fn fresh(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("create the fuzz state directory");
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read the fuzz state directory")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let p = e.path();
            let b = std::fs::read(&p).unwrap_or_default();
            (p, b)
        })
        .filter(|(p, _)| !p.to_string_lossy().ends_with(".lock"))
        .collect();
    v.sort();
    v
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let snap_len = usize::from(r.u16());
    let snapshot = r.bytes(snap_len);
    let journal = r.rest();

    let a = base().join("a");
    let b = base().join("b");
    fresh(&a);
    fresh(&b);
    let state = a.join("flows.json");
    let journal_path = a.join("flows.json.journal");
    if flags & 1 == 0 {
        std::fs::write(&state, snapshot).expect("write the snapshot");
    }
    if flags & 2 == 0 {
        std::fs::write(&journal_path, journal).expect("write the journal");
    }
    let before = files(&a);
    let fds = process::fds();

    let table = match FlowTable::load(&state) {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            let FlowTableError::State { path, .. } = &e else {
                panic!("loading fails with a state-file error, not: {msg}");
            };
            assert!(
                path == &state || path == &journal_path || path == &a.join("flows.json.lock"),
                "the error names {}, not a state file: {msg}",
                path.display()
            );
            assert!(
                msg.contains(&path.display().to_string()),
                "the message does not name the file: {msg}"
            );
            assert!(files(&a) == before, "a failed load changed the files");
            assert_eq!(process::fds(), fds, "a failed load leaks fds");
            return;
        }
    };
    let (flows, prefixes) = (table.flows(), table.prefixes());
    drop(table);
    assert!(files(&a) == before, "loading changed the files");
    let again = FlowTable::load(&state).expect("a table that loaded loads again");
    assert_eq!(
        (again.flows(), again.prefixes()),
        (flows.clone(), prefixes.clone()),
        "loading is repeatable"
    );
    drop(again);

    // Its rules, saved by a fresh table and loaded back.
    let mut maps = FakeMaps::new();
    let mut fresh_table = FlowTable::load(&b.join("flows.json")).expect("an empty table");
    fresh_table.sync(&mut maps).expect("fake maps sync");
    fresh_table
        .replace_flows(
            &mut maps,
            flows.iter().map(|r| r.to_spec()).collect(),
            &LegacyIds,
        )
        .unwrap_or_else(|e| panic!("the loaded exact rules do not replace: {e}"));
    fresh_table
        .replace_prefixes(
            &mut maps,
            prefixes.iter().map(|r| r.to_spec()).collect(),
            &LegacyIds,
        )
        .unwrap_or_else(|e| panic!("the loaded prefix rules do not replace: {e}"));
    drop(fresh_table);
    let back = FlowTable::load(&b.join("flows.json")).expect("a saved table loads");
    assert_eq!(back.flows(), flows, "exact rules round-trip");
    assert_eq!(back.prefixes(), prefixes, "prefix rules round-trip");
    drop(back);
    let now = process::settle_fds(fds, Duration::from_millis(100));
    assert_eq!(now, fds, "loading and saving leak fds");
}
