//! What a soak part found: checks (pass or fail, with the evidence) and
//! figures (JSON), the printed summary and the JSON file under
//! `target/soak/`.

use serde_json::{json, Map, Value};
use std::time::Duration;

/// One assertion of a part.
#[derive(Debug, Clone)]
pub struct Check {
    /// What must hold, in words.
    pub name: String,
    /// Whether it held.
    pub pass: bool,
    /// The figures behind it.
    pub detail: String,
}

/// The outcome of one part.
#[derive(Debug, Clone)]
pub struct Part {
    /// `cycles`, `restarts` or `abuse`.
    pub name: &'static str,
    /// Its figures.
    pub figures: Map<String, Value>,
    /// Its checks, in the order they were made.
    pub checks: Vec<Check>,
    /// How long it ran.
    pub elapsed: Duration,
    /// Notes worth reading with the figures (a count cut short by the time
    /// budget, say).
    pub notes: Vec<String>,
}

impl Part {
    /// An empty part.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            figures: Map::new(),
            checks: Vec::new(),
            elapsed: Duration::ZERO,
            notes: Vec::new(),
        }
    }

    /// Runs part `name`'s `body` and times it; an error that cut the body
    /// short is a failed check ("the part ran to its end") with the
    /// error's last lines.
    pub fn run(name: &'static str, body: impl FnOnce(&mut Part) -> anyhow::Result<()>) -> Self {
        let mut p = Self::new(name);
        let start = std::time::Instant::now();
        if let Err(e) = body(&mut p) {
            p.check(
                "the part ran to its end",
                false,
                crate::xdpathd::tail(&format!("{e:#}"), 20),
            );
        }
        p.elapsed = start.elapsed();
        p
    }

    /// Records a check; returns `pass`.
    pub fn check(
        &mut self,
        name: impl Into<String>,
        pass: bool,
        detail: impl Into<String>,
    ) -> bool {
        self.checks.push(Check {
            name: name.into(),
            pass,
            detail: detail.into(),
        });
        pass
    }

    /// Records a figure.
    pub fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.figures.insert(key.to_string(), v.into());
    }

    /// Records a note.
    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    /// Whether every check passed (and there was at least one).
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.pass)
    }

    /// As JSON.
    pub fn json(&self) -> Value {
        json!({
            "passed": self.passed(),
            "elapsed_s": secs(self.elapsed),
            "figures": self.figures,
            "checks": self.checks.iter().map(|c| json!({"name": c.name, "pass": c.pass, "detail": c.detail})).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    /// The summary lines of this part.
    pub fn text(&self) -> String {
        let mut s = format!(
            "== {} ({:.0} s): {}\n",
            self.name,
            self.elapsed.as_secs_f64(),
            if self.passed() { "PASS" } else { "FAIL" }
        );
        for c in &self.checks {
            s.push_str(&format!(
                "  [{}] {}: {}\n",
                if c.pass { "ok" } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        s
    }
}

/// Seconds with millisecond precision, for JSON.
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Milliseconds, for JSON and text.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Median and maximum of `v` (None when empty).
pub fn median_max(v: &[Duration]) -> Option<(Duration, Duration)> {
    let mut s = v.to_vec();
    s.sort();
    let max = *s.last()?;
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    };
    Some((med, max))
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_max() {
        let d = |ms| Duration::from_millis(ms);
        assert_eq!(median_max(&[]), None);
        assert_eq!(median_max(&[d(5)]), Some((d(5), d(5))));
        assert_eq!(median_max(&[d(9), d(1), d(5)]), Some((d(5), d(9))));
        assert_eq!(median_max(&[d(4), d(1), d(2), d(8)]), Some((d(3), d(8))));
    }

    #[test]
    fn a_part_passes_only_with_checks_that_all_passed() {
        let mut p = Part::new("cycles");
        assert!(!p.passed(), "no check: not a pass");
        p.check("a", true, "1");
        assert!(p.passed());
        p.check("b", false, "2");
        assert!(!p.passed());
        assert!(p.text().contains("[FAIL] b: 2"));
        assert_eq!(p.json()["passed"], json!(false));
    }
}
