//! Fuzz target: the XDP classifier through `BPF_PROG_TEST_RUN` against a
//! reference parser (etherparse), on cases decoded from the fuzz input
//! (`tests/fuzz/helpers/xdp_diff.rs`, shared with the privileged test
//! `classifier_agrees_with_the_reference_parser` in
//! `tests/tests/classifier.rs`). Properties: a frame a drop rule matches is
//! dropped, a frame is redirected only where a guest rule or entry matches,
//! the counters are exact, and program and reference agree on the action
//! and the deciding table.
//!
//! Needs root (it loads the program; it attaches it nowhere). The object
//! is the one the workspace build embeds in xdpath-control: it is read at
//! run time from `XDPATH_EBPF_OBJECT`, or else the newest
//! `target/*/build/xdpath-control-*/out/xdpath.bpf.o` of the workspace, so
//! this crate needs neither the control crate nor the nightly eBPF build
//! under the fuzzer's sanitizer flags.
//!
//! Seed corpus (`tests/fuzz/corpus/xdp_classifier`): the privileged test's
//! edge cases as verbatim frames (`edge-*`), and generated inputs that reach
//! each combination of parse level, action and deciding table (`gen-*`).
//!
//! `cargo xtask fuzz --target xdp_classifier`, or by hand:
//! `cargo +nightly fuzz run --fuzz-dir tests/fuzz xdp_classifier`.
#![no_main]

// Shared with the privileged test, which uses parts this target does not.
#[allow(dead_code)]
#[path = "../helpers/xdp_diff.rs"]
mod xdp_diff;

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// The newest classifier object a workspace build left under `target/`.
fn built_object() -> Option<PathBuf> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for profile in std::fs::read_dir(&target).ok()?.flatten() {
        let Ok(builds) = std::fs::read_dir(profile.path().join("build")) else {
            continue;
        };
        for b in builds.flatten() {
            if !b
                .file_name()
                .to_string_lossy()
                .starts_with("xdpath-control-")
            {
                continue;
            }
            let obj = b.path().join("out/xdpath.bpf.o");
            if let Ok(modified) = obj.metadata().and_then(|m| m.modified()) {
                if best.as_ref().is_none_or(|(t, _)| modified > *t) {
                    best = Some((modified, obj));
                }
            }
        }
    }
    best.map(|(_, p)| p)
}

fn load() -> xdp_diff::Harness {
    let path = std::env::var_os("XDPATH_EBPF_OBJECT")
        .map(PathBuf::from)
        .or_else(built_object)
        .unwrap_or_else(|| {
            panic!(
                "no classifier object: set XDPATH_EBPF_OBJECT, or build the workspace once \
                 (`cargo build -p xdpath-control`)"
            )
        });
    let object = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("cannot read the classifier object {}: {e}", path.display()));
    eprintln!("xdp_classifier: classifier object {}", path.display());
    xdp_diff::Harness::load(&object).unwrap_or_else(|e| {
        panic!("{e} (this target needs root: it loads the XDP program for test runs)")
    })
}

thread_local! {
    static HARNESS: RefCell<Option<xdp_diff::Harness>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let case = xdp_diff::Case::from_bytes(data);
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(load);
        let out = h
            .run(&case)
            .unwrap_or_else(|e| panic!("{e} ({:?})", std::error::Error::source(&e)));
        if let Err(v) = xdp_diff::check(&case, &out) {
            panic!("{v}");
        }
    });
});
