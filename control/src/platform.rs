//! What the control plane runs on: the kernel, or memory.
//!
//! The daemon's shared state ([`crate::api::ControlState`]) and so every API
//! handler are generic over a [`Platform`], which names the two kernel
//! boundaries the control plane writes through:
//!
//! - [`Platform::Maps`]: the classifier's maps (the rule maps the flow table
//!   projects into, the XSKMAP the socket pool writes, the counters);
//! - [`Platform::Ports`]: where the socket pool gets a queue's port.
//!
//! [`Kernel`] is what `xdpathd` runs: the attached [`Classifier`] and AF_XDP
//! sockets ([`XskFactory`]). [`InMemory`] is the same control plane on
//! [`FakeMaps`] and in-memory ports ([`MemFactory`]): the API, the flow
//! table, the socket pool and the vhost-user server then run without root,
//! which is how the route check and the rollback tests run as any user
//! (docs/ARCHITECTURE.md, "Kernel boundaries and their doubles").
//!
//! Both are monomorphized; nothing here is dispatched dynamically.

use crate::classifier::{Classifier, ClassifierError};
use crate::maps::{FakeMaps, RuleMaps};
use crate::socket_pool::SocketMap;
use xdpath_common::Counters;
use xdpath_dataplane::{MemFactory, PortFactory, XskFactory};

/// Everything the control plane needs of the classifier's maps.
pub trait ClassifierMaps: RuleMaps + SocketMap + Send + 'static {
    /// The program's counters, summed over all CPUs.
    fn counters(&self) -> Result<Counters, ClassifierError>;
}

impl ClassifierMaps for Classifier {
    fn counters(&self) -> Result<Counters, ClassifierError> {
        Classifier::counters(self)
    }
}

impl ClassifierMaps for FakeMaps {
    fn counters(&self) -> Result<Counters, ClassifierError> {
        Ok(FakeMaps::counters(self))
    }
}

/// The kernel boundaries the control plane is built on (see the module
/// documentation).
pub trait Platform: Send + Sync + 'static {
    /// The classifier's maps.
    type Maps: ClassifierMaps;
    /// Where a queue's port comes from.
    type Ports: PortFactory + Send + Sync;

    /// The factory of guest `guest`'s ports: on every queue, a port of its
    /// own (docs/ARCHITECTURE.md, "Several guests").
    fn guest_ports(ports: &Self::Ports, guest: u32) -> Self::Ports;
}

/// The real thing: an attached classifier and AF_XDP sockets.
#[derive(Debug)]
pub enum Kernel {}

impl Platform for Kernel {
    type Maps = Classifier;
    type Ports = XskFactory;

    /// The same factory: every port it opens is a new socket on the
    /// queue, sharing the queue's UMEM.
    fn guest_ports(ports: &XskFactory, _guest: u32) -> XskFactory {
        ports.clone()
    }
}

/// The control plane in memory: fake maps and in-memory ports.
#[derive(Debug)]
pub enum InMemory {}

impl Platform for InMemory {
    type Maps = FakeMaps;
    type Ports = MemFactory;

    /// The wire's ports of `guest` (each guest has its own port on every
    /// in-memory queue).
    fn guest_ports(ports: &MemFactory, guest: u32) -> MemFactory {
        ports.for_guest(guest)
    }
}
