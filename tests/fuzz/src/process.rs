//! What the process holds (open fds, threads, mappings) and bounded waits,
//! for the targets that start threads and open sockets.

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Open file descriptors of this process.
pub fn fds() -> usize {
    // The directory's own fd is in the listing while it is read.
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

/// The open fds with what they point at, for a leak's message.
pub fn fd_list() -> Vec<String> {
    let Ok(d) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut v: Vec<String> = d
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .collect();
    v.sort();
    v
}

/// Threads of this process.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Waits until `f` holds, polling, for at most `limit`.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Waits until the fd count is `want` (threads that just ended may still
/// be closing theirs), for at most `limit`; returns the last count.
pub fn settle_fds(want: usize, limit: Duration) -> usize {
    let mut now = fds();
    wait_until(limit, || {
        now = fds();
        now == want
    });
    now
}

/// A thread whose end can be awaited with a deadline.
pub struct Bounded<T> {
    done: mpsc::Receiver<T>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + 'static> Bounded<T> {
    /// Runs `f` on a new thread named `name`.
    pub fn spawn(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Self {
        let (tx, done) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = tx.send(f());
            })
            .expect("spawn a thread");
        Self {
            done,
            handle: Some(handle),
        }
    }

    /// The thread's result if it ends within `limit` (then it is joined);
    /// `None` if it is still running.
    pub fn join_within(&mut self, limit: Duration) -> Option<T> {
        let v = self.done.recv_timeout(limit).ok()?;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        Some(v)
    }
}
