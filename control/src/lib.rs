//! xdpath control plane.
//!
//! - [`classifier`]: loads the XDP program, attaches it to one interface,
//!   pins and writes its maps, reads its counters, detaches and unpins.
//! - [`netlink`]: the small rtnetlink queries the loader needs (which XDP
//!   program is attached, detach for `--force`).
//!
//! The daemon `xdpathd`, its API, the flow table and the socket pool build
//! on these (see DESIGN.md, control path).

pub mod classifier;
pub mod netlink;

pub use classifier::{Classifier, ClassifierConfig, ClassifierError, XdpAttachMode};
