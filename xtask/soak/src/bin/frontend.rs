//! `xdpath-soak-frontend`: the in-repo vhost-user frontend as a process of
//! its own, so the soak can SIGKILL it like a crashing QEMU, or let it
//! redial a daemon that was killed (`--reconnect`, as QEMU's
//! `reconnect=1`). It drives the test kit's `TestFrontend` as a guest that
//! keeps traffic going both ways (`xdpath_soak::guest`) and prints one
//! event per line on stdout (`up S`, `traffic S RX TX STRAY`, `down S WHY`,
//! `retry WHY`), flushed at once, for the soak driver to time.
//!
//! Exit status: 0 when it stopped by itself (the backend went away without
//! `--reconnect`, or the deadline passed), 1 when it never got a session.

use anyhow::{Context, Result};
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use xdpath_soak::guest::{self, GuestOptions};
use xdpath_soak::parse_mac;

#[derive(Parser)]
#[command(name = "xdpath-soak-frontend", about = "The soak's guest as a process")]
struct Args {
    /// The backend's vhost-user socket.
    #[arg(long)]
    socket: PathBuf,
    /// Queue pairs.
    #[arg(long, default_value_t = 1)]
    queue_pairs: u16,
    /// Redial and renegotiate when the backend goes away.
    #[arg(long)]
    reconnect: bool,
    /// Frames per second to send.
    #[arg(long, default_value_t = 1000)]
    tx_pps: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    deadline_secs: u64,
    /// The guest's MAC.
    #[arg(long)]
    mac: String,
    /// Destination MAC of the guest's frames.
    #[arg(long)]
    dst_mac: String,
    /// The guest's IPv4 address.
    #[arg(long)]
    ip: std::net::Ipv4Addr,
    /// Destination IPv4 address of the guest's frames.
    #[arg(long)]
    dst_ip: std::net::Ipv4Addr,
    /// Destination UDP port of the guest's frames.
    #[arg(long, default_value_t = 9)]
    dst_port: u16,
    /// Listen on --socket (bind it) and wait for the backend to connect,
    /// as QEMU with `server=on` for a client-mode guest; again after every
    /// disconnect with --reconnect.
    #[arg(long)]
    listen: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let o = GuestOptions {
        socket: a.socket,
        queue_pairs: a.queue_pairs,
        reconnect: a.reconnect,
        tx_pps: a.tx_pps,
        deadline: Duration::from_secs(a.deadline_secs),
        mac: parse_mac(&a.mac).context("--mac")?,
        dst_mac: parse_mac(&a.dst_mac).context("--dst-mac")?,
        ip: a.ip.octets(),
        dst_ip: a.dst_ip.octets(),
        dst_port: a.dst_port,
        listen: a.listen,
    };
    let stop = AtomicBool::new(false);
    let out = std::io::stdout();
    guest::run(&o, &stop, &mut |e| {
        let mut l = out.lock();
        // The driver may be gone; nothing to do about it here.
        let _ = writeln!(l, "{}", e.line());
        let _ = l.flush();
    })
}
