//! `xdpctl`'s output, byte for byte: every command of
//! `fixtures/golden.json` runs against a stand-in daemon that answers with
//! `fixtures/api.json`, and must print exactly what the xdpctl before the
//! API crate printed (stdout, stderr, exit code), and send the same
//! requests (bodies compared as JSON, with the ports a rule leaves out
//! counted as 0, which is what the daemon reads them as).
//!
//! The golden file was recorded by running the previous xdpctl against the
//! same answers; no root, no daemon. One change since, on purpose (issue
//! 11): `PUT /v1/flows` and `PUT /v1/prefixes` answer with the count and
//! the generation instead of the list, so `--json flow replace` prints that
//! answer (the human line, "N flow rules in place", is the same). Another
//! with several guests: `GET /v1/guests` lists `GuestInfo` (name, id,
//! counters), so `guest list` prints new columns, and the guest commands
//! (`guest add`, `show`, `del`) and `flow add --guest NAME` were recorded
//! from this xdpctl.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const API: &str = include_str!("fixtures/api.json");
const GOLDEN: &str = include_str!("fixtures/golden.json");

type Log = Arc<Mutex<Vec<Value>>>;

/// Answers one request from the fixtures; logs `[method, path, body]`.
fn answer(stream: &mut std::os::unix::net::UnixStream, fx: &Value, log: &Log) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let (head, body) = loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return;
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        while raw.len() < end + 4 + len {
            let n = stream.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        break (head, raw[end + 4..].to_vec());
    };
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let (method, path) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    let body_json: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    log.lock()
        .unwrap()
        .push(json!([method, path, body_json.clone()]));
    let bad_dst = method == "POST"
        && path == "/v1/flows"
        && String::from_utf8_lossy(&body).contains("10.0.0.300");
    let (status, resp) = if bad_dst {
        (
            400,
            json!({"error": "Field `dst`: \"10.0.0.300\" is not an IPv4 or IPv6 address.", "field": "dst"}),
        )
    } else {
        match fx.get(format!("{method} {path}")) {
            Some(v) => (v[0].as_u64().unwrap_or(500), v[1].clone()),
            None => (
                404,
                json!({"error": "No such API path; see control/openapi.json."}),
            ),
        }
    };
    let payload = if resp.is_null() {
        String::new()
    } else {
        resp.to_string()
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
        payload.len()
    );
}

/// The stand-in's private directory, removed when the test ends, passed
/// or failed.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A stand-in daemon on a fresh socket in a private directory; it serves
/// until the test ends.
fn stand_in() -> (PathBuf, Log, Scratch) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "xdpctl-golden-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let fx: Value = serde_json::from_str(API).unwrap();
    let log: Log = Arc::default();
    let l2 = log.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            match s {
                Ok(mut s) => answer(&mut s, &fx, &l2),
                Err(_) => return,
            }
        }
    });
    (sock, log, Scratch(dir))
}

/// What the daemon reads a rule body as: absent ports are 0.
fn as_read(v: &Value) -> Value {
    let mut v = v.clone();
    let rules: Vec<&mut Value> = match &mut v {
        Value::Array(a) => a.iter_mut().collect(),
        o @ Value::Object(_) => vec![o],
        _ => vec![],
    };
    for r in rules {
        if let Some(o) = r.as_object_mut() {
            if o.contains_key("src") {
                o.entry("src_port").or_insert(json!(0));
                o.entry("dst_port").or_insert(json!(0));
            }
        }
    }
    v
}

fn xdpctl(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xdpctl"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn every_command_prints_what_it_printed_before() {
    let (sock, log, _scratch) = stand_in();
    let rules_file = sock.with_file_name("rules.json");
    std::fs::write(
        &rules_file,
        r#"[{"src":"10.0.0.2","dst":"10.0.0.1","proto":"udp","action":"drop"}]"#,
    )
    .unwrap();
    let golden: Vec<Value> = serde_json::from_str(GOLDEN).unwrap();
    assert!(golden.len() > 25, "the golden file has the recorded runs");
    let mut checked = 0;
    for g in &golden {
        let args: Vec<String> = g["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a.as_str()
                    .unwrap()
                    .replace("RULES_FILE", &rules_file.to_string_lossy())
            })
            .collect();
        // The recorded runs talked to the stand-in with `--socket`, except
        // those that never reach a daemon.
        let runs: Vec<Vec<String>> = if args.first().map(String::as_str) == Some("<flag>") {
            ["--socket", "--api-socket"]
                .iter()
                .map(|f| [vec![f.to_string()], args[1..].to_vec()].concat())
                .collect()
        } else if g["requests"].as_array().is_some_and(|r| !r.is_empty())
            || g["code"] == 0
            || g["stderr"].as_str().is_some_and(|e| e.contains("HTTP"))
        {
            ["--socket", "--api-socket"]
                .iter()
                .map(|f| {
                    [
                        vec![f.to_string(), sock.to_string_lossy().into()],
                        args.clone(),
                    ]
                    .concat()
                })
                .collect()
        } else {
            vec![args.clone()]
        };
        for run in runs {
            log.lock().unwrap().clear();
            let o = xdpctl(&run);
            let what = format!("xdpctl {}", run.join(" "));
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                g["stdout"].as_str().unwrap(),
                "stdout of {what}"
            );
            assert_eq!(
                String::from_utf8_lossy(&o.stderr),
                g["stderr"].as_str().unwrap(),
                "stderr of {what}"
            );
            assert_eq!(
                o.status.code().map(i64::from),
                g["code"].as_i64(),
                "exit code of {what}"
            );
            let sent: Vec<Value> = log.lock().unwrap().clone();
            let want = g["requests"].as_array().unwrap();
            assert_eq!(sent.len(), want.len(), "requests of {what}: {sent:?}");
            for (s, w) in sent.iter().zip(want) {
                assert_eq!((&s[0], &s[1]), (&w[0], &w[1]), "request of {what}");
                assert_eq!(as_read(&s[2]), as_read(&w[2]), "request body of {what}");
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked} runs checked");
}

#[test]
fn the_flow_table_header_and_json_shape_are_the_documented_ones() {
    let (sock, _, _scratch) = stand_in();
    let s = sock.to_string_lossy().to_string();
    let o = xdpctl(&[
        "--api-socket".into(),
        s.clone(),
        "flow".into(),
        "list".into(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        text.lines().next(),
        Some("ID  SRC       DST       PROTO  SRC_PORT  DST_PORT  ACTION  GUEST")
    );
    let o = xdpctl(&["--api-socket".into(), s, "--json".into(), "stats".into()]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut names: Vec<&str> = v["classifier"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = xdpath_common_names();
    names.sort_unstable();
    want.sort_unstable();
    assert_eq!(names, want);
    assert!(Path::new(env!("CARGO_BIN_EXE_xdpctl")).is_file());
}

/// The classifier counters' names as the API crate defines them.
fn xdpath_common_names() -> Vec<&'static str> {
    xdpath_api::ClassifierCounters::NAMES.to_vec()
}
