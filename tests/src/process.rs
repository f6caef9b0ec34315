//! What a lifecycle test counts in its own process: threads and open fds,
//! and one frontend session of the reconnect loops (`tests/tests/lifecycle.rs`
//! over AF_XDP, `tests/tests/vhost_user_lifecycle.rs` in memory).

use crate::bridge::{from_guest, WAIT};
use crate::frontend::{FrontendOptions, TestFrontend};
use crate::wait_until;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// Threads of this process.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Open fds of this process as "number -> target", sorted.
pub fn fd_list() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let target = std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    format!("{} -> {target}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The process's fds and threads once a connection that just ended is
/// torn down: the server reports "not connected" before it has joined the
/// connection's workers and closed its fds and its mapping of guest memory,
/// so a baseline taken at once may still hold them (seen on a loaded
/// machine). Waits (up to [`WAIT`]) until no guest memory is mapped from a
/// memfd fd and the list stays the same for 100 ms.
pub fn settled() -> (Vec<String>, usize) {
    let mut last = (fd_list(), threads());
    wait_until(WAIT, || {
        std::thread::sleep(Duration::from_millis(100));
        let now = (fd_list(), threads());
        let quiet = now == last && !now.0.iter().any(|f| f.contains("memfd:"));
        last = now;
        quiet
    });
    last
}

/// Waits (up to [`WAIT`]) until the process has `threads0` threads and as
/// many fds as `fds`, then asserts it has exactly those fds.
pub fn assert_back_to(what: &str, fds: &[String], threads0: usize) {
    let back = wait_until(WAIT, || {
        threads() == threads0 && fd_list().len() == fds.len()
    });
    let (fds1, threads1) = (fd_list(), threads());
    assert!(
        back,
        "{what}: threads {threads0} -> {threads1}; fds before {fds:#?} after {fds1:#?}"
    );
    assert_eq!(fds1, fds, "{what}: the same fds, not just as many");
}

/// One frontend session of a reconnect loop, on a server with two queue
/// pairs: `connect` dials it; then buffers, traffic both ways, memory-table
/// updates and RX vring 2 toggled while its worker polls; every fourth
/// round disconnects at once instead, mid-traffic. The frontend
/// disconnects when it is dropped at the end.
pub fn reconnect_session(round: u64, connect: impl FnOnce(FrontendOptions) -> TestFrontend) {
    let mut fe = connect(FrontendOptions {
        queue_pairs: 2,
        enabled_pairs: 2,
        event_idx: round.is_multiple_of(2),
        ..FrontendOptions::default()
    });
    if round % 4 == 3 {
        return;
    }
    for qp in 0..2 {
        fe.post_rx_buffers(qp, 128, 2048);
    }
    for k in 0..3u32 {
        fe.update_mem_table().expect("SET_MEM_TABLE again");
        fe.set_vring_enable(2, false).expect("disable vring 2");
        for qp in 0..2 {
            assert!(fe.send(qp, &from_guest(qp, k, 64), k % 2 == 1));
        }
        fe.set_vring_enable(2, true).expect("enable vring 2");
        let _ = fe.recv(0, 4, Duration::from_millis(20));
        let _ = fe.recv(1, 4, Duration::from_millis(20));
    }
}

/// Makes the child `cmd` spawns die (SIGKILL) when the thread that spawns
/// it ends, or at once if this process is already gone by the time it
/// runs: a test or soak that is killed without running its guards still
/// takes its children with it. The guards kill them first in every normal
/// path. `PR_SET_PDEATHSIG` fires when the spawning *thread* ends, so spawn
/// from a thread that lives as long as the child's guard.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: getpid is always safe. The closure runs in the forked child
    // before exec and only makes async-signal-safe calls (prctl, getppid,
    // getpid, kill on itself).
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
}
