//! Test kit for xdpath's privileged tests: real kernel endpoints, no mocks.
//!
//! - [`topology`]: a pair of private network namespaces joined by a veth
//!   pair with several queues; everything is removed on drop, even when the
//!   test panics.
//! - [`frontend`]: an in-repo vhost-user frontend (QEMU's part plus a
//!   virtio-net driver over memfd guest memory) to drive a vhost-user-net
//!   backend without a VM.
//! - [`bridge`]: topology + classifier + vhost-user server + wire sockets,
//!   the fixture of the dataplane tests.
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
//! Tests call [`require_root`] first: as non-root they print why they skip
//! and return, so a plain `cargo test` passes.

pub mod bench;
pub mod bridge;
pub mod daemon;
pub mod frames;
pub mod frontend;
pub mod packet;
pub mod qemu;
pub mod testpmd;
pub mod topology;
pub mod traffic;
pub mod xsk;

/// True when running as root. Otherwise prints a skip message naming the
/// test and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    // Straight to the stderr handle: libtest captures eprintln!, and a
    // skip nobody sees is indistinguishable from a pass.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipping {test}: needs root (network namespaces, XDP, AF_XDP); run `cargo xtask test` as root"
    );
    false
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
