//! The soak's guest: the test kit's [`TestFrontend`] driven as a small
//! virtio-net guest that keeps traffic going both ways, and, in reconnect
//! mode, survives its backend going away.
//!
//! [`run`] connects (QEMU's handshake, through `TestFrontend::connect`;
//! in listen mode it binds the socket itself and waits for the backend to
//! connect, as QEMU with `server=on` for a client-mode guest, through
//! `TestFrontend::accept`), posts RX buffers on every queue pair, then loops: it sends frames at a
//! fixed rate spread over the queue pairs, reads what arrives and reposts
//! the buffers, and every [`LIVENESS`] asks the backend for its config
//! space (GET_CONFIG) to learn whether the connection is still there. When
//! the backend is gone (the daemon was killed: the socket is closed, the
//! reply never comes) the session ends. In reconnect mode (as QEMU with
//! `reconnect=1`) it then redials until the socket answers again,
//! renegotiates from scratch with fresh guest memory, and resumes traffic;
//! otherwise [`run`] returns.
//!
//! Received frames are counted by destination: `rx` counts the unicast
//! frames to the guest's own MAC, `stray` the unicast frames to any other
//! MAC (a frame the backend must never deliver: a stale steering entry of
//! another guest); broadcast and multicast are counted in neither.
//!
//! Progress is reported through [`Event`]s. The stand-alone binary
//! `xdpath-soak-frontend` prints them one per line ([`Event::line`]) so the
//! soak driver can time them; [`Event::parse`] reads them back.
//!
//! Every wait is bounded: a redial gives up at the deadline, a GET_CONFIG
//! reply is awaited for at most 5 s (the test kit's limit).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xdpath_tests::frames::{eth, ipv4, tagged, udp, ETH_P_IP};
use xdpath_tests::frontend::{FrontendOptions, TestFrontend};

/// How often a session checks that its backend is still there.
pub const LIVENESS: Duration = Duration::from_millis(50);
/// How often a session reports its counts (when they moved).
const REPORT: Duration = Duration::from_millis(20);
/// Pause between two redials.
const REDIAL: Duration = Duration::from_millis(20);
/// RX buffer size: a 1500-byte frame plus the virtio-net header fits.
const RX_BUF: u32 = 2048;
/// Longest wait for RX frames per queue pair and loop.
const RX_WAIT: Duration = Duration::from_millis(2);
/// UDP payload bytes of a guest frame.
const PAYLOAD: usize = 64;

/// What the guest does.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// Queue pairs to set up and use.
    pub queue_pairs: u16,
    /// Redial and renegotiate when the backend goes away (else return).
    pub reconnect: bool,
    /// Frames per second the guest sends (over all pairs; 0 = none).
    pub tx_pps: u32,
    /// Give up (return) after this long in total.
    pub deadline: Duration,
    /// Source MAC of the guest's frames (its own).
    pub mac: [u8; 6],
    /// Destination MAC of the guest's frames.
    pub dst_mac: [u8; 6],
    /// Source IPv4 address of the guest's frames.
    pub ip: [u8; 4],
    /// Destination IPv4 address of the guest's frames.
    pub dst_ip: [u8; 4],
    /// UDP destination port of the guest's frames.
    pub dst_port: u16,
    /// Listen on `socket` (binding it) and let the backend connect, as
    /// QEMU with `server=on` for a client-mode guest; else connect to it.
    pub listen: bool,
}

/// What a guest reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Session `session` (1, 2, ...) negotiated.
    Up {
        /// Session number.
        session: u64,
    },
    /// Frames received and sent so far in `session`.
    Traffic {
        /// Session number.
        session: u64,
        /// Unicast frames received for the guest's own MAC (wire ->
        /// guest).
        rx: u64,
        /// Frames the backend took from the TX rings (guest -> wire).
        tx: u64,
        /// Unicast frames received for another MAC (never expected).
        stray: u64,
    },
    /// Session `session` ended: the backend went away (or the guest was
    /// told to stop).
    Down {
        /// Session number.
        session: u64,
        /// Why, in words.
        why: String,
    },
    /// A dial or handshake failed; redialling (reconnect mode).
    Retry {
        /// Why, in words.
        why: String,
    },
}

impl Event {
    /// One line of text (no newline): `up S`, `traffic S RX TX STRAY`,
    /// `down S WHY`, `retry WHY`.
    pub fn line(&self) -> String {
        let clean = |s: &str| s.replace(['\n', '\r'], " ");
        match self {
            Self::Up { session } => format!("up {session}"),
            Self::Traffic {
                session,
                rx,
                tx,
                stray,
            } => format!("traffic {session} {rx} {tx} {stray}"),
            Self::Down { session, why } => format!("down {session} {}", clean(why)),
            Self::Retry { why } => format!("retry {}", clean(why)),
        }
    }

    /// Reads a line written by [`Event::line`].
    pub fn parse(line: &str) -> Option<Self> {
        let mut w = line.trim_end().splitn(2, ' ');
        let kind = w.next()?;
        let rest = w.next().unwrap_or("");
        let mut nums = rest.split(' ').map(str::parse::<u64>);
        match kind {
            "up" => Some(Self::Up {
                session: nums.next()?.ok()?,
            }),
            "traffic" => Some(Self::Traffic {
                session: nums.next()?.ok()?,
                rx: nums.next()?.ok()?,
                tx: nums.next()?.ok()?,
                stray: nums.next()?.ok()?,
            }),
            "down" => {
                let (s, why) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(Self::Down {
                    session: s.parse().ok()?,
                    why: why.to_string(),
                })
            }
            "retry" => Some(Self::Retry {
                why: rest.to_string(),
            }),
            _ => None,
        }
    }
}

/// The guest's frame number `seq` of session `session`.
fn frame(o: &GuestOptions, session: u64, seq: u64) -> Vec<u8> {
    // The session in the source port tells sessions apart in a capture;
    // the sequence number is in the payload.
    let sport = crate::session_port(session);
    eth(
        o.dst_mac,
        o.mac,
        ETH_P_IP,
        &ipv4(
            o.ip,
            o.dst_ip,
            17,
            &udp(sport, o.dst_port, &tagged(seq as u32, PAYLOAD)),
        ),
    )
}

/// Runs the guest until `stop` is set, the deadline passes, or (without
/// reconnect) the backend goes away. Errors: the first connection failed
/// (without reconnect), or the deadline passed before any session came up.
pub fn run(o: &GuestOptions, stop: &AtomicBool, emit: &mut dyn FnMut(Event)) -> Result<()> {
    anyhow::ensure!(o.queue_pairs >= 1, "at least one queue pair");
    let end = Instant::now() + o.deadline;
    // Listen mode: the socket is ours (a file left by a killed instance of
    // this guest is replaced), bound once for every session.
    let listener = if o.listen {
        let _ = std::fs::remove_file(&o.socket);
        Some(
            std::os::unix::net::UnixListener::bind(&o.socket)
                .with_context(|| format!("binding {}", o.socket.display()))?,
        )
    } else {
        None
    };
    let mut session = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let fo = FrontendOptions {
            queue_pairs: o.queue_pairs,
            enabled_pairs: o.queue_pairs,
            ..FrontendOptions::default()
        };
        let fe = match &listener {
            Some(l) => TestFrontend::accept(l, fo),
            None => TestFrontend::connect(&o.socket, fo),
        };
        let mut fe = match fe {
            Ok(fe) => fe,
            Err(e) if o.reconnect => {
                emit(Event::Retry {
                    why: format!("{e:#}"),
                });
                std::thread::sleep(REDIAL);
                continue;
            }
            Err(e) => return Err(e),
        };
        session += 1;
        emit(Event::Up { session });
        let why = traffic(o, &mut fe, session, stop, end, emit);
        drop(fe);
        emit(Event::Down { session, why });
        if !o.reconnect {
            return Ok(());
        }
    }
    if session == 0 && !stop.load(Ordering::Relaxed) {
        bail!(
            "no session with {} came up within {:?}",
            o.socket.display(),
            o.deadline
        );
    }
    Ok(())
}

/// One session's traffic; returns why it ended.
fn traffic(
    o: &GuestOptions,
    fe: &mut TestFrontend,
    session: u64,
    stop: &AtomicBool,
    end: Instant,
    emit: &mut dyn FnMut(Event),
) -> String {
    let qsize = usize::from(fe.queue_size());
    for qp in 0..o.queue_pairs {
        fe.post_rx_buffers(qp, qsize, RX_BUF);
    }
    let start = Instant::now();
    let (mut rx, mut tx, mut stray, mut sent) = (0u64, 0u64, 0u64, 0u64);
    let mut reported = (0u64, 0u64, 0u64);
    let mut last_report = start;
    let mut last_check = start;
    let mut next_qp = 0u16;
    loop {
        if stop.load(Ordering::Relaxed) {
            return "stopped".into();
        }
        let now = Instant::now();
        if now >= end {
            return "deadline".into();
        }
        // Send what the rate allows by now; a full ring waits for the
        // backend (the frames stay in the guest, as a real driver's would).
        let due = (now - start).as_secs_f64() * f64::from(o.tx_pps);
        while (sent as f64) < due {
            if !fe.send(next_qp, &frame(o, session, sent), false) {
                break;
            }
            sent += 1;
            next_qp = (next_qp + 1) % o.queue_pairs;
        }
        for qp in 0..o.queue_pairs {
            tx += fe.tx_completed(qp) as u64;
            let got = fe.recv(qp, 64, RX_WAIT);
            if !got.is_empty() {
                for f in &got {
                    match f.data.get(..6) {
                        Some(d) if d == o.mac => rx += 1,
                        // Group bit: broadcast or multicast.
                        Some(d) if d[0] & 1 == 1 => {}
                        _ => stray += 1,
                    }
                }
                fe.post_rx_buffers(qp, qsize, RX_BUF);
            }
        }
        // The first frame each way is reported at once (the soak times
        // it); later counts at most every REPORT.
        let first = (rx > 0 && reported.0 == 0) || (tx > 0 && reported.1 == 0);
        if (first || now.duration_since(last_report) >= REPORT) && (rx, tx, stray) != reported {
            reported = (rx, tx, stray);
            last_report = now;
            emit(Event::Traffic {
                session,
                rx,
                tx,
                stray,
            });
        }
        if now.duration_since(last_check) >= LIVENESS {
            last_check = now;
            if let Err(e) = fe.get_config(6) {
                if (rx, tx, stray) != reported {
                    emit(Event::Traffic {
                        session,
                        rx,
                        tx,
                        stray,
                    });
                }
                return format!("{e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_their_text_form() {
        for e in [
            Event::Up { session: 3 },
            Event::Traffic {
                session: 3,
                rx: 10,
                tx: 0,
                stray: 2,
            },
            Event::Down {
                session: 3,
                why: "backend closed the connection".into(),
            },
            Event::Retry {
                why: "connecting to /x: refused".into(),
            },
        ] {
            assert_eq!(Event::parse(&e.line()), Some(e.clone()), "{}", e.line());
        }
        assert_eq!(
            Event::parse(
                &Event::Down {
                    session: 1,
                    why: "two\nlines".into()
                }
                .line()
            ),
            Some(Event::Down {
                session: 1,
                why: "two lines".into()
            })
        );
        assert_eq!(Event::parse("nonsense 1"), None);
        assert_eq!(Event::parse("traffic 1 x 2 0"), None);
        assert_eq!(Event::parse("traffic 1 1 2"), None, "no stray count");
    }
}
