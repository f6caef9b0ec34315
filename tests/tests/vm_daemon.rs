//! A real QEMU guest on a real `xdpathd`: neighbour resolution on the shared
//! NIC, the daemon killed and restarted under a running guest (QEMU
//! reconnects), and a jumbo MTU refused up front.
//!
//! Uses the guest image `cargo xtask guest-image` builds (`cargo xtask
//! test` builds it first). Every test needs root and is marked ignored.

use std::time::Duration;
use xdpath_tests::daemon::{workspace_bin, Daemon};
use xdpath_tests::qemu::{Guest, GuestConfig};
use xdpath_tests::require_root;
use xdpath_tests::topology::Topology;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xd3, 0x00, 0x42];
const GUEST_IP: &str = "10.77.0.42";
const PEER_IP: &str = "10.77.0.2";
const HOST_IP: &str = "10.77.0.1";

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The peer's neighbour entry for `ip` (its MAC), after pinging it.
fn peer_neighbour(t: &Topology, ip: &str) -> String {
    let out = Topology::exec(&t.peer_ns, &["ip", "neigh", "show", ip]).unwrap_or_default();
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a QEMU guest, a real xdpathd"]
fn a_guest_keeps_its_network_across_a_daemon_kill_and_restart() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let mut d = Daemon::start(&t, &["--guest-mac", &mac(MAC), "--guest-ip", GUEST_IP])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut cfg = GuestConfig::new(&d.vhost, MAC, format!("{GUEST_IP}/24"));
    cfg.boot_timeout = Duration::from_secs(90);
    let mut g = Guest::boot(&cfg).unwrap_or_else(|e| panic!("{e:#}"));

    // ARP: the peer resolves the guest's address to the guest, and the
    // host's own address to the host end, on the same NIC.
    Topology::exec(&t.peer_ns, &["ip", "neigh", "flush", "all"]).unwrap();
    Topology::exec(
        &t.peer_ns,
        &["ping", "-c", "2", "-i", "0.3", "-W", "3", GUEST_IP],
    )
    .expect("the peer reaches the guest");
    assert_eq!(
        peer_neighbour(&t, GUEST_IP),
        mac(MAC),
        "the guest answered ARP for its address"
    );
    Topology::exec(
        &t.peer_ns,
        &["ping", "-c", "2", "-i", "0.3", "-W", "3", HOST_IP],
    )
    .expect("the peer reaches the host");
    assert_eq!(
        peer_neighbour(&t, HOST_IP),
        mac(xdpath_tests::topology::HOST_MAC),
        "the host answered ARP for its address"
    );
    let neigh = d.call("GET", "/v1/stats", None).unwrap()["classifier"]["class_neigh"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        neigh >= 1,
        "the ARP request for the guest went through the ARP/ND rule class"
    );

    // Kill the daemon under the running guest; traffic to the host keeps
    // flowing; restart it: QEMU reconnects and the guest's traffic resumes.
    d.kill9();
    Topology::exec(
        &t.peer_ns,
        &["ping", "-c", "2", "-i", "0.3", "-W", "3", HOST_IP],
    )
    .expect("host traffic while the daemon is dead");
    d.spawn().expect("the daemon starts again");
    let resumed = (0..30).any(|_| {
        g.run(
            &format!("ping -c 1 -W 1 {PEER_IP}"),
            Duration::from_secs(10),
        )
        .is_ok_and(|(code, _)| code == 0)
    });
    assert!(
        resumed,
        "guest traffic did not resume after the restart; guest log:\n{}",
        g.log_tail(40)
    );
    let out = g
        .run_ok(
            &format!("ping -c 3 -W 2 {PEER_IP}"),
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(out.contains("3 packets received"), "{out}");
    assert!(
        d.call("GET", "/v1/health", None).unwrap()["connections"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a QEMU guest, a real xdpathd"]
fn a_jumbo_mtu_is_refused_up_front() {
    require_root();
    let t = Topology::new(1).expect("topology");
    xdpath_tests::topology::run(
        "ip",
        &["-n", &t.host_ns, "link", "set", &t.host_if, "mtu", "9000"],
    )
    .unwrap();
    let o = std::process::Command::new(workspace_bin("xdpathd").unwrap())
        .args([
            "--netns", &t.host_ns, "--iface", &t.host_if, "--mtu", "9000",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("[mtu]") && err.contains("fix:") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(
        !std::path::Path::new("/sys/fs/bpf/xdpath")
            .join(&t.host_if)
            .exists(),
        "nothing attached or pinned"
    );
}
