//! The xdpathd API as its users see it: the request and response types
//! shared by the daemon (`xdpath-control`), `xdpctl` (`xdpath-cli`) and the
//! tests, the route table, the OpenAPI document and the client.
//!
//! This crate builds on stable Rust with light dependencies (serde, and
//! with features hyper, clap or schemars): no eBPF toolchain, aya, vhost or
//! AF_XDP. Its only workspace dependency is `xdpath-common` (no_std types
//! and the counter definitions).
//!
//! - [`rules`]: exact and prefix rules: the JSON the API takes and lists,
//!   validation whose errors name the field, and conversion to the
//!   classifier's map keys.
//! - [`types`]: the other answers: [`Health`], [`Guest`], [`QueueStatus`],
//!   [`QueueSocket`], [`Stats`], [`Replaced`], and the error body
//!   [`ErrorBody`].
//! - [`guests`]: [`GuestSpec`] (what a user declares), [`GuestInfo`]
//!   (what the daemon lists), their checks, and [`GuestNames`], the seam
//!   through which rules name guests.
//! - [`Action`] and [`XdpAttachMode`]: the one definition of each, for the
//!   config file, flags, rules and health.
//! - [`MacAddr`]: a MAC address, parsed once.
//! - [`endpoints`]: every route ([`Endpoint`]) as data.
//! - `client` (feature `client`): a blocking client over the daemon's Unix
//!   socket, on hyper.
//! - `openapi` (feature `openapi`): the JSON Schemas of the types and the
//!   OpenAPI document generated from them and from [`Endpoint::ALL`].

pub mod endpoints;
mod enums;
pub mod guests;
mod mac;
pub mod rules;
pub mod types;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "openapi")]
pub mod openapi;

pub use endpoints::{Endpoint, Method};
pub use enums::{Action, UnknownAction, XdpAttachMode};
pub use guests::{
    GuestInfo, GuestNames, GuestSpec, GuestSpecError, GuestTable, LegacyIds, MAX_GUESTS,
};
pub use mac::{BadMac, MacAddr};
pub use types::{
    drops, ClassifierCounters, ErrorBody, Guest, Health, QueueCounterValues, QueueSocket,
    QueueStats, QueueStatus, Replaced, SocketState, Stats,
};
