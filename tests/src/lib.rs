//! Test kit for xdpath's integration tests: real kernel endpoints for the
//! privileged tests, and the in-repo frontend on in-memory ports for the
//! tests that run as any user.
//!
//! - [`topology`]: a pair of private network namespaces joined by a veth
//!   pair with several queues; everything is removed on drop, even when the
//!   test panics.
//! - [`frontend`]: an in-repo vhost-user frontend (QEMU's part plus a
//!   virtio-net driver over memfd guest memory) to drive a vhost-user-net
//!   backend without a VM.
//! - [`bridge`]: topology + classifier + vhost-user server + wire sockets,
//!   the fixture of the dataplane tests; and `MemBridge`, the same server
//!   over an in-memory wire (no root).
//! - [`process`]: this process's threads and fds, and the frontend session
//!   of the reconnect loops, for the lifecycle tests.
//! - [`daemon`]: a real `xdpathd` process in a topology, and `xdpctl` runs
//!   against it.
//! - [`frames`]: builders for the Ethernet frames the tests send, well
//!   formed and deliberately malformed.
//! - [`packet`]: an AF_PACKET sender in the peer namespace that picks the
//!   tx queue (and so the rx queue on the other end) through XPS.
//! - [`xsk`]: a minimal AF_XDP receiver (xsk-rs) that reads frames and the
//!   classifier's metadata block.
//! - [`qemu`]: a real QEMU guest (TCG, the image `cargo xtask guest-image`
//!   builds) on a vhost-user socket, driven through its serial console, in a
//!   guard that kills and reaps QEMU on drop.
//! - [`testpmd`]: DPDK's `dpdk-testpmd` (virtio_user PMD) as a third-party
//!   vhost-user frontend, in a guard that kills and reaps it on drop.
//!
//! Privileged tests (namespaces, XDP, AF_XDP, QEMU, DPDK) are marked
//! `#[ignore = "needs root: <what it needs>"]`, so a plain non-root
//! `cargo test` lists them as ignored instead of passing them unrun, and
//! call [`require_root`] first, which fails such a test loudly when it is
//! run without root anyway. `cargo xtask test` as root runs them with
//! `--include-ignored`.
//!
//! The system benchmark and the demo driver that build on this kit live in
//! `xtask/bench` and `xtask/demo`.

pub mod bridge;
pub mod daemon;
pub mod frames;
pub mod frontend;
pub mod packet;
pub mod process;
pub mod qemu;
pub mod testpmd;
pub mod topology;
pub mod xsk;

/// Fails the calling test unless the process runs as root.
///
/// Call it first in every privileged test, and mark the test
/// `#[ignore = "needs root: <what it needs>"]`: a non-root run then lists it
/// as ignored, and one that runs it anyway (`--ignored` or
/// `--include-ignored` as a user) gets a panic naming the test, never a
/// pass that ran nothing.
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    panic!(
        "{test} needs root (network namespaces, XDP, AF_XDP) but runs as uid {uid}: \
         run `cargo xtask test` as root, or `cargo test -- --include-ignored` as root"
    );
}

/// Polls `f` every 10 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Waits (up to 2 s) until no XDP program is attached to `ifindex` in the
/// calling thread's namespace; returns what is still attached otherwise.
/// Closing a bpf_link detaches at once unless another thread of the test
/// binary forked just then: the child holds a copy of the link's fd until
/// it execs (CLOEXEC), so a check right after a shutdown can race.
pub fn wait_detached(ifindex: u32) -> Option<xdpath_control::netlink::Attached> {
    let mut attached = None;
    wait_until(std::time::Duration::from_secs(2), || {
        attached = xdpath_control::netlink::xdp_query(ifindex).ok().flatten();
        attached.is_none()
    });
    attached
}
