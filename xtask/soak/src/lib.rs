//! The soak behind `cargo xtask soak`: a real `xdpathd` on private veth
//! topologies (the test kit's `Topology` and `Daemon`), pushed for a
//! bounded number of rounds and a bounded time, with figures at the end.
//!
//! Four parts, each on a topology and daemon of its own, each with several
//! guests on its daemon (the shorthand guest `default` and guests added
//! through `POST /v1/guests`, see [`SoakGuest`]):
//! - [`cycles`]: frontends connect to a random guest of three and are
//!   SIGKILLed at random moments under traffic both ways, half DPDK's
//!   virtio_user (testpmd), half the in-repo frontend as its own process,
//!   while the other two guests' steady frontends keep their traffic
//!   flowing; then xdpathd's fds and threads must equal the start and its
//!   RSS stay within 4 MiB of the warmed-up figure;
//! - [`restarts`]: `kill -9` and restart of xdpathd under traffic, with
//!   three in-repo frontends redialling (as QEMU's `reconnect=1`; one
//!   guest in client mode, its frontend listening): host pings counted
//!   exactly, every guest's resume time, the guests restored from the
//!   state directory, the rules after every restart;
//! - [`guests`]: guests added, connected, reached and removed (with and
//!   without rules naming them, connected or not, client mode or not)
//!   under traffic to two steady guests: the steady guests lose no frame,
//!   the API never answers 5xx, ids are reused without stale map entries,
//!   fds, threads and RSS come back;
//! - [`abuse`]: the API under 100 concurrent writers, slow clients,
//!   oversized bodies and bad guest requests: every request answered
//!   correctly or with a 4xx, RSS bounded, SIGTERM done within 2 s.
//!
//! No frontend may ever receive a unicast frame for another guest's MAC
//! (the soak guest counts them apart, [`guest`]).
//!
//! Shared pieces: [`plan`] (counts and time budgets of the CI and the long
//! form), [`guest`] (the soak guest on the test kit's `TestFrontend`, also
//! the binary `xdpath-soak-frontend`) and [`guest_proc`] (that binary as a
//! child), [`SoakGuest`] here (the guests' names, MACs, addresses and
//! sockets), [`wire`] (the peer namespace's traffic to the guests, its
//! capture of theirs, and a pinger), [`http`]
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
pub mod guests;
pub mod http;
pub mod plan;
pub mod procfs;
pub mod report;
pub mod restarts;
pub mod stop;
pub mod wire;
pub mod xdpathd;

/// One of the soak's guests on a daemon: its name, MAC, address and
/// vhost-user socket. Guest 1 is the daemon's shorthand guest `default`
/// ([`GUEST_MAC`], [`GUEST_IP`], the daemon's `--vhost-socket`); the others
/// are added through `POST /v1/guests` with [`SoakGuest::spec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoakGuest {
    /// Its name in the API.
    pub name: String,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its IPv4 address.
    pub ip: [u8; 4],
    /// Its vhost-user socket.
    pub socket: std::path::PathBuf,
}

impl SoakGuest {
    /// Steady guest `k` (1 to 9) of daemon `d`: 1 is `default`, the others
    /// `g<k>` with MAC `52:54:00:50:a0:0k`, address 10.77.0.(10+k) and the
    /// socket `g<k>.sock` in the daemon's directory.
    pub fn steady(k: u8, d: &xdpath_tests::daemon::Daemon) -> Self {
        if k <= 1 {
            return Self {
                name: "default".into(),
                mac: GUEST_MAC,
                ip: GUEST_IP,
                socket: d.vhost.clone(),
            };
        }
        Self {
            name: format!("g{k}"),
            mac: [0x52, 0x54, 0x00, 0x50, 0xa0, k],
            ip: [10, 77, 0, 10u8.saturating_add(k)],
            socket: d.dir.join(format!("g{k}.sock")),
        }
    }

    /// The guest added in churn round `round` of daemon `d`: a name, MAC
    /// and address of that round alone (`c<round>`, `52:54:00:51:hh:ll`,
    /// 10.78.x.y), so a frame to an earlier round's MAC must reach nobody.
    pub fn churn(round: u32, d: &xdpath_tests::daemon::Daemon) -> Self {
        let r = round.to_be_bytes();
        Self {
            name: format!("c{round}"),
            mac: [0x52, 0x54, 0x00, 0x51, r[2], r[3]],
            ip: [10, 78, (round / 250 % 250) as u8, (round % 250 + 1) as u8],
            socket: d.dir.join(format!("c{}.sock", round % 2)),
        }
    }

    /// Its `POST /v1/guests` body (`client`: client mode, its frontend
    /// listens on the socket).
    pub fn spec(&self, client: bool) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "mac": mac_text(self.mac),
            "ips": [std::net::Ipv4Addr::from(self.ip).to_string()],
            "vhost_socket": self.socket,
            "vhost_client": client,
        })
    }

    /// The wire -> guest frame number `seq` for this guest (as
    /// [`to_guest_frame`] for guest 1).
    pub fn to_frame(&self, seq: u64) -> Vec<u8> {
        frame_to(self.mac, self.ip, seq)
    }

    /// The soak guest's options for this guest: traffic from its MAC and
    /// address to [`SINK_MAC`] on the peer's address.
    pub fn options(
        &self,
        queue_pairs: u16,
        reconnect: bool,
        tx_pps: u32,
        deadline: std::time::Duration,
    ) -> guest::GuestOptions {
        guest::GuestOptions {
            socket: self.socket.clone(),
            queue_pairs,
            reconnect,
            tx_pps,
            deadline,
            mac: self.mac,
            dst_mac: SINK_MAC,
            ip: self.ip,
            dst_ip: xdpath_tests::topology::PEER_IP,
            dst_port: FROM_GUEST_PORT,
            listen: false,
        }
    }
}

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
/// [`SINK_MAC`] (so DPDK's `5tswap` answers to the sink).
pub fn to_guest_frame(seq: u64) -> Vec<u8> {
    frame_to(GUEST_MAC, GUEST_IP, seq)
}

/// A wire -> guest frame number `seq` to `mac` / `ip`.
fn frame_to(mac: [u8; 6], ip: [u8; 4], seq: u64) -> Vec<u8> {
    use xdpath_tests::frames::*;
    eth(
        mac,
        SINK_MAC,
        ETH_P_IP,
        &ipv4(
            xdpath_tests::topology::PEER_IP,
            ip,
            17,
            &udp(TO_GUEST_SPORT, TO_GUEST_PORT, &tagged(seq as u32, 64)),
        ),
    )
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
