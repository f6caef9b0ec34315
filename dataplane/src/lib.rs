//! xdpath dataplane: a vhost-user-net backend whose queue pairs are fed by
//! AF_XDP sockets.
//!
//! - [`port`]: what a queue pair needs of its wire side
//!   ([`port::FramePort`]), how ports are opened ([`port::PortFactory`]),
//!   xdpilone-style TX batches, and what every port shares (batch size,
//!   headroom, [`port::PortStats`]). Depends on no port.
//! - [`xsk`]: AF_XDP sockets, one per guest and NIC queue, sharing the
//!   queue's UMEM, fill and completion rings and free frames
//!   ([`xsk::XskPort`]), the real [`port::FramePort`], and the factory
//!   that keeps the per-queue shared state ([`xsk::XskFactory`]).
//! - [`mem_port`]: an in-memory [`port::FramePort`] on an in-memory NIC
//!   whose queues take one port per guest ([`mem_port::MemPort`],
//!   [`mem_port::MemWire`], [`mem_port::MemFactory`]) for tests and
//!   benchmarks (no root, no NIC).
//! - [`chain`]: walking and copying one virtqueue descriptor chain, with
//!   every guest-controlled address and length checked.
//! - [`queue_pair`]: the data path of one queue pair (RX: port -> guest,
//!   TX: guest -> port), owned by one worker thread.
//! - [`backend`]: the vhost-user-net device for one frontend connection;
//!   routes each worker's events to its queue pair.
//! - [`relay`]: passes vhost-user messages between the frontend and the
//!   request handler, holding SET_VRING_ENABLE that QEMU sends early, and
//!   refusing what the library does not check (too many held messages,
//!   memory regions past the end of their files, a message left half
//!   sent).
//! - [`server`]: the listening socket (with its permissions), one
//!   connection at a time, the worker lifecycle, reconnects, and retries
//!   of connection set-ups that failed for want of fds or threads.
//! - [`handoff`]: frames passed by message from a pair whose RX vring the
//!   guest did not enable to the worker of one it did.
//! - [`counters`]: per-queue-pair counters, written by the owner once per
//!   batch, readable by anyone.
//! - [`virtio_net`]: feature bits, header and config space.
//!
//! Everything from the queue pair up ([`queue_pair::QueuePair`],
//! [`backend::NetBackend`], [`server::Server`], [`server::ServerHandle`])
//! is generic over the [`port::FramePort`] and monomorphized: the daemon
//! runs it on [`xsk::XskPort`], the non-root tests on
//! [`mem_port::MemPort`]. There is no global state: everything hangs off a
//! [`server::Server`].

pub mod backend;
#[doc(hidden)]
pub mod bench_support;
pub mod chain;
pub mod counters;
pub mod handoff;
pub mod mem_port;
pub mod port;
pub mod queue_pair;
pub mod relay;
pub mod server;
pub mod switch;
pub mod virtio_net;
pub mod xsk;

pub use backend::NetConfig;
pub use counters::CounterSnapshot;
pub use mem_port::{MemFactory, MemPort, MemQueue, MemWire};
pub use port::{FramePort, PortFactory, PortStats};
pub use server::{
    ConnectionEvent, Server, ServerError, ServerFaults, ServerHandle, SetupStep, SocketPermissions,
};
pub use xsk::{XskConfig, XskFactory, XskPort};
