//! The soak behind `cargo xtask soak`: a real `xdpathd` on private veth
//! topologies (the test kit's `Topology` and `Daemon`), pushed for a
//! bounded number of rounds and a bounded time, with figures at the end.
//!
//! Three parts, each on a topology and daemon of its own:
//! - [`cycles`]: frontends connect and are SIGKILLed at random moments
//!   under traffic both ways, half DPDK's virtio_user (testpmd), half the
//!   in-repo frontend as its own process; then xdpathd's fds and threads
//!   must equal the start and its RSS stay within 4 MiB of the warmed-up
//!   figure;
//! - [`restarts`]: `kill -9` and restart of xdpathd under traffic, with the
//!   in-repo frontend redialling (as QEMU's `reconnect=1`): host pings
//!   counted exactly, the guest's resume time, the rules after every
//!   restart;
//! - [`abuse`]: the API under 100 concurrent writers, slow clients and
//!   oversized bodies: every request answered correctly or with a 4xx,
//!   RSS bounded, SIGTERM done within 2 s.
//!
//! Shared pieces: [`plan`] (counts and time budgets of the CI and the long
//! form), [`guest`] (the soak guest on the test kit's `TestFrontend`, also
//! the binary `xdpath-soak-frontend`) and [`guest_proc`] (that binary as a
//! child), [`wire`] (the peer namespace's traffic and pinger), [`http`]
//! (a raw HTTP client for the abuse), [`procfs`] (fds, threads, RSS of the
//! daemon), [`xdpathd`] (the daemon's state through its API, a timed
//! SIGTERM), [`report`] (checks, figures, the summary and the JSON),
//! [`stop`] (Ctrl-C ends the soak through its guards, so nothing is left
//! behind).
//!
//! Cleanup: every process the soak starts is held by a guard that kills
//! it by pid (xdpathd: SIGTERM then SIGKILL; testpmd and the frontend
//! processes: SIGKILL, and `PR_SET_PDEATHSIG` should the soak itself die);
//! namespaces and pins go with the `Topology` guard; testpmd runs with
//! `--in-memory`, so it leaves no hugepage files, which [`cycles`] checks.

pub mod abuse;
pub mod cycles;
pub mod guest;
pub mod guest_proc;
pub mod http;
pub mod plan;
pub mod procfs;
pub mod report;
pub mod restarts;
pub mod stop;
pub mod wire;
pub mod xdpathd;

/// The guest's MAC (the daemon's `--guest-mac`).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x50, 0xa0, 0x01];
/// The guest's IPv4 address (the daemon's `--guest-ip`).
pub const GUEST_IP: [u8; 4] = [10, 77, 0, 10];
/// Where the guest's frames go: a MAC nobody on the wire has, so the peer
/// captures them without its stack answering (no ARP, no ICMP errors).
pub const SINK_MAC: [u8; 6] = [0x02, 0x58, 0x44, 0x00, 0x00, 0x99];
/// UDP port of the wire -> guest stream.
pub const TO_GUEST_PORT: u16 = 7777;
/// UDP source port of the wire -> guest stream.
pub const TO_GUEST_SPORT: u16 = 1000;
/// UDP port of the guest -> wire stream.
pub const FROM_GUEST_PORT: u16 = 9;
/// The soak guest's UDP source port in session `n` (see [`guest`]).
pub fn session_port(n: u64) -> u16 {
    20000 + (n % 10000) as u16
}

/// `aa:bb:cc:dd:ee:ff` -> bytes.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    anyhow::ensure!(
        parts.len() == 6,
        "{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"
    );
    let mut m = [0u8; 6];
    for (d, p) in m.iter_mut().zip(parts) {
        *d = u8::from_str_radix(p, 16)
            .map_err(|_| anyhow::anyhow!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    Ok(m)
}

/// `aa:bb:cc:dd:ee:ff` from bytes.
pub fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The wire -> guest frame number `seq`: from the peer to the guest's MAC
/// and address, UDP [`TO_GUEST_SPORT`] -> [`TO_GUEST_PORT`], from
/// [`SINK_MAC`] (so DPDK's `macswap` answers to the sink).
pub fn to_guest_frame(seq: u64) -> Vec<u8> {
    use xdpath_tests::frames::*;
    eth(
        GUEST_MAC,
        SINK_MAC,
        ETH_P_IP,
        &ipv4(
            xdpath_tests::topology::PEER_IP,
            GUEST_IP,
            17,
            &udp(TO_GUEST_SPORT, TO_GUEST_PORT, &tagged(seq as u32, 64)),
        ),
    )
}

/// The soak guest's options for `socket`: traffic from [`GUEST_MAC`] /
/// [`GUEST_IP`] to [`SINK_MAC`] on the peer's address.
pub fn guest_options(
    socket: &std::path::Path,
    queue_pairs: u16,
    reconnect: bool,
    tx_pps: u32,
    deadline: std::time::Duration,
) -> guest::GuestOptions {
    guest::GuestOptions {
        socket: socket.to_path_buf(),
        queue_pairs,
        reconnect,
        tx_pps,
        deadline,
        mac: GUEST_MAC,
        dst_mac: SINK_MAC,
        ip: GUEST_IP,
        dst_ip: xdpath_tests::topology::PEER_IP,
        dst_port: FROM_GUEST_PORT,
    }
}

/// The daemon flags every part uses besides its own.
pub fn daemon_flags(queues: u16) -> Vec<String> {
    vec![
        "--queues".into(),
        queues.to_string(),
        "--guest-mac".into(),
        mac_text(GUEST_MAC),
        "--guest-ip".into(),
        std::net::Ipv4Addr::from(GUEST_IP).to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_mac(&mac_text(GUEST_MAC)).unwrap(), GUEST_MAC);
        assert!(parse_mac("52:54:00:50:a0").is_err());
        assert!(parse_mac("52:54:00:50:a0:zz").is_err());
    }
}
