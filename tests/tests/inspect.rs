//! Third-party tools can read what xdpath loads and pins: libbpf (through
//! libbpf-rs) opens the object and the pinned maps, bpftool shows the
//! program and dumps the maps with their BTF field names. And nothing is
//! left behind afterwards.
//!
//! Every test needs root and is marked ignored: a non-root run lists them
//! as ignored; `cargo xtask test` as root runs them.

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use xdpath_common::{self as common, Action, Counters, FlowKey, RuleValue, FAMILY_V4};
use xdpath_control::{Classifier, ClassifierConfig};
use xdpath_tests::topology::{run, Topology};
use xdpath_tests::{require_root, wait_until};

fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is one of the repr(C), padding-free types of xdpath-common.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

#[test]
#[ignore = "needs root: BPF program load, pinned maps on bpffs, network namespaces"]
fn libbpf_opens_the_object_and_loads_it() {
    require_root();
    let open = libbpf_rs::ObjectBuilder::default()
        .open_memory(xdpath_control::classifier::EBPF_OBJECT)
        .expect("libbpf opens the object (BTF maps)");
    let names: BTreeSet<String> = open
        .maps()
        .map(|m| m.name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    for m in common::ALL_MAPS {
        assert!(names.contains(m), "libbpf does not see map {m}: {names:?}");
    }
    let obj = open
        .load()
        .expect("libbpf loads the object: the verifier accepts it");
    let prog_names: Vec<String> = obj
        .progs()
        .map(|p| p.name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(prog_names, [common::PROGRAM_NAME]);
}

#[test]
#[ignore = "needs root: BPF program load, pinned maps on bpffs, network namespaces"]
fn pinned_maps_are_readable_by_libbpf_and_bpftool() {
    require_root();
    let t = Topology::new(1).expect("topology");
    t.in_host(|| {
        let mut c = Classifier::attach(&ClassifierConfig::new(&t.host_if)).expect("attach");
        let key = FlowKey {
            gen: 0,
            family: FAMILY_V4,
            proto: 6,
            _pad: 0,
            src_port: 1234u16.to_be(),
            dst_port: 80u16.to_be(),
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let value = RuleValue {
            action: Action::Guest as u32,
            port: 3,
            rule_id: 42,
            _pad: 0,
        };
        c.insert_flow(&key, &value).unwrap();
        let dir = c.pin_dir().to_path_buf();
        assert_eq!(dir, Path::new("/sys/fs/bpf/xdpath").join(&t.host_if));

        let expect = [
            (common::MAP_XSKS, MapType::Xskmap),
            (common::MAP_FLOWS, MapType::Hash),
            (common::MAP_PREFIXES, MapType::LpmTrie),
            (common::MAP_MACS, MapType::Hash),
            (common::MAP_NEIGH, MapType::Hash),
            (common::MAP_CONFIG, MapType::Array),
            (common::MAP_COUNTERS, MapType::PercpuArray),
        ];
        for (name, ty) in expect {
            let m = MapHandle::from_pinned_path(dir.join(name))
                .unwrap_or_else(|e| panic!("libbpf opens pinned {name}: {e}"));
            assert_eq!(m.map_type(), ty, "{name}");
            assert_eq!(m.name(), name);
        }
        let flows = MapHandle::from_pinned_path(dir.join(common::MAP_FLOWS)).unwrap();
        assert_eq!(flows.key_size() as usize, std::mem::size_of::<FlowKey>());
        let got = flows
            .lookup(bytes_of(&key), MapFlags::ANY)
            .unwrap()
            .expect("rule visible through the pin");
        assert_eq!(got, bytes_of(&value));
        let counters = MapHandle::from_pinned_path(dir.join(common::MAP_COUNTERS)).unwrap();
        assert_eq!(
            counters.value_size() as usize,
            std::mem::size_of::<Counters>()
        );
        assert!(counters
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .unwrap()
            .is_some());

        // bpftool: the program, and the maps with their BTF field names.
        let id = c.prog_id().unwrap().to_string();
        let show = run("bpftool", &["prog", "show", "id", &id]).expect("bpftool prog show");
        assert!(
            show.contains("xdp") && show.contains(common::PROGRAM_NAME),
            "{show}"
        );
        let dump = run(
            "bpftool",
            &[
                "map",
                "dump",
                "pinned",
                &dir.join(common::MAP_FLOWS).to_string_lossy(),
            ],
        )
        .expect("bpftool map dump FLOWS");
        assert!(
            dump.contains("\"rule_id\": 42") && dump.contains("\"dst_port\""),
            "{dump}"
        );
        let dump = run(
            "bpftool",
            &[
                "map",
                "dump",
                "pinned",
                &dir.join(common::MAP_COUNTERS).to_string_lossy(),
            ],
        )
        .expect("bpftool map dump COUNTERS");
        assert!(dump.contains("\"parse_errors\""), "{dump}");
        c.shutdown().unwrap();
    });
}

#[test]
#[ignore = "needs root: BPF program load, pinned maps on bpffs, network namespaces"]
fn nothing_is_left_behind() {
    require_root();
    let t = Topology::new(2).expect("topology");
    let (host_ns, peer_ns, host_if) = (t.host_ns.clone(), t.peer_ns.clone(), t.host_if.clone());
    let prog_id = t.in_host(|| {
        let mut c = Classifier::attach(&ClassifierConfig::new(&t.host_if)).expect("attach");
        let x = xdpath_tests::xsk::XskReceiver::bind(&t.host_if, 1).expect("AF_XDP socket");
        c.register_socket(1, x.fd()).unwrap();
        let id = c.prog_id().unwrap();
        let pins = c.pin_dir().to_path_buf();
        assert!(pins.join(common::MAP_XSKS).exists());
        c.shutdown().unwrap();
        assert!(!pins.exists(), "pins removed by shutdown");
        let ifindex = xdpath_control::classifier::ifindex(&t.host_if).unwrap();
        assert_eq!(xdpath_tests::wait_detached(ifindex), None, "detached");
        id
    });
    drop(t);
    let ns = run("ip", &["netns", "list"]).unwrap();
    assert!(
        !ns.contains(&host_ns) && !ns.contains(&peer_ns),
        "namespaces left: {ns}"
    );
    assert!(!Path::new("/sys/fs/bpf/xdpath").join(&host_if).exists());
    // The kernel frees the program once the last fd is gone (RCU, async).
    let gone = wait_until(Duration::from_secs(5), || {
        run("bpftool", &["prog", "show", "id", &prog_id.to_string()]).is_err()
    });
    assert!(gone, "program {prog_id} still loaded");
}
