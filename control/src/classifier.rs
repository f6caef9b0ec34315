//! The XDP classifier on one interface: load the embedded object, attach
//! it, pin its maps, write its maps, read its counters, and take it all
//! down again.
//!
//! A [`Classifier`] owns, for one interface: the loaded program and its
//! bpf_link (the attachment lives exactly as long as the link), the map
//! handles, and the pin directory `/sys/fs/bpf/xdpath/<ifname>/` (one file
//! per map, named as in `xdpath_common::ALL_MAPS`, so `bpftool map dump
//! pinned ...` works while it runs).
//!
//! Pins are reused: if the directory already holds maps of the same
//! definition (a daemon that was killed), they are opened instead of
//! created, so rules survive a restart. [`Classifier::shutdown`] detaches
//! first (traffic falls back to the host), then removes the pins.
//! Dropping a `Classifier` without `shutdown` does the same, best effort.
//!
//! The caller serialises writes (the control plane owns the flow table);
//! the XDP program only reads maps, except the per-CPU counters and the
//! scratch map it owns.

use crate::netlink::{self, AttachMode};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use xdpath_common as common;
use xdpath_common::{AddrKey, Config, Counters, FlowKey, MacKey, PrefixData, RuleValue};

/// The XDP object built from `ebpf/xdpath-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpath.bpf.o"));

/// Default root of the per-interface pin directories.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/xdpath";

/// How to attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// Native (driver) mode: the fast path; fails if the driver lacks XDP.
    #[default]
    Native,
    /// Generic (skb) mode: works everywhere, slower. Only when asked.
    Generic,
}

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

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> ClassifierError {
    move |e| ClassifierError::Map {
        map,
        detail: e.to_string(),
    }
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

/// The program attached to one interface, with its maps.
pub struct Classifier {
    iface: String,
    ifindex: u32,
    pin_dir: PathBuf,
    /// `None` once shut down.
    ebpf: Option<Ebpf>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("iface", &self.iface)
            .field("ifindex", &self.ifindex)
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// Loads the embedded program, pins (or reopens) its maps, writes the
    /// configuration and attaches to `cfg.iface`.
    pub fn attach(cfg: &ClassifierConfig) -> Result<Self> {
        let ifindex = ifindex(&cfg.iface)?;
        let netlink_err = |source| ClassifierError::Netlink {
            iface: cfg.iface.clone(),
            source,
        };
        if let Some(existing) = netlink::xdp_query(ifindex).map_err(netlink_err)? {
            if !cfg.force {
                return Err(ClassifierError::AlreadyAttached {
                    iface: cfg.iface.clone(),
                    prog_id: existing.prog_id,
                    mode: existing.mode,
                });
            }
            tracing::warn!(iface = %cfg.iface, prog_id = existing.prog_id, "--force: detaching the XDP program already attached");
            netlink::xdp_detach(ifindex, existing.mode).map_err(|source| {
                ClassifierError::ForceFailed {
                    iface: cfg.iface.clone(),
                    prog_id: existing.prog_id,
                    source,
                }
            })?;
        }
        if let Err(e) = raise_memlock() {
            tracing::debug!("raising RLIMIT_MEMLOCK failed: {e}");
        }

        let pin_dir = cfg.pin_root.join(&cfg.iface);
        std::fs::create_dir_all(&pin_dir).map_err(|source| ClassifierError::PinDir {
            path: pin_dir.clone(),
            source,
        })?;
        let mut me = Self {
            iface: cfg.iface.clone(),
            ifindex,
            pin_dir,
            ebpf: None,
        };
        // From here on, Drop removes the pins if anything fails.
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
            .map_err(|e| ClassifierError::Load(format!("{e:#}")))?;
        me.ebpf = Some(ebpf);
        me.set_config(&Config {
            active_gen: me.config()?.active_gen,
            default_action: cfg.default_action as u32,
            default_port: cfg.default_port,
            flags: if cfg.metadata {
                common::CONFIG_F_META
            } else {
                0
            },
        })?;

        let ebpf = me.ebpf_mut();
        let prog: &mut Xdp = ebpf
            .program_mut(common::PROGRAM_NAME)
            .ok_or_else(|| {
                ClassifierError::Load(format!(
                    "the object has no program {}",
                    common::PROGRAM_NAME
                ))
            })?
            .try_into()
            .map_err(|e| ClassifierError::Load(format!("{e}")))?;
        prog.load()
            .map_err(|e| ClassifierError::Load(format!("{e:#}")))?;
        let mode = match cfg.mode {
            XdpAttachMode::Native => XdpMode::Driver,
            XdpAttachMode::Generic => XdpMode::Skb,
        };
        if let Err(e) = prog.attach_to_if_index(ifindex, mode) {
            let detail = format!("{e:#}");
            return Err(match cfg.mode {
                XdpAttachMode::Native if detail.contains("Operation not supported") => {
                    ClassifierError::NativeUnsupported {
                        iface: cfg.iface.clone(),
                        detail,
                    }
                }
                _ => ClassifierError::Attach {
                    iface: cfg.iface.clone(),
                    detail,
                },
            });
        }
        tracing::info!(iface = %me.iface, mode = ?cfg.mode, pins = %me.pin_dir.display(), "XDP classifier attached");
        Ok(me)
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

    /// Registers the AF_XDP socket `fd` for NIC rx queue `queue`.
    pub fn register_socket(&mut self, queue: u32, fd: &impl AsRawFd) -> Result<()> {
        let mut xsks: XskMap<&mut MapData> = self
            .map_mut(common::MAP_XSKS)?
            .try_into()
            .map_err(map_err(common::MAP_XSKS))?;
        xsks.set(queue, fd.as_raw_fd(), 0)
            .map_err(map_err(common::MAP_XSKS))
    }

    /// Removes the socket of `queue`: its traffic fails open to the host.
    pub fn unregister_socket(&mut self, queue: u32) -> Result<()> {
        let mut xsks: XskMap<&mut MapData> = self
            .map_mut(common::MAP_XSKS)?
            .try_into()
            .map_err(map_err(common::MAP_XSKS))?;
        xsks.unset(queue).map_err(map_err(common::MAP_XSKS))
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

    /// Inserts or replaces an exact rule.
    pub fn insert_flow(&mut self, key: &FlowKey, value: &RuleValue) -> Result<()> {
        let mut m: HashMap<&mut MapData, FlowKey, RuleValue> = self
            .map_mut(common::MAP_FLOWS)?
            .try_into()
            .map_err(map_err(common::MAP_FLOWS))?;
        m.insert(key, value, 0).map_err(map_err(common::MAP_FLOWS))
    }

    /// Removes an exact rule.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, FlowKey, RuleValue> = self
            .map_mut(common::MAP_FLOWS)?
            .try_into()
            .map_err(map_err(common::MAP_FLOWS))?;
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

    /// Inserts or replaces a guest MAC entry.
    pub fn insert_mac(&mut self, mac: [u8; 6], value: &RuleValue) -> Result<()> {
        let mut m: HashMap<&mut MapData, MacKey, RuleValue> = self
            .map_mut(common::MAP_MACS)?
            .try_into()
            .map_err(map_err(common::MAP_MACS))?;
        m.insert(MacKey { mac, _pad: [0; 2] }, value, 0)
            .map_err(map_err(common::MAP_MACS))
    }

    /// Removes a guest MAC entry.
    pub fn remove_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        let mut m: HashMap<&mut MapData, MacKey, RuleValue> = self
            .map_mut(common::MAP_MACS)?
            .try_into()
            .map_err(map_err(common::MAP_MACS))?;
        m.remove(&MacKey { mac, _pad: [0; 2] })
            .map_err(map_err(common::MAP_MACS))
    }

    /// Inserts or replaces a guest address for ARP/ND steering.
    pub fn insert_neigh(&mut self, key: &AddrKey, value: &RuleValue) -> Result<()> {
        let mut m: HashMap<&mut MapData, AddrKey, RuleValue> = self
            .map_mut(common::MAP_NEIGH)?
            .try_into()
            .map_err(map_err(common::MAP_NEIGH))?;
        m.insert(key, value, 0).map_err(map_err(common::MAP_NEIGH))
    }

    /// Removes a guest address.
    pub fn remove_neigh(&mut self, key: &AddrKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, AddrKey, RuleValue> = self
            .map_mut(common::MAP_NEIGH)?
            .try_into()
            .map_err(map_err(common::MAP_NEIGH))?;
        m.remove(key).map_err(map_err(common::MAP_NEIGH))
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
        if self.ebpf.take().is_some() {
            tracing::info!(iface = %self.iface, "XDP classifier detached");
        }
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

impl Drop for Classifier {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!("classifier teardown: {e}");
        }
    }
}
