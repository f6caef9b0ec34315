//! `cargo xtask deploy` / `undeploy`: put xdpath on a host NIC and take it
//! off again.
//!
//! deploy: build the release binaries (and with them the eBPF object) ->
//! run the daemon's preflight checks (`xdpathd --check`; every failure with
//! its fix, nothing installed if any fails) -> install `xdpathd`, `xdpctl`
//! and `/etc/xdpath/<iface>.toml` -> print the QEMU options and the libvirt
//! snippet for the guest -> start `xdpathd` in the foreground, or with
//! `--systemd` write and enable `xdpathd@<iface>.service`.
//!
//! undeploy reverses it: stop and remove the unit, remove the binaries, the
//! config, the sockets and any pins left under `/sys/fs/bpf/xdpath/<iface>`,
//! and every stale pin directory under `/sys/fs/bpf/xdpath` (one whose
//! interface no longer exists and that nothing uses: `xdpathd
//! --remove-stale-pins` decides, see `control/src/pins.rs`). The flow
//! table's state file is kept unless `--purge`.
//!
//! `--root DIR` installs under DIR instead of `/`, and `--bin-dir DIR` takes
//! prebuilt binaries (tests and packaging).

use crate::run::{status, workspace_root};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the user asked for.
// The field docs are clap's help text: `<iface>` there is a placeholder the
// user reads, not an HTML tag.
#[allow(rustdoc::invalid_html_tags)]
#[derive(clap::Args, Debug, Clone)]
pub struct DeployArgs {
    /// Host NIC to put xdpath on.
    #[arg(long)]
    pub iface: String,
    /// Queue pairs (NIC queues used = guest queue pairs offered).
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Let xdpathd set the NIC's receive queue count to --queues
    /// (`ethtool -L`) instead of refusing a NIC with another count.
    #[arg(long)]
    pub set_channels: bool,
    /// The guest's MAC address [default: 52:54:00 + 3 bytes derived from the interface name].
    #[arg(long)]
    pub guest_mac: Option<String>,
    /// vhost-user socket for the guest [default: /run/xdpath/<iface>.vhost.sock].
    #[arg(long)]
    pub vhost_socket: Option<PathBuf>,
    /// A TOML config for xdpathd to install instead of one made from these flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write and enable a systemd unit instead of running in the foreground.
    #[arg(long)]
    pub systemd: bool,
    /// Install under this directory instead of / (nothing is started).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Use xdpathd and xdpctl from this directory instead of building them.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Extra arguments for xdpathd (after `--`), e.g. `-- --netns NS`.
    #[arg(last = true)]
    pub daemon_args: Vec<String>,
}

/// What to remove.
#[derive(clap::Args, Debug, Clone)]
pub struct UndeployArgs {
    /// The NIC xdpath was deployed on.
    #[arg(long)]
    pub iface: String,
    /// Install root used at deploy time.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Also remove the flow table's state file.
    #[arg(long)]
    pub purge: bool,
    /// Root of the pin directories to clear of stale ones.
    #[arg(long, default_value = "/sys/fs/bpf/xdpath")]
    pub pin_root: PathBuf,
}

/// Paths of a deployment under `root`.
struct Layout {
    bin: PathBuf,
    etc: PathBuf,
    unit_dir: PathBuf,
    state: PathBuf,
    run: PathBuf,
}

impl Layout {
    fn new(root: Option<&Path>) -> Self {
        let r = root.unwrap_or(Path::new("/"));
        Self {
            bin: r.join("usr/local/bin"),
            etc: r.join("etc/xdpath"),
            unit_dir: r.join("etc/systemd/system"),
            state: r.join("var/lib/xdpath"),
            run: r.join("run/xdpath"),
        }
    }
}

/// A locally administered unicast MAC derived from the interface name, so
/// that a redeploy gives the guest the same address.
pub fn default_mac(iface: &str) -> String {
    let h = iface.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let b = h.to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3])
}

/// The xdpathd config written at deploy time.
fn config_toml(a: &DeployArgs, mac: &str, vhost: &Path, l: &Layout) -> String {
    format!(
        "# xdpathd configuration for {iface}, written by `cargo xtask deploy`.\n\
         iface = \"{iface}\"\nqueues = {q}\nguest_mac = \"{mac}\"\nvhost_socket = \"{vhost}\"\n\
         api_socket = \"{api}\"\nstate_dir = \"{state}\"\n{channels}",
        iface = a.iface,
        q = a.queues,
        vhost = vhost.display(),
        api = l.run.join(format!("{}.api.sock", a.iface)).display(),
        state = l.state.display(),
        channels = if a.set_channels {
            "set_channels = true\n"
        } else {
            ""
        },
    )
}

/// QEMU options for a guest on the vhost-user socket.
pub fn qemu_args(vhost: &Path, queues: u16, mac: &str, mem_mib: u32) -> String {
    format!(
        "-object memory-backend-memfd,id=mem0,size={mem_mib}M,share=on -numa node,memdev=mem0 \\\n  \
         -chardev socket,id=xdp0,path={},reconnect=1 \\\n  \
         -netdev vhost-user,id=net0,chardev=xdp0,queues={queues} \\\n  \
         -device virtio-net-pci,netdev=net0,mq=on,vectors={},mac={mac}",
        vhost.display(),
        2 * u32::from(queues) + 2
    )
}

/// The libvirt domain XML pieces for the same guest.
pub fn libvirt_snippet(vhost: &Path, queues: u16, mac: &str) -> String {
    format!(
        "<memoryBacking>\n  <source type='memfd'/>\n  <access mode='shared'/>\n</memoryBacking>\n\
         <interface type='vhostuser'>\n  <mac address='{mac}'/>\n  \
         <source type='unix' path='{}' mode='client'>\n    <reconnect enabled='yes' timeout='1'/>\n  </source>\n  \
         <model type='virtio'/>\n  <driver queues='{queues}'/>\n</interface>",
        vhost.display()
    )
}

/// The systemd unit template (`xdpathd@<iface>.service`).
fn unit(bin: &Path, etc: &Path) -> String {
    format!(
        "[Unit]\nDescription=xdpath dataplane on %i\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\nType=simple\nExecStart={} --config {}/%i.toml\n\
         Restart=on-failure\nRestartSec=2s\nKillSignal=SIGTERM\nTimeoutStopSec=20s\n\
         LimitMEMLOCK=infinity\n\
         CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK CAP_SYS_ADMIN CAP_CHOWN\n\
         AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK\n\
         NoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\n\
         ReadWritePaths=/run/xdpath /var/lib/xdpath /sys/fs/bpf\nRuntimeDirectory=xdpath\nRuntimeDirectoryPreserve=yes\n\
         StateDirectory=xdpath\nProtectKernelModules=yes\nProtectControlGroups=yes\nRestrictSUIDSGID=yes\n\
         LockPersonality=yes\nMemoryDenyWriteExecute=yes\nSystemCallArchitectures=native\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        bin.join("xdpathd").display(),
        etc.display()
    )
}

fn cargo_release_build() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    status(
        Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "xdpath-control",
                "-p",
                "xdpath-cli",
                "--bins",
            ])
            .current_dir(workspace_root()),
    )?;
    Ok(workspace_root().join("target/release"))
}

/// `cargo xtask deploy`.
pub fn deploy(a: &DeployArgs) -> Result<()> {
    if !crate::config_valid_ifname(&a.iface) {
        bail!(
            "--iface {:?} is not an interface name (1 to 15 bytes, no '/' or spaces)",
            a.iface
        );
    }
    let l = Layout::new(a.root.as_deref());
    let built = match &a.bin_dir {
        Some(d) => d.clone(),
        None => cargo_release_build()?,
    };
    let mac = a.guest_mac.clone().unwrap_or_else(|| default_mac(&a.iface));
    let vhost = a
        .vhost_socket
        .clone()
        .unwrap_or_else(|| Path::new("/run/xdpath").join(format!("{}.vhost.sock", a.iface)));

    // Preflight with the exact settings the daemon will run with.
    let conf_text = match &a.config {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => config_toml(a, &mac, &vhost, &l),
    };
    let probe = std::env::temp_dir().join(format!("xdpath-deploy-{}.toml", std::process::id()));
    std::fs::write(&probe, &conf_text)?;
    let check = Command::new(built.join("xdpathd"))
        .arg("--config")
        .arg(&probe)
        .args(&a.daemon_args)
        .arg("--check")
        .status();
    let _ = std::fs::remove_file(&probe);
    if !check.context("running xdpathd --check")?.success() {
        bail!("preflight failed (each problem above comes with its fix); nothing was installed");
    }

    for d in [&l.bin, &l.etc, &l.state] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    for b in ["xdpathd", "xdpctl"] {
        let dst = l.bin.join(b);
        let tmp = l.bin.join(format!(".{b}.new"));
        std::fs::copy(built.join(b), &tmp)
            .with_context(|| format!("installing {}", dst.display()))?;
        std::fs::rename(&tmp, &dst)?;
    }
    let conf = l.etc.join(format!("{}.toml", a.iface));
    std::fs::write(&conf, &conf_text).with_context(|| format!("writing {}", conf.display()))?;
    println!(
        "installed {} and {}, config {}",
        l.bin.join("xdpathd").display(),
        l.bin.join("xdpctl").display(),
        conf.display()
    );
    println!(
        "\nQEMU options for the guest:\n  {}",
        qemu_args(&vhost, a.queues, &mac, 1024)
    );
    println!(
        "\nlibvirt domain XML:\n{}\n",
        libvirt_snippet(&vhost, a.queues, &mac)
    );

    if a.root.is_some() {
        println!("--root given: not starting anything");
        return Ok(());
    }
    if a.systemd {
        std::fs::create_dir_all(&l.unit_dir)?;
        let path = l.unit_dir.join("xdpathd@.service");
        std::fs::write(&path, unit(&l.bin, &l.etc))?;
        println!("wrote {}", path.display());
        let unit_name = format!("xdpathd@{}.service", a.iface);
        if !Path::new("/run/systemd/system").exists() {
            bail!("systemd is not running on this machine; start it with `systemctl enable --now {unit_name}` once it is, or deploy without --systemd");
        }
        status(Command::new("systemctl").arg("daemon-reload"))?;
        status(Command::new("systemctl").args(["enable", "--now", &unit_name]))?;
        println!("started {unit_name}; logs: journalctl -u {unit_name}");
        return Ok(());
    }
    println!("starting xdpathd in the foreground (Ctrl-C stops it and restores the NIC)");
    status(
        Command::new(l.bin.join("xdpathd"))
            .arg("--config")
            .arg(&conf)
            .args(&a.daemon_args),
    )
}

/// `cargo xtask undeploy`.
pub fn undeploy(a: &UndeployArgs) -> Result<()> {
    let l = Layout::new(a.root.as_deref());
    let unit_name = format!("xdpathd@{}.service", a.iface);
    if a.root.is_none() && Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", &unit_name])
            .status();
    }
    // Stale pins of any interface, while the installed xdpathd is there to
    // tell which ones are stale.
    let daemon = l.bin.join("xdpathd");
    if daemon.is_file() {
        let cleaned = Command::new(&daemon)
            .arg("--remove-stale-pins")
            .arg("--pin-root")
            .arg(&a.pin_root)
            .status()
            .with_context(|| format!("running {} --remove-stale-pins", daemon.display()))?;
        if !cleaned.success() {
            println!("some stale pin directories could not be removed (see above)");
        }
    } else {
        println!(
            "{} is not installed: stale pins under {} were not looked for",
            daemon.display(),
            a.pin_root.display()
        );
    }
    let mut removed = Vec::new();
    let mut remove = |p: PathBuf| {
        if std::fs::remove_file(&p).is_ok() {
            removed.push(p.display().to_string());
        }
    };
    remove(l.etc.join(format!("{}.toml", a.iface)));
    remove(l.run.join(format!("{}.api.sock", a.iface)));
    remove(l.run.join(format!("{}.vhost.sock", a.iface)));
    if a.purge {
        remove(l.state.join(format!("{}.flows.json", a.iface)));
    }
    // Binaries and the unit template are shared by all interfaces: remove
    // them with the last config.
    let others = std::fs::read_dir(&l.etc)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "toml"))
        })
        .unwrap_or(false);
    if !others {
        remove(l.bin.join("xdpathd"));
        remove(l.bin.join("xdpctl"));
        remove(l.unit_dir.join("xdpathd@.service"));
    }
    // Pins a killed daemon left behind (only this interface's directory).
    if a.root.is_none() {
        let pins = Path::new("/sys/fs/bpf/xdpath").join(&a.iface);
        if pins.exists() && std::fs::remove_dir_all(&pins).is_ok() {
            removed.push(pins.display().to_string());
        }
    }
    if removed.is_empty() {
        println!("nothing to remove for {}", a.iface);
    } else {
        println!("removed:\n  {}", removed.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_and_libvirt_snippets_carry_the_settings() {
        let q = qemu_args(
            Path::new("/run/xdpath/eth1.vhost.sock"),
            2,
            "52:54:00:00:00:01",
            512,
        );
        for part in [
            "memory-backend-memfd,id=mem0,size=512M,share=on",
            "path=/run/xdpath/eth1.vhost.sock,reconnect=1",
            "vhost-user,id=net0,chardev=xdp0,queues=2",
            "mq=on,vectors=6,mac=52:54:00:00:00:01",
        ] {
            assert!(q.contains(part), "{part} in {q}");
        }
        let x = libvirt_snippet(Path::new("/s"), 4, "52:54:00:00:00:02");
        assert!(
            x.contains("<interface type='vhostuser'>")
                && x.contains("<driver queues='4'/>")
                && x.contains("path='/s'")
        );
    }

    #[test]
    fn the_config_asks_for_set_channels_only_when_told() {
        let mut a = DeployArgs {
            iface: "eth1".into(),
            queues: 2,
            set_channels: false,
            guest_mac: None,
            vhost_socket: None,
            config: None,
            systemd: false,
            root: None,
            bin_dir: None,
            daemon_args: Vec::new(),
        };
        let l = Layout::new(None);
        let v = Path::new("/run/xdpath/eth1.vhost.sock");
        assert!(!config_toml(&a, "52:54:00:00:00:01", v, &l).contains("set_channels"));
        a.set_channels = true;
        assert!(config_toml(&a, "52:54:00:00:00:01", v, &l).contains("\nset_channels = true\n"));
    }

    #[test]
    fn the_default_mac_is_stable_unicast_and_local() {
        let m = default_mac("eth1");
        assert_eq!(m, default_mac("eth1"));
        assert_ne!(m, default_mac("eth2"));
        assert!(m.starts_with("52:54:00:"));
    }

    #[test]
    fn the_unit_restarts_and_is_hardened() {
        let u = unit(Path::new("/usr/local/bin"), Path::new("/etc/xdpath"));
        for line in [
            "Restart=on-failure",
            "ExecStart=/usr/local/bin/xdpathd --config /etc/xdpath/%i.toml",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "LimitMEMLOCK=infinity",
        ] {
            assert!(u.contains(line), "{line}");
        }
    }
}
