//! xdpath's fuzz targets, as a library: each module is one target's input
//! decoding, harness and properties, and `fuzz_targets/<name>.rs` is a
//! one-line `fuzz_target!` over its `run`. A violated property panics,
//! which libFuzzer reports as a crash and saves as a reproducer.
//!
//! | target | module | what it drives |
//! |---|---|---|
//! | `chain_walk` | [`chain_walk`] | `chain::{walk, read_into, write_from}` over multi-region memory |
//! | `queue_pair` | [`queue_pair`] | `QueuePair::process_rx` / `process_tx` over a `MemPort` |
//! | `relay` | [`relay`] | `relay::run` between two socket pairs |
//! | `vhost_user` | [`vhost_user`] | a `Server<MemPort>` driven by raw vhost-user messages |
//! | `rules_json` | [`rules_json`] | the API's rule parsing, single and list |
//! | `config_toml` | [`config_toml`] | `DaemonConfig::from_toml` and `validate` |
//! | `flow_table_load` | [`flow_table_load`] | `FlowTable::load` on arbitrary state files |
//!
//! Shared pieces: [`input`] (reading an input as fields, writing seeds),
//! [`guest`] (multi-region guest memory and its model), [`wire`]
//! (vhost-user framing), [`process`] (fds, threads, bounded waits) and
//! [`seeds`] (the committed seed corpus, generated).
//!
//! Run them with `cargo xtask fuzz [--target T] [--secs N]` (see the
//! README, "Fuzzing"); `cargo test` here runs every committed seed through
//! its target once, without libFuzzer.

pub mod chain_walk;
pub mod config_toml;
pub mod flow_table_load;
pub mod guest;
pub mod input;
pub mod process;
pub mod queue_pair;
pub mod relay;
pub mod rules_json;
pub mod seeds;
pub mod vhost_user;
pub mod wire;

/// Runs one input through the target named `name`; false if there is no
/// such target here.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "chain_walk" => {
            let _ = chain_walk::run(data);
        }
        "queue_pair" => {
            let _ = queue_pair::run(data);
        }
        "relay" => {
            let _ = relay::run(data);
        }
        "vhost_user" => {
            let _ = vhost_user::run(data);
        }
        "rules_json" => rules_json::run(data),
        "config_toml" => config_toml::run(data),
        "flow_table_load" => flow_table_load::run(data),
        _ => return false,
    }
    true
}
