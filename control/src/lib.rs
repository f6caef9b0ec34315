//! xdpath control plane.
//!
//! - [`api`]: the daemon's HTTP/JSON API on a Unix socket (routes, errors,
//!   the shared state behind them).
//! - [`classifier`]: loads the XDP program, attaches it to one interface,
//!   pins and writes its maps, reads its counters, detaches and unpins.
//! - [`pins`]: the pin directories: the lock a classifier holds on its
//!   own, and which ones are stale (their interface is gone and nobody
//!   uses them).
//! - [`netlink`]: the small rtnetlink queries the loader needs (which XDP
//!   program is attached, detach for `--force`).
//! - [`client`]: a minimal HTTP-over-Unix-socket client of the API (used by
//!   `xdpctl` and the tests).
//! - [`config`]: the daemon's settings (TOML file and flags), validated.
//! - [`preflight`]: every check the daemon makes before touching anything,
//!   each failure with its fix.
//! - [`socket_pool`]: one AF_XDP socket per queue, registered in the XSKMAP,
//!   replaced by messages to its worker.
//! - [`rules`]: exact and prefix rules: the JSON wire form, validation whose
//!   errors name the field, conversion to and from the BPF keys.
//! - [`maps`]: the boundary to the classifier's rule maps, the [`maps::RuleMaps`]
//!   trait (implemented by [`Classifier`] and by the in-memory
//!   [`maps::FakeMaps`] that tests fail on purpose).
//! - [`platform`]: what the control plane runs on: the kernel (the
//!   attached classifier, AF_XDP sockets) or memory (fake maps, in-memory
//!   ports), so the API, the flow table and the socket pool test without
//!   root.
//! - [`flow_table`]: the flow table, source of truth of the rules, projected
//!   with the guest entries into the classifier's maps with atomic bulk
//!   replace (two generations and a switch), persisted in a state file.
//!
//! The daemon `xdpathd`, its API, the flow table and the socket pool build
//! on these (docs/ARCHITECTURE.md, "Control path").

pub mod api;
pub mod classifier;
pub mod client;
pub mod config;
pub mod flood;
pub mod flow_table;
pub mod guest_registry;
pub mod guests;
pub mod maps;
pub mod netlink;
pub mod pins;
pub mod platform;
pub mod preflight;
pub mod rules;
pub mod socket_pool;

pub use classifier::{Classifier, ClassifierConfig, ClassifierError, XdpAttachMode};

/// The API's types (requests, answers, enums, the route table, the OpenAPI
/// document, the client), shared with `xdpctl`.
pub use xdpath_api;
