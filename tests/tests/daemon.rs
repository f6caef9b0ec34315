//! `xdpathd` and `xdpctl` as a user runs them: a real daemon process in a
//! private namespace on the host end of a veth pair, rules added with the
//! CLI or raw HTTP, traffic sent from the peer namespace, a guest played by
//! the in-repo vhost-user frontend on the daemon's socket.
//!
//! Every test needs root and is marked ignored: a non-root run lists them
//! as ignored; `cargo xtask test` as root runs them.

use serde_json::{json, Value};
use std::time::Duration;
use xdpath_control::client::ClientError;
use xdpath_control::rules::LegacyIds;
use xdpath_tests::daemon::{ok_stdout, workspace_bin, Daemon};
use xdpath_tests::frames::*;
use xdpath_tests::frontend::{FrontendOptions, TestFrontend};
use xdpath_tests::packet::Sender;
use xdpath_tests::topology::{run, Topology, HOST_IP, HOST_MAC, PEER_IP, PEER_MAC};
use xdpath_tests::{require_root, wait_until};

const GUEST_MAC: &str = "52:54:00:ab:cd:02";
const WAIT: Duration = Duration::from_secs(5);

fn udp_to_host(dport: u16, i: u32) -> Vec<u8> {
    eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(PEER_IP, HOST_IP, 17, &udp(1000, dport, &tagged(i, 32))),
    )
}

fn stats(d: &Daemon) -> Value {
    d.call("GET", "/v1/stats", None).expect("stats")
}

fn classifier(d: &Daemon, key: &str) -> u64 {
    stats(d)["classifier"][key].as_u64().unwrap_or(0)
}

fn sender(t: &Topology) -> Sender {
    let p = t.peer_if.clone();
    t.in_peer(move || Sender::new(&p).expect("AF_PACKET sender"))
}

fn start(t: &Topology, extra: &[&str]) -> Daemon {
    let mut args = vec!["--guest-mac", GUEST_MAC];
    args.extend_from_slice(extra);
    Daemon::start(t, &args).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn rules_added_with_xdpctl_steer_traffic_and_deleting_them_gives_it_back() {
    require_root();
    let t = Topology::new(1).expect("topology");
    // With busy polling on, as a latency-minded user would run it.
    let d = start(&t, &["--busy-poll"]);
    let tx = sender(&t);
    let mut fe =
        TestFrontend::connect(&d.vhost, FrontendOptions::default()).expect("guest connects");
    fe.post_rx_buffers(0, 64, 2048);
    assert!(wait_until(WAIT, || d
        .call("GET", "/v1/health", None)
        .is_ok_and(|h| h["guest_connected"] == json!(true))));

    // No rule: the host gets it.
    let host0 = classifier(&d, "action_host");
    tx.send_on_queue(0, &[udp_to_host(5353, 0)]).unwrap();
    assert!(wait_until(WAIT, || classifier(&d, "action_host") > host0));

    let out = ok_stdout(
        &d.xdpctl(&[
            "flow",
            "add",
            "--src",
            "10.77.0.2",
            "--dst",
            "10.77.0.1",
            "--proto",
            "udp",
            "--sport",
            "1000",
            "--dport",
            "5353",
            "--action",
            "guest",
        ])
        .unwrap(),
    )
    .unwrap();
    assert!(out.contains("10.77.0.1") && out.contains("guest"), "{out}");
    let flows = d.call("GET", "/v1/flows", None).unwrap();
    let id = flows[0]["id"].as_u64().expect("an id was assigned");
    let frames: Vec<Vec<u8>> = (1..=5).map(|i| udp_to_host(5353, i)).collect();
    tx.send_on_queue(0, &frames).unwrap();
    let got = fe.recv(0, 5, WAIT);
    assert_eq!(
        got.iter().map(|g| g.data.clone()).collect::<Vec<_>>(),
        frames,
        "the rule steers the flow to the guest"
    );
    let list = ok_stdout(&d.xdpctl(&["flow", "list"]).unwrap()).unwrap();
    assert!(list.lines().count() == 2 && list.contains("5353"), "{list}");

    ok_stdout(&d.xdpctl(&["flow", "del", &id.to_string()]).unwrap()).unwrap();
    let host1 = classifier(&d, "action_host");
    tx.send_on_queue(0, &frames).unwrap();
    assert!(
        wait_until(WAIT, || classifier(&d, "action_host") >= host1 + 5),
        "back to the host"
    );
    assert!(fe.recv(0, 1, Duration::from_millis(300)).is_empty());

    // A prefix rule that drops, through the CLI too.
    ok_stdout(
        &d.xdpctl(&["prefix", "add", "10.99.0.0/16", "--action", "drop"])
            .unwrap(),
    )
    .unwrap();
    let dropped = classifier(&d, "action_drop");
    let f = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(PEER_IP, [10, 99, 1, 1], 17, &udp(1, 2, &[0; 8])),
    );
    tx.send_on_queue(0, &[f.clone(), f]).unwrap();
    assert!(wait_until(WAIT, || classifier(&d, "action_drop") == dropped + 2));
    let json_list: Value = serde_json::from_str(
        &ok_stdout(&d.xdpctl(&["--json", "prefix", "list"]).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(json_list[0]["prefix"], json!("10.99.0.0/16"));

    // `--socket` still names the API socket (the old name of
    // `--api-socket`), and the daemon's log, a file here, has no colour
    // codes.
    let o = std::process::Command::new(workspace_bin("xdpctl").unwrap())
        .arg("--socket")
        .arg(&d.api)
        .args(["prefix", "list"])
        .output()
        .unwrap();
    assert!(
        ok_stdout(&o).unwrap().contains("10.99.0.0/16"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let log = d.log_text();
    assert!(log.contains("xdpathd ready"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "no ANSI escapes in a log file: {log:?}"
    );
}

/// What must not move when a request is refused: the rule lists, the
/// pinned maps as bpftool dumps them, the state file.
fn snapshot(d: &Daemon, t: &Topology) -> (Value, Value, String, String, Vec<u8>) {
    let pins = std::path::Path::new("/sys/fs/bpf/xdpath").join(&t.host_if);
    let dump = |m: &str| {
        run(
            "bpftool",
            &["map", "dump", "pinned", &pins.join(m).to_string_lossy()],
        )
        .unwrap_or_default()
    };
    // The snapshot and its journal, byte for byte (not the lock file).
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&d.state_dir)
        .map(|it| it.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| !p.to_string_lossy().ends_with(".lock"));
    files.sort();
    let state: Vec<u8> = files
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap_or_default())
        .collect();
    (
        d.call("GET", "/v1/flows", None).unwrap(),
        d.call("GET", "/v1/prefixes", None).unwrap(),
        dump("FLOWS"),
        dump("PREFIXES"),
        state,
    )
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let d = start(&t, &[]);
    d.call("POST", "/v1/flows", Some(&json!({"id": 5, "src": "10.0.0.1", "dst": "10.0.0.2", "proto": "tcp", "dst_port": 80, "action": "drop"})))
        .unwrap();
    d.call(
        "POST",
        "/v1/prefixes",
        Some(&json!({"id": 3, "prefix": "fd00::/64", "action": "host"})),
    )
    .unwrap();
    let before = snapshot(&d, &t);
    assert!(!before.4.is_empty(), "the state file exists");

    // (CLI arguments, the field the error must name)
    let cli: &[(&[&str], &str)] = &[
        (
            &[
                "flow",
                "add",
                "--src",
                "10.0.0.300",
                "--dst",
                "10.0.0.1",
                "--proto",
                "udp",
                "--action",
                "host",
            ],
            "src",
        ),
        (
            &[
                "flow", "add", "--src", "10.0.0.1", "--dst", "fd00::1", "--proto", "udp",
                "--action", "host",
            ],
            "dst",
        ),
        (
            &[
                "flow", "add", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "icmp",
                "--dport", "7", "--action", "host",
            ],
            "dst_port",
        ),
        (
            &[
                "flow", "add", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "300",
                "--action", "host",
            ],
            "proto",
        ),
        (
            &[
                "flow", "add", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "sctpx",
                "--action", "host",
            ],
            "proto",
        ),
        (
            &[
                "flow", "add", "--src", "fd00::1", "--dst", "fd00::2", "--proto", "icmp",
                "--action", "host",
            ],
            "proto",
        ),
        (
            &[
                "flow", "add", "--id", "5", "--src", "10.0.0.9", "--dst", "10.0.0.2", "--proto",
                "udp", "--action", "host",
            ],
            "id",
        ),
        (
            &[
                "flow", "add", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "tcp",
                "--dport", "80", "--action", "host",
            ],
            "",
        ),
        (
            &[
                "flow", "add", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "udp",
                "--action", "drop", "--guest", "2",
            ],
            "guest",
        ),
        (&["flow", "del", "999"], "999"),
        (&["flow", "del", "abc"], "id"),
        (
            &["prefix", "add", "10.0.0.1/8", "--action", "drop"],
            "prefix",
        ),
        (
            &["prefix", "add", "10.0.0.0/33", "--action", "drop"],
            "prefix",
        ),
        (
            &["prefix", "add", "not-a-prefix", "--action", "drop"],
            "prefix",
        ),
        (&["prefix", "add", "fd00::/64", "--action", "drop"], ""),
        (&["prefix", "del", "42"], "42"),
    ];
    for (args, field) in cli {
        let o = d.xdpctl(args).unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{args:?} must fail with exit 1: {err}"
        );
        assert!(
            err.contains(field),
            "{args:?}: the error names `{field}`: {err}"
        );
    }
    // Usage errors are exit 2 and reach no daemon.
    for args in [
        &["flow", "add", "--src", "10.0.0.1"][..],
        &["prefix", "add", "10.0.0.0/8"],
        &["frobnicate"],
    ] {
        assert_eq!(d.xdpctl(args).unwrap().status.code(), Some(2), "{args:?}");
    }

    // Raw HTTP: malformed bodies, unknown fields, wrong types, bad ids, a
    // bulk replace with one bad entry among good ones.
    let raw: &[(&str, &str, Option<&str>, u16)] = &[
        ("POST", "/v1/flows", Some("{"), 400),
        (
            "POST",
            "/v1/flows",
            Some(
                r#"{"src":"10.0.0.1","dst":"10.0.0.2","proto":"udp","action":"host","colour":"red"}"#,
            ),
            400,
        ),
        (
            "POST",
            "/v1/flows",
            Some(r#"{"src":"10.0.0.1","dst":"10.0.0.2","proto":"udp","action":"teleport"}"#),
            400,
        ),
        (
            "POST",
            "/v1/flows",
            Some(
                r#"{"src":"10.0.0.1","dst":"10.0.0.2","proto":"udp","dst_port":70000,"action":"host"}"#,
            ),
            400,
        ),
        (
            "POST",
            "/v1/prefixes",
            Some(r#"{"prefix":"10.0.0.0/8"}"#),
            400,
        ),
        ("DELETE", "/v1/flows/0", None, 400),
        ("DELETE", "/v1/flows/-1", None, 400),
        ("DELETE", "/v1/flows/77", None, 404),
        (
            "PUT",
            "/v1/flows",
            Some(
                r#"[{"src":"10.0.0.1","dst":"10.0.0.2","proto":"udp","action":"host"},{"src":"10.0.0.1","dst":"10.0.0.300","proto":"udp","action":"host"}]"#,
            ),
            400,
        ),
        (
            "PUT",
            "/v1/flows",
            Some(
                r#"[{"id":1,"src":"10.0.0.1","dst":"10.0.0.2","proto":"udp","action":"host"},{"id":1,"src":"10.0.0.3","dst":"10.0.0.2","proto":"udp","action":"host"}]"#,
            ),
            409,
        ),
        (
            "PUT",
            "/v1/prefixes",
            Some(
                r#"[{"prefix":"10.1.0.0/16","action":"host"},{"prefix":"10.1.0.0/16","action":"drop"}]"#,
            ),
            409,
        ),
        ("POST", "/v1/queues/9/replace", None, 404),
    ];
    for (method, path, body, want) in raw {
        let (status, text) = match body {
            Some(b) => raw_request(&d, method, path, b),
            None => xdpath_control::client::request(&d.api, method, path, None).unwrap(),
        };
        assert_eq!(status, *want, "{method} {path} {body:?}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(
            v["error"].as_str().is_some_and(|m| m.len() > 10),
            "{method} {path}: a readable error: {text}"
        );
    }
    assert_eq!(snapshot(&d, &t), before, "refused requests changed nothing");
}

/// Sends `body` verbatim (possibly not JSON) with the right length.
fn raw_request(d: &Daemon, method: &str, path: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    answer_of(&mut api_conn(d, req.as_bytes()))
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn concurrent_writers_end_in_the_serial_result() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let d = start(&t, &[]);
    const THREADS: u32 = 6;
    const EACH: u32 = 30;
    std::thread::scope(|s| {
        for th in 0..THREADS {
            let d = &d;
            s.spawn(move || {
                for k in 0..EACH {
                    let id = th * 1000 + k + 1;
                    let rule = json!({"id": id, "src": "10.1.0.1", "dst": format!("10.2.{th}.{k}"), "proto": "udp", "dst_port": 9, "action": "drop"});
                    d.call("POST", "/v1/flows", Some(&rule)).expect("add");
                    if k % 2 == 1 {
                        d.call("DELETE", &format!("/v1/flows/{id}"), None).expect("delete");
                    }
                }
            });
        }
    });
    let mut want: Vec<u64> = (0..THREADS)
        .flat_map(|th| {
            (0..EACH)
                .filter(|k| k % 2 == 0)
                .map(move |k| u64::from(th * 1000 + k + 1))
        })
        .collect();
    want.sort_unstable();
    let got: Vec<u64> = d
        .call("GET", "/v1/flows", None)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .collect();
    assert_eq!(got, want, "the table equals the serial result");
    let pins = std::path::Path::new("/sys/fs/bpf/xdpath")
        .join(&t.host_if)
        .join("FLOWS");
    let dump: Value = serde_json::from_str(
        &run(
            "bpftool",
            &["-j", "map", "dump", "pinned", &pins.to_string_lossy()],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        dump.as_array().map(Vec::len),
        Some(want.len()),
        "the map holds exactly the table"
    );
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn kill_9_fails_open_and_a_restart_brings_rules_and_guest_traffic_back() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let mut d = start(&t, &[]);
    let tx = sender(&t);
    d.call(
        "POST",
        "/v1/flows",
        Some(&json!({"src": "10.77.0.2", "dst": "10.77.0.1", "proto": "udp", "src_port": 1000, "dst_port": 7777, "action": "guest"})),
    )
    .unwrap();
    let guest_frames = |fe: &mut TestFrontend, i: u32| {
        let f = udp_to_host(7777, i);
        tx.send_on_queue(0, std::slice::from_ref(&f)).unwrap();
        fe.recv(0, 1, WAIT)
            .first()
            .map(|g| g.data == f)
            .unwrap_or(false)
    };
    let mut fe = TestFrontend::connect(&d.vhost, FrontendOptions::default()).unwrap();
    fe.post_rx_buffers(0, 64, 2048);
    assert!(guest_frames(&mut fe, 1), "guest traffic before the kill");
    let ping = || {
        Topology::exec(
            &t.peer_ns,
            &["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.77.0.1"],
        )
        .is_ok()
    };
    assert!(ping(), "host traffic before the kill");

    d.kill9();
    drop(fe);
    assert!(
        ping(),
        "host traffic keeps flowing with the daemon dead (fail open)"
    );

    d.spawn().expect("the daemon starts again");
    let flows = d.call("GET", "/v1/flows", None).unwrap();
    assert_eq!(
        flows.as_array().map(Vec::len),
        Some(1),
        "the rule is back: {flows}"
    );
    let mut fe = TestFrontend::connect(&d.vhost, FrontendOptions::default()).unwrap();
    fe.post_rx_buffers(0, 64, 2048);
    assert!(
        guest_frames(&mut fe, 2),
        "guest traffic resumes after the restart"
    );
    assert!(ping(), "host traffic after the restart");
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn the_api_socket_is_closed_to_users_outside_its_group() {
    require_root();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let t = Topology::new(1).expect("topology");
    let d = start(&t, &[]);
    let m = std::fs::metadata(&d.api).unwrap();
    assert_eq!(
        (m.permissions().mode() & 0o777, m.uid(), m.gid()),
        (0o660, 0, 0)
    );
    // The socket's directory must be traversable for the check to be about
    // the socket itself.
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = (65534, 65534);
    let o = d.xdpctl_as(Some(nobody), &["health"]).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(d);

    // With api_group = nobody's group, nobody may.
    let group = run("getent", &["group", "65534"]).unwrap();
    let name = group.split(':').next().unwrap().to_string();
    let d = start(&t, &["--api-group", &name]);
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = d.xdpctl_as(Some(nobody), &["health"]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn the_openapi_document_matches_the_server() {
    require_root();
    let doc: Value = serde_json::from_str(include_str!("../../control/openapi.json")).unwrap();
    let t = Topology::new(1).expect("topology");
    let d = start(&t, &[]);
    let fallback = |text: &str| text.contains("No such API path");
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "1").replace("{queue}", "0");
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/v1/flows") => Some(
                    json!({"src": "10.0.0.1", "dst": "10.0.0.2", "proto": "udp", "action": "host"}),
                ),
                ("post", "/v1/prefixes") => Some(json!({"prefix": "10.0.0.0/8", "action": "host"})),
                ("put", _) => Some(json!([])),
                _ => None,
            };
            let (status, text) = xdpath_control::client::request(
                &d.api,
                &method.to_uppercase(),
                &concrete,
                body.as_ref(),
            )
            .unwrap();
            assert!(
                status != 405 && !fallback(&text),
                "{method} {path} is documented but not served: {status} {text}"
            );
        }
    }
    for (m, p) in [("GET", "/v1/nothing"), ("GET", "/v2/health"), ("GET", "/")] {
        let (status, text) = xdpath_control::client::request(&d.api, m, p, None).unwrap();
        assert!(status == 404 && fallback(&text), "{m} {p}: {status} {text}");
    }
    let (status, _) = xdpath_control::client::request(&d.api, "PATCH", "/v1/flows", None).unwrap();
    assert_eq!(status, 405);
    let metrics = xdpath_control::client::request(&d.api, "GET", "/metrics", None)
        .unwrap()
        .1;
    assert!(
        metrics.contains("xdpath_classifier_frames_total{")
            && metrics.contains("xdpath_queue_rx_frames_total{"),
        "{metrics}"
    );
    // OpenMetrics: label values quoted, the exposition ends with # EOF.
    assert!(
        metrics.contains(&format!(
            "xdpath_guest_connected{{iface=\"{}\",guest=\"default\"}} 0",
            t.host_if
        )) && metrics.ends_with("# EOF\n"),
        "{metrics}"
    );

    // The real answers fit the schemas the document gives for them.
    use xdpath_control::xdpath_api::openapi::{response_schema, validate};
    use xdpath_control::xdpath_api::Endpoint;
    d.call(
        "POST",
        "/v1/prefixes",
        Some(&json!({"id": 9, "prefix": "fd00:99::/32", "action": "guest", "guest": "default"})),
    )
    .unwrap();
    for e in [
        Endpoint::Health,
        Endpoint::ListFlows,
        Endpoint::ListPrefixes,
        Endpoint::ListGuests,
        Endpoint::Queues,
        Endpoint::Stats,
    ] {
        let v = d.call("GET", e.path(), None).unwrap();
        let schema = response_schema(&doc, e).expect("a documented answer");
        let problems = validate(&doc, schema, &v);
        assert!(problems.is_empty(), "{e:?}: {problems:?} in {v}");
    }
    let stats = d.call("GET", "/v1/stats", None).unwrap();
    assert_eq!(
        stats["classifier"].as_object().map(|o| o.len()),
        Some(xdpath_common::Counters::NAMES.len()),
        "{stats}"
    );
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn preflight_failures_name_the_problem_and_the_fix() {
    require_root();
    let t = Topology::new(2).expect("topology");
    let xdpathd = workspace_bin("xdpathd").unwrap();
    let check = |args: &[&str]| {
        let o = std::process::Command::new(&xdpathd)
            .args(["--netns", &t.host_ns])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (code, out) = check(&["--iface", &t.host_if, "--queues", "2", "--check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("all checks passed"), "{out}");

    let (code, out) = check(&["--iface", "nosuch0", "--check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("[interface]") && out.contains("fix:"), "{out}");

    let (code, out) = check(&["--iface", &t.host_if, "--queues", "4"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("[queues]") && out.contains("ethtool -L"),
        "{out}"
    );

    run(
        "ip",
        &["-n", &t.host_ns, "link", "set", &t.host_if, "mtu", "3000"],
    )
    .unwrap();
    let (code, out) = check(&["--iface", &t.host_if]);
    assert_eq!(code, Some(1));
    assert!(out.contains("[mtu]"), "{out}");
    run(
        "ip",
        &["-n", &t.host_ns, "link", "set", &t.host_if, "mtu", "1500"],
    )
    .unwrap();

    run("ip", &["-n", &t.host_ns, "link", "set", &t.host_if, "down"]).unwrap();
    let (code, out) = check(&["--iface", &t.host_if]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("is down") && out.contains("link set dev"),
        "{out}"
    );
    run("ip", &["-n", &t.host_ns, "link", "set", &t.host_if, "up"]).unwrap();

    // Another XDP program: refused up front, naming --force.
    let host_if = t.host_if.clone();
    t.in_host(|| {
        let c =
            xdpath_control::Classifier::attach(&xdpath_control::ClassifierConfig::new(&host_if))
                .unwrap();
        let (code, out) = check(&["--iface", &host_if]);
        assert_eq!(code, Some(1));
        assert!(out.contains("[xdp]") && out.contains("--force"), "{out}");
        c.shutdown().unwrap();
    });

    // Bad settings are refused before any check, naming the setting.
    let (code, out) = check(&["--iface", &t.host_if, "--guest-mac", "52:54:00:zz:00:01"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("`guest_mac`"), "{out}");
    assert!(matches!(
        xdpath_control::client::call(
            std::path::Path::new("/nonexistent/api.sock"),
            "GET",
            "/v1/health",
            None
        ),
        Err(ClientError::NotRunning(_))
    ));
}

/// Workers exist only while a guest is connected: without one, frames for
/// the guest fail open to the host instead of waiting unread in a socket;
/// with one they reach it; after it leaves they fail open again.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn guest_traffic_fails_open_while_no_guest_is_connected() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let d = start(&t, &[]);
    let tx = sender(&t);
    let guest_mac = xdpath_control::config::parse_mac(GUEST_MAC).unwrap();
    let frame = |i: u32| {
        eth(
            guest_mac,
            PEER_MAC,
            ETH_P_IP,
            &ipv4(PEER_IP, [10, 77, 0, 50], 17, &udp(1, 2, &tagged(i, 32))),
        )
    };
    let failed_open = || classifier(&d, "redirect_no_socket");

    let before = failed_open();
    tx.send_on_queue(0, &[frame(1), frame(2)]).unwrap();
    assert!(
        wait_until(WAIT, || failed_open() == before + 2),
        "no guest: the frames go to the host"
    );
    assert_eq!(classifier(&d, "redirects"), 0);

    let mut fe = TestFrontend::connect(&d.vhost, FrontendOptions::default()).unwrap();
    fe.post_rx_buffers(0, 16, 2048);
    assert!(wait_until(WAIT, || d
        .call("GET", "/v1/health", None)
        .is_ok_and(|h| h["guest_connected"] == json!(true))));
    let f = frame(3);
    tx.send_on_queue(0, std::slice::from_ref(&f)).unwrap();
    assert_eq!(
        fe.recv(0, 1, WAIT).first().map(|g| &g.data),
        Some(&f),
        "with a guest: the frame reaches it"
    );

    drop(fe);
    assert!(wait_until(WAIT, || d
        .call("GET", "/v1/health", None)
        .is_ok_and(|h| h["guest_connected"] == json!(false))));
    let before = failed_open();
    tx.send_on_queue(0, &[frame(4)]).unwrap();
    assert!(
        wait_until(WAIT, || failed_open() == before + 1),
        "the guest left: fail open again"
    );
}

/// Rules in the state file of [`a_failing_start_never_attaches_xdp`]: a
/// daemon that attached first would keep XDP attached for the tenths of a
/// second it takes to load them (and, for the later steps, to project them).
const RULES: u32 = 10_000;

/// A state file with `n` valid exact rules, and with `corrupt` a last one
/// whose id is taken: big enough that loading and projecting it take a
/// while, which is when a start that attached XDP first had it attached.
fn big_state(n: u32, corrupt: bool) -> String {
    let rule = |id: u32, i: u32| {
        let mut s = xdpath_control::rules::FlowRuleSpec::new(
            format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256),
            "10.77.0.1",
            "udp",
            "host",
        );
        s.src_port = 1000;
        s.dst_port = 9;
        serde_json::to_string(&s.validate(id, &LegacyIds).expect("a valid rule")).expect("JSON")
    };
    let mut flows: Vec<String> = (1..=n).map(|i| rule(i, i)).collect();
    if corrupt {
        flows.push(rule(1, n + 1));
    }
    format!(
        r#"{{"format":"xdpath-flow-table","version":1,"epoch":1,"flows":[{}],"prefixes":[]}}"#,
        flows.join(",")
    )
}

/// A start that fails (a corrupt state file; an AF_XDP socket, the
/// vhost-user socket or the API socket that cannot be bound) says why and
/// exits 1, and never attaches XDP to the interface, not even for a
/// moment: every fallible step runs before the attach (under systemd's
/// Restart=on-failure a failing start would otherwise blip the NIC every 2
/// s). It leaves nothing behind: no pins, no socket files.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn a_failing_start_never_attaches_xdp() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let pins = std::path::Path::new("/sys/fs/bpf/xdpath").join(&t.host_if);
    let valid = big_state(RULES, false);
    let mut failures = Vec::new();
    // The busy queue last: the kernel frees a closed AF_XDP socket's queue
    // asynchronously, so a later case could find it still taken.
    let cases = [
        "corrupt state file",
        "vhost-user socket",
        "API socket",
        "AF_XDP socket busy",
    ];
    for case in cases {
        let mut d = Daemon::prepare(&t, &["--guest-mac", GUEST_MAC]).unwrap();
        std::fs::create_dir_all(&d.state_dir).unwrap();
        let state = d.state_file(&t.host_if);
        std::fs::write(
            &state,
            if case == cases[0] {
                big_state(RULES, true)
            } else {
                valid.clone()
            },
        )
        .unwrap();
        // Something that is not a directory, where a socket's directory
        // should be.
        let file = d.dir.join("file");
        std::fs::write(&file, b"not a directory").unwrap();
        let mut _busy = None;
        let expect: String = match case {
            "corrupt state file" => {
                format!("{}: is not a valid flow-table state file", state.display())
            }
            "AF_XDP socket busy" => {
                let host_if = t.host_if.clone();
                // The earlier cases' daemons bound queue 0 and exited; the
                // kernel frees it asynchronously, so the test's own bind
                // may find it busy for a moment.
                _busy = Some(t.in_host(move || {
                    let until = std::time::Instant::now() + Duration::from_secs(5);
                    loop {
                        match xdpath_tests::xsk::XskReceiver::bind(&host_if, 0) {
                            Ok(r) => break r,
                            Err(e) if std::time::Instant::now() >= until => {
                                panic!("queue 0 taken: {e}")
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(50)),
                        }
                    }
                }));
                "Creating the AF_XDP socket of queue 0 failed".into()
            }
            "vhost-user socket" => {
                d.vhost = file.join("vhost.sock");
                format!("creating {}", file.display())
            }
            _ => {
                d.api = file.join("api.sock");
                format!("creating {}", file.display())
            }
        };
        let watch = xdpath_tests::daemon::XdpWatch::start(&t.host_ns, &t.host_if).unwrap();
        let (code, log) = d.run_to_exit(&[], Duration::from_secs(120)).unwrap();
        let seen = watch.stop().unwrap();
        assert_eq!(code, Some(1), "{case}: {log}");
        assert!(
            log.contains(&expect),
            "{case}: expected {expect:?} in:\n{log}"
        );
        assert!(seen.polls > 10, "{case}: the watch ran: {seen:?}");
        if !seen.progs.is_empty() {
            failures.push(format!(
                "{case}: XDP program {:?} was attached during a start that failed:\n{log}",
                seen.progs
            ));
        }
        assert!(!pins.exists(), "{case}: pins left behind");
        assert!(
            !d.api.exists() && !d.vhost.exists(),
            "{case}: socket files left behind"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A killed daemon's pins (the rules a state file may have lost) survive
    // a failing start, and the next good start reuses them. (A pin root of
    // their own: no other test's daemon removes them while this one is
    // dead.)
    let t = Topology::new(1).expect("topology");
    let root = PinRoot::new("failing-start");
    let pins = root.0.join(&t.host_if);
    let mut d = Daemon::start(&t, &["--guest-mac", GUEST_MAC, "--pin-root", root.arg()])
        .unwrap_or_else(|e| panic!("{e:#}"));
    d.kill9();
    assert!(pins.join(xdpath_common::MAP_FLOWS).exists());
    let host_if = t.host_if.clone();
    // The kernel frees the killed daemon's queue asynchronously.
    let busy = t.in_host(move || {
        let mut rx = None;
        wait_until(WAIT, || {
            rx = xdpath_tests::xsk::XskReceiver::bind(&host_if, 0).ok();
            rx.is_some()
        });
        rx.expect("queue 0 taken")
    });
    let (code, log) = d.run_to_exit(&[], Duration::from_secs(60)).unwrap();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("its pins stay"), "{log}");
    assert!(
        pins.join(xdpath_common::MAP_FLOWS).exists(),
        "the pins stay:\n{log}"
    );
    drop(busy);
    d.spawn().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        d.log_text().contains("reused_pins=true"),
        "{}",
        d.log_text()
    );
}

/// The keys of pinned map `map` of the daemon on `iface` under pin root
/// `root`, read through libbpf as any tool would.
fn pinned_keys(root: &std::path::Path, iface: &str, map: &str) -> Vec<Vec<u8>> {
    use libbpf_rs::MapCore;
    let path = root.join(iface).join(map);
    let m = libbpf_rs::MapHandle::from_pinned_path(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    m.keys().collect()
}

/// A guest address that was a mistake (the host's own, so ARP for the
/// host is steered to the guest) does not outlive a `kill -9`: the restart
/// with the right address reconciles the pinned maps with the
/// configuration, so ARP for the host reaches the host again and NEIGH and
/// MACS hold only what the configuration says.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn a_restart_after_kill_9_drops_guest_entries_the_config_no_longer_has() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let host_ip = "10.77.0.1";
    let good_ip = "10.77.0.50";
    // A pin root of its own: no other test's daemon removes these pins
    // while this one is dead.
    let root = PinRoot::new("reconcile");
    let mut d = Daemon::prepare(&t, &[]).unwrap();
    let arp_for = |fe: &mut TestFrontend, ip: [u8; 4]| {
        fe.recv(0, 4, Duration::from_secs(2))
            .iter()
            .any(|f| f.data.len() >= 42 && f.data[12..14] == [0x08, 0x06] && f.data[38..42] == ip)
    };
    // The host answers ARP (and so pings) only if the request reaches it.
    let ping_host = || {
        let _ = Topology::exec(&t.peer_ns, &["ip", "neigh", "flush", "dev", &t.peer_if]);
        Topology::exec(&t.peer_ns, &["ping", "-c", "1", "-W", "1", host_ip]).is_ok()
    };

    // The mistake: the host's own address given as the guest's.
    d.set_args(&[
        "--pin-root",
        root.arg(),
        "--guest-mac",
        GUEST_MAC,
        "--guest-ip",
        host_ip,
    ]);
    d.spawn().expect("start with the wrong address");
    let mut fe = TestFrontend::connect(&d.vhost, FrontendOptions::default()).unwrap();
    fe.post_rx_buffers(0, 64, 2048);
    assert!(!ping_host(), "the guest steals the host's ARP");
    assert!(arp_for(&mut fe, HOST_IP), "the request went to the guest");
    d.kill9();
    drop(fe);

    // The restart with the right address: its pins are the killed daemon's.
    d.set_args(&[
        "--pin-root",
        root.arg(),
        "--guest-mac",
        GUEST_MAC,
        "--guest-ip",
        good_ip,
    ]);
    d.spawn().expect("restart with the right address");
    assert!(
        d.log_text().contains("reused_pins=true"),
        "the restart reused the killed daemon's maps:\n{}",
        d.log_text()
    );
    let mut fe = TestFrontend::connect(&d.vhost, FrontendOptions::default()).unwrap();
    fe.post_rx_buffers(0, 64, 2048);
    assert!(
        wait_until(WAIT, || d
            .call("GET", "/v1/health", None)
            .is_ok_and(|h| h["guest_connected"] == json!(true))),
        "the guest is connected"
    );
    assert!(ping_host(), "ARP for the host reaches the host again");
    // (The guest may still see the request: broadcasts from the wire reach
    // the host and, through the slow path, every guest. What matters is
    // that it is no longer steered away from the host, and that NEIGH
    // holds only the configured address, below.)

    let neigh: Vec<[u8; 4]> = pinned_keys(&root.0, &t.host_if, xdpath_common::MAP_NEIGH)
        .iter()
        .map(|k| {
            assert_eq!(k.len(), std::mem::size_of::<xdpath_common::AddrKey>());
            // SAFETY: AddrKey is repr(C) plain data, and `k` has its size.
            let key: xdpath_common::AddrKey =
                unsafe { std::ptr::read_unaligned(k.as_ptr().cast()) };
            [key.addr[0], key.addr[1], key.addr[2], key.addr[3]]
        })
        .collect();
    assert_eq!(
        neigh,
        [[10, 77, 0, 50]],
        "NEIGH holds the configured address only"
    );
    let macs: Vec<[u8; 6]> = pinned_keys(&root.0, &t.host_if, xdpath_common::MAP_MACS)
        .iter()
        .map(|k| {
            assert_eq!(k.len(), std::mem::size_of::<xdpath_common::MacKey>());
            [k[0], k[1], k[2], k[3], k[4], k[5]]
        })
        .collect();
    assert_eq!(
        macs,
        [xdpath_control::config::parse_mac(GUEST_MAC).unwrap()],
        "MACS holds the configured MAC only"
    );
}

/// The NIC's receive queues as `ethtool -l` shows them: (rx, tx).
fn rx_tx_channels(t: &Topology) -> (u32, u32) {
    let host_if = t.host_if.clone();
    let ch = t.in_host(move || xdpath_control::preflight::channels(&host_if).expect("channels"));
    (ch.rx_queues(), ch.tx_count)
}

/// A NIC with more receive queues than `--queues` is refused, with the fix
/// in the message: RSS would put some flows on queues without a socket,
/// and they would silently miss the guest. So is one with fewer. With
/// `--set-channels` the daemon sets the count itself and starts.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn a_nic_with_other_queue_counts_is_refused_or_set_with_set_channels() {
    require_root();
    let t = Topology::new(2).expect("topology");
    let xdpathd = workspace_bin("xdpathd").unwrap();
    let run_once = |args: &[&str]| {
        let o = std::process::Command::new(&xdpathd)
            .args([
                "--netns",
                &t.host_ns,
                "--iface",
                &t.host_if,
                "--guest-mac",
                GUEST_MAC,
            ])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let host_if = t.host_if.as_str();

    // More receive queues than pairs: refused, by --check and by a start.
    for extra in [&["--queues", "1", "--check"][..], &["--queues", "1"]] {
        let (code, out) = run_once(extra);
        assert_eq!(code, Some(1), "{extra:?}: {out}");
        for part in [
            format!(
                "[queues] {host_if} has 2 receive queues but only 1 queue pairs were asked for"
            ),
            "would never reach the guest".to_string(),
            format!("ethtool -L {host_if} rx 1 tx 1"),
            "--set-channels".to_string(),
            "--queues 2".to_string(),
        ] {
            assert!(
                out.contains(&part),
                "{extra:?}: {part:?} missing in:\n{out}"
            );
        }
    }
    assert_eq!(rx_tx_channels(&t), (2, 2), "a refusal changes nothing");
    // More than the NIC can have: refused even with --set-channels.
    let (code, out) = run_once(&["--queues", "3", "--set-channels", "--check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("can have at most 2 receive queues") && out.contains("--queues 2"),
        "{out}"
    );

    // veth runs native XDP only with at least as many receive queues as
    // its peer has transmit queues: the peer sends on one.
    Topology::exec(&t.peer_ns, &["ethtool", "-L", &t.peer_if, "tx", "1"]).unwrap();
    let mut d = Daemon::start(
        &t,
        &["--guest-mac", GUEST_MAC, "--queues", "1", "--set-channels"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(rx_tx_channels(&t), (1, 1), "set to --queues");
    assert!(
        d.log_text().contains("receive queues set (--set-channels)"),
        "{}",
        d.log_text()
    );
    let tx = sender(&t);
    let mut fe = TestFrontend::connect(&d.vhost, FrontendOptions::default()).unwrap();
    fe.post_rx_buffers(0, 16, 2048);
    assert!(wait_until(WAIT, || d
        .call("GET", "/v1/health", None)
        .is_ok_and(|h| h["guest_connected"] == json!(true))));
    let guest_mac = xdpath_control::config::parse_mac(GUEST_MAC).unwrap();
    let f = eth(
        guest_mac,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(PEER_IP, [10, 77, 0, 50], 17, &udp(1, 2, &tagged(1, 32))),
    );
    tx.send_on_queue(0, std::slice::from_ref(&f)).unwrap();
    assert_eq!(
        fe.recv(0, 1, WAIT).first().map(|g| &g.data),
        Some(&f),
        "the guest's traffic arrives"
    );
    drop(fe);
    assert_eq!(d.stop().and_then(|s| s.code()), Some(0), "{}", d.log_text());
    assert_eq!(
        rx_tx_channels(&t),
        (1, 1),
        "the count stays after the daemon"
    );

    // Fewer receive queues than pairs: refused, or raised.
    let (code, out) = run_once(&["--queues", "2", "--check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "[queues] {host_if} has 1 receive queues but 2 queue pairs"
        )) && out.contains("--set-channels"),
        "{out}"
    );
    let d = Daemon::start(
        &t,
        &["--guest-mac", GUEST_MAC, "--queues", "2", "--set-channels"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(rx_tx_channels(&t), (2, 2));
    let queues = d.call("GET", "/v1/queues", None).unwrap();
    assert_eq!(queues.as_array().map(Vec::len), Some(2), "{queues}");
}

/// A private root for pin directories on bpffs, removed on drop (only it).
struct PinRoot(std::path::PathBuf);

impl PinRoot {
    fn new(name: &str) -> Self {
        let p = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/xdpath-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("a directory on bpffs");
        Self(p)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("UTF-8 path")
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pins whose interface no longer exists (a daemon killed, then its NIC
/// removed) do not stay forever: `xdpathd --check` reports them, and a
/// daemon's start-up and `xdpathd --remove-stale-pins` remove them. A live
/// daemon's pins, in another namespace, and a directory with anything but
/// xdpath's maps in it are left alone.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd, bpffs"]
fn stale_pins_are_reported_and_removed_and_nothing_else_is() {
    require_root();
    let root = PinRoot::new("stale");
    let with_root = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["--pin-root".into(), root.arg().into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    // A live daemon, in a namespace of its own (started first: its start
    // would remove the stale directory made next).
    let tb = Topology::new(1).expect("topology");
    let args = with_root(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let live = Daemon::start(&tb, &args).unwrap_or_else(|e| panic!("{e:#}"));
    let live_pins = root.0.join(&tb.host_if);
    // A daemon that was killed, and its interface gone with its namespace.
    let stale_if = {
        let t = Topology::new(1).expect("topology");
        let args = with_root(&[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut d = Daemon::start(&t, &args).unwrap_or_else(|e| panic!("{e:#}"));
        d.kill9();
        t.host_if.clone()
    };
    let stale = root.0.join(&stale_if);
    assert!(
        stale.join(xdpath_common::MAP_FLOWS).exists(),
        "pins stay after kill -9"
    );
    // A directory with something else in it.
    let foreign = root
        .0
        .join(format!("xdpfk{}", std::process::id() % 100_000));
    std::fs::create_dir_all(&foreign).unwrap();
    let other = foreign.join("other");
    run(
        "bpftool",
        &[
            "map",
            "create",
            other.to_str().unwrap(),
            "type",
            "hash",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "1",
            "name",
            "other",
        ],
    )
    .unwrap();

    // --check, from a third namespace, reports the stale one only.
    let tc = Topology::new(1).expect("topology");
    let xdpathd = workspace_bin("xdpathd").unwrap();
    let check = || {
        let o = std::process::Command::new(&xdpathd)
            .args([
                "--netns",
                &tc.host_ns,
                "--iface",
                &tc.host_if,
                "--check",
                "--pin-root",
                root.arg(),
            ])
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let mut out = String::new();
    // The kernel frees a killed daemon's program asynchronously.
    let reported = wait_until(WAIT, || {
        let (code, o) = check();
        out = o;
        code == Some(0) && out.contains(&format!("[pins] stale pin directory {}", stale.display()))
    });
    assert!(reported, "{out}");
    assert!(
        out.contains("all checks passed"),
        "a note, not a failure: {out}"
    );
    assert!(
        out.contains(&format!("interface {stale_if} does not exist")),
        "{out}"
    );
    assert!(
        !out.contains(&tb.host_if) && !out.contains(foreign.to_str().unwrap()),
        "only the stale one: {out}"
    );
    assert!(stale.exists(), "--check changes nothing");

    // A daemon's start-up removes it, and only it.
    let args = with_root(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut dc = Daemon::start(&tc, &args).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!stale.exists(), "removed at start-up:\n{}", dc.log_text());
    assert!(
        dc.log_text().contains(&format!(
            "removed the stale pin directory {}",
            stale.display()
        )),
        "{}",
        dc.log_text()
    );
    for m in xdpath_common::ALL_MAPS {
        assert!(
            live_pins.join(m).exists(),
            "the live daemon's {m} pin stays"
        );
    }
    assert!(other.exists(), "the foreign directory stays");
    assert!(
        live.call("GET", "/v1/health", None).is_ok(),
        "the live daemon runs on"
    );

    // xdpathd --remove-stale-pins (what `cargo xtask undeploy` runs).
    dc.kill9();
    let stale_c = root.0.join(&tc.host_if);
    drop(tc);
    assert!(stale_c.exists());
    let mut out = String::new();
    let removed = wait_until(WAIT, || {
        let o = std::process::Command::new(&xdpathd)
            .args(["--remove-stale-pins", "--pin-root", root.arg()])
            .output()
            .unwrap();
        out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        o.status.success() && !stale_c.exists()
    });
    assert!(removed, "{out}");
    assert!(
        out.contains(&format!(
            "removed the stale pin directory {}",
            stale_c.display()
        )),
        "{out}"
    );
    assert!(live_pins.join(xdpath_common::MAP_FLOWS).exists() && other.exists());
    drop(live);
    assert!(
        !live_pins.exists(),
        "the live daemon removes its own pins when it stops"
    );
}

// ----- The API's limits (issue 11, #9) -----

/// Connects to the API and sends `head` (and nothing more).
fn api_conn(d: &Daemon, head: &[u8]) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(&d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head).unwrap();
    s
}

/// Reads an answer to its end (the daemon closes after one answer): the
/// status and the body.
fn answer_of(s: &mut std::os::unix::net::UnixStream) -> (u16, String) {
    use std::io::Read;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Sends `head`, then `body` from another thread (until the daemon stops
/// reading), and reads the answer meanwhile.
fn send_streaming(
    d: &Daemon,
    head: String,
    body: impl FnOnce(&mut std::os::unix::net::UnixStream) + Send + 'static,
) -> (u16, String) {
    let mut s = api_conn(d, head.as_bytes());
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || body(&mut w));
    let got = answer_of(&mut s);
    writer.join().unwrap();
    got
}

/// `n` exact rules as a JSON file in the daemon's directory.
fn rules_file(d: &Daemon, name: &str, n: u32) -> std::path::PathBuf {
    let rules: Vec<Value> = (0..n)
        .map(|i| json!({"src": "10.1.0.1", "dst": format!("10.2.{}.{}", i / 256, i % 256), "proto": "udp", "action": "drop"}))
        .collect();
    let path = d.dir.join(name);
    std::fs::write(&path, serde_json::to_vec(&rules).unwrap()).unwrap();
    path
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn sigterm_ends_the_daemon_at_once_with_slow_api_clients() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let mut d = start(&t, &[]);
    // 50 clients that sent half a request line, and one in the middle of
    // a body.
    let mut slow: Vec<_> = (0..50).map(|_| api_conn(&d, b"GET /v1/hea")).collect();
    slow.push(api_conn(
        &d,
        b"PUT /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[{\"src\"",
    ));
    assert!(
        d.call("GET", "/v1/health", None).is_ok(),
        "the API still answers"
    );
    let (took, status) = d.stop_timed(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "an orderly exit: {status:?}; log:\n{}",
        d.log_text()
    );
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM took {took:?} with 51 slow clients; log:\n{}",
        d.log_text()
    );
    for mut s in slow {
        assert_eq!(answer_of(&mut s).0, 0, "closed without an answer");
    }
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn api_bodies_are_capped_before_they_are_read() {
    use std::io::Write;
    require_root();
    let t = Topology::new(1).expect("topology");
    let d = start(&t, &[]);
    let (_, peak_before) = d.memory_kib().unwrap();
    // 300 MiB announced: 413 at once, without a byte of the body.
    let mut s = api_conn(
        &d,
        b"PUT /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 314572800\r\n\r\n",
    );
    let (status, body) = answer_of(&mut s);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("268435456 bytes"), "{body}");
    // Chunked past a route's cap (16 MiB for prefixes): cut off there.
    let (status, body) = send_streaming(
        &d,
        "PUT /v1/prefixes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
        |w| {
            let piece = vec![b' '; 1 << 20];
            let _ = w.write_all(b"1\r\n[\r\n");
            for _ in 0..40 {
                let ok = write!(w, "{:x}\r\n", piece.len()).is_ok()
                    && w.write_all(&piece).is_ok()
                    && w.write_all(b"\r\n").is_ok();
                if !ok {
                    return;
                }
            }
        },
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("16777216 bytes"), "{body}");
    // A 100 MB bogus field: refused at once, and not sent back.
    let (status, body) = send_streaming(
        &d,
        format!(
            "PUT /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            100_000_060
        ),
        |w| {
            let _ =
                w.write_all(br#"[{"src": "10.0.0.1", "proto": "udp", "action": "drop", "dst": ""#);
            let piece = vec![b'x'; 1 << 20];
            for _ in 0..95 {
                if w.write_all(&piece).is_err() {
                    return;
                }
            }
        },
    );
    assert_eq!(status, 400, "{body:.300}");
    assert!(body.len() < 1024, "{} bytes: {body:.300}", body.len());
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["field"], "dst", "{v}");
    // None of it was buffered.
    let (_, peak_after) = d.memory_kib().unwrap();
    assert!(
        peak_after < peak_before + 48 * 1024,
        "peak RSS went from {peak_before} to {peak_after} KiB"
    );
    // A small route's cap: 64 KiB. (The answer comes before the body is
    // read: the client may see its write fail, and the connection reset
    // after the answer.)
    let (status, body) = send_streaming(
        &d,
        format!(
            "POST /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            65 << 10
        ),
        |w| {
            let _ = w.write_all(&vec![b' '; 65 << 10]);
        },
    );
    assert_eq!(status, 413, "{body}");
    // The socket is in place with nothing left beside it from binding.
    let stray: Vec<_> = std::fs::read_dir(&d.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".api"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn rule_caps_are_enforced_and_xdpctl_streams_bulk_lists() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let d = start(&t, &["--max-flows", "300"]);
    // One rule too many: refused naming the field and the cap.
    let over = rules_file(&d, "over.json", 301);
    let o = d
        .xdpctl(&["flow", "replace", &over.to_string_lossy()])
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Field `rules`")
            && err.contains("more than 300 exact rules")
            && err.contains("max_flows")
            && err.contains("(HTTP 413)"),
        "{err}"
    );
    assert_eq!(d.call("GET", "/v1/flows", None).unwrap(), json!([]));
    // At the cap: in place, with the count (and the generation with
    // --json).
    let full = rules_file(&d, "full.json", 300);
    let o = d
        .xdpctl(&["flow", "replace", &full.to_string_lossy()])
        .unwrap();
    assert_eq!(ok_stdout(&o).unwrap(), "300 flow rules in place\n");
    let o = d
        .xdpctl(&["--json", "flow", "replace", &full.to_string_lossy()])
        .unwrap();
    let v: Value = serde_json::from_str(&ok_stdout(&o).unwrap()).unwrap();
    assert_eq!(v["count"], 300, "{v}");
    assert!(v["generation"].as_u64().is_some_and(|g| g <= 1), "{v}");
    assert_eq!(
        d.call("GET", "/v1/flows", None)
            .unwrap()
            .as_array()
            .map(Vec::len),
        Some(300)
    );
    // Full: a single add is refused too.
    let o = d
        .xdpctl(&[
            "flow", "add", "--src", "10.9.0.1", "--dst", "10.9.0.2", "--proto", "tcp", "--action",
            "drop",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1) && err.contains("max_flows") && err.contains("(HTTP 507)"),
        "{err}"
    );
    // From stdin (chunked), and a file that is not there.
    let bin = workspace_bin("xdpctl").unwrap();
    let o = std::process::Command::new(&bin)
        .arg("--api-socket")
        .arg(&d.api)
        .args(["flow", "replace", "-"])
        .stdin(std::fs::File::open(rules_file(&d, "some.json", 7)).unwrap())
        .output()
        .unwrap();
    assert_eq!(ok_stdout(&o).unwrap(), "7 flow rules in place\n");
    let o = d
        .xdpctl(&["flow", "replace", "/nonexistent/rules.json"])
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1) && err.contains("reading /nonexistent/rules.json"),
        "{err}"
    );
    // A bad rule in a streamed list still names its index and field.
    let bad = d.dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"src": "10.0.0.1", "dst": "10.0.0.2", "proto": "udp", "action": "drop"},
            {"src": "10.0.0.1", "dst": "10.0.0.300", "proto": "udp", "action": "drop"}]"#,
    )
    .unwrap();
    let o = d
        .xdpctl(&["flow", "replace", &bad.to_string_lossy()])
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1) && err.contains("Rule 1: field `dst`"),
        "{err}"
    );
    assert_eq!(
        d.call("GET", "/v1/flows", None)
            .unwrap()
            .as_array()
            .map(Vec::len),
        Some(7),
        "refusals change nothing"
    );
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a real xdpathd"]
fn a_request_over_the_api_connection_cap_waits_and_is_answered() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let d = start(&t, &[]);
    let held: Vec<_> = (0..64).map(|_| api_conn(&d, b"GET /v1/hea")).collect();
    // The 65th waits: no answer while 64 fresh clients hold the slots.
    let (tx, rx) = std::sync::mpsc::channel();
    let api = d.api.clone();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(xdpath_control::client::request(
            &api,
            "GET",
            "/v1/health",
            None,
        ));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "the 65th connection was served while 64 fresh ones were held"
    );
    // Then it is answered (not refused) while all 64 still trickle their
    // heads: the oldest of them, 2 s without a full head, gives its slot.
    let answer = rx
        .recv_timeout(WAIT)
        .expect("the waiting request is answered while the slow clients stay");
    assert!(matches!(answer, Ok((200, _))), "{answer:?}");
    waiter.join().expect("waiter");
    let closed = held
        .iter()
        .filter(|s| {
            use std::io::Read;
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let mut rest = Vec::new();
            (&mut &**s).read_to_end(&mut rest).is_ok()
        })
        .count();
    assert_eq!(closed, 1, "exactly one slow client gave its slot");
    drop(held);
    let metrics = xdpath_control::client::request(&d.api, "GET", "/metrics", None)
        .expect("metrics")
        .1;
    assert!(
        metrics.contains(&format!(
            "xdpath_api_slow_clients_closed_total{{iface=\"{}\"}} 1\n",
            t.host_if
        )),
        "{metrics}"
    );
    assert!(
        d.call("GET", "/v1/health", None).is_ok(),
        "the slots come back"
    );
}
