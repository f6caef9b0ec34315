//! The pin directories under the pin root (`/sys/fs/bpf/xdpath/<ifname>/`):
//! who holds one, and which ones are stale.
//!
//! A [`Classifier`](crate::Classifier) holds its directory's lock
//! ([`PinLock`], an exclusive `flock` on the directory) from before its maps
//! are pinned until they are unpinned, so a second daemon on the same
//! interface stops before it touches them, and nothing here removes a
//! directory in use. The lock goes with the process: after `kill -9` the
//! pins stay (by design: the restart reuses them) but the lock does not.
//!
//! A directory is **stale** when all of these hold:
//! - its name is an interface name and no interface of that name exists in
//!   the caller's network namespace;
//! - it holds nothing but map pins named as in `xdpath_common::ALL_MAPS`;
//! - nobody holds its lock (no live classifier, in any namespace);
//! - no loaded BPF program uses any of its maps (a classifier of an older
//!   build, which takes no lock, is still protected).
//!
//! [`find_stale`] lists them (`xdpathd --check` reports them) and
//! [`remove_stale`] unpins them (`xdpathd` at start-up,
//! `xdpathd --remove-stale-pins`, which `cargo xtask undeploy` runs).
//! Nothing else under the root is ever touched: not other files, not
//! directories of existing interfaces, not directories in use.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use xdpath_common as common;

/// How often taking a pin directory's lock is retried while someone else
/// holds it (a stale-pin scan holds it for microseconds), and the pause
/// between two attempts.
const LOCK_ATTEMPTS: u32 = 100;
const LOCK_PAUSE: Duration = Duration::from_millis(10);

/// Errors of [`PinLock::acquire`].
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Another classifier holds the directory.
    #[error(
        "The pins at {} are in use by another xdpathd (or classifier) on this interface; stop it first.",
        path.display()
    )]
    InUse {
        /// The pin directory.
        path: PathBuf,
    },
    /// The directory could not be created, opened or locked.
    #[error("Pin directory {} could not be used: {source}.", path.display())]
    Io {
        /// The pin directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The exclusive lock of one pin directory, held for as long as this value
/// lives.
#[derive(Debug)]
pub struct PinLock {
    _dir: File,
}

fn try_flock(f: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a valid open fd; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn open_dir(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
}

/// Whether the open directory `f` is still the one linked at `path` (a
/// stale-pin scan may have removed it between our open and our lock).
fn still_linked(f: &File, path: &Path) -> std::io::Result<bool> {
    let held = f.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.ino() == held.ino() && now.dev() == held.dev()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl PinLock {
    /// Creates `dir` if needed and takes its lock. Waits (bounded) while a
    /// stale-pin scan holds it; fails with [`PinError::InUse`] if a
    /// classifier does.
    pub fn acquire(dir: &Path) -> Result<Self, PinError> {
        let io = |source| PinError::Io {
            path: dir.to_path_buf(),
            source,
        };
        for _ in 0..LOCK_ATTEMPTS {
            std::fs::create_dir_all(dir).map_err(io)?;
            let f = match open_dir(dir) {
                Ok(f) => f,
                // Removed by a scan between the two calls: create it again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            if !try_flock(&f).map_err(io)? {
                std::thread::sleep(LOCK_PAUSE);
                continue;
            }
            if still_linked(&f, dir).map_err(io)? {
                return Ok(Self { _dir: f });
            }
        }
        Err(PinError::InUse {
            path: dir.to_path_buf(),
        })
    }
}

/// A pin directory whose interface does not exist here and that nobody
/// uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StalePin {
    /// The directory.
    pub dir: PathBuf,
    /// The interface name it is named after.
    pub iface: String,
}

impl std::fmt::Display for StalePin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (interface {} does not exist in this network namespace)",
            self.dir.display(),
            self.iface
        )
    }
}

fn iface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Ids of every map some loaded BPF program uses, or `None` if the programs
/// cannot be listed (then every directory counts as in use).
fn maps_in_use() -> Option<HashSet<u32>> {
    let mut ids = HashSet::new();
    let mut listed = false;
    for p in aya::programs::loaded_programs() {
        match p {
            Ok(info) => {
                listed = true;
                match info.map_ids() {
                    Ok(Some(m)) => ids.extend(m),
                    Ok(None) => return None,
                    // The program went away while we looked.
                    Err(_) => {}
                }
            }
            // A program unloaded between listing and opening it is no
            // error; no program at all can be listed only without privilege.
            Err(_) if listed => {}
            Err(e) => {
                tracing::debug!("listing loaded BPF programs: {e}");
                return None;
            }
        }
    }
    Some(ids)
}

/// One candidate directory, locked while it is looked at.
struct Candidate {
    stale: StalePin,
    pins: Vec<PathBuf>,
    _lock: File,
}

/// The directories under `root` that look stale and are locked by us now;
/// `in_use` is filled on first need.
fn candidates(root: &Path) -> Vec<Candidate> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut in_use: Option<Option<HashSet<u32>>> = None;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let dir = e.path();
        if !e.file_type().is_ok_and(|t| t.is_dir())
            || !crate::config::valid_ifname(&name)
            || iface_exists(&name)
        {
            continue;
        }
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut pins = Vec::new();
        let mut foreign = false;
        for p in listing.flatten() {
            match p.file_name().to_str() {
                Some(n) if common::ALL_MAPS.contains(&n) => pins.push(p.path()),
                _ => foreign = true,
            }
        }
        if foreign {
            tracing::debug!(dir = %dir.display(), "not a stale pin directory: it holds more than xdpath's maps");
            continue;
        }
        let Ok(lock) = open_dir(&dir) else {
            continue;
        };
        if !try_flock(&lock).unwrap_or(false) {
            tracing::debug!(dir = %dir.display(), "not stale: a live classifier holds it");
            continue;
        }
        let used = in_use.get_or_insert_with(maps_in_use);
        let Some(used) = used else {
            tracing::debug!(dir = %dir.display(), "not known to be stale: the loaded programs cannot be listed");
            continue;
        };
        let busy = pins.iter().any(|p| {
            aya::maps::MapInfo::from_pin(p)
                .map(|m| used.contains(&m.id()))
                // A pin we cannot open is not proven unused.
                .unwrap_or(true)
        });
        if busy {
            tracing::debug!(dir = %dir.display(), "not stale: a loaded program uses its maps");
            continue;
        }
        out.push(Candidate {
            stale: StalePin { dir, iface: name },
            pins,
            _lock: lock,
        });
    }
    out
}

/// The stale pin directories under `root` (see the module docs); nothing is
/// changed.
pub fn find_stale(root: &Path) -> Vec<StalePin> {
    candidates(root).into_iter().map(|c| c.stale).collect()
}

/// Unpins every stale directory under `root` (its map pins, then the
/// directory), each under its lock. Returns each directory with the
/// outcome; the root itself goes if it is left empty.
pub fn remove_stale(root: &Path) -> Vec<(StalePin, std::io::Result<()>)> {
    let out: Vec<_> = candidates(root)
        .into_iter()
        .map(|c| {
            let res = c
                .pins
                .iter()
                .try_for_each(|p| match std::fs::remove_file(p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .and_then(|()| std::fs::remove_dir(&c.stale.dir));
            (c.stale, res)
        })
        .collect();
    if !out.is_empty() {
        // Shared by all interfaces: only if empty.
        let _ = std::fs::remove_dir(root);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("xdpath-pins-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn one_lock_per_directory_and_it_goes_with_its_holder() {
        let d = dir("lock").join("eth9");
        let held = PinLock::acquire(&d).expect("first");
        let f = open_dir(&d).unwrap();
        assert!(!try_flock(&f).unwrap(), "held");
        drop(held);
        assert!(try_flock(&f).unwrap(), "released with its holder");
        drop(f);
        let _ = std::fs::remove_dir_all(d.parent().unwrap());
    }

    #[test]
    fn directories_that_are_not_stale_are_left_alone() {
        // On a plain file system no name here is a BPF pin, so a directory
        // is stale only by its name, its contents and its lock.
        let root = dir("scan");
        let lo = root.join("lo"); // exists in every namespace
        let foreign = root.join("xdpnosuch1");
        let held = root.join("xdpnosuch2");
        let not_ifname = root.join("not/an/if".replace('/', "_").repeat(3));
        for d in [&lo, &foreign, &held, &not_ifname] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
        let _lock = PinLock::acquire(&held).unwrap();
        assert_eq!(find_stale(&root), vec![]);
        assert_eq!(remove_stale(&root).len(), 0);
        for d in [&lo, &foreign, &held, &not_ifname] {
            assert!(d.exists(), "{}", d.display());
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
