//! The soak's view of the xdpathd it runs (the test kit's `Daemon`): is a
//! frontend connected (any, or a given guest's), is the daemon alive, its
//! queue, guest and classifier counters, its guest listing, and a timed
//! SIGTERM.

use crate::procfs;
use crate::report::ms;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::process::ExitStatus;
use std::time::Duration;
use xdpath_tests::daemon::Daemon;

/// How long SIGTERM may take (the limit under API abuse; the soak
/// holds every part to it).
pub const STOP_LIMIT: Duration = Duration::from_secs(2);
/// How long a SIGTERM is given before the daemon is SIGKILLed instead.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// Frames delivered to the guest and sent by it, summed over the queues
/// (the daemon's counters, from `/v1/queues`, which needs no blocking-pool
/// thread, so the daemon's thread count stays put).
pub fn queue_frames(d: &Daemon) -> (u64, u64) {
    let Ok(v) = d.call("GET", "/v1/queues", None) else {
        return (0, 0);
    };
    let sum = |k: &str| -> u64 {
        v.as_array()
            .map(|a| a.iter().filter_map(|q| q["counters"][k].as_u64()).sum())
            .unwrap_or(0)
    };
    (sum("rx_frames"), sum("tx_frames"))
}

/// Guest `name` as `GET /v1/guests/{name}` shows it (None: no answer or
/// no such guest).
pub fn guest(d: &Daemon, name: &str) -> Option<serde_json::Value> {
    d.call("GET", &format!("/v1/guests/{name}"), None).ok()
}

/// Whether guest `name`'s frontend is connected, per the daemon.
pub fn guest_connected(d: &Daemon, name: &str) -> bool {
    guest(d, name).is_some_and(|g| g["connected"] == json!(true))
}

/// Counter `key` of guest `name` (0 when unknown).
pub fn guest_counter(d: &Daemon, name: &str, key: &str) -> u64 {
    guest(d, name).and_then(|g| g[key].as_u64()).unwrap_or(0)
}

/// The guests' declarations as `GET /v1/guests` lists them (id, name,
/// MAC, addresses, socket, client mode), without the counters or the
/// connection state: what a restart must restore.
pub fn guest_declarations(d: &Daemon) -> Result<serde_json::Value> {
    let v = d
        .call("GET", "/v1/guests", None)
        .context("GET /v1/guests")?;
    let keys = [
        "id",
        "name",
        "mac",
        "ips",
        "queues",
        "vhost_socket",
        "vhost_client",
        "anti_spoof",
    ];
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .map(|g| {
                    keys.iter()
                        .map(|k| (k.to_string(), g[*k].clone()))
                        .collect::<serde_json::Map<_, _>>()
                        .into()
                })
                .collect::<Vec<serde_json::Value>>()
        })
        .unwrap_or_default()
        .into())
}

/// Classifier counter `key` from `GET /v1/stats` (0 when unknown).
pub fn classifier(d: &Daemon, key: &str) -> u64 {
    d.call("GET", "/v1/stats", None)
        .ok()
        .and_then(|v| v["classifier"][key].as_u64())
        .unwrap_or(0)
}

/// Whether any frontend is connected, per the daemon.
pub fn connected(d: &Daemon) -> bool {
    d.call("GET", "/v1/health", None)
        .is_ok_and(|h| h["guest_connected"] == json!(true))
}

/// The daemon's pid, or an error with its log if it has exited.
pub fn alive(d: &Daemon) -> Result<u32> {
    let pid = d.pid().context("the daemon is not running")?;
    if procfs::exited(pid) {
        bail!("xdpathd exited; its log:\n{}", tail(&d.log_text(), 40));
    }
    Ok(pid)
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM, timed until the process has exited; SIGKILL after 15 s.
/// Returns how long it took (None: it had to be killed) and the exit
/// status (None when killed or not running).
pub fn terminate(d: &mut Daemon) -> (Option<Duration>, Option<ExitStatus>) {
    let Some(pid) = d.pid() else {
        return (None, None);
    };
    match procfs::signal_and_time(pid, libc::SIGTERM, STOP_WAIT) {
        // Exited: reaping it is immediate.
        Some(took) => (Some(took), d.stop()),
        None => {
            d.kill9();
            (None, None)
        }
    }
}

/// `terminate`'s outcome in words.
pub fn stop_text(took: Option<Duration>, status: Option<ExitStatus>) -> String {
    match (took, status) {
        (Some(t), Some(s)) => format!("{:.0} ms, {s}", ms(t)),
        (Some(t), None) => format!("{:.0} ms, exit status unknown", ms(t)),
        (None, _) => format!(
            "still running {} s after SIGTERM: killed",
            STOP_WAIT.as_secs()
        ),
    }
}

/// Whether `terminate` ended the daemon cleanly within [`STOP_LIMIT`].
pub fn stopped_in_time(took: Option<Duration>, status: Option<ExitStatus>) -> bool {
    took.is_some_and(|t| t <= STOP_LIMIT) && status.is_some_and(|s| s.success())
}
