//! The AF_XDP socket pool: one socket per NIC queue, created up front,
//! registered in the XSKMAP while a guest's workers run (a dead worker's
//! entry goes: its traffic fails open to the host), replaced on request.
//!
//! Ownership (DESIGN.md rule 2): the sockets themselves belong to the
//! dataplane's workers once handed over; the pool keeps only what the
//! control plane needs to know about each queue, in one mutex that is never
//! held across a blocking call (binding a socket, waiting for a worker).
//! A replacement is a sequence of messages, in the DESIGN.md teardown
//! order: XSKMAP entry out (the queue fails open to the host) -> the worker
//! releases its socket -> bind a new one -> XSKMAP entry in -> the worker
//! installs it.
//!
//! If the daemon dies, the kernel closes its sockets and drops them from
//! the XSKMAP by itself: traffic fails open to the host.

use crate::classifier::Classifier;
use serde::Serialize;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use xdpath_dataplane::{ServerHandle, XskConfig, XskPort};

/// How long a worker may take to apply a socket change.
const WORKER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the pool knows about one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketState {
    /// A socket is bound, registered and owned by the worker.
    Bound,
    /// Being replaced right now.
    Replacing,
    /// No socket: the queue fails open to the host.
    Released,
    /// The last replacement failed; the message says why.
    Failed(String),
}

/// One queue as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueInfo {
    /// Queue index (= queue pair index).
    pub queue: u32,
    /// Socket state.
    pub state: SocketState,
    /// Sockets created for this queue so far (1 + replacements).
    pub generation: u32,
}

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No such queue.
    #[error("Queue {0} does not exist.")]
    NoSuchQueue(u32),
    /// A replacement of this queue is already running.
    #[error("Queue {0} is being replaced already.")]
    Busy(u32),
    /// Creating a socket failed.
    #[error("Creating the AF_XDP socket of queue {queue} failed: {detail}")]
    Socket {
        /// Queue.
        queue: u32,
        /// Why.
        detail: String,
    },
    /// The XSKMAP could not be written.
    #[error("Registering queue {queue} in the XSKMAP failed: {detail}")]
    Map {
        /// Queue.
        queue: u32,
        /// Why.
        detail: String,
    },
    /// The worker did not take the change.
    #[error("The worker of queue {queue} did not apply the change: {detail}")]
    Worker {
        /// Queue.
        queue: u32,
        /// Why.
        detail: String,
    },
}

/// The pool for one interface.
#[derive(Debug)]
pub struct SocketPool {
    iface: String,
    busy_poll: bool,
    queues: Mutex<Vec<QueueInfo>>,
}

fn bind(iface: &str, queue: u32, busy_poll: bool) -> Result<XskPort, PoolError> {
    let mut cfg = XskConfig::new(iface, queue);
    cfg.busy_poll = busy_poll;
    XskPort::bind(&cfg).map_err(|e| PoolError::Socket {
        queue,
        detail: e.to_string(),
    })
}

impl SocketPool {
    /// Creates one socket per queue `0..queues` (with preferred busy
    /// polling if `busy_poll`); returns the pool and the sockets for the
    /// dataplane server (in queue order). The sockets are registered in the
    /// XSKMAP only while a guest's workers run ([`SocketPool::register_all`]
    /// and [`SocketPool::unregister_all`], driven by the server's connection
    /// events): without a guest, its traffic fails open to the host.
    pub fn create(
        iface: &str,
        queues: u32,
        busy_poll: bool,
    ) -> Result<(Self, Vec<XskPort>), PoolError> {
        let ports = (0..queues)
            .map(|q| bind(iface, q, busy_poll))
            .collect::<Result<Vec<_>, _>>()?;
        let infos = (0..queues)
            .map(|queue| QueueInfo {
                queue,
                state: SocketState::Bound,
                generation: 1,
            })
            .collect();
        Ok((
            Self {
                iface: iface.to_string(),
                busy_poll,
                queues: Mutex::new(infos),
            },
            ports,
        ))
    }

    /// A guest's workers run: steer each queue to its socket, `fds` being
    /// (queue, socket fd) as the dataplane reports them.
    pub fn register_all(
        &self,
        c: &mut Classifier,
        fds: &[(u32, std::os::fd::RawFd)],
    ) -> Result<(), PoolError> {
        for &(queue, fd) in fds {
            // SAFETY: the dataplane reports the fds of sockets it owns and
            // keeps open for the duration of the connection event.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            c.register_socket(queue, &fd).map_err(|e| PoolError::Map {
                queue,
                detail: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// The queues and their sockets.
    pub fn list(&self) -> Vec<QueueInfo> {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, queue: u32, state: SocketState, bump: bool) {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(info) = q.get_mut(queue as usize) {
            info.state = state;
            if bump {
                info.generation += 1;
            }
        }
    }

    /// Replaces queue `queue`'s socket with a fresh one. `classifier` is
    /// locked only around the XSKMAP updates.
    pub fn replace(
        &self,
        queue: u32,
        classifier: &Mutex<impl AsMut<Classifier>>,
        server: &ServerHandle,
    ) -> Result<QueueInfo, PoolError> {
        {
            let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            let info = q
                .get_mut(queue as usize)
                .ok_or(PoolError::NoSuchQueue(queue))?;
            if info.state == SocketState::Replacing {
                return Err(PoolError::Busy(queue));
            }
            info.state = SocketState::Replacing;
        }
        let result = self.replace_steps(queue, classifier, server);
        match &result {
            Ok(()) => self.set(queue, SocketState::Bound, true),
            Err(e) => self.set(queue, SocketState::Failed(e.to_string()), false),
        }
        result?;
        Ok(self.list().swap_remove(queue as usize))
    }

    fn replace_steps(
        &self,
        queue: u32,
        classifier: &Mutex<impl AsMut<Classifier>>,
        server: &ServerHandle,
    ) -> Result<(), PoolError> {
        let map_err = |e: crate::ClassifierError| PoolError::Map {
            queue,
            detail: e.to_string(),
        };
        // 1. Fail open first.
        classifier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .unregister_socket(queue)
            .map_err(map_err)?;
        // 2. The worker lets go of its socket (blocking; no lock held).
        server
            .release_socket(queue as usize, WORKER_TIMEOUT)
            .map_err(|e| PoolError::Worker {
                queue,
                detail: e.to_string(),
            })?;
        // 3. A new socket on the same queue. The kernel frees the queue from
        //    the old socket asynchronously (its buffer pool is torn down by
        //    a workqueue after close), so binding may fail for a moment.
        let deadline = std::time::Instant::now() + WORKER_TIMEOUT;
        let port = loop {
            match bind(&self.iface, queue, self.busy_poll) {
                Ok(p) => break p,
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        // 4. Traffic to it again (only while a guest's workers run: without
        //    a guest the queue stays failed open), 5. the worker takes it.
        if server.connected() {
            classifier
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
                .register_socket(queue, &port)
                .map_err(map_err)?;
        }
        server
            .install_socket(queue as usize, port, WORKER_TIMEOUT)
            .map_err(|e| PoolError::Worker {
                queue,
                detail: e.to_string(),
            })
    }

    /// Every queue's XSKMAP entry out, so traffic fails open to the host:
    /// when a guest's workers stopped, and as teardown step 1.
    pub fn unregister_all(&self, c: &mut Classifier) {
        for info in self.list() {
            let _ = c.unregister_socket(info.queue);
        }
    }
}
