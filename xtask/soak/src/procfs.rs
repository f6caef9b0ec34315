//! What the soak reads about another process from `/proc/<pid>`: open fds,
//! threads (by name), resident and peak memory, and whether it has exited.
//!
//! The soak only ever reads processes it started (xdpathd, by the pid its
//! `Daemon` guard reports).

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One look at a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    /// Open file descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: usize,
    /// Resident set size (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident set size since start (VmHWM), KiB.
    pub hwm_kib: u64,
}

impl Figures {
    /// Reads the figures of `pid`.
    pub fn of(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            fds: fd_list(pid)?.len(),
            threads: usize::try_from(field("Threads:")).unwrap_or(usize::MAX),
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        })
    }

    /// The figures of `pid` and its fd list, read 5 times 50 ms apart,
    /// the reading with the fewest fds: a baseline without the API
    /// connection the soak's last call may still hold open.
    pub fn settled(pid: u32) -> Result<(Self, Vec<String>)> {
        let mut best: Option<(Self, Vec<String>)> = None;
        for i in 0..5 {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            let f = Self::of(pid)?;
            let list = fd_list(pid)?;
            if best.as_ref().is_none_or(|(b, _)| f.fds < b.fds) {
                best = Some((f, list));
            }
        }
        best.context("no reading")
    }

    /// As JSON (RSS in KiB).
    pub fn json(&self) -> Value {
        json!({"fds": self.fds, "threads": self.threads, "rss_kib": self.rss_kib, "peak_rss_kib": self.hwm_kib})
    }
}

/// Open fds of `pid` as "number -> target", sorted (for failure messages).
pub fn fd_list(pid: u32) -> Result<Vec<String>> {
    let dir = format!("/proc/{pid}/fd");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .filter_map(Result::ok)
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Threads of `pid` by name (`comm`), for failure messages.
pub fn thread_names(pid: u32) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return names;
    };
    for t in dir.filter_map(Result::ok) {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        *names.entry(comm.trim().to_string()).or_insert(0) += 1;
    }
    names
}

/// The name of the daemon's API runtime threads (tokio's blocking pool:
/// started on demand by API calls, ended after 10 s idle).
pub const RUNTIME_THREADS: &str = "tokio-rt-worker";

/// Whether the threads `now` are back to `start` (both from
/// [`thread_names`]): as many of every name, except the API runtime's
/// ([`RUNTIME_THREADS`]), of which there may be fewer (the baseline may
/// have been taken while one served a call).
pub fn threads_back(start: &BTreeMap<String, usize>, now: &BTreeMap<String, usize>) -> bool {
    let others = |m: &BTreeMap<String, usize>| {
        m.iter()
            .filter(|(k, _)| k.as_str() != RUNTIME_THREADS)
            .map(|(k, v)| (k.clone(), *v))
            .collect::<BTreeMap<_, _>>()
    };
    let runtime = |m: &BTreeMap<String, usize>| m.get(RUNTIME_THREADS).copied().unwrap_or(0);
    others(start) == others(now) && runtime(now) <= runtime(start)
}

/// Whether `pid` has ended: gone, or a zombie waiting to be reaped by its
/// parent (this process).
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// Sends `sig` to `pid` (a child of ours that has not been reaped, so the
/// pid cannot have been reused) and waits (bounded) until it has exited;
/// returns how long that took, or None if it is still there after `limit`.
pub fn signal_and_time(pid: u32, sig: i32, limit: Duration) -> Option<Duration> {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return None;
    };
    let start = Instant::now();
    // SAFETY: kill(2) has no memory preconditions; `p` is our own unreaped
    // child (see above).
    unsafe { libc::kill(p, sig) };
    while start.elapsed() < limit {
        if exited(pid) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// HugePages_Free from /proc/meminfo.
pub fn hugepages_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let f = Figures::of(me).unwrap();
        assert!(f.fds >= 3 && f.threads >= 1 && f.rss_kib > 0 && f.hwm_kib >= f.rss_kib);
        assert!(!exited(me));
        assert!(thread_names(me).values().sum::<usize>() >= 1);
    }

    #[test]
    fn threads_are_back_with_fewer_runtime_threads_only() {
        let m = |v: &[(&str, usize)]| {
            v.iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect::<BTreeMap<_, _>>()
        };
        let start = m(&[("xdpathd", 1), (RUNTIME_THREADS, 1), ("vhost-g2", 1)]);
        assert!(threads_back(&start, &start));
        assert!(threads_back(&start, &m(&[("xdpathd", 1), ("vhost-g2", 1)])));
        assert!(!threads_back(
            &start,
            &m(&[("xdpathd", 1), (RUNTIME_THREADS, 2), ("vhost-g2", 1)])
        ));
        assert!(!threads_back(
            &start,
            &m(&[
                ("xdpathd", 1),
                (RUNTIME_THREADS, 1),
                ("vhost-g2", 1),
                ("vhost-c3", 1)
            ])
        ));
        assert!(!threads_back(
            &start,
            &m(&[("xdpathd", 1), (RUNTIME_THREADS, 1)])
        ));
    }

    #[test]
    fn a_reaped_child_and_a_zombie_have_exited() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(!exited(pid));
        let took = signal_and_time(pid, libc::SIGKILL, Duration::from_secs(5));
        assert!(took.is_some(), "a zombie counts as exited");
        child.wait().unwrap();
        assert!(exited(pid));
    }
}
