//! `cargo xtask demo`: the embedded default topology.
//!
//! With no NIC given, a private "host" namespace holds one end of a
//! 2-queue veth pair (standing in for the host NIC) and a "wire" namespace
//! holds the other end (a peer host). xdpath's classifier is attached to
//! the host end with AF_XDP sockets on both queues; the demo sends guest
//! traffic on each queue, host traffic (ping), and traffic a drop rule
//! catches, shows where every frame went, prints the counters, and tears
//! everything down. Exits non-zero if any frame went somewhere else.
//!
//! Issue #5 extends this with a QEMU guest behind the vhost-user backend.

use anyhow::{bail, Context, Result};
use std::time::Duration;
use xdpath_common::{Action, Counters, FlowKey, RuleValue, FAMILY_V4};
use xdpath_control::{Classifier, ClassifierConfig};
use xdpath_tests::frames::*;
use xdpath_tests::packet::Sender;
use xdpath_tests::topology::{Topology, HOST_IP, HOST_MAC, PEER_IP, PEER_MAC};
use xdpath_tests::xsk::XskReceiver;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xde, 0x00, 0x01];
const FRAMES_PER_QUEUE: u32 = 100;

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    let t = Topology::new(2).context("creating the demo topology")?;
    println!(
        "topology: netns {} [{} 10.77.0.1] <-veth, 2 queues-> netns {} [{} 10.77.0.2]",
        t.host_ns, t.host_if, t.peer_ns, t.peer_if
    );
    let peer_if = t.peer_if.clone();
    let tx = t.in_peer(move || Sender::new(&peer_if))?;
    let result = t.in_host(|| run(&t, &tx));
    drop(t);
    println!("teardown: namespaces, veth pair, XDP program and pins removed");
    result
}

fn run(t: &Topology, tx: &Sender) -> Result<()> {
    let mut c = Classifier::attach(&ClassifierConfig::new(&t.host_if))?;
    println!(
        "xdp: program id {} attached (native) to {}, maps pinned in {}",
        c.prog_id()?,
        t.host_if,
        c.pin_dir().display()
    );
    let mut xsks = Vec::new();
    for q in 0..2 {
        let x = XskReceiver::bind(&t.host_if, q)?;
        c.register_socket(q, x.fd())?;
        xsks.push(x);
    }
    println!("af_xdp: one socket per queue (0, 1) registered in XSKS");
    let guest = RuleValue {
        action: Action::Guest as u32,
        port: 1,
        rule_id: 1,
        _pad: 0,
    };
    c.insert_mac(GUEST_MAC, &guest)?;
    let mut drop_key = FlowKey {
        gen: 0,
        family: FAMILY_V4,
        proto: 17,
        _pad: 0,
        src_port: 53u16.to_be(),
        dst_port: 9999u16.to_be(),
        src: [0; 16],
        dst: [0; 16],
    };
    drop_key.src[..4].copy_from_slice(&PEER_IP);
    drop_key.dst[..4].copy_from_slice(&HOST_IP);
    c.insert_flow(
        &drop_key,
        &RuleValue {
            action: Action::Drop as u32,
            port: 0,
            rule_id: 2,
            _pad: 0,
        },
    )?;
    println!(
        "rules: MAC {} -> guest port 1 (rule 1); udp 10.77.0.2:53 -> 10.77.0.1:9999 drop (rule 2)",
        mac(GUEST_MAC)
    );

    for q in 0..2u32 {
        let frames: Vec<Vec<u8>> = (0..FRAMES_PER_QUEUE)
            .map(|i| {
                eth(
                    GUEST_MAC,
                    PEER_MAC,
                    ETH_P_IP,
                    &ipv4(
                        PEER_IP,
                        [10, 77, 0, 50],
                        17,
                        &udp(1000 + q as u16, 2000, &tagged(i, 64)),
                    ),
                )
            })
            .collect();
        tx.send_on_queue(q, &frames)?;
        let got = xsks[q as usize].recv(frames.len(), Duration::from_secs(3))?;
        let intact = got
            .iter()
            .zip(&frames)
            .filter(|(g, f)| &g.data == *f)
            .count();
        println!("guest traffic on queue {q}: sent {}, received on the queue-{q} socket {} ({} byte-identical)", frames.len(), got.len(), intact);
        if intact != frames.len() {
            bail!(
                "queue {q}: {} of {} guest frames arrived intact",
                intact,
                frames.len()
            );
        }
    }
    let dropped: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            eth(
                HOST_MAC,
                PEER_MAC,
                ETH_P_IP,
                &ipv4(PEER_IP, HOST_IP, 17, &udp(53, 9999, &tagged(i, 16))),
            )
        })
        .collect();
    tx.send_on_queue(0, &dropped)?;
    let out = Topology::exec(
        &t.peer_ns,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.77.0.1"],
    )
    .context("host traffic: ping from the wire namespace to the host end")?;
    let summary = out
        .lines()
        .find(|l| l.contains("received"))
        .unwrap_or("")
        .trim()
        .to_string();
    println!("host traffic: ping 10.77.0.1 from the wire: {summary}");
    std::thread::sleep(Duration::from_millis(200));
    let k = c.counters()?;
    print_counters(&k);
    if k.action_drop != 20
        || k.action_guest != 2 * u64::from(FRAMES_PER_QUEUE)
        || !summary.contains(" 3 received")
    {
        bail!("counters do not match the traffic sent");
    }
    c.shutdown()?;
    println!("demo ok");
    Ok(())
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn print_counters(k: &Counters) {
    println!("counters (all CPUs):");
    for (name, v) in [
        ("frames", k.frames),
        ("to guest (redirected)", k.action_guest),
        ("to host", k.action_host),
        ("dropped", k.action_drop),
        ("by exact rule", k.class_exact),
        ("by prefix rule", k.class_prefix),
        ("by guest MAC", k.class_mac),
        ("by ARP/ND target", k.class_neigh),
        ("by default", k.class_default),
        ("parse errors", k.parse_errors),
        ("guest, no socket (fail open)", k.redirect_no_socket),
    ] {
        println!("  {name:<30} {v:>8}");
    }
}
