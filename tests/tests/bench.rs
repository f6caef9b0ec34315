//! The system benchmark end to end (`xdpath-bench --quick`): every system
//! (xdpath, DPDK testpmd, the bare AF_XDP limit) moves frames both ways on
//! its own veth topology, answers the pinger, and the results land in
//! results.json, results.md and results.svg with the ratios filled in;
//! nothing is left behind. Figures are not judged here (performance is
//! for `cargo xtask bench`), only that every one was measured.

use serde_json::Value;
use std::process::Command;
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
    let before = netns_list();
    let run = Command::new(&bin)
        .args(["--quick", "--out"])
        .arg(out)
        .output()
        .expect("run xdpath-bench");
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
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("| 1qp w->g 64B many |"), "{md}");
    let svg = std::fs::read_to_string(out.join("results.svg")).expect("results.svg");
    assert!(svg.starts_with("<svg") && svg.contains("xdpath"));
    assert_eq!(netns_list(), before, "namespaces left behind");
}

/// The results directory, removed when the test ends, passed or failed.
struct OutDir(std::path::PathBuf);

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn netns_list() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("xdpt-"))
        .collect();
    v.sort();
    v
}
