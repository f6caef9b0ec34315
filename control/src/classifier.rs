//! The XDP classifier on one interface: load the embedded object, attach
//! it, pin its maps, write its maps, read its counters, and take it all
//! down again.
//!
//! A [`Classifier`] owns, for one interface: the loaded program and its
//! bpf_link (the attachment lives exactly as long as the link), the map
//! handles, and the pin directory `/sys/fs/bpf/xdpath/<ifname>/` (one file
//! per map, named as in `xdpath_common::ALL_MAPS`, so `bpftool map dump
//! pinned ...` works while it runs) with its lock ([`crate::pins`]).
//!
//! Loading and attaching are two steps: [`Classifier::load`] does
//! everything that can fail on the program and its maps (the pinned maps
//! created or reopened, the configuration written, the verifier run) without
//! touching the interface, and [`Classifier::attach_program`] attaches it.
//! The daemon writes the maps and opens its sockets in between, so a failed
//! start never attaches anything (docs/ARCHITECTURE.md, Control path).
//! [`Classifier::attach`] does both at once.
//!
//! Pins are reused: if the directory already holds maps of the same
//! definition (a daemon that was killed), they are opened instead of
//! created, so rules survive a restart. [`Classifier::shutdown`] detaches
//! first (traffic falls back to the host), then removes the pins.
//! Dropping a `Classifier` without `shutdown` does the same, best effort,
//! except for one that was never attached and reused its pins: those stay
//! for the next start, as a killed daemon leaves them.
//!
//! The caller serialises writes (the control plane owns the flow table);
//! the XDP program only reads maps, except the per-CPU counters and the
//! scratch map it owns.
//!
//! The flow table reaches the rule maps (FLOWS, PREFIXES, MACS, NEIGH) and
//! the generations in CONFIG only through [`RuleMaps`], which a
//! `Classifier` implements (see [`crate::maps`] and `xdpath_common`, section
//! Generations): batch writes that report how far they got (one
//! `BPF_MAP_*_BATCH` system call per chunk for the hash maps, one call per
//! entry for the LPM trie), full reads, the one-update generation switch,
//! and [`Classifier::wait_for_readers`], which returns once every program
//! run that may still use a previous generation has finished. The single
//! entry writes (`insert_flow`, `insert_mac`, ...) are for tests and tools
//! that work around a flow table.

use crate::maps::{Flows, Generations, Macs, MapTable, MapsId, Neigh, Prefixes, RuleMap, RuleMaps};
use crate::netlink::{self, AttachMode};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use xdpath_common as common;
use xdpath_common::{AddrKey, Config, Counters, FlowKey, MacKey, PrefixData, RuleValue};

/// The XDP object built from `ebpf/xdpath-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpath.bpf.o"));

/// Default root of the per-interface pin directories.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/xdpath";

/// How to attach: the one attach-mode enum of the config, the flags and
/// the health answer.
pub use xdpath_api::XdpAttachMode;

/// What to attach where.
#[derive(Clone, Debug)]
pub struct ClassifierConfig {
    /// Interface name (in the caller's network namespace).
    pub iface: String,
    /// Native or generic.
    pub mode: XdpAttachMode,
    /// Replace a netlink-attached XDP program found on the interface.
    pub force: bool,
    /// Root of the pin directories.
    pub pin_root: PathBuf,
    /// Action for frames no rule matches.
    pub default_action: common::Action,
    /// Guest port for a default action of `Guest`.
    pub default_port: u32,
    /// Write the metadata block in front of redirected frames.
    pub metadata: bool,
}

impl ClassifierConfig {
    /// Defaults for `iface`: native mode, no force, default pin root,
    /// default action host, metadata on.
    pub fn new(iface: impl Into<String>) -> Self {
        Self {
            iface: iface.into(),
            mode: XdpAttachMode::Native,
            force: false,
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            default_action: common::Action::Host,
            default_port: 0,
            metadata: true,
        }
    }
}

/// Errors of the loader and of map access.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The interface does not exist in this network namespace.
    #[error("Interface {0:?} does not exist in this network namespace.")]
    NoSuchInterface(String),
    /// The interface name cannot be a Linux interface name.
    #[error("Interface name {0:?} is not valid (1 to 15 bytes, no '/', no whitespace).")]
    BadInterfaceName(String),
    /// Another XDP program is attached and `force` was not given.
    #[error(
        "Interface {iface} already has XDP program id {prog_id} attached ({mode:?} mode); \
         inspect it with `bpftool prog show id {prog_id}`, detach it, or pass --force to replace it."
    )]
    AlreadyAttached {
        /// Interface name.
        iface: String,
        /// Program id of the attached program.
        prog_id: u32,
        /// How it is attached.
        mode: AttachMode,
    },
    /// `force` was given but the existing program could not be removed.
    #[error(
        "Could not detach XDP program id {prog_id} from {iface}: {source}; \
         a program held by a bpf_link must be released by its owner."
    )]
    ForceFailed {
        /// Interface name.
        iface: String,
        /// Program id of the attached program.
        prog_id: u32,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// Native mode is not supported by the driver.
    #[error(
        "Native XDP could not be attached to {iface}: {detail}. \
         The driver may lack XDP support; generic mode works everywhere but is slower (--xdp-mode generic)."
    )]
    NativeUnsupported {
        /// Interface name.
        iface: String,
        /// What aya reported.
        detail: String,
    },
    /// Loading the object into the kernel failed.
    #[error("Loading the XDP program failed: {0}.")]
    Load(String),
    /// Attaching failed for another reason.
    #[error("Attaching the XDP program to {iface} failed: {detail}.")]
    Attach {
        /// Interface name.
        iface: String,
        /// What aya reported.
        detail: String,
    },
    /// A map operation failed.
    #[error("Map {map} operation failed: {detail}.")]
    Map {
        /// Map name.
        map: &'static str,
        /// What aya reported.
        detail: String,
    },
    /// The pin directory could not be created or removed.
    #[error("Pin directory {path} could not be used: {source}.")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another classifier (a running xdpathd) holds the pin directory.
    #[error(
        "The pins at {} are in use by another xdpathd (or classifier) on this interface; stop it first.",
        path.display()
    )]
    PinsInUse {
        /// The pin directory.
        path: PathBuf,
    },
    /// A netlink query failed.
    #[error("Querying XDP state of {iface} failed: {source}.")]
    Netlink {
        /// Interface name.
        iface: String,
        /// The OS error.
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, ClassifierError>;

pub use crate::maps::BatchError;

/// Entries per batch system call.
const BATCH_CHUNK: usize = 16 * 1024;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr` (aya 0.14 has no batch calls).
#[repr(C)]
#[derive(Default)]
struct BpfBatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Runs one `BPF_MAP_UPDATE_BATCH` (keys and values) or
/// `BPF_MAP_DELETE_BATCH` (keys only) over `keys`. Returns how many
/// elements were processed and the error that stopped it, if any.
///
/// # Safety
///
/// `fd` must be a map whose key size is `size_of::<K>()` and, if `values` is
/// given, whose value size is `size_of::<V>()`; `values` must then have as
/// many elements as `keys`.
unsafe fn bpf_batch<K, V>(
    cmd: libc::c_long,
    fd: std::os::fd::RawFd,
    keys: &[K],
    values: Option<&[V]>,
) -> (usize, Option<std::io::Error>) {
    let mut attr = BpfBatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.map_or(0, |v| v.as_ptr() as u64),
        count: keys.len() as u32,
        map_fd: fd as u32,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix of the size given; the kernel
    // reads `count` keys (and values) of the map's sizes from the pointers,
    // which the caller guarantees, and writes only `attr.count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut BpfBatchAttr,
            std::mem::size_of::<BpfBatchAttr>() as libc::c_uint,
        )
    };
    if rc == 0 {
        (keys.len(), None)
    } else {
        let e = std::io::Error::last_os_error();
        ((attr.count as usize).min(keys.len()), Some(e))
    }
}

/// The kernel or the map type has no batch operations.
fn batch_unsupported(e: &std::io::Error) -> bool {
    // 524 is the kernel-internal ENOTSUPP, which leaks out of bpf(2).
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    )
}

/// The kernel's errno behind a failed attach (bpf_link_create, or the
/// netlink fallback aya uses on older kernels).
fn attach_errno(e: &aya::programs::ProgramError) -> Option<i32> {
    match e {
        aya::programs::ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        aya::programs::ProgramError::XdpError(aya::programs::xdp::XdpError::NetlinkError(n)) => {
            n.raw_os_error()
        }
        _ => None,
    }
}

fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> ClassifierError {
    move |e| ClassifierError::Map {
        map,
        detail: e.to_string(),
    }
}

/// An error and all its sources, "outer: inner: innermost" (aya keeps the
/// errno of a failed syscall in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Raises RLIMIT_MEMLOCK to infinity for this process (older kernels
/// charge BPF maps and UMEM against it). Best effort: returns the error.
pub fn raise_memlock() -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid, initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Validates a Linux interface name and returns its index.
pub fn ifindex(iface: &str) -> Result<u32> {
    if iface.is_empty()
        || iface.len() > 15
        || iface.contains('/')
        || iface.contains(char::is_whitespace)
        || iface.contains('\0')
    {
        return Err(ClassifierError::BadInterfaceName(iface.to_string()));
    }
    let c = std::ffi::CString::new(iface)
        .map_err(|_| ClassifierError::BadInterfaceName(iface.to_string()))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(ClassifierError::NoSuchInterface(iface.to_string()));
    }
    Ok(idx)
}

/// The XDP program attached to `ifindex` now, if any.
fn query(iface: &str, ifindex: u32) -> Result<Option<netlink::Attached>> {
    netlink::xdp_query(ifindex).map_err(|source| ClassifierError::Netlink {
        iface: iface.to_string(),
        source,
    })
}

/// The program attached to one interface, with its maps.
pub struct Classifier {
    iface: String,
    ifindex: u32,
    pin_dir: PathBuf,
    /// `None` once shut down.
    ebpf: Option<Ebpf>,
    mode: XdpAttachMode,
    force: bool,
    /// The program is attached to the interface.
    attached: bool,
    /// The pins were there before [`Classifier::load`] (a killed daemon's).
    reused_pins: bool,
    /// The pin directory's lock, released after the teardown (fields drop
    /// after `Drop::drop`).
    _pin_lock: Option<crate::pins::PinLock>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("iface", &self.iface)
            .field("ifindex", &self.ifindex)
            .field("pin_dir", &self.pin_dir)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// Loads the embedded program, pins (or reopens) its maps, writes the
    /// configuration and attaches to `cfg.iface`: [`Classifier::load`], then
    /// [`Classifier::attach_program`].
    pub fn attach(cfg: &ClassifierConfig) -> Result<Self> {
        let mut me = Self::load(cfg)?;
        me.attach_program()?;
        Ok(me)
    }

    /// Everything but the attach: refuses if another XDP program is on
    /// `cfg.iface` (unless `cfg.force`), takes the pin directory's lock,
    /// creates or reopens the pinned maps, writes the configuration and
    /// loads the program into the kernel (the verifier runs here). The
    /// interface is not touched: its traffic goes on as before until
    /// [`Classifier::attach_program`].
    ///
    /// Dropped without being attached, a classifier leaves pins it reused
    /// (those of a daemon that was killed: the next start needs them) and
    /// removes the ones it created.
    pub fn load(cfg: &ClassifierConfig) -> Result<Self> {
        let ifindex = ifindex(&cfg.iface)?;
        if let Some(existing) = query(&cfg.iface, ifindex)? {
            if !cfg.force {
                return Err(ClassifierError::AlreadyAttached {
                    iface: cfg.iface.clone(),
                    prog_id: existing.prog_id,
                    mode: existing.mode,
                });
            }
        }
        if let Err(e) = raise_memlock() {
            tracing::debug!("raising RLIMIT_MEMLOCK failed: {e}");
        }

        let pin_dir = cfg.pin_root.join(&cfg.iface);
        let lock = crate::pins::PinLock::acquire(&pin_dir).map_err(|e| match e {
            crate::pins::PinError::InUse { path } => ClassifierError::PinsInUse { path },
            crate::pins::PinError::Io { path, source } => ClassifierError::PinDir { path, source },
        })?;
        let reused = common::ALL_MAPS.iter().any(|m| pin_dir.join(m).exists());
        let mut me = Self {
            iface: cfg.iface.clone(),
            ifindex,
            pin_dir,
            ebpf: None,
            mode: cfg.mode,
            force: cfg.force,
            attached: false,
            reused_pins: reused,
            _pin_lock: Some(lock),
        };
        // From here on, Drop removes the pins if anything fails (unless
        // they were reused).
        let pins: Vec<(&str, PathBuf)> = common::ALL_MAPS
            .iter()
            .map(|m| (*m, me.pin_dir.join(m)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| ClassifierError::Load(chain(&e)))?;
        me.ebpf = Some(ebpf);
        let kept = me.config()?;
        me.set_config(&Config {
            active_gen: kept.active_gen & 1,
            guest_gen: kept.guest_gen & 1,
            _pad: [0; 2],
            default_action: cfg.default_action as u32,
            default_port: cfg.default_port,
            flags: if cfg.metadata {
                common::CONFIG_F_META
            } else {
                0
            },
        })?;
        me.xdp_mut()?
            .load()
            .map_err(|e| ClassifierError::Load(chain(&e)))?;
        tracing::info!(iface = %me.iface, pins = %me.pin_dir.display(), reused_pins = reused, "XDP classifier loaded (not attached)");
        Ok(me)
    }

    /// Attaches the loaded program to the interface: from here on every
    /// frame it receives is classified. With `force`, an XDP program found
    /// on the interface now is detached first. Attaching twice is a no-op.
    pub fn attach_program(&mut self) -> Result<()> {
        if self.attached {
            return Ok(());
        }
        if let Some(existing) = query(&self.iface, self.ifindex)? {
            if !self.force {
                return Err(ClassifierError::AlreadyAttached {
                    iface: self.iface.clone(),
                    prog_id: existing.prog_id,
                    mode: existing.mode,
                });
            }
            tracing::warn!(iface = %self.iface, prog_id = existing.prog_id, "--force: detaching the XDP program already attached");
            netlink::xdp_detach(self.ifindex, existing.mode).map_err(|source| {
                ClassifierError::ForceFailed {
                    iface: self.iface.clone(),
                    prog_id: existing.prog_id,
                    source,
                }
            })?;
        }
        let (ifindex, cfg_mode, iface) = (self.ifindex, self.mode, self.iface.clone());
        let mode = match cfg_mode {
            XdpAttachMode::Native => XdpMode::Driver,
            XdpAttachMode::Generic => XdpMode::Skb,
        };
        if let Err(e) = self.xdp_mut()?.attach_to_if_index(ifindex, mode) {
            let detail = chain(&e);
            return Err(match cfg_mode {
                XdpAttachMode::Native if attach_errno(&e) == Some(libc::EOPNOTSUPP) => {
                    ClassifierError::NativeUnsupported { iface, detail }
                }
                _ => ClassifierError::Attach { iface, detail },
            });
        }
        self.attached = true;
        tracing::info!(iface = %self.iface, mode = ?cfg_mode, pins = %self.pin_dir.display(), "XDP classifier attached");
        Ok(())
    }

    /// Whether the program is attached to the interface.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    fn xdp_mut(&mut self) -> Result<&mut Xdp> {
        self.ebpf_mut()
            .program_mut(common::PROGRAM_NAME)
            .ok_or_else(|| {
                ClassifierError::Load(format!(
                    "the object has no program {}",
                    common::PROGRAM_NAME
                ))
            })?
            .try_into()
            .map_err(|e| ClassifierError::Load(format!("{e}")))
    }

    fn ebpf(&self) -> &Ebpf {
        // Invariant: `ebpf` is Some from the end of `attach` until
        // `shutdown` consumes self.
        self.ebpf.as_ref().expect("classifier used after shutdown")
    }

    fn ebpf_mut(&mut self) -> &mut Ebpf {
        self.ebpf.as_mut().expect("classifier used after shutdown")
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.ebpf().map(name).ok_or(ClassifierError::Map {
            map: name,
            detail: "not in the object".into(),
        })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf_mut().map_mut(name).ok_or(ClassifierError::Map {
            map: name,
            detail: "not in the object".into(),
        })
    }

    /// The interface this classifier is attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The kernel id of the loaded program (`bpftool prog show id N`).
    pub fn prog_id(&self) -> Result<u32> {
        let prog: &Xdp = self
            .ebpf()
            .program(common::PROGRAM_NAME)
            .ok_or_else(|| ClassifierError::Load("program missing".into()))?
            .try_into()
            .map_err(|e| ClassifierError::Load(format!("{e}")))?;
        prog.info()
            .map(|i| i.id())
            .map_err(|e| ClassifierError::Load(format!("{e}")))
    }

    /// Registers the AF_XDP socket `fd` at XSKMAP entry `slot`
    /// ([`common::xsk_slot`] of a guest and a NIC rx queue; guest 1's
    /// entries are the queue numbers).
    pub fn register_socket(&mut self, slot: u32, fd: &impl AsRawFd) -> Result<()> {
        let mut xsks: XskMap<&mut MapData> = self
            .map_mut(common::MAP_XSKS)?
            .try_into()
            .map_err(map_err(common::MAP_XSKS))?;
        xsks.set(slot, fd.as_raw_fd(), 0)
            .map_err(map_err(common::MAP_XSKS))
    }

    /// Removes the socket at entry `slot`: its traffic fails open to the
    /// host.
    pub fn unregister_socket(&mut self, slot: u32) -> Result<()> {
        let mut xsks: XskMap<&mut MapData> = self
            .map_mut(common::MAP_XSKS)?
            .try_into()
            .map_err(map_err(common::MAP_XSKS))?;
        xsks.unset(slot).map_err(map_err(common::MAP_XSKS))
    }

    /// Makes `port` the guest of the default action `guest` (one update
    /// of the `CONFIG` entry, the rest kept).
    pub fn set_default_port(&mut self, port: u32) -> Result<()> {
        let mut c = self.config()?;
        c.default_port = port;
        self.set_config(&c)
    }

    /// The current configuration.
    pub fn config(&self) -> Result<Config> {
        let arr: Array<&MapData, Config> = self
            .map(common::MAP_CONFIG)?
            .try_into()
            .map_err(map_err(common::MAP_CONFIG))?;
        arr.get(&0, 0).map_err(map_err(common::MAP_CONFIG))
    }

    /// Replaces the configuration (one map update: atomic for the program).
    pub fn set_config(&mut self, cfg: &Config) -> Result<()> {
        let mut arr: Array<&mut MapData, Config> = self
            .map_mut(common::MAP_CONFIG)?
            .try_into()
            .map_err(map_err(common::MAP_CONFIG))?;
        arr.set(0, *cfg, 0).map_err(map_err(common::MAP_CONFIG))
    }

    /// One of the hash maps whose values are [`RuleValue`]s.
    fn hash<K: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, RuleValue>> {
        self.map_mut(name)?.try_into().map_err(map_err(name))
    }

    /// Inserts or replaces an exact rule (key as given, generation
    /// included).
    pub fn insert_flow(&mut self, key: &FlowKey, value: &RuleValue) -> Result<()> {
        let mut m = self.hash::<FlowKey>(common::MAP_FLOWS)?;
        m.insert(key, value, 0).map_err(map_err(common::MAP_FLOWS))
    }

    /// Removes an exact rule.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<()> {
        let mut m = self.hash::<FlowKey>(common::MAP_FLOWS)?;
        m.remove(key).map_err(map_err(common::MAP_FLOWS))
    }

    /// Inserts or replaces a prefix rule; `prefix_len` counts address bits.
    pub fn insert_prefix(
        &mut self,
        prefix_len: u32,
        data: &PrefixData,
        value: &RuleValue,
    ) -> Result<()> {
        let mut m: LpmTrie<&mut MapData, PrefixData, RuleValue> = self
            .map_mut(common::MAP_PREFIXES)?
            .try_into()
            .map_err(map_err(common::MAP_PREFIXES))?;
        let key = Key::new(common::PREFIX_HEADER_BITS + prefix_len, *data);
        m.insert(&key, value, 0)
            .map_err(map_err(common::MAP_PREFIXES))
    }

    /// Removes a prefix rule.
    pub fn remove_prefix(&mut self, prefix_len: u32, data: &PrefixData) -> Result<()> {
        let mut m: LpmTrie<&mut MapData, PrefixData, RuleValue> = self
            .map_mut(common::MAP_PREFIXES)?
            .try_into()
            .map_err(map_err(common::MAP_PREFIXES))?;
        let key = Key::new(common::PREFIX_HEADER_BITS + prefix_len, *data);
        m.remove(&key).map_err(map_err(common::MAP_PREFIXES))
    }

    /// The guest-table generation the program uses now.
    fn guest_gen(&self) -> Result<u8> {
        Ok(self.config()?.guest_gen & 1)
    }

    /// Inserts or replaces a guest MAC entry in the active guest
    /// generation. For tests and tools without a flow table: the daemon's
    /// guest entries are the flow table's (see
    /// [`FlowTable::set_guests`](crate::flow_table::FlowTable::set_guests)).
    pub fn insert_mac(&mut self, mac: [u8; 6], value: &RuleValue) -> Result<()> {
        let key = MacKey::new(self.guest_gen()?, mac);
        let mut m = self.hash::<MacKey>(common::MAP_MACS)?;
        m.insert(key, value, 0).map_err(map_err(common::MAP_MACS))
    }

    /// Removes a guest MAC entry from the active guest generation.
    pub fn remove_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        let key = MacKey::new(self.guest_gen()?, mac);
        let mut m = self.hash::<MacKey>(common::MAP_MACS)?;
        m.remove(&key).map_err(map_err(common::MAP_MACS))
    }

    /// Inserts or replaces a guest address for ARP/ND steering (key as
    /// given, generation included). For tests and tools, as
    /// [`Classifier::insert_mac`].
    pub fn insert_neigh(&mut self, key: &AddrKey, value: &RuleValue) -> Result<()> {
        let mut m = self.hash::<AddrKey>(common::MAP_NEIGH)?;
        m.insert(key, value, 0).map_err(map_err(common::MAP_NEIGH))
    }

    /// Removes a guest address.
    pub fn remove_neigh(&mut self, key: &AddrKey) -> Result<()> {
        let mut m = self.hash::<AddrKey>(common::MAP_NEIGH)?;
        m.remove(key).map_err(map_err(common::MAP_NEIGH))
    }

    /// Every exact rule entry, of all generations, in map order.
    pub fn flow_entries(&self) -> Result<Vec<(FlowKey, RuleValue)>> {
        self.hash_entries(common::MAP_FLOWS)
    }

    /// Every prefix rule entry, of all generations, as (prefix length in
    /// address bits, data, value).
    pub fn prefix_entries(&self) -> Result<Vec<(u32, PrefixData, RuleValue)>> {
        let m: LpmTrie<&MapData, PrefixData, RuleValue> = self
            .map(common::MAP_PREFIXES)?
            .try_into()
            .map_err(map_err(common::MAP_PREFIXES))?;
        m.iter()
            .map(|r| {
                r.map(|(k, v)| {
                    (
                        k.prefix_len().saturating_sub(common::PREFIX_HEADER_BITS),
                        k.data(),
                        v,
                    )
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err(common::MAP_PREFIXES))
    }

    /// Every entry of a hash map whose values are [`RuleValue`]s.
    fn hash_entries<K: aya::Pod>(&self, name: &'static str) -> Result<Vec<(K, RuleValue)>> {
        let m: HashMap<&MapData, K, RuleValue> =
            self.map(name)?.try_into().map_err(map_err(name))?;
        m.iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err(name))
    }

    /// The fd of hash map `name`, after checking through aya that the map's
    /// key and value sizes are those of `K` and `RuleValue` (the batch calls
    /// rely on it).
    fn hash_fd<K: aya::Pod>(&self, name: &'static str) -> Result<std::os::fd::RawFd> {
        let m: HashMap<&MapData, K, RuleValue> =
            self.map(name)?.try_into().map_err(map_err(name))?;
        Ok(IterableMap::map(&m).fd().as_fd().as_raw_fd())
    }

    /// Inserts or replaces entries of hash map `name` in order; on failure,
    /// reports how many were written. Uses `BPF_MAP_UPDATE_BATCH` (one
    /// system call per chunk of entries) where the kernel has it.
    fn hash_insert<K: aya::Pod>(
        &mut self,
        name: &'static str,
        entries: &[(K, RuleValue)],
    ) -> std::result::Result<(), BatchError> {
        let batch = |done, source| BatchError { done, source };
        let fd = self.hash_fd::<K>(name).map_err(|e| batch(0, e))?;
        let keys: Vec<K> = entries.iter().map(|(k, _)| *k).collect();
        let values: Vec<RuleValue> = entries.iter().map(|(_, v)| *v).collect();
        let mut done = 0;
        while done < keys.len() {
            let end = keys.len().min(done + BATCH_CHUNK);
            // SAFETY: hash_fd checked that the map has K keys and RuleValue
            // values; both slices have `end - done` elements and outlive
            // the call.
            let (n, err) = unsafe {
                bpf_batch(
                    BPF_MAP_UPDATE_BATCH,
                    fd,
                    &keys[done..end],
                    Some(&values[done..end]),
                )
            };
            match err {
                None => done = end,
                Some(e) if done == 0 && n == 0 && batch_unsupported(&e) => {
                    return self.hash_insert_one_by_one(name, entries);
                }
                Some(e) => {
                    return Err(batch(
                        done + n,
                        ClassifierError::Map {
                            map: name,
                            detail: format!("bpf_map_update_batch failed: {e}"),
                        },
                    ))
                }
            }
        }
        Ok(())
    }

    fn hash_insert_one_by_one<K: aya::Pod>(
        &mut self,
        name: &'static str,
        entries: &[(K, RuleValue)],
    ) -> std::result::Result<(), BatchError> {
        let batch = |done, source| BatchError { done, source };
        let mut m = self.hash::<K>(name).map_err(|e| batch(0, e))?;
        for (i, (k, v)) in entries.iter().enumerate() {
            m.insert(k, v, 0).map_err(|e| batch(i, map_err(name)(e)))?;
        }
        Ok(())
    }

    /// Removes keys of hash map `name` in order; keys that are not in the
    /// map are skipped. Returns how many were removed; on failure, reports
    /// how many keys were processed. Uses `BPF_MAP_DELETE_BATCH` where the
    /// kernel has it.
    fn hash_remove<K: aya::Pod>(
        &mut self,
        name: &'static str,
        keys: &[K],
    ) -> std::result::Result<usize, BatchError> {
        let batch = |done, source| BatchError { done, source };
        let fd = self.hash_fd::<K>(name).map_err(|e| batch(0, e))?;
        let mut pos = 0;
        let mut removed = 0;
        while pos < keys.len() {
            let end = keys.len().min(pos + BATCH_CHUNK);
            // SAFETY: hash_fd checked that the map has K keys; the slice
            // has `end - pos` elements and outlives the call.
            let (n, err) = unsafe {
                bpf_batch::<K, RuleValue>(BPF_MAP_DELETE_BATCH, fd, &keys[pos..end], None)
            };
            removed += n;
            match err {
                None => pos = end,
                // The key at `pos + n` is not in the map: skip it.
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => pos += n + 1,
                Some(e) if pos == 0 && removed == 0 && batch_unsupported(&e) => {
                    return self.hash_remove_one_by_one(name, keys);
                }
                Some(e) => {
                    return Err(batch(
                        pos + n,
                        ClassifierError::Map {
                            map: name,
                            detail: format!("bpf_map_delete_batch failed: {e}"),
                        },
                    ))
                }
            }
        }
        Ok(removed)
    }

    fn hash_remove_one_by_one<K: aya::Pod>(
        &mut self,
        name: &'static str,
        keys: &[K],
    ) -> std::result::Result<usize, BatchError> {
        let batch = |done, source| BatchError { done, source };
        let mut m = self.hash::<K>(name).map_err(|e| batch(0, e))?;
        let mut removed = 0;
        for (i, k) in keys.iter().enumerate() {
            match m.remove(k) {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(batch(i, map_err(name)(e))),
            }
        }
        Ok(removed)
    }

    /// Returns once every run of the program that started before the call
    /// has finished, so no frame can still be looking up a generation that
    /// was switched away from before the call.
    ///
    /// XDP programs run inside an RCU read-side critical section; the
    /// global membarrier command waits for an RCU grace period
    /// (`synchronize_rcu`). Where that command is unavailable (nohz_full
    /// kernels refuse it) this sleeps 50 ms instead, which is many orders
    /// of magnitude longer than one program run.
    pub fn wait_for_readers(&self) {
        // MEMBARRIER_CMD_GLOBAL (the libc crate does not name it).
        const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
        // SAFETY: membarrier takes no pointers; a failure is reported in
        // the return value.
        let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
        if rc != 0 {
            tracing::debug!(
                "membarrier(GLOBAL) failed: {}; sleeping instead",
                std::io::Error::last_os_error()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The program's counters summed over all CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let arr: PerCpuArray<&MapData, Counters> = self
            .map(common::MAP_COUNTERS)?
            .try_into()
            .map_err(map_err(common::MAP_COUNTERS))?;
        let per_cpu = arr.get(&0, 0).map_err(map_err(common::MAP_COUNTERS))?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// Detaches the program (traffic falls back to the host), closes the
    /// maps and removes the pin directory.
    pub fn shutdown(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        // Dropping the Ebpf drops the bpf_link (detach) and the map fds.
        if self.ebpf.take().is_some() && self.attached {
            tracing::info!(iface = %self.iface, "XDP classifier detached");
        }
        self.attached = false;
        let mut first_err = None;
        for m in common::ALL_MAPS {
            let p = self.pin_dir.join(m);
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound && first_err.is_none() {
                    first_err = Some(ClassifierError::PinDir { path: p, source: e });
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.pin_dir) {
            if e.kind() != std::io::ErrorKind::NotFound && first_err.is_none() {
                first_err = Some(ClassifierError::PinDir {
                    path: self.pin_dir.clone(),
                    source: e,
                });
            }
        }
        // The root is shared by all interfaces: remove it only when empty.
        if let Some(root) = self.pin_dir.parent() {
            let _ = std::fs::remove_dir(root);
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Implements [`MapTable`] for the hash map `$m`: batch system calls where
/// the kernel has them.
macro_rules! hash_table {
    ($m:ty) => {
        impl MapTable<$m> for Classifier {
            fn entries(&self) -> Result<Vec<(<$m as RuleMap>::Key, RuleValue)>> {
                self.hash_entries(<$m as RuleMap>::NAME)
            }

            fn insert(
                &mut self,
                entries: &[(<$m as RuleMap>::Key, RuleValue)],
            ) -> std::result::Result<(), BatchError> {
                self.hash_insert(<$m as RuleMap>::NAME, entries)
            }

            fn remove(
                &mut self,
                keys: &[<$m as RuleMap>::Key],
            ) -> std::result::Result<usize, BatchError> {
                self.hash_remove(<$m as RuleMap>::NAME, keys)
            }
        }
    };
}

hash_table!(Flows);
hash_table!(Macs);
hash_table!(Neigh);

/// `PREFIXES` is an LPM trie: one system call per entry.
impl MapTable<Prefixes> for Classifier {
    fn entries(&self) -> Result<Vec<((u32, PrefixData), RuleValue)>> {
        Ok(self
            .prefix_entries()?
            .into_iter()
            .map(|(l, d, v)| ((l, d), v))
            .collect())
    }

    fn insert(
        &mut self,
        entries: &[((u32, PrefixData), RuleValue)],
    ) -> std::result::Result<(), BatchError> {
        let batch = |done, source| BatchError { done, source };
        let mut m: LpmTrie<&mut MapData, PrefixData, RuleValue> = self
            .map_mut(common::MAP_PREFIXES)
            .map_err(|e| batch(0, e))?
            .try_into()
            .map_err(|e| batch(0, map_err(common::MAP_PREFIXES)(e)))?;
        for (i, ((len, d), v)) in entries.iter().enumerate() {
            let key = Key::new(common::PREFIX_HEADER_BITS + len, *d);
            m.insert(&key, v, 0)
                .map_err(|e| batch(i, map_err(common::MAP_PREFIXES)(e)))?;
        }
        Ok(())
    }

    fn remove(&mut self, keys: &[(u32, PrefixData)]) -> std::result::Result<usize, BatchError> {
        let batch = |done, source| BatchError { done, source };
        let mut m: LpmTrie<&mut MapData, PrefixData, RuleValue> = self
            .map_mut(common::MAP_PREFIXES)
            .map_err(|e| batch(0, e))?
            .try_into()
            .map_err(|e| batch(0, map_err(common::MAP_PREFIXES)(e)))?;
        let mut removed = 0;
        for (i, (len, d)) in keys.iter().enumerate() {
            let key = Key::new(common::PREFIX_HEADER_BITS + len, *d);
            match m.remove(&key) {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(batch(i, map_err(common::MAP_PREFIXES)(e))),
            }
        }
        Ok(removed)
    }
}

impl RuleMaps for Classifier {
    /// Kernel ids of FLOWS, PREFIXES, MACS, NEIGH and CONFIG.
    fn identity(&self) -> Result<MapsId> {
        let id = |name: &'static str| -> Result<u32> {
            let data: &MapData = match self.map(name)? {
                aya::maps::Map::HashMap(d)
                | aya::maps::Map::LpmTrie(d)
                | aya::maps::Map::Array(d) => d,
                _ => {
                    return Err(ClassifierError::Map {
                        map: name,
                        detail: "unexpected map type".into(),
                    })
                }
            };
            data.info().map(|i| i.id()).map_err(map_err(name))
        };
        Ok(MapsId([
            id(common::MAP_FLOWS)?,
            id(common::MAP_PREFIXES)?,
            id(common::MAP_MACS)?,
            id(common::MAP_NEIGH)?,
            id(common::MAP_CONFIG)?,
        ]))
    }

    fn generations(&self) -> Result<Generations> {
        let cfg = self.config()?;
        Ok(Generations {
            rules: cfg.active_gen & 1,
            guests: cfg.guest_gen & 1,
        })
    }

    /// One update of the CONFIG entry, the rest of the configuration kept
    /// as it is. The program copies the entry once per frame; since only
    /// one generation byte differs between the old and the new value of a
    /// one-group switch (both bytes for a switch of both groups), any copy
    /// it makes holds the old or the new value of each byte and the same
    /// other fields.
    fn set_generations(&mut self, gens: Generations) -> Result<()> {
        let mut cfg = self.config()?;
        cfg.active_gen = gens.rules & 1;
        cfg.guest_gen = gens.guests & 1;
        self.set_config(&cfg)
    }

    fn wait_for_readers(&mut self) {
        Classifier::wait_for_readers(self);
    }
}

impl Drop for Classifier {
    fn drop(&mut self) {
        if !self.attached && self.reused_pins && self.ebpf.is_some() {
            // Never attached: the pins of the daemon before stay for the
            // next start (see `Classifier::load`).
            self.ebpf = None;
            tracing::info!(iface = %self.iface, pins = %self.pin_dir.display(), "XDP classifier not attached; its pins stay");
            return;
        }
        if let Err(e) = self.teardown() {
            tracing::warn!("classifier teardown: {e}");
        }
    }
}
