//! Instructions per frame of one worker batch, counted by callgrind (a
//! count, not a time: repeatable on a shared, noisy machine). The batch is
//! the one `batch.rs` times (`bench_support::rig`): `process_rx` or
//! `process_tx` moving 64 frames between an in-memory port and a mock
//! guest. `cargo xtask bench --instructions` runs every case under
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='*measured_step*' <this binary> <case> <batches>
//! ```
//!
//! so only the measured calls count (not the untimed reset between them),
//! and divides by the frames moved. Without valgrind it just runs the
//! batches and checks them: `cargo bench -p xdpath-dataplane --bench
//! instructions -- <case> <batches>`.

use xdpath_dataplane::bench_support::rig::{BatchRig, Case};
use xdpath_dataplane::port::BATCH;

/// The cases: name, what is measured.
const CASES: [(&str, Case); 8] = [
    (
        "rx_64B",
        Case::Rx {
            frame_len: 64,
            buf_len: 1536,
            mrg_rxbuf: false,
        },
    ),
    (
        "rx_64B_mrg",
        Case::Rx {
            frame_len: 64,
            buf_len: 1536,
            mrg_rxbuf: true,
        },
    ),
    (
        "rx_1500B",
        Case::Rx {
            frame_len: 1500,
            buf_len: 1536,
            mrg_rxbuf: false,
        },
    ),
    (
        "rx_1500B_mrg",
        Case::Rx {
            frame_len: 1500,
            buf_len: 1536,
            mrg_rxbuf: true,
        },
    ),
    (
        "rx_1500B_mrg_1024",
        Case::Rx {
            frame_len: 1500,
            buf_len: 1024,
            mrg_rxbuf: true,
        },
    ),
    (
        "tx_64B",
        Case::Tx {
            frame_len: 64,
            split: false,
        },
    ),
    (
        "tx_64B_2desc",
        Case::Tx {
            frame_len: 64,
            split: true,
        },
    ),
    (
        "tx_1500B",
        Case::Tx {
            frame_len: 1500,
            split: false,
        },
    ),
];

/// The measured call, out of line so callgrind can count it alone.
#[inline(never)]
fn measured_step(rig: &mut BatchRig) {
    rig.step();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; cargo's own flags are not ours.
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.first() == Some(&"list") {
        for (name, _) in CASES {
            println!("{name}");
        }
        return;
    }
    let wanted = args.first().copied();
    let batches: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    for (name, case) in CASES {
        if wanted.is_some_and(|w| w != name) {
            continue;
        }
        let mut rig = BatchRig::new(case).expect("the rig");
        rig.check().expect("one call moves a full batch");
        for _ in 0..batches {
            rig.reset().expect("reset the rig");
            measured_step(&mut rig);
        }
        println!(
            "{name}: {} frames in {batches} batches",
            batches * BATCH as u64
        );
    }
}
