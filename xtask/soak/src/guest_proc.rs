//! The soak guest as a child process (`xdpath-soak-frontend`), seen from
//! the driver: started with the options of [`crate::guest`], its event
//! lines timed as they arrive, SIGKILLed by its pid and reaped.
//!
//! [`GuestProcess`] is a guard: dropping it kills and reaps the child. The
//! child also gets `PR_SET_PDEATHSIG`, so it dies with the thread that
//! spawned it if the driver itself is killed; spawn it from a thread that
//! lives as long as the guard (the soak's main thread).

use crate::guest::{Event, GuestOptions};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a SIGKILLed child may take to be reaped.
const REAP: Duration = Duration::from_secs(10);
/// stderr bytes kept for failure messages.
const STDERR_KEEP: usize = 8 * 1024;

/// One session of the guest, as its lines told it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Session number (from 1).
    pub n: u64,
    /// When its `up` line arrived.
    pub up: Instant,
    /// When the first `traffic` line with frames received arrived.
    pub first_rx: Option<Instant>,
    /// When the first `traffic` line with frames sent arrived.
    pub first_tx: Option<Instant>,
    /// Frames received for the guest's own MAC so far.
    pub rx: u64,
    /// Unicast frames received for another MAC so far (never expected).
    pub stray: u64,
    /// Frames sent so far (taken by the backend).
    pub tx: u64,
    /// When it ended and why.
    pub down: Option<(Instant, String)>,
}

/// Everything the guest reported so far.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Its sessions, in order.
    pub sessions: Vec<Session>,
    /// Failed dials or handshakes (reconnect mode).
    pub retries: u64,
    /// The last failure it gave for a retry.
    pub last_retry: Option<String>,
}

impl Report {
    fn apply(&mut self, e: Event, at: Instant) {
        match e {
            Event::Up { session } => self.sessions.push(Session {
                n: session,
                up: at,
                first_rx: None,
                first_tx: None,
                rx: 0,
                tx: 0,
                stray: 0,
                down: None,
            }),
            Event::Traffic {
                session,
                rx,
                tx,
                stray,
            } => {
                if let Some(s) = self.sessions.iter_mut().rev().find(|s| s.n == session) {
                    if rx > 0 && s.first_rx.is_none() {
                        s.first_rx = Some(at);
                    }
                    if tx > 0 && s.first_tx.is_none() {
                        s.first_tx = Some(at);
                    }
                    s.rx = rx;
                    s.tx = tx;
                    s.stray = stray;
                }
            }
            Event::Down { session, why } => {
                if let Some(s) = self.sessions.iter_mut().rev().find(|s| s.n == session) {
                    s.down = Some((at, why));
                }
            }
            Event::Retry { why } => {
                self.retries += 1;
                self.last_retry = Some(why);
            }
        }
    }

    /// The latest session.
    pub fn last(&self) -> Option<&Session> {
        self.sessions.last()
    }

    /// Frames received, sent and stray, summed over every session.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.sessions
            .iter()
            .fold((0, 0, 0), |(r, t, s), x| (r + x.rx, t + x.tx, s + x.stray))
    }
}

/// A running `xdpath-soak-frontend`.
#[derive(Debug)]
pub struct GuestProcess {
    child: Child,
    reaped: bool,
    report: Arc<Mutex<Report>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// The command line of the guest binary for `o`.
pub fn args(o: &GuestOptions) -> Vec<String> {
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let ip = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_string();
    let mut v = vec![
        "--socket".to_string(),
        o.socket.display().to_string(),
        "--queue-pairs".into(),
        o.queue_pairs.to_string(),
        "--tx-pps".into(),
        o.tx_pps.to_string(),
        "--deadline-secs".into(),
        o.deadline.as_secs().max(1).to_string(),
        "--mac".into(),
        mac(o.mac),
        "--dst-mac".into(),
        mac(o.dst_mac),
        "--ip".into(),
        ip(o.ip),
        "--dst-ip".into(),
        ip(o.dst_ip),
        "--dst-port".into(),
        o.dst_port.to_string(),
    ];
    if o.reconnect {
        v.push("--reconnect".into());
    }
    if o.listen {
        v.push("--listen".into());
    }
    v
}

impl GuestProcess {
    /// Starts the guest binary (built next to this one) with `o`.
    pub fn spawn(o: &GuestOptions) -> Result<Self> {
        let bin = xdpath_tests::daemon::workspace_bin("xdpath-soak-frontend")?;
        let mut cmd = Command::new(&bin);
        cmd.args(args(o))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        xdpath_tests::process::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let report = Arc::new(Mutex::new(Report::default()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let report = report.clone();
            // Ends at EOF, when the child is gone.
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    if let Some(e) = Event::parse(&line) {
                        report
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .apply(e, at);
                    }
                }
            });
        }
        if let Some(mut err) = child.stderr.take() {
            let keep = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut k = keep.lock().unwrap_or_else(PoisonError::into_inner);
                    k.extend_from_slice(&buf[..n]);
                    let excess = k.len().saturating_sub(STDERR_KEEP);
                    k.drain(..excess);
                }
            });
        }
        Ok(Self {
            child,
            reaped: false,
            report,
            stderr,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it reported so far.
    pub fn report(&self) -> Report {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The end of its stderr.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }

    /// Waits (up to `timeout`) until `f` holds for its report.
    pub fn wait_for(&self, timeout: Duration, mut f: impl FnMut(&Report) -> bool) -> bool {
        xdpath_tests::wait_until(timeout, || f(&self.report()))
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        if !self.reaped {
            self.reaped = matches!(self.child.try_wait(), Ok(Some(_)));
        }
        self.reaped
    }

    /// SIGKILL (to exactly this unreaped child) and reap, bounded.
    pub fn kill(&mut self) -> Result<()> {
        if self.exited() {
            return Ok(());
        }
        self.child.kill().context("SIGKILL to the soak guest")?;
        let end = Instant::now() + REAP;
        while Instant::now() < end {
            if self.exited() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!(
            "the soak guest (pid {}) is still there {REAP:?} after SIGKILL",
            self.child.id()
        )
    }
}

impl Drop for GuestProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("{e:#}");
        }
    }
}
