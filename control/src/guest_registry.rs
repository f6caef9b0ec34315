//! The guests one daemon serves, by name and by id, and their durable copy.
//!
//! [`GuestRegistry`] holds every guest ([`Guest`]: its id and its
//! [`GuestSpec`]). Ids run from 1 to [`MAX_GUESTS`]; a new guest gets the
//! lowest free one, so an id comes back into use only after its guest is
//! removed. The one-guest shorthand guest (`--guest-mac`, `--guest-ip`,
//! `--vhost-socket`; named `default`) is added with id 1
//! ([`GuestRegistry::add_with_id`]), the guest port every rule of a
//! one-guest daemon names. Names, MACs, vhost-user sockets (as resolved:
//! an explicit path or the default `<run_dir>/<iface>.<name>.vhost.sock`)
//! and addresses are unique; a refusal names the field and the guest that
//! holds the value already.
//!
//! The registry answers [`GuestNames`] (rules name guests), and makes the
//! guest MAC and address entries the classifier steers by
//! ([`GuestRegistry::entries`]: each guest's MAC and IPs to
//! `Action::Guest` with port = its id).
//!
//! # The state file
//!
//! `<state_dir>/<iface>.guests.json`
//! ([`DaemonConfig::guest_file`](crate::config::DaemonConfig::guest_file)),
//! next to the flow table's:
//!
//! ```json
//! {"version": 1, "guests": [{"id": 1, "name": "default", "mac": "52:54:00:12:34:56", "ips": ["10.0.0.5"]}]}
//! ```
//!
//! Each entry is a [`GuestSpec`] (the keys of `POST /v1/guests`) with its
//! `id`. It is replaced whole ([`GuestRegistry::save`]): written to
//! `.<name>.tmp` in the same directory, fsynced, renamed over the file, and
//! the directory fsynced. [`GuestRegistry::load`] takes a missing file as
//! no guests; a file that cannot be read, is not JSON, has another version,
//! or holds an entry that is not a valid guest (a bad name, an id out of
//! range, an id, name, MAC, socket or address given twice, more queue
//! pairs than the daemon has) is an error naming the file and the entry
//! (its index, and its name when it has one): the daemon refuses to start
//! before the XDP program is attached.
//!
//! # Changes
//!
//! Every change goes: validate, change a copy, save the copy, then make it
//! the registry ([`GuestRegistry::change`]); the caller applies it to the
//! maps and the vhost-user servers afterwards. A failed save changes
//! nothing: the registry and its file are as they were.

use crate::flow_table::GuestEntries;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use xdpath_api::guests::{check_guest_name, GuestSpecError, MAX_GUESTS, SHORTHAND_GUEST};
use xdpath_api::{GuestInfo, GuestNames, GuestSpec, GuestTable};
use xdpath_common::{Action, RuleValue};

/// The version of the state file this daemon writes and reads.
pub const GUEST_FILE_VERSION: u64 = 1;

/// One guest: its id and what was declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guest {
    /// 1 to [`MAX_GUESTS`]: the classifier's guest port.
    pub id: u32,
    /// What was declared.
    pub spec: GuestSpec,
}

impl Guest {
    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// What the daemon fills in for a guest that leaves it out: where default
/// sockets go, the interface they are named after, and the daemon's queue
/// pairs (a guest's most).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestDefaults {
    /// The directory of default vhost-user sockets.
    pub run_dir: PathBuf,
    /// The daemon's interface.
    pub iface: String,
    /// The daemon's queue pairs.
    pub queues: u16,
}

/// A refused guest change, or a state file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The spec is not valid: the field and why.
    #[error(transparent)]
    Invalid(#[from] GuestSpecError),
    /// Another guest already has this name, MAC, socket or address.
    #[error("`{field}`: {value} is guest \"{other}\"'s already.")]
    Duplicate {
        /// `name`, `mac`, `vhost_socket` or `ips`.
        field: &'static str,
        /// The value, as shown.
        value: String,
        /// The guest that has it.
        other: String,
    },
    /// No guest by that name.
    #[error("`name`: no guest named {}.", xdpath_api::rules::echo(.0))]
    NotFound(String),
    /// Rules send to the guest (a delete without force).
    #[error("`name`: {rules} rules send to guest \"{name}\"; delete them first, or delete the guest with force=true (which deletes them too).")]
    InUse {
        /// The guest.
        name: String,
        /// How many rules send to it.
        rules: u64,
    },
    /// All ids are taken.
    #[error("`name`: {MAX_GUESTS} guests exist, the most one daemon serves; remove one first.")]
    Full,
    /// The id asked for is taken or out of range.
    #[error("`id`: {0}")]
    Id(String),
    /// The state file could not be written; nothing was changed.
    #[error("Saving the guests to {path} failed: {source}; nothing was changed.")]
    Save {
        /// The state file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The state file cannot be used.
    #[error("Guest file {path}: {detail}")]
    File {
        /// The state file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        detail: String,
    },
}

impl GuestError {
    /// The request field the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid(e) => Some(&e.field),
            Self::Duplicate { field, .. } => Some(field),
            Self::NotFound(_) | Self::Full | Self::InUse { .. } => Some("name"),
            Self::Id(_) => Some("id"),
            Self::Save { .. } | Self::File { .. } => None,
        }
    }

    /// The API's error body: the message and the field.
    pub fn error_body(&self) -> xdpath_api::ErrorBody {
        xdpath_api::ErrorBody {
            error: self.to_string(),
            field: self.field().map(str::to_string),
        }
    }

    /// The HTTP status of the refusal: 400 bad input, 404 no such guest,
    /// 409 a duplicate, a taken id or rules still sending to the guest,
    /// 507 no id left, 500 a failed save.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::NotFound(_) => 404,
            Self::Duplicate { .. } | Self::Id(_) | Self::InUse { .. } => 409,
            Self::Full => 507,
            Self::Save { .. } | Self::File { .. } => 500,
        }
    }
}

/// A disk step of [`GuestRegistry::save`] a test can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveStep {
    /// Creating and writing the temporary file.
    Write,
    /// Fsyncing it.
    Fsync,
    /// Renaming it over the state file.
    Rename,
    /// Fsyncing the directory.
    SyncDir,
}

/// The guests, by name and by id; see the module docs.
#[derive(Clone, Debug)]
pub struct GuestRegistry {
    defaults: GuestDefaults,
    path: Option<PathBuf>,
    by_id: BTreeMap<u32, Guest>,
    fail_at: Option<SaveStep>,
}

impl GuestRegistry {
    /// No guests and no state file (nothing is saved).
    pub fn new(defaults: GuestDefaults) -> Self {
        Self {
            defaults,
            path: None,
            by_id: BTreeMap::new(),
            fail_at: None,
        }
    }

    /// Reads the state file at `path` (missing: no guests); the registry
    /// saves there from now on. Errors name the file and the entry.
    pub fn load(path: &Path, defaults: GuestDefaults) -> Result<Self, GuestError> {
        let mut r = Self::new(defaults);
        r.path = Some(path.to_path_buf());
        let file_err = |detail: String| GuestError::File {
            path: path.to_path_buf(),
            detail,
        };
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(r),
            Err(e) => return Err(file_err(format!("cannot be read: {e}."))),
        };
        let v: Value = serde_json::from_slice(&text)
            .map_err(|e| file_err(format!("is not valid JSON ({e}).")))?;
        let version = v.get("version").and_then(Value::as_u64);
        if version != Some(GUEST_FILE_VERSION) {
            return Err(file_err(format!(
                "has version {}, this daemon reads version {GUEST_FILE_VERSION}.",
                v.get("version")
                    .map_or_else(|| "none".into(), Value::to_string)
            )));
        }
        let Some(entries) = v.get("guests").and_then(Value::as_array) else {
            return Err(file_err("has no `guests` list.".into()));
        };
        for (i, entry) in entries.iter().enumerate() {
            let name = entry
                .get("name")
                .and_then(Value::as_str)
                .map(|n| format!(" ({})", xdpath_api::rules::echo(n)))
                .unwrap_or_default();
            let at = |e: &dyn std::fmt::Display| file_err(format!("entry {i}{name}: {e}"));
            let mut obj = entry.clone();
            let id = match obj.as_object_mut().and_then(|o| o.remove("id")) {
                Some(id) => id
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        at(&format!(
                            "`id`: {id} is not a guest id (1 to {MAX_GUESTS})."
                        ))
                    })?,
                None => return Err(at(&"`id`: missing; a stored guest has its id.")),
            };
            // The shorthand guest declared without `--guest-mac` is saved
            // without a MAC (it is reached by rules only): read it back so,
            // or a daemon that saved it could not start again. Every other
            // guest needs its MAC.
            let shorthand = obj.get("name").and_then(Value::as_str) == Some(SHORTHAND_GUEST);
            let spec = if shorthand {
                GuestSpec::from_value_mac_optional(obj)
            } else {
                GuestSpec::from_value(obj)
            }
            .map_err(|e| at(&e))?;
            r.add_with_id(id, spec).map_err(|e| at(&e))?;
        }
        Ok(r)
    }

    /// Where the registry saves (none: it does not).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What the daemon fills in.
    pub fn defaults(&self) -> &GuestDefaults {
        &self.defaults
    }

    /// Test seam: make `step` of every save fail with `EIO` (None: heal).
    pub fn fail_saves_at(&mut self, step: Option<SaveStep>) {
        self.fail_at = step;
    }

    /// Guests.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No guests.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The guest called `name`.
    pub fn get(&self, name: &str) -> Option<&Guest> {
        self.by_id.values().find(|g| g.spec.name == name)
    }

    /// The guest with id `id`.
    pub fn by_id(&self, id: u32) -> Option<&Guest> {
        self.by_id.get(&id)
    }

    /// Every guest, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Guest> + '_ {
        self.by_id.values()
    }

    /// The socket guest `spec` is served on.
    pub fn vhost_socket(&self, spec: &GuestSpec) -> PathBuf {
        spec.vhost_socket_or_default(&self.defaults.run_dir, &self.defaults.iface)
    }

    /// The queue pairs guest `spec` is offered.
    pub fn queues(&self, spec: &GuestSpec) -> u16 {
        spec.queues.unwrap_or(self.defaults.queues)
    }

    /// A guest's listing with the defaults filled in, counters at zero
    /// (the daemon adds them) and the socket mode `default_mode` unless it
    /// gives one.
    pub fn info(&self, g: &Guest, default_mode: u32) -> GuestInfo {
        GuestInfo::new(
            g.id,
            &g.spec,
            self.vhost_socket(&g.spec),
            self.queues(&g.spec),
            default_mode,
        )
    }

    /// Every guest's MAC and addresses, to that guest (port = id).
    pub fn entries(&self) -> GuestEntries {
        let mut e = GuestEntries::new();
        for g in self.by_id.values() {
            let value = RuleValue {
                action: Action::Guest as u32,
                port: g.id,
                rule_id: 0,
                _pad: 0,
            };
            if let Some(mac) = g.spec.mac {
                e.insert_mac(mac.octets(), value);
            }
            for ip in &g.spec.ips {
                e.insert_addr(*ip, value);
            }
        }
        e
    }

    /// The names and ids, as plain data.
    pub fn names(&self) -> GuestTable {
        self.by_id
            .values()
            .map(|g| (g.id, g.spec.name.clone()))
            .collect()
    }

    /// Checks `spec` alone and against the other guests (all but the one
    /// with id `except`).
    fn check(&self, spec: &GuestSpec, except: Option<u32>) -> Result<(), GuestError> {
        spec.validate()?;
        if let Some(q) = spec.queues {
            if q > self.defaults.queues {
                return Err(GuestSpecError::new(
                    "queues",
                    format!(
                        "{q} queue pairs; this daemon has {} (--queues).",
                        self.defaults.queues
                    ),
                )
                .into());
            }
        }
        let socket = self.vhost_socket(spec);
        for other in self.by_id.values().filter(|g| Some(g.id) != except) {
            let dup = |field, value: String| GuestError::Duplicate {
                field,
                value,
                other: other.spec.name.clone(),
            };
            if other.spec.name == spec.name {
                return Err(dup("name", format!("{:?}", spec.name)));
            }
            if let Some(mac) = spec.mac.filter(|m| other.spec.mac == Some(*m)) {
                return Err(dup("mac", mac.to_string()));
            }
            if self.vhost_socket(&other.spec) == socket {
                return Err(dup("vhost_socket", socket.display().to_string()));
            }
            if let Some(ip) = spec.ips.iter().find(|ip| other.spec.ips.contains(ip)) {
                return Err(dup("ips", ip.to_string()));
            }
        }
        Ok(())
    }

    /// Adds a guest with the lowest free id (in memory; see
    /// [`GuestRegistry::change`]).
    pub fn add(&mut self, spec: GuestSpec) -> Result<Guest, GuestError> {
        self.check(&spec, None)?;
        let id = (1..=MAX_GUESTS)
            .find(|i| !self.by_id.contains_key(i))
            .ok_or(GuestError::Full)?;
        let g = Guest { id, spec };
        self.by_id.insert(id, g.clone());
        Ok(g)
    }

    /// Adds a guest with id `id` (the shorthand guest: 1; a stored guest:
    /// its id).
    pub fn add_with_id(&mut self, id: u32, spec: GuestSpec) -> Result<Guest, GuestError> {
        if !(1..=MAX_GUESTS).contains(&id) {
            return Err(GuestError::Id(format!(
                "{id} is not a guest id (1 to {MAX_GUESTS})."
            )));
        }
        if let Some(other) = self.by_id.get(&id) {
            return Err(GuestError::Id(format!(
                "{id} is guest \"{}\"'s already.",
                other.spec.name
            )));
        }
        self.check(&spec, None)?;
        let g = Guest { id, spec };
        self.by_id.insert(id, g.clone());
        Ok(g)
    }

    /// Replaces the spec of the guest of the same name, keeping its id
    /// (the config file wins over the state file), or adds it.
    pub fn update(&mut self, spec: GuestSpec) -> Result<Guest, GuestError> {
        let Some(id) = self.get(&spec.name).map(|g| g.id) else {
            return self.add(spec);
        };
        self.check(&spec, Some(id))?;
        let g = Guest { id, spec };
        self.by_id.insert(id, g.clone());
        Ok(g)
    }

    /// Removes the guest called `name`.
    pub fn remove(&mut self, name: &str) -> Result<Guest, GuestError> {
        check_guest_name(name)?;
        let id = self
            .get(name)
            .map(|g| g.id)
            .ok_or_else(|| GuestError::NotFound(name.to_string()))?;
        self.by_id
            .remove(&id)
            .ok_or_else(|| GuestError::NotFound(name.to_string()))
    }

    /// Puts the configured guests in: the shorthand guest with id 1 (or,
    /// if it is stored, its spec replaced), then every `[[guest]]`, each
    /// replacing a stored guest of its name (config wins) or added.
    /// Stored guests the config does not name stay. All or nothing.
    pub fn merge_config(
        &mut self,
        shorthand: Option<GuestSpec>,
        guests: &[GuestSpec],
    ) -> Result<(), GuestError> {
        let mut next = self.clone();
        if let Some(s) = shorthand {
            match next.get(&s.name).map(|g| g.id) {
                Some(_) => {
                    next.update(s)?;
                }
                None => {
                    next.add_with_id(1, s)?;
                }
            }
        }
        for g in guests {
            next.update(g.clone())?;
        }
        *self = next;
        Ok(())
    }

    /// Applies `f` to a copy, saves the copy, and only then makes it the
    /// registry: when `f` or the save fails, nothing changed.
    pub fn change<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, GuestError>,
    ) -> Result<T, GuestError> {
        let mut next = self.clone();
        let out = f(&mut next)?;
        next.save()?;
        *self = next;
        Ok(out)
    }

    /// The state file's JSON.
    pub fn to_json(&self) -> Value {
        let guests: Vec<Value> = self
            .by_id
            .values()
            .map(|g| {
                let mut v = serde_json::to_value(&g.spec).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("id".into(), g.id.into());
                }
                v
            })
            .collect();
        serde_json::json!({ "version": GUEST_FILE_VERSION, "guests": guests })
    }

    /// Writes the state file (if the registry has one), atomically: a
    /// temporary file, fsync, rename, directory fsync.
    pub fn save(&self) -> Result<(), GuestError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        self.write(path).map_err(|source| GuestError::Save {
            path: path.clone(),
            source,
        })
    }

    fn step(&self, s: SaveStep) -> std::io::Result<()> {
        if self.fail_at == Some(s) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn write(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp"));
        let prev = dir.join(format!(".{name}.prev"));
        let mut text = serde_json::to_vec_pretty(&self.to_json()).map_err(std::io::Error::other)?;
        text.push(b'\n');
        let _ = std::fs::remove_file(&prev);
        let had = path.exists();
        let written = (|| {
            self.step(SaveStep::Write)?;
            let mut f = File::create(&tmp)?;
            f.write_all(&text)?;
            self.step(SaveStep::Fsync)?;
            f.sync_all()?;
            if had {
                // The current file, to put back if the directory cannot be
                // synced.
                std::fs::hard_link(path, &prev)?;
            }
            self.step(SaveStep::Rename)?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&prev);
            return Err(e);
        }
        let synced = self
            .step(SaveStep::SyncDir)
            .and_then(|()| File::open(&dir)?.sync_all());
        if let Err(e) = synced {
            // Put the previous file back: a failed save leaves the file as
            // it was.
            let _ = if had {
                std::fs::rename(&prev, path)
            } else {
                std::fs::remove_file(path)
            };
            return Err(e);
        }
        let _ = std::fs::remove_file(&prev);
        Ok(())
    }
}

impl GuestNames for GuestRegistry {
    fn id_of(&self, name: &str) -> Option<u32> {
        self.get(name).map(|g| g.id)
    }

    fn name_of(&self, id: u32) -> Option<String> {
        self.by_id(id).map(|g| g.spec.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use xdpath_api::MacAddr;

    /// A private directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("xdpath-guests-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        fn file(&self) -> PathBuf {
            self.0.join("eth1.guests.json")
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn defaults() -> GuestDefaults {
        GuestDefaults {
            run_dir: PathBuf::from("/run/xdpath"),
            iface: "eth1".into(),
            queues: 4,
        }
    }

    fn spec(name: &str, last: u8) -> GuestSpec {
        let mut s = GuestSpec::new(name, MacAddr([0x52, 0x54, 0, 0, 0, last]));
        s.ips = vec![format!("10.0.0.{last}").parse().unwrap()];
        s
    }

    fn ids(r: &GuestRegistry) -> Vec<(u32, String)> {
        r.iter().map(|g| (g.id, g.spec.name.clone())).collect()
    }

    #[test]
    fn ids_are_the_lowest_free_and_reused_only_after_removal() {
        let mut r = GuestRegistry::new(defaults());
        assert_eq!(r.add(spec("a", 1)).unwrap().id, 1);
        assert_eq!(r.add(spec("b", 2)).unwrap().id, 2);
        assert_eq!(r.add(spec("c", 3)).unwrap().id, 3);
        assert_eq!(r.remove("b").unwrap().id, 2);
        assert_eq!(r.add(spec("d", 4)).unwrap().id, 2);
        assert_eq!(r.add(spec("e", 5)).unwrap().id, 4);
        assert_eq!(r.get("d").unwrap().id, 2);
        assert_eq!(r.by_id(3).unwrap().name(), "c");
        assert_eq!(
            (r.id_of("e"), r.name_of(1)),
            (Some(4), Some("a".to_string()))
        );
        assert_eq!(r.len(), 4);
        let mut full = GuestRegistry::new(defaults());
        for i in 0..MAX_GUESTS {
            full.add(spec(&format!("g{i}"), i as u8)).unwrap();
        }
        let e = full.add(spec("one-more", 200)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`name`: 64 guests exist, the most one daemon serves; remove one first."
        );
        assert_eq!(e.http_status(), 507);
    }

    #[test]
    fn duplicates_are_refused_naming_the_field_and_the_other_guest() {
        let mut r = GuestRegistry::new(defaults());
        r.add(spec("web1", 1)).unwrap();
        let before = ids(&r);
        let mut sock = spec("web2", 2);
        sock.vhost_socket = Some("/run/xdpath/eth1.web1.vhost.sock".into());
        let mut ip = spec("web2", 2);
        ip.ips.push("10.0.0.1".parse().unwrap());
        let cases = [
            (
                spec("web1", 2),
                "`name`: \"web1\" is guest \"web1\"'s already.",
            ),
            (
                spec("web2", 1),
                "`mac`: 52:54:00:00:00:01 is guest \"web1\"'s already.",
            ),
            (
                sock,
                "`vhost_socket`: /run/xdpath/eth1.web1.vhost.sock is guest \"web1\"'s already.",
            ),
            (ip, "`ips`: 10.0.0.1 is guest \"web1\"'s already."),
        ];
        for (s, want) in cases {
            let e = r.add(s).unwrap_err();
            assert_eq!(e.to_string(), want);
            assert_eq!(e.http_status(), 409);
            assert_eq!(ids(&r), before, "nothing changed");
        }
        let mut q = spec("web2", 2);
        q.queues = Some(5);
        assert_eq!(
            r.add(q).unwrap_err().to_string(),
            "`queues`: 5 queue pairs; this daemon has 4 (--queues)."
        );
        let e = r.add(spec("Web 2", 2)).unwrap_err();
        assert_eq!((e.http_status(), e.field()), (400, Some("name")));
        let e = r.remove("nope").unwrap_err();
        assert_eq!(e.to_string(), "`name`: no guest named \"nope\".");
        assert_eq!(
            (e.http_status(), e.error_body().field.as_deref()),
            (404, Some("name"))
        );
        let e = GuestError::InUse {
            name: "web1".into(),
            rules: 4,
        };
        assert_eq!(e.to_string(), "`name`: 4 rules send to guest \"web1\"; delete them first, or delete the guest with force=true (which deletes them too).");
        assert_eq!(e.http_status(), 409);
        assert_eq!(
            r.add_with_id(1, spec("x", 9)).unwrap_err().to_string(),
            "`id`: 1 is guest \"web1\"'s already."
        );
        assert_eq!(
            r.add_with_id(65, spec("x", 9)).unwrap_err().to_string(),
            "`id`: 65 is not a guest id (1 to 64)."
        );
        // An update of a guest may keep its own values.
        let mut same = spec("web1", 1);
        same.queues = Some(2);
        assert_eq!(r.update(same.clone()).unwrap().id, 1);
        assert_eq!(r.get("web1").unwrap().spec, same);
    }

    #[test]
    fn entries_steer_each_guests_mac_and_ips_to_its_id() {
        let mut r = GuestRegistry::new(defaults());
        r.add_with_id(1, spec("default", 1)).unwrap();
        r.add(spec("web", 7)).unwrap();
        let e = r.entries();
        let macs: Vec<([u8; 6], u32)> = e.macs().map(|(m, v)| (m, v.port)).collect();
        assert_eq!(
            macs,
            vec![([0x52, 0x54, 0, 0, 0, 1], 1), ([0x52, 0x54, 0, 0, 0, 7], 2)]
        );
        let addrs: Vec<(IpAddr, u32)> = e.addrs().map(|(a, v)| (a, v.port)).collect();
        assert_eq!(
            addrs,
            vec![
                ("10.0.0.1".parse().unwrap(), 1),
                ("10.0.0.7".parse().unwrap(), 2)
            ]
        );
        assert!(e.macs().all(|(_, v)| v.action == Action::Guest as u32));
        assert_eq!(r.names().id_of("web"), Some(2));
        let info = r.info(r.get("web").unwrap(), 0o660);
        assert_eq!(
            (info.queues, info.vhost_socket.clone()),
            (4, PathBuf::from("/run/xdpath/eth1.web.vhost.sock"))
        );
    }

    #[test]
    fn a_saved_file_reloads_equal_and_a_missing_one_is_empty() {
        let d = Dir::new("roundtrip");
        let r = GuestRegistry::load(&d.file(), defaults()).unwrap();
        assert!(r.is_empty());
        assert!(!d.file().exists(), "loading writes nothing");
        let mut r = r;
        let mut full = spec("web1", 2);
        full.queues = Some(2);
        full.vhost_socket = Some("/run/vm/web1.sock".into());
        full.socket_mode = Some(0o600);
        full.socket_owner = Some("qemu".into());
        full.socket_group = Some("kvm".into());
        r.change(|r| r.add_with_id(1, spec("default", 1))).unwrap();
        r.change(|r| r.add(full.clone())).unwrap();
        let text = std::fs::read_to_string(d.file()).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        let back = GuestRegistry::load(&d.file(), defaults()).unwrap();
        assert_eq!(ids(&back), vec![(1, "default".into()), (2, "web1".into())]);
        assert_eq!(back.get("web1").unwrap().spec, full);
        assert_eq!(back.to_json(), r.to_json());
        r.change(|r| r.remove("default")).unwrap();
        let back = GuestRegistry::load(&d.file(), defaults()).unwrap();
        assert_eq!(ids(&back), vec![(2, "web1".into())]);
        assert!(
            std::fs::read_dir(&d.0).unwrap().count() == 1,
            "no temporary file is left"
        );
    }

    #[test]
    fn a_failed_save_changes_nothing() {
        let d = Dir::new("failed-save");
        let mut r = GuestRegistry::load(&d.file(), defaults()).unwrap();
        r.change(|r| r.add(spec("a", 1))).unwrap();
        let file_before = std::fs::read(d.file()).unwrap();
        for step in [
            SaveStep::Write,
            SaveStep::Fsync,
            SaveStep::Rename,
            SaveStep::SyncDir,
        ] {
            r.fail_saves_at(Some(step));
            let e = r.change(|r| r.add(spec("b", 2))).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "Saving the guests to {} failed: Input/output error (os error 5); nothing was changed.",
                    d.file().display()
                ),
                "{step:?}"
            );
            assert_eq!(ids(&r), vec![(1, "a".into())], "{step:?}");
            assert_eq!(std::fs::read(d.file()).unwrap(), file_before, "{step:?}");
            assert_eq!(std::fs::read_dir(&d.0).unwrap().count(), 1, "{step:?}");
            let e = r.change(|r| r.remove("a")).unwrap_err();
            assert_eq!(e.http_status(), 500);
            assert_eq!(ids(&r), vec![(1, "a".into())], "{step:?}");
        }
        // A refused change does not save at all.
        r.fail_saves_at(None);
        assert!(r.change(|r| r.add(spec("a", 9))).is_err());
        assert_eq!(std::fs::read(d.file()).unwrap(), file_before);
        r.change(|r| r.add(spec("b", 2))).unwrap();
        assert_eq!(
            ids(&GuestRegistry::load(&d.file(), defaults()).unwrap()),
            vec![(1, "a".into()), (2, "b".into())]
        );
    }

    #[test]
    fn a_corrupt_file_or_entry_is_an_error_naming_the_file_and_the_entry() {
        let d = Dir::new("corrupt");
        let f = d.file();
        let shown = f.display().to_string();
        let entry = |id: &str, name: &str, mac: &str| {
            format!(r#"{{"id": {id}, "name": "{name}", "mac": "{mac}"}}"#)
        };
        let a = entry("1", "a", "52:54:00:00:00:01");
        let cases: Vec<(String, String)> = vec![
            ("{".into(), "is not valid JSON (EOF while parsing an object at line 1 column 1).".into()),
            (r#"{"version": 2, "guests": []}"#.into(), "has version 2, this daemon reads version 1.".into()),
            (r#"{"version": 1}"#.into(), "has no `guests` list.".into()),
            (
                format!(r#"{{"version": 1, "guests": [{a}, {}]}}"#, entry("2", "Bad Name", "52:54:00:00:00:02")),
                "entry 1 (\"Bad Name\"): `name`: \"Bad Name\" is not a guest name; use 1 to 15 lowercase letters, digits, '-' or '_' starting with a letter or digit.".into(),
            ),
            (
                format!(r#"{{"version": 1, "guests": [{a}, {}]}}"#, entry("1", "b", "52:54:00:00:00:02")),
                "entry 1 (\"b\"): `id`: 1 is guest \"a\"'s already.".into(),
            ),
            (
                format!(r#"{{"version": 1, "guests": [{a}, {}]}}"#, entry("2", "b", "52:54:00:00:00:01")),
                "entry 1 (\"b\"): `mac`: 52:54:00:00:00:01 is guest \"a\"'s already.".into(),
            ),
            (
                format!(r#"{{"version": 1, "guests": [{}]}}"#, entry("65", "a", "52:54:00:00:00:01")),
                "entry 0 (\"a\"): `id`: 65 is not a guest id (1 to 64).".into(),
            ),
            (
                r#"{"version": 1, "guests": [{"name": "a", "mac": "52:54:00:00:00:01"}]}"#.into(),
                "entry 0 (\"a\"): `id`: missing; a stored guest has its id.".into(),
            ),
            (
                r#"{"version": 1, "guests": [{"id": 1, "mac": "52:54:00:00:00:01", "queues": 9}]}"#.into(),
                "entry 0: `name`: missing; a guest needs at least name and mac.".into(),
            ),
        ];
        for (text, detail) in cases {
            std::fs::write(&f, &text).unwrap();
            let e = GuestRegistry::load(&f, defaults()).unwrap_err().to_string();
            assert_eq!(e, format!("Guest file {shown}: {detail}"), "{text}");
        }
    }

    /// `--vhost-socket` without `--guest-mac` declares a MAC-less shorthand
    /// guest; once a guest is added (a save), the file must load again, or
    /// the daemon could not restart. Only the shorthand guest may lack it.
    #[test]
    fn a_shorthand_guest_without_a_mac_is_saved_and_loaded_back() {
        let d = Dir::new("macless");
        let mut r = GuestRegistry::load(&d.file(), defaults()).unwrap();
        let mut shorthand = GuestSpec::new(SHORTHAND_GUEST, MacAddr([0; 6]));
        shorthand.mac = None;
        r.merge_config(Some(shorthand.clone()), &[]).unwrap();
        r.change(|r| r.add(spec("web", 6))).unwrap();
        let back = GuestRegistry::load(&d.file(), defaults())
            .unwrap_or_else(|e| panic!("the saved file loads again: {e}"));
        assert_eq!(ids(&back), vec![(1, "default".into()), (2, "web".into())]);
        assert_eq!(back.get("default").unwrap().spec, shorthand);
        assert_eq!(back.get("web").unwrap().spec, spec("web", 6));

        std::fs::write(
            d.file(),
            r#"{"version": 1, "guests": [{"id": 2, "name": "web"}]}"#,
        )
        .unwrap();
        let e = GuestRegistry::load(&d.file(), defaults()).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "entry 0 (\"web\"): `mac`: missing; a guest needs at least name and mac."
            ),
            "{e}"
        );
    }

    #[test]
    fn config_guests_win_and_the_shorthand_guest_is_id_1() {
        let d = Dir::new("merge");
        let mut r = GuestRegistry::load(&d.file(), defaults()).unwrap();
        r.change(|r| r.add(spec("api", 5))).unwrap();
        r.change(|r| r.add(spec("web", 6))).unwrap();
        r.change(|r| r.remove("api")).unwrap();
        let mut web = spec("web", 6);
        web.queues = Some(1);
        r.merge_config(Some(spec("default", 1)), &[web.clone(), spec("db", 7)])
            .unwrap();
        assert_eq!(
            ids(&r),
            vec![(1, "default".into()), (2, "web".into()), (3, "db".into())]
        );
        assert_eq!(r.get("web").unwrap().spec, web);
        let before = ids(&r);
        assert!(r.merge_config(None, &[spec("x", 8), spec("y", 8)]).is_err());
        assert_eq!(ids(&r), before, "all or nothing");
    }
}
