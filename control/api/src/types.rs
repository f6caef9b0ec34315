//! The API's answers (other than rules, see [`crate::rules`]): health, the
//! guests, the queues, the counters, what a bulk replace put in place, and
//! the error body.
//!
//! The daemon serializes these; `xdpctl` and the tests deserialize them.
//! Counter blocks are the definitions of `xdpath_common`
//! ([`ClassifierCounters`], [`QueueCounterValues`]), so their JSON fields are
//! the counters' names and cannot drift from them.

use crate::{MacAddr, XdpAttachMode};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

/// The classifier's counters (summed over CPUs), one JSON field per counter.
pub type ClassifierCounters = xdpath_common::Counters;

/// One queue pair's counters, one JSON field per counter.
pub type QueueCounterValues = xdpath_common::counters::CounterSnapshot;

/// `GET /v1/health`: liveness and a summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", schemars(deny_unknown_fields))]
pub struct Health {
    /// Always `ok` when the daemon answers.
    pub status: String,
    /// The daemon's version.
    pub version: String,
    /// The host NIC.
    pub iface: String,
    /// The attached XDP program's id (see `bpftool prog show id N`).
    pub xdp_prog_id: u32,
    /// How the program is attached.
    pub xdp_mode: XdpAttachMode,
    /// Queue pairs.
    pub queues: u16,
    /// Whether a vhost-user frontend is connected now.
    pub guest_connected: bool,
    /// Frontend connections accepted since the start.
    pub connections: u64,
    /// Seconds since the start.
    pub uptime_s: u64,
}

/// The one-guest daemon's guest answer, kept until the daemon answers
/// `GET /v1/guests` with [`crate::GuestInfo`] (which the route table
/// documents).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", schemars(deny_unknown_fields))]
pub struct Guest {
    /// The guest port id (rules with action guest name it).
    pub port: u32,
    /// The guest's MAC address, if configured (`null` otherwise).
    pub mac: Option<MacAddr>,
    /// The guest addresses whose ARP/ND is steered to it.
    pub ips: Vec<IpAddr>,
    /// The vhost-user socket the guest's frontend connects to.
    pub vhost_socket: PathBuf,
    /// Queue pairs offered.
    pub queue_pairs: u16,
    /// MTU offered and enforced.
    pub mtu: u16,
    /// Whether the frontend is connected now.
    pub connected: bool,
    /// Frontend connections accepted since the start.
    pub connections: u64,
}

/// A queue's AF_XDP socket, as the socket pool knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub enum SocketState {
    /// A socket is bound, registered and owned by the worker.
    Bound,
    /// Being replaced right now.
    Replacing,
    /// No socket: the queue fails open to the host.
    Released,
    /// The last replacement failed; the message says why.
    Failed(String),
}

/// One queue (`GET /v1/queues` lists them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", schemars(deny_unknown_fields))]
pub struct QueueStatus {
    /// The guest whose socket and queue pair this is.
    #[serde(default)]
    pub guest: String,
    /// Queue index (= queue pair index).
    pub queue: u32,
    /// Its socket's state.
    pub socket: SocketState,
    /// Incremented on every socket replacement.
    pub socket_generation: u32,
    /// The queue pair's counters (absent if the dataplane has none for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schemars(with = "Option<crate::openapi::QueueCountersSchema>")
    )]
    pub counters: Option<QueueCounterValues>,
}

/// `POST /v1/queues/{queue}/replace`: the queue after the replacement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", schemars(deny_unknown_fields))]
pub struct QueueSocket {
    /// Queue index.
    pub queue: u32,
    /// Its socket's state.
    pub state: SocketState,
    /// Incremented on every socket replacement.
    pub generation: u32,
}

/// `GET /v1/stats`: every counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", schemars(deny_unknown_fields))]
pub struct Stats {
    /// The classifier's counters.
    #[cfg_attr(
        feature = "openapi",
        schemars(with = "crate::openapi::ClassifierCountersSchema")
    )]
    pub classifier: ClassifierCounters,
    /// Each queue pair's counters, by queue.
    pub queues: Vec<QueueStats>,
}

/// One queue pair's counters in `Stats`: its index and every counter, in
/// one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", schemars(deny_unknown_fields))]
pub struct QueueStats {
    /// The guest whose queue pair this is.
    #[serde(default)]
    pub guest: String,
    /// Queue index.
    pub queue: u32,
    /// The counters, as fields of the same object.
    #[serde(flatten)]
    #[cfg_attr(
        feature = "openapi",
        schemars(with = "crate::openapi::QueueCountersSchema")
    )]
    pub counters: QueueCounterValues,
}

/// `PUT /v1/flows`, `PUT /v1/prefixes`: what a bulk replace put in place.
/// (The rules themselves: `GET` the same path.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", schemars(deny_unknown_fields))]
pub struct Replaced {
    /// How many rules of that kind are in place now.
    pub count: u64,
    /// The rule generation the classifier reads now (0 or 1; every bulk
    /// replace switches to the other one, see `xdpath_common::Config`).
    pub generation: u8,
}

/// The body of every refusal: `{"error": "...", "field": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", schemars(rename = "Error", deny_unknown_fields))]
pub struct ErrorBody {
    /// A sentence saying what was refused and why; for bad input it names
    /// the field.
    pub error: String,
    /// The request field the error is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// What `xdpctl` and the guest listing add up as `drops` of a queue pair:
/// every frame dropped on it, either way (not the TX retries, which drop
/// nothing).
pub fn drops(c: &crate::QueueCounterValues) -> u64 {
    [
        c.rx_drop_no_guest_buffer,
        c.rx_drop_no_guest,
        c.rx_drop_oversize,
        c.tx_drop_oversize,
        c.tx_drop_empty,
        c.tx_drop_write_only,
        c.tx_drop_short,
        c.tx_drop_switch,
        c.tx_drop_spoofed,
        c.tx_flood_dropped,
    ]
    .into_iter()
    .fold(0u64, u64::saturating_add)
}
