//! The system benchmark end to end (`xdpath-bench --quick`): every system
//! (xdpath, DPDK testpmd, the bare AF_XDP limit) moves frames both ways on
//! its own veth topology, answers the pinger; one xdpathd with 1 and then
//! 2 guests moves frames wire -> guests (every guest gets its share) and
//! guest -> guest (switched, none on the wire); the results land in
//! results.json, results.md and results.svg with the ratios and the
//! scaling table filled in; nothing is left behind. Figures are not judged
//! here (performance is for `cargo xtask bench`), only that every one was
//! measured.

use serde_json::Value;
use std::process::{Command, Stdio};
use xdpath_tests::daemon::workspace_bin;
use xdpath_tests::require_root;
use xdpath_tests::testpmd::Testpmd;

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, DPDK testpmd with hugepages"]
fn quick_bench_measures_every_system_and_writes_the_report() {
    require_root();
    if let Err(e) = Testpmd::binary().and_then(|_| Testpmd::check_hugepages()) {
        panic!("DPDK is part of the benchmark: {e:#}");
    }
    let dir =
        OutDir(std::env::temp_dir().join(format!("xdpath-bench-test-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let out = &dir.0;
    let bin = workspace_bin("xdpath-bench").unwrap_or_else(|e| {
        panic!("build it first with `cargo build -p xdpath-bench` (cargo xtask test does): {e:#}")
    });
    let child = Command::new(&bin)
        .args(["--quick", "--out"])
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run xdpath-bench");
    // Its namespaces are named after its pid (other tests may run
    // alongside with their own).
    let pid = child.id();
    let run = child.wait_with_output().expect("xdpath-bench's output");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "xdpath-bench --quick failed: {}\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json")).expect("results.json"),
    )
    .expect("results.json parses");
    let cases = json["cases"].as_array().expect("cases");
    for sys in ["xdpath", "dpdk", "limit"] {
        for dir in ["wire->guest", "guest->wire"] {
            let c = cases
                .iter()
                .find(|c| c["system"] == sys && c["case"]["direction"] == dir)
                .unwrap_or_else(|| panic!("no {sys} {dir} case in {json:#}"));
            let delivered = c["runs"][0]["delivered"].as_u64().unwrap_or(0);
            assert!(
                delivered > 1000,
                "{sys} {dir} delivered {delivered}:\n{stdout}"
            );
            assert!(c["mpps"]["median"].as_f64().unwrap_or(0.0) > 0.0);
        }
        let lat = json["latency"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["system"] == sys))
            .unwrap_or_else(|| panic!("no {sys} latency in {json:#}"));
        assert!(
            lat["runs"][0]["round_trips"].as_u64().unwrap_or(0) > 100,
            "{lat:#}"
        );
        assert!(lat["p99_us"]["median"].as_f64().unwrap_or(0.0) > 0.0);
    }
    for r in json["ratios"].as_array().expect("ratios") {
        assert!(
            r["xdpath/dpdk"]["median"].as_f64().unwrap_or(0.0) > 0.0,
            "{r:#}"
        );
        assert!(
            r["xdpath/limit"]["median"].as_f64().unwrap_or(0.0) > 0.0,
            "{r:#}"
        );
    }
    // An idle xdpathd stays far below a busy-polling testpmd.
    let idle = &json["idle"];
    let (x, t) = (
        idle["xdpathd_percent_of_a_core"].as_f64().unwrap_or(100.0),
        idle["testpmd_percent_of_a_core"].as_f64().unwrap_or(0.0),
    );
    assert!(x < t, "idle xdpathd {x}% vs testpmd {t}%");
    assert!(json["machine"]["cpus"].as_u64().unwrap_or(0) >= 1);
    check_scaling(&json, &stdout);
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("| 1qp w->g 64B many |"), "{md}");
    assert!(
        md.contains("| guests | wire → guests Mpps | worker CPU µs/frame | guest → guest Mpps |"),
        "no scaling table in:\n{md}"
    );
    assert!(
        md.contains("\n| 1 | ") && md.contains("n/a (one guest)"),
        "{md}"
    );
    assert!(md.contains("\n| 2 | "), "{md}");
    let svg = std::fs::read_to_string(out.join("results.svg")).expect("results.svg");
    assert!(svg.starts_with("<svg") && svg.contains("xdpath"));
    assert!(
        svg.contains("Several guests on one xdpathd") && svg.contains("2 guests guest->guest"),
        "no scaling panel in the SVG"
    );
    let left = netns_of(pid);
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let pins = entries("/sys/fs/bpf/xdpath", |n| n.ends_with(&format!("x{pid}")));
    assert!(pins.is_empty(), "pins left behind: {pins:?}");
    let tmp = std::env::temp_dir();
    let dirs = entries(&tmp, |n| n.starts_with(&format!("xdpathd-test-{pid}-")));
    assert!(dirs.is_empty(), "xdpathd directories left behind: {dirs:?}");
}

/// The scaling section of `--quick` (1 and 2 guests): every figure
/// measured and above 0, every guest got frames, guest -> guest is n/a
/// with one guest, switched with two and never on the wire.
fn check_scaling(json: &Value, stdout: &str) {
    let sc = &json["scaling"];
    let rows = sc["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no scaling rows in {json:#}"));
    let guests: Vec<u64> = rows.iter().filter_map(|r| r["guests"].as_u64()).collect();
    assert_eq!(guests, [1, 2], "{sc:#}");
    let positive = |v: &Value, what: &str| {
        for key in [
            "mpps",
            "worker_cpu_us_per_frame",
            "machine_cpu_us_per_frame",
        ] {
            let m = v[key]["median"].as_f64().unwrap_or(0.0);
            assert!(m > 0.0, "{what} {key} = {m}: {v:#}\n{stdout}");
        }
        let runs = v["runs"].as_array().expect("runs");
        assert!(!runs.is_empty(), "{what}: no runs");
        for r in runs {
            let per: Vec<u64> = r["per_guest"]
                .as_array()
                .expect("per_guest")
                .iter()
                .map(|x| x.as_u64().unwrap_or(0))
                .collect();
            assert!(
                per.iter().all(|&n| n > 100),
                "{what}: every guest receives, got {per:?}\n{stdout}"
            );
        }
    };
    for r in rows {
        let n = r["guests"].as_u64().unwrap_or(0);
        positive(&r["wire_to_guests"], &format!("{n} guests wire->guests"));
        let g2g = &r["guest_to_guest"];
        if n == 1 {
            assert!(g2g.is_null(), "guest->guest with one guest is n/a: {g2g:#}");
            continue;
        }
        positive(g2g, &format!("{n} guests guest->guest"));
        for run in g2g["runs"].as_array().expect("runs") {
            assert_eq!(
                run["wire_frames"], 0,
                "guest-to-guest traffic reached the wire: {run:#}"
            );
            assert!(
                run["switched"].as_u64().unwrap_or(0) > 100,
                "xdpathd counted no switched frames: {run:#}"
            );
        }
    }
}

/// The results directory, removed when the test ends, passed or failed.
struct OutDir(std::path::PathBuf);

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Names in directory `dir` that `keep` accepts (none if it does not
/// exist).
fn entries(dir: impl AsRef<std::path::Path>, keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| keep(n))
        .collect()
}

/// Network namespaces the test kit's topologies in process `pid` created
/// and that still exist.
fn netns_of(pid: u32) -> Vec<String> {
    let prefix = format!("xdpt-{pid}-");
    entries("/run/netns", |n| n.starts_with(&prefix))
}
