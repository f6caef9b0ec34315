//! Running guests: what the daemon runs for each guest it serves.
//!
//! A guest is served by its own vhost-user server (its socket, its queue
//! pairs and their workers, `xdpath_dataplane::server`) and its own socket
//! pool (its AF_XDP socket on every NIC queue and its XSKMAP entries,
//! [`crate::socket_pool`]). The sockets of one queue share that queue's
//! UMEM, so the kernel delivers each guest's frames straight to its socket
//! (the XSKMAP entry [`xdpath_common::xsk_slot`] of its id and the queue):
//! no frame crosses from one guest's worker to another's
//! (docs/ARCHITECTURE.md, "Several guests").
//!
//! Ownership: a [`RunningGuest`] owns its server's thread (stopped by
//! [`RunningGuest::stop_steering`], joined by [`RunningGuest::join`]) and
//! shares its pool with that server's connection hook, which registers
//! and unregisters the guest's XSKMAP entries under the maps' lock
//! ([`Tables`], shared by every guest and the API). What the guest *is*
//! (name, MAC, addresses, socket) is the registry's
//! ([`crate::guest_registry`]); this module only runs it.
//!
//! Liveness: a guest's entries are in the XSKMAP exactly while its
//! frontend's workers run. A guest added but not connected, or
//! disconnected, has none, so the classifier sends its frames to the host
//! (fail open), as it does for an id that is not a guest at all.

use crate::api::Tables;
use crate::config::DaemonConfig;
use crate::guest_registry::{Guest, GuestError, GuestRegistry};
use crate::platform::Platform;
use crate::socket_pool::{PoolError, SocketMap, SocketPool};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use xdpath_api::GuestSpec;
use xdpath_dataplane::queue_pair::GuestLink;
use xdpath_dataplane::switch::{GuestSwitch, Port as SwitchPort, SwitchTable, TxGuard};
use xdpath_dataplane::{
    ConnectionEvent, NetConfig, PortFactory, Server, ServerError, ServerHandle, SocketPermissions,
};

/// The dataplane's handle of one guest on platform `P`.
pub type GuestHandle<P> = ServerHandle<<<P as Platform>::Ports as PortFactory>::Port>;

/// Told when a guest's server thread ends on its own (not because
/// [`RunningGuest::stop_steering`] stopped it), with the guest's name.
pub type OnExit = Arc<dyn Fn(&str, Result<(), ServerError>) + Send + Sync>;

/// Everything needed to run one guest, resolved and checked.
#[derive(Debug, Clone)]
pub struct GuestPlan {
    /// The guest's id: its port in map values, its XSKMAP entries.
    pub id: u32,
    /// The guest's name.
    pub name: String,
    /// The guest's MAC address, told to it in the config space.
    pub mac: Option<[u8; 6]>,
    /// The guest's addresses (ARP/ND steering, anti-spoofing).
    pub ips: Vec<IpAddr>,
    /// Where its frontend connects (or, in client mode, listens).
    pub vhost_socket: PathBuf,
    /// Client mode: connect to the frontend's socket instead of listening.
    pub client: bool,
    /// Mode, owner and group of that socket.
    pub permissions: SocketPermissions,
    /// The device: a queue pair per NIC queue, `queues` of them offered
    /// to the driver.
    pub net: NetConfig,
}

/// Errors of starting a guest.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Its sockets could not be opened.
    #[error("Guest {name}: opening its AF_XDP sockets failed.")]
    Sockets {
        /// The guest.
        name: String,
        /// Why.
        #[source]
        source: PoolError,
    },
    /// Its vhost-user server could not be built (the socket could not be
    /// bound, say).
    #[error("Guest {name}: starting its vhost-user server failed.")]
    Server {
        /// The guest.
        name: String,
        /// Why.
        #[source]
        source: ServerError,
    },
    /// Its server thread could not be started.
    #[error("Guest {name}: starting its thread failed.")]
    Thread {
        /// The guest.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One guest being served (see the module documentation).
pub struct RunningGuest<P: Platform> {
    plan: GuestPlan,
    pool: Arc<SocketPool<P::Ports>>,
    server: GuestHandle<P>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by [`RunningGuest::stop_steering`]: the server's end is then
    /// ours, not news for `on_exit`.
    stopping: Arc<AtomicBool>,
}

impl<P: Platform> std::fmt::Debug for RunningGuest<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningGuest")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl<P: Platform> RunningGuest<P> {
    /// Opens the guest's sockets through `ports` (a factory whose ports
    /// are this guest's), binds its vhost-user socket and starts its
    /// server. Its XSKMAP entries are written only while a frontend's
    /// workers run, under `tables`' lock. `on_exit` is told if the server
    /// ends on its own (a worker failed, say). On error nothing is left:
    /// no socket file, no thread, no XSKMAP entry.
    pub fn start(
        plan: GuestPlan,
        ports: P::Ports,
        tables: Arc<Mutex<Tables<P::Maps>>>,
        on_exit: OnExit,
    ) -> Result<Self, RunError> {
        let name = plan.name.clone();
        let queues = u32::from(plan.net.queue_pairs);
        let (pool, sockets) = SocketPool::create(ports, queues)
            .and_then(|(pool, sockets)| Ok((pool.for_guest(plan.id)?, sockets)))
            .map_err(|source| RunError::Sockets {
                name: name.clone(),
                source,
            })?;
        let pool = Arc::new(pool);
        let server = if plan.client {
            Server::connecting(&plan.vhost_socket, plan.net.clone(), sockets)
        } else {
            Server::with_permissions(
                &plan.vhost_socket,
                plan.permissions,
                plan.net.clone(),
                sockets,
            )
        };
        let mut server = server.map_err(|source| RunError::Server {
            name: name.clone(),
            source,
        })?;
        let events = pool.clone();
        let hook_tables = tables;
        let hook_name = name.clone();
        server.on_connection(move |ev| {
            let mut t = hook_tables.lock().unwrap_or_else(PoisonError::into_inner);
            match ev {
                ConnectionEvent::Up(fds) => {
                    if let Err(e) = events.register_all(&mut t.classifier, fds) {
                        tracing::error!(guest = %hook_name, "steering the queues to the guest failed: {e}");
                    }
                }
                ConnectionEvent::Down => events.unregister_all(&mut t.classifier),
            }
        });
        let handle = server.handle();
        let thread_name = name.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let stopped = stopping.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{name}"))
            .spawn(move || {
                let r = server.run();
                if !stopped.load(Ordering::Acquire) {
                    on_exit(&thread_name, r);
                }
            })
            .map_err(|source| RunError::Thread {
                name: name.clone(),
                source,
            })?;
        Ok(Self {
            plan,
            pool,
            server: handle,
            thread: Mutex::new(Some(thread)),
            stopping,
        })
    }

    /// What the guest runs with.
    pub fn plan(&self) -> &GuestPlan {
        &self.plan
    }

    /// The guest's id.
    pub fn id(&self) -> u32 {
        self.plan.id
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// Its socket pool.
    pub fn pool(&self) -> &SocketPool<P::Ports> {
        &self.pool
    }

    /// Its dataplane handle (counters, connection state, socket changes).
    pub fn server(&self) -> &GuestHandle<P> {
        &self.server
    }

    /// Stops the guest in the teardown order of docs/ARCHITECTURE.md: its
    /// XSKMAP entries out (its traffic fails open to the host), its
    /// server stopped and its workers joined, its sockets closed and its
    /// socket file removed. `maps` is the caller's, locked. Stopping twice
    /// is harmless.
    pub fn stop_steering(&self, maps: &mut impl SocketMap) {
        self.stopping.store(true, Ordering::Release);
        self.pool.unregister_all(maps);
        self.server.stop();
    }

    /// Waits for the guest's server thread (after
    /// [`RunningGuest::stop_steering`]): when this returns, its workers are
    /// joined and its sockets closed.
    pub fn join(&self) {
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!(guest = %self.plan.name, "the guest's server thread panicked");
            }
        }
    }
}

/// Why a change to the set of guests was refused or failed. A refusal
/// ([`GuestSetError::Guest`] with a 4xx status) changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum GuestSetError {
    /// Refused (bad or clashing spec, no such guest, rules send to it,
    /// no id left) or not saved: the registry's error.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The flow table or the maps failed.
    #[error(transparent)]
    Table(#[from] crate::flow_table::FlowTableError),
    /// The guest could not be started.
    #[error(transparent)]
    Start(#[from] RunError),
    /// The guest was removed (its entries and rules are gone, its traffic
    /// fails open to the host) but the guest file still lists it.
    #[error(
        "Guest \"{name}\" was removed, but saving the guest file {} failed: {source}; \
         it comes back at the next start unless a later guest change is saved.",
        path.display()
    )]
    RemovedNotSaved {
        /// The guest.
        name: String,
        /// The guest file.
        path: PathBuf,
        /// Why the save failed.
        source: std::io::Error,
    },
}

/// The guests of the daemon: the registry (what they are, persisted) and
/// what runs for each (see the module documentation). One mutex orders
/// every add and removal; it comes before the maps' lock.
pub struct GuestSet<P: Platform> {
    inner: Mutex<Inner<P>>,
    /// The factory of the daemon's ports; each guest's comes from it
    /// ([`Platform::guest_ports`]).
    ports: P::Ports,
    tables: Arc<Mutex<Tables<P::Maps>>>,
    switch: Arc<GuestSwitch>,
    cfg: DaemonConfig,
    on_exit: OnExit,
}

struct Inner<P: Platform> {
    registry: GuestRegistry,
    running: BTreeMap<u32, Arc<RunningGuest<P>>>,
}

impl<P: Platform> std::fmt::Debug for GuestSet<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSet").finish_non_exhaustive()
    }
}

/// Largest vring a guest's device accepts.
const MAX_QUEUE_SIZE: u16 = 1024;

impl<P: Platform> GuestSet<P> {
    /// A set over `registry` (loaded, with the configuration's guests
    /// merged) that runs nothing yet: [`GuestSet::start_all`] starts its
    /// guests. `cfg` gives every guest's device settings and socket
    /// defaults; `on_exit` is told when a guest's server ends on its own.
    pub fn new(
        registry: GuestRegistry,
        cfg: &DaemonConfig,
        ports: P::Ports,
        tables: Arc<Mutex<Tables<P::Maps>>>,
        on_exit: OnExit,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                registry,
                running: BTreeMap::new(),
            }),
            ports,
            tables,
            switch: Arc::new(GuestSwitch::new()),
            cfg: cfg.clone(),
            on_exit,
        }
    }

    /// Start-up: the registry loaded from the state directory
    /// (`cfg.guest_file()`; a corrupt file or entry is an error naming
    /// both), the configuration's guests merged over it (the configuration
    /// wins for the guests it declares, and the log says when it replaced
    /// a saved one), saved, and projected into the guest tables. Nothing
    /// runs yet ([`GuestSet::start_all`]).
    pub fn load(
        cfg: &DaemonConfig,
        ports: P::Ports,
        tables: Arc<Mutex<Tables<P::Maps>>>,
        on_exit: OnExit,
    ) -> Result<Self, GuestSetError> {
        let mut registry = GuestRegistry::load(&cfg.guest_file(), cfg.guest_defaults())?;
        let saved = registry.clone();
        registry.merge_config(cfg.shorthand_guest(), &cfg.guests)?;
        for g in registry.iter() {
            match saved.get(g.name()) {
                Some(old) if old != g => tracing::info!(
                    guest = %g.name(),
                    "the configuration's guest replaces the saved one (the configuration wins)"
                ),
                None => {
                    tracing::info!(guest = %g.name(), id = g.id, "guest created from the configuration")
                }
                Some(_) => {}
            }
        }
        registry.save()?;
        {
            let mut t = tables.lock().unwrap_or_else(PoisonError::into_inner);
            let Tables { classifier, flows } = &mut *t;
            flows.set_guests(classifier, registry.entries())?;
        }
        Ok(Self::new(registry, cfg, ports, tables, on_exit))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<P>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The switch of the local guests (the wire's broadcasts use it too).
    pub fn switch(&self) -> Arc<GuestSwitch> {
        self.switch.clone()
    }

    /// What running `g` takes: its socket, permissions and device.
    fn plan(&self, registry: &GuestRegistry, g: &Guest) -> Result<GuestPlan, GuestSetError> {
        let s = &g.spec;
        let permissions = self
            .cfg
            .guest_socket_permissions(s)
            .map_err(GuestError::Invalid)?;
        let mac = s.mac.map(|m| m.octets());
        let guard = match mac {
            Some(m) if s.anti_spoof.unwrap_or(true) => TxGuard::new(m, &s.ips),
            _ => TxGuard::off(),
        };
        Ok(GuestPlan {
            id: g.id,
            name: s.name.clone(),
            mac,
            ips: s.ips.clone(),
            vhost_socket: registry.vhost_socket(s),
            client: s.vhost_client.unwrap_or(false),
            permissions,
            net: NetConfig {
                // Every guest has a pair per NIC queue (frames arrive on
                // every queue); its driver is offered `queues` of them and
                // gets the rest through the handoff.
                queue_pairs: self.cfg.queues,
                offered_pairs: registry.queues(s).clamp(1, self.cfg.queues),
                mac,
                mtu: self.cfg.mtu,
                max_queue_size: MAX_QUEUE_SIZE,
                poll_idle: std::time::Duration::from_micros(u64::from(self.cfg.poll_idle_us)),
                link: Some(GuestLink {
                    id: g.id,
                    switch: self.switch.clone(),
                    guard,
                }),
            },
        })
    }

    fn start_one(
        &self,
        registry: &GuestRegistry,
        g: &Guest,
    ) -> Result<RunningGuest<P>, GuestSetError> {
        let plan = self.plan(registry, g)?;
        if let Some(dir) = plan.vhost_socket.parent().filter(|_| !plan.client) {
            std::fs::create_dir_all(dir).map_err(|e| {
                GuestError::Invalid(xdpath_api::GuestSpecError::new(
                    "vhost_socket",
                    format!("creating {}: {e}.", dir.display()),
                ))
            })?;
        }
        let ports = P::guest_ports(&self.ports, g.id);
        Ok(RunningGuest::start(
            plan,
            ports,
            self.tables.clone(),
            self.on_exit.clone(),
        )?)
    }

    /// Tells the switch which guests run (after every add and removal).
    fn publish(&self, inner: &Inner<P>) {
        let ports = inner
            .running
            .values()
            .filter_map(|g| {
                g.plan.mac.map(|mac| SwitchPort {
                    id: g.id(),
                    mac,
                    peers: g.server().peers(),
                })
            })
            .collect();
        self.switch.publish(SwitchTable::new(ports));
    }

    /// Starts every registered guest (start-up, before the attach). On
    /// error the ones started are stopped again.
    pub fn start_all(&self) -> Result<(), GuestSetError> {
        let mut inner = self.lock();
        let guests: Vec<Guest> = inner.registry.iter().cloned().collect();
        for g in &guests {
            match self.start_one(&inner.registry, g) {
                Ok(r) => {
                    inner.running.insert(g.id, Arc::new(r));
                }
                Err(e) => {
                    drop(inner);
                    self.stop_all();
                    return Err(e);
                }
            }
        }
        self.publish(&inner);
        Ok(())
    }

    /// Adds a guest: checked against the others (refused naming the
    /// field, nothing changed), saved, its MAC and addresses switched into
    /// the guest tables in one step, then its server started. If a later
    /// step fails the earlier ones are undone. The other guests are not
    /// touched.
    pub fn add(&self, spec: GuestSpec) -> Result<Guest, GuestSetError> {
        let mut inner = self.lock();
        let mut registry = inner.registry.clone();
        let g = registry.add(spec)?;
        // Everything about the guest that can be refused is refused
        // before anything changes.
        self.plan(&registry, &g)?;
        registry.save()?;
        let undo_registry = |inner: &Inner<P>| {
            if let Err(e) = inner.registry.save() {
                tracing::error!("restoring the saved guests failed: {e}");
            }
        };
        {
            let mut t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
            let Tables { classifier, flows } = &mut *t;
            if let Err(e) = flows.set_guests(classifier, registry.entries()) {
                drop(t);
                undo_registry(&inner);
                return Err(e.into());
            }
        }
        let running = match self.start_one(&registry, &g) {
            Ok(r) => r,
            Err(e) => {
                let mut t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
                let Tables { classifier, flows } = &mut *t;
                if let Err(e2) = flows.set_guests(classifier, inner.registry.entries()) {
                    tracing::error!("taking the guest's entries out again failed: {e2}");
                }
                drop(t);
                undo_registry(&inner);
                return Err(e);
            }
        };
        inner.registry = registry;
        inner.running.insert(g.id, Arc::new(running));
        self.publish(&inner);
        tracing::info!(guest = %g.spec.name, id = g.id, "guest added");
        Ok(g)
    }

    /// Removes a guest: its steering stops (its traffic fails open to the
    /// host), its rules (only with `force`; without, a guest that rules
    /// name is refused) and its entries leave the maps in one atomic step,
    /// the registry is saved, and its server is joined. The other guests
    /// are not touched. Returns how many rules went.
    pub fn remove(&self, name: &str, force: bool) -> Result<usize, GuestSetError> {
        let mut inner = self.lock();
        let mut registry = inner.registry.clone();
        let g = registry.remove(name)?;
        let rules = self
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flows
            .rules_for_guest(g.id);
        if rules > 0 && !force {
            return Err(GuestError::InUse {
                name: name.to_string(),
                rules: rules as u64,
            }
            .into());
        }
        // Nobody switches to it any more, then its entries go: from here
        // on its frames fail open to the host.
        let running = inner.running.remove(&g.id);
        self.publish(&inner);
        let removed = {
            let mut t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
            let Tables { classifier, flows } = &mut *t;
            if let Some(r) = &running {
                r.stop_steering(classifier);
            }
            flows.remove_guest(classifier, g.id, registry.entries())
        };
        if let Some(r) = &running {
            r.join();
        }
        let removed = match removed {
            Ok(n) => n,
            Err(e) => {
                // The guest stays registered with its rules; serve it again.
                match self.start_one(&inner.registry, &g) {
                    Ok(r) => {
                        inner.running.insert(g.id, Arc::new(r));
                    }
                    Err(e2) => tracing::error!(guest = %name, "restarting the guest failed: {e2}"),
                }
                self.publish(&inner);
                return Err(e.into());
            }
        };
        // The maps and the rules are already without it; memory follows
        // them whatever the disk says, and the next successful save writes
        // it down. The caller is told when this one failed.
        let saved = registry.save();
        inner.registry = registry;
        tracing::info!(guest = %name, id = g.id, rules = removed, "guest removed");
        match saved {
            Ok(()) => Ok(removed),
            Err(GuestError::Save { path, source }) => {
                tracing::error!(guest = %name, "saving the guests failed: {source}");
                Err(GuestSetError::RemovedNotSaved {
                    name: name.to_string(),
                    path,
                    source,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every guest, by id: its registration and, if it runs, its handle.
    pub fn list(&self) -> Vec<(Guest, Option<Arc<RunningGuest<P>>>)> {
        let inner = self.lock();
        inner
            .registry
            .iter()
            .map(|g| (g.clone(), inner.running.get(&g.id).cloned()))
            .collect()
    }

    /// The API's listing of guest `g`: its settings and its counters.
    pub fn info(
        &self,
        g: &Guest,
        running: Option<&RunningGuest<P>>,
        rules: usize,
    ) -> xdpath_api::GuestInfo {
        let inner = self.lock();
        let mut i = inner.registry.info(g, self.cfg.vhost_socket_mode);
        drop(inner);
        i.rules = rules as u64;
        if let Some(r) = running {
            i.connected = r.server().connected();
            i.pairs_enabled = r.server().pairs_enabled();
            for c in r.server().all_counters() {
                i.rx_frames += c.rx_frames;
                i.rx_bytes += c.rx_bytes;
                i.tx_frames += c.tx_frames;
                i.tx_bytes += c.tx_bytes;
                i.tx_switched += c.tx_switched;
                i.tx_flooded += c.tx_flooded;
                i.tx_drop_spoofed += c.tx_drop_spoofed;
                i.drops += xdpath_api::drops(&c);
            }
        }
        i
    }

    /// Runs `f` with the registry, the guests' lock held (so no guest is
    /// added or removed meanwhile; take the maps' lock inside, never the
    /// other way round).
    pub fn with_names<T>(&self, f: impl FnOnce(&GuestRegistry) -> T) -> T {
        f(&self.lock().registry)
    }

    /// Test seam: make every save of the guest file fail at `step` with
    /// `EIO` (`None`: heal).
    #[doc(hidden)]
    pub fn fail_saves_at(&self, step: Option<crate::guest_registry::SaveStep>) {
        self.lock().registry.fail_saves_at(step);
    }

    /// The running guests, by id.
    pub fn running(&self) -> Vec<Arc<RunningGuest<P>>> {
        self.lock().running.values().cloned().collect()
    }

    /// The id of the guest called `name`.
    pub fn id_of(&self, name: &str) -> Option<u32> {
        self.lock().registry.get(name).map(|g| g.id)
    }

    /// The registered guests' names and ids (rules name guests), as plain
    /// data.
    pub fn names(&self) -> xdpath_api::rules::GuestTable {
        self.lock().registry.names()
    }

    /// Stops every guest in the teardown order (all XSKMAP entries out
    /// first, then each server stopped and joined).
    pub fn stop_all(&self) {
        let running: Vec<_> = std::mem::take(&mut self.lock().running)
            .into_values()
            .collect();
        {
            let mut t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
            for r in &running {
                r.stop_steering(&mut t.classifier);
            }
        }
        for r in &running {
            r.join();
        }
        self.switch.publish(SwitchTable::default());
    }
}
