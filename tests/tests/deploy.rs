//! `cargo xtask deploy` / `undeploy` against an interface the test made:
//! preflight first (nothing installed when it fails), then binaries, config
//! and the guest's QEMU and libvirt settings; undeploy removes it all.
//! Installs under a private root with prebuilt binaries (a nested cargo
//! build would wait forever on the lock of the running `cargo test`).
//!
//! Needs root, so marked ignored: `cargo xtask test` as root runs it.

use std::path::Path;
use std::process::Command;
use xdpath_tests::daemon::workspace_bin;
use xdpath_tests::require_root;
use xdpath_tests::topology::Topology;

fn xtask(args: &[&str]) -> (bool, String) {
    let bin = workspace_bin("xtask").expect("xtask is built with the workspace");
    let o = Command::new(bin).args(args).output().expect("run xtask");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
#[ignore = "needs root: network namespaces, XDP, a real xdpathd"]
fn deploy_checks_installs_prints_the_guest_settings_and_undeploy_removes_it() {
    require_root();
    let t = Topology::new(2).expect("topology");
    let root = std::env::temp_dir().join(format!("xdpath-deploy-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let bins = workspace_bin("xdpathd")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let (r, b) = (
        root.to_string_lossy().into_owned(),
        bins.to_string_lossy().into_owned(),
    );
    let common = ["--iface", &t.host_if, "--root", &r, "--bin-dir", &b];

    // Preflight fails (4 queues on a 2-queue NIC): nothing is installed.
    let mut args = vec!["deploy"];
    args.extend_from_slice(&common);
    args.extend_from_slice(&["--queues", "4", "--", "--netns", &t.host_ns]);
    let (ok, out) = xtask(&args);
    assert!(!ok, "{out}");
    assert!(
        out.contains("[queues]") && out.contains("fix:") && out.contains("nothing was installed"),
        "{out}"
    );
    assert!(!root.join("usr/local/bin/xdpathd").exists());

    let mut args = vec!["deploy"];
    args.extend_from_slice(&common);
    args.extend_from_slice(&[
        "--queues",
        "2",
        "--guest-mac",
        "52:54:00:aa:bb:cc",
        "--",
        "--netns",
        &t.host_ns,
    ]);
    let (ok, out) = xtask(&args);
    assert!(ok, "{out}");
    for part in [
        "memory-backend-memfd",
        "share=on",
        "reconnect=1",
        "-netdev vhost-user,id=net0,chardev=xdp0,queues=2",
        "mq=on,vectors=6,mac=52:54:00:aa:bb:cc",
        "<interface type='vhostuser'>",
        "<driver queues='2'/>",
    ] {
        assert!(out.contains(part), "{part} missing in:\n{out}");
    }
    for f in ["usr/local/bin/xdpathd", "usr/local/bin/xdpctl"] {
        assert!(root.join(f).exists(), "{f}");
    }
    let conf =
        std::fs::read_to_string(root.join(format!("etc/xdpath/{}.toml", t.host_if))).unwrap();
    assert!(
        conf.contains(&format!("iface = \"{}\"", t.host_if)) && conf.contains("queues = 2"),
        "{conf}"
    );

    // The installed daemon runs with the installed config.
    let installed = root.join("usr/local/bin/xdpathd");
    let conf_path = root.join(format!("etc/xdpath/{}.toml", t.host_if));
    let o = Command::new(&installed)
        .args(["--netns", &t.host_ns, "--check", "--config"])
        .arg(&conf_path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let (ok, out) = xtask(&["undeploy", "--iface", &t.host_if, "--root", &r]);
    assert!(ok, "{out}");
    for f in ["usr/local/bin/xdpathd", "usr/local/bin/xdpctl"] {
        assert!(!root.join(f).exists(), "{f} left behind");
    }
    assert!(!conf_path.exists());
    assert!(!Path::new("/sys/fs/bpf/xdpath").join(&t.host_if).exists());
    let _ = std::fs::remove_dir_all(&root);
}

/// `cargo xtask undeploy` removes the stale pin directories under the pin
/// root (their interface is gone and nothing uses them), with the installed
/// xdpathd deciding which ones are, and leaves a live classifier's alone.
#[test]
#[ignore = "needs root: network namespaces, XDP, bpffs, a real xdpathd"]
fn undeploy_removes_stale_pins_and_only_those() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let pid = std::process::id();
    let root = std::env::temp_dir().join(format!("xdpath-undeploy-test-{pid}"));
    let pin_root = std::path::PathBuf::from(format!("/sys/fs/bpf/xdpath-undeploy-test-{pid}"));
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&pin_root);
    let bins = workspace_bin("xdpathd")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let (r, b, p) = (
        root.to_string_lossy().into_owned(),
        bins.to_string_lossy().into_owned(),
        pin_root.to_string_lossy().into_owned(),
    );
    let (ok, out) = xtask(&[
        "deploy",
        "--iface",
        &t.host_if,
        "--root",
        &r,
        "--bin-dir",
        &b,
        "--",
        "--netns",
        &t.host_ns,
    ]);
    assert!(ok, "{out}");

    // What a daemon killed on a NIC that is gone since leaves behind.
    let stale = pin_root.join(format!("xdpgone{}", pid % 100_000));
    std::fs::create_dir_all(&stale).unwrap();
    let flows = stale.join(xdpath_common::MAP_FLOWS);
    xdpath_tests::topology::run(
        "bpftool",
        &[
            "map",
            "create",
            flows.to_str().unwrap(),
            "type",
            "hash",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "1",
            "name",
            "flows",
        ],
    )
    .unwrap();
    // A live classifier, in its namespace (its interface does not exist
    // where undeploy runs).
    let host_if = t.host_if.clone();
    let mut cfg = xdpath_control::ClassifierConfig::new(&host_if);
    cfg.pin_root = pin_root.clone();
    let live = t.in_host(move || xdpath_control::Classifier::load(&cfg).expect("load"));
    let live_pins = live.pin_dir().to_path_buf();

    let (ok, out) = xtask(&[
        "undeploy",
        "--iface",
        &t.host_if,
        "--root",
        &r,
        "--pin-root",
        &p,
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "removed the stale pin directory {}",
            stale.display()
        )),
        "{out}"
    );
    assert!(!stale.exists(), "{out}");
    assert!(
        live_pins.join(xdpath_common::MAP_FLOWS).exists(),
        "a live classifier's pins stay: {out}"
    );
    assert!(!root.join("usr/local/bin/xdpathd").exists());
    live.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&pin_root);
    let _ = std::fs::remove_dir_all(&root);
}
