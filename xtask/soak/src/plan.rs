//! How much the soak does and how long it may take: the CI form (short,
//! called by `cargo xtask test` as root) and the long form (`cargo xtask
//! soak --minutes N`), whose counts scale with N from the issue's figures
//! at [`FULL_MINUTES`]. Every part also stops at its share of the time
//! budget and says so in its notes, so a run never outlasts N minutes by
//! more than one round and the teardown.

use std::time::Duration;

/// The soak's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// Frontend connect/SIGKILL cycles.
    Cycles,
    /// `kill -9` and restarts of xdpathd.
    Restarts,
    /// Guests added and removed under traffic to steady guests.
    Guests,
    /// API abuse.
    Abuse,
}

impl PartKind {
    /// Every part, in the order they run.
    pub const ALL: [Self; 4] = [Self::Cycles, Self::Restarts, Self::Guests, Self::Abuse];

    /// The parts' names, for messages.
    pub const NAMES: &'static str = "cycles, restarts, guests, abuse";

    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cycles => "cycles",
            Self::Restarts => "restarts",
            Self::Guests => "guests",
            Self::Abuse => "abuse",
        }
    }

    /// The part called `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Its share of the time budget.
    fn share(self) -> f64 {
        match self {
            Self::Cycles => 0.60,
            Self::Restarts => 0.20,
            Self::Guests => 0.12,
            Self::Abuse => 0.08,
        }
    }
}

/// The long form at this many minutes runs the issue's counts: 1,000
/// cycles and 50 restarts (and 200 guest add/remove rounds).
pub const FULL_MINUTES: u64 = 20;
/// Frontend cycles of the issue.
pub const FULL_CYCLES: u32 = 1000;
/// Restarts of the issue.
pub const FULL_RESTARTS: u32 = 50;
/// Guest add/remove rounds at [`FULL_MINUTES`].
pub const FULL_GUEST_ROUNDS: u32 = 200;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `ci` or `long`.
    pub form: &'static str,
    /// Frontend connect/SIGKILL cycles (half DPDK, half in-repo).
    pub cycles: u32,
    /// `kill -9` restarts of xdpathd.
    pub restarts: u32,
    /// Guest add/connect/remove rounds.
    pub guest_rounds: u32,
    /// Concurrent API writers.
    pub writers: u32,
    /// Rules each writer adds (every other one is deleted again).
    pub ops_per_writer: u32,
    /// Slow clients (half a request line, then silence).
    pub slow_clients: u32,
    /// The oversized bulk replace, MiB.
    pub oversize_mib: u64,
    /// How long slow clients may stay open before the daemon must have
    /// closed them (checked in the long form only; the CI form reports
    /// how many were closed by the end of the part).
    pub slow_close_limit: Option<Duration>,
    /// The whole run's time budget.
    pub budget: Duration,
    /// Seed of the random moments.
    pub seed: u64,
}

impl Plan {
    /// The CI form: about a minute and a half (the budget leaves room for
    /// a slow machine).
    pub fn ci(seed: u64) -> Self {
        Self {
            form: "ci",
            cycles: 100,
            restarts: 10,
            guest_rounds: 20,
            writers: 100,
            ops_per_writer: 4,
            slow_clients: 50,
            oversize_mib: 300,
            slow_close_limit: None,
            budget: Duration::from_secs(6 * 60),
            seed,
        }
    }

    /// The long form for `minutes` minutes: the issue's counts at
    /// [`FULL_MINUTES`], scaled with the minutes (never below the CI
    /// form's).
    pub fn long(minutes: u64, seed: u64) -> Self {
        let minutes = minutes.max(1);
        let ci = Self::ci(seed);
        let scale = |full: u32, floor: u32| -> u32 {
            let v = (u64::from(full) * minutes).div_ceil(FULL_MINUTES);
            u32::try_from(v).unwrap_or(u32::MAX).max(floor)
        };
        Self {
            form: "long",
            cycles: scale(FULL_CYCLES, ci.cycles),
            restarts: scale(FULL_RESTARTS, ci.restarts),
            guest_rounds: scale(FULL_GUEST_ROUNDS, ci.guest_rounds),
            writers: 100,
            ops_per_writer: 20,
            slow_clients: 200,
            oversize_mib: 300,
            slow_close_limit: Some(Duration::from_secs(30)),
            budget: Duration::from_secs(minutes * 60),
            seed,
        }
    }

    /// The time part `p` may take.
    pub fn part_budget(&self, p: PartKind) -> Duration {
        self.budget.mul_f64(p.share())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_form_scales_the_issues_counts() {
        let full = Plan::long(FULL_MINUTES, 1);
        assert_eq!((full.cycles, full.restarts), (FULL_CYCLES, FULL_RESTARTS));
        assert_eq!(full.guest_rounds, FULL_GUEST_ROUNDS);
        let double = Plan::long(2 * FULL_MINUTES, 1);
        assert_eq!((double.cycles, double.restarts), (2000, 100));
        let short = Plan::long(1, 1);
        let ci = Plan::ci(1);
        assert_eq!(
            (short.cycles, short.restarts, short.guest_rounds),
            (ci.cycles, ci.restarts, ci.guest_rounds),
            "never below the CI form"
        );
        assert_eq!(short.budget, Duration::from_secs(60));
    }

    #[test]
    fn shares_cover_the_budget() {
        let p = Plan::ci(0);
        let sum: Duration = PartKind::ALL.iter().map(|&k| p.part_budget(k)).sum();
        assert!(sum <= p.budget && sum + Duration::from_millis(1) >= p.budget);
        assert_eq!(PartKind::parse("abuse"), Some(PartKind::Abuse));
        assert_eq!(PartKind::parse("guests"), Some(PartKind::Guests));
        assert_eq!(PartKind::parse("x"), None);
    }
}
