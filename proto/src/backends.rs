//! One description per backend, and the one table of them, [`BACKENDS`]:
//! its name, the abstractions it serves, what tracing calls it, and every
//! setting of its `backend_config` case — the field name (proto, spec
//! file, JSON), the CLI flag, whether it is required, its limits and
//! default, its help, and how it is read from and written to the typed
//! message.
//!
//! Everything that used to be written once per backend per crate reads
//! this instead: the control plane validates settings by shape with
//! [`check_config`] (still with no backend code: this is data and pure
//! functions), the CLI builds its flags, spec-file fields, help and JSON
//! from [`Setting`]s, plugins take their defaults and limits from the
//! named constants of their module here, and the gateway's metrics and
//! spans name backends from it. Adding a backend is its `oneof` case in
//! `control.proto`, its module here (one [`BackendDescription`]) with its
//! line in [`BACKENDS`], its plugin crate, and one registration line in the
//! gateway ("Adding a backend", below).
//!
//! Why data with a few function pointers, rather than a trait each backend
//! implements: the control plane must validate without any backend code,
//! so the description has to live below every plugin, in `prism-proto`;
//! a static table is what a CLI needs to build flags before it knows which
//! backend a command names, and a test can walk it (every field of every
//! config message is described, once; no two flags collide). The function
//! pointers are only accessors to one field of the generated message and
//! the few checks no limit can express (what a DSN or a broker URL looks
//! like); they are written beside the data they belong to.
//!
//! # Adding a backend
//!
//! A new backend `<name>` touches exactly:
//!
//! 1. `proto/prism/control/v1/control.proto`: its `Backend` value
//!    (`BACKEND_<NAME>`), its `<Name>Config` message and its
//!    `backend_config` `oneof` case.
//! 2. `proto/src/backends/<name>.rs` (new): its [`BackendDescription`] —
//!    name, abstractions, telemetry system, and one [`Setting`] per
//!    `<Name>Config` field (field, flag, presence, limits, default, help,
//!    `field!` accessors; a check no limit expresses is a small function
//!    beside it).
//! 3. `proto/src/backends.rs`: `pub mod <name>;` and its entry in
//!    [`BACKENDS`].
//! 4. `plugins/<name>/` (new crate, `prism-plugin-<name>`): the plugin,
//!    with the same files as its siblings (`config.rs`, `kv.rs` / `ts.rs`,
//!    `error.rs`, a conformance test), taking its defaults and limits from
//!    `prism_proto::backends::<name>`, and exporting `pub fn
//!    open(&PluginSettings)` (`prism_plugin_api::Open`): its own
//!    configuration from what the gateway gives every plugin, failures
//!    named (`cannot set up the <name> backend: …`).
//! 5. `Cargo.toml`: the crate in `members` (and `default-members`) and in
//!    `[workspace.dependencies]`.
//! 6. `gateway/Cargo.toml`: the dependency.
//! 7. `gateway/src/plugins.rs`: its one line in `REGISTERED`,
//!    `(Backend::<Name>, prism_plugin_<name>::open)`.
//!
//! And its paragraph in ARCHITECTURE.md's code map; a backend whose tests
//! need a real server adds that server's starter to `testkit/src/`.
//! Nothing in the control plane, the CLI, the client or the rest of the
//! gateway changes: validation, flags, spec files, JSON, capabilities,
//! metrics labels and span attributes follow the description.
//!
//! The tests say what is missing: the description must cover every field
//! of its config message and every `oneof` case must have one
//! (`backends/tests.rs`, from the descriptor set), flags must not collide,
//! the conformance suite checks the plugin declares the description's
//! abstractions, and the gateway's
//! `every_described_backend_is_registered_once` fails until step 7 is
//! done. (Checked by adding a trial backend with steps 1–3 only: the whole
//! workspace type-checked with every target and feature, the proto,
//! control-plane and CLI unit tests passed, and the registration test was
//! the one failure.) Before this table, a backend was spelled out in 11
//! files of 4 crates besides its own (one of them the metrics' fixed array
//! of backends, which would have dropped a fifth backend's metrics without
//! a compile error); now in 5 files of 2 crates, plus its description and
//! its crate.

use crate::control::backend_config::Config;
use crate::control::{Abstraction, Backend, BackendConfig};

pub mod embedded;
pub mod kafka;
pub mod postgres;
pub mod pulsar;

/// Every backend Prism knows, in the order users see them listed.
pub const BACKENDS: &[BackendDescription] =
    &[embedded::DESCRIPTION, postgres::DESCRIPTION, kafka::DESCRIPTION, pulsar::DESCRIPTION];

/// Everything about one backend that is the same on every host.
#[derive(Debug)]
pub struct BackendDescription {
    pub backend: Backend,
    /// The name users write (`postgres`): the spec file's `backend` and its
    /// `backend_config` key, the CLI's `--backend`, the `oneof` case, the
    /// metrics label.
    pub name: &'static str,
    /// The name in prose and headings (`Postgres`).
    pub title: &'static str,
    /// The abstractions it serves; a plugin declares exactly these.
    pub abstractions: &'static [Abstraction],
    /// What OpenTelemetry calls the system (`db.system` or
    /// `messaging.system`).
    pub telemetry: Telemetry,
    /// Its `backend_config` case, in the order they are checked (so the
    /// first refusal is the one that matters most) and listed.
    pub settings: &'static [Setting],
    /// Its `backend_config` case with every setting at its zero value.
    pub empty: fn() -> Config,
}

/// How traces name a backend.
#[derive(Debug, Clone, Copy)]
pub struct Telemetry {
    /// `postgresql`, `kafka`, `redb`, …
    pub system: &'static str,
    /// A message broker (`messaging.*` attributes, producer/consumer
    /// spans) rather than a database (`db.*`, client spans).
    pub messaging: bool,
}

/// One setting of a backend.
#[derive(Debug)]
pub struct Setting {
    /// The field's name in the proto message, the spec file and JSON.
    pub field: &'static str,
    /// The CLI's long flag, without `--`. Unique over every backend.
    pub flag: &'static str,
    /// The flag's placeholder in `--help` (`N`, `URL`).
    pub value_name: &'static str,
    /// One line for `--help`; defaults and limits are added from `kind`.
    pub help: &'static str,
    pub presence: Presence,
    pub kind: Kind,
}

/// Whether a setting must be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Empty means the default.
    Optional,
    /// Empty (text that is blank, an empty list) is refused with `missing`.
    Required { missing: &'static str },
}

/// A setting's type, limits and default, and its accessors.
#[derive(Debug)]
pub enum Kind {
    Text(Text),
    Count(Count),
    Switch(Switch),
    List(List),
}

/// A check no limit expresses; the error describes what is wrong (the
/// caller names the field).
pub type Check = fn(&str) -> Result<(), String>;

/// Free text (a string field). Empty is the default.
#[derive(Debug)]
pub struct Text {
    /// Longest value, in bytes.
    pub max_len: Option<usize>,
    /// What empty means (`public`), for help; `""` when nothing.
    pub default: &'static str,
    pub check: Option<Check>,
    pub field: Field<str, String>,
}

/// A count (a `uint32` field) where 0 means `default`.
#[derive(Debug)]
pub struct Count {
    pub default: u32,
    pub max: u32,
    /// How an update may change it.
    pub change: Change,
    pub field: Field<u32, u32>,
}

/// How an `UpdateNamespace` may change a setting, checked by the control
/// plane against the stored spec ([`BackendDescription::check_change`]):
/// what the backend cannot do, or cannot undo, is refused before it
/// reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// To any valid value.
    Any,
    /// Never, once created (`why` says why, for the refusal).
    Fixed { why: &'static str },
}

/// On or off (a `bool` field), default off.
#[derive(Debug)]
pub struct Switch {
    pub field: Field<bool, bool>,
}

/// A list of text (a `repeated string` field).
#[derive(Debug)]
pub struct List {
    pub max_items: usize,
    /// What the items are, for "lists more than 64 servers".
    pub noun: &'static str,
    pub item: Option<Check>,
    pub field: Field<[String], Vec<String>>,
}

/// Reads and writes one field of one backend's `oneof` case (written with
/// [`field!`]); `get` is `None` and `set` does nothing on another case.
pub struct Field<T: ?Sized + 'static, V> {
    pub get: fn(&Config) -> Option<&T>,
    pub set: fn(&mut Config, V),
}

impl<T: ?Sized, V> std::fmt::Debug for Field<T, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Field")
    }
}

impl Count {
    /// The count a setting of `value` means: the default for 0, `None`
    /// when above the limit.
    pub const fn resolve(&self, value: u32) -> Option<u32> {
        match value {
            0 => Some(self.default),
            v if v <= self.max => Some(v),
            _ => None,
        }
    }
}

/// A setting's value, detached from its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Count(u32),
    Switch(bool),
    List(Vec<String>),
}

/// A refused setting: the field as the client wrote it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub description: String,
}

fn invalid(field: impl Into<String>, description: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), description: description.into() }
}

/// The description of `backend`; `None` for `Unspecified`.
pub fn describe(backend: Backend) -> Option<&'static BackendDescription> {
    BACKENDS.iter().find(|d| d.backend == backend)
}

/// The description of the backend users call `name`.
pub fn by_name(name: &str) -> Option<&'static BackendDescription> {
    BACKENDS.iter().find(|d| d.name == name)
}

/// The description of the backend whose `oneof` case `config` is.
pub fn of_config(config: &Config) -> Option<&'static BackendDescription> {
    let case = std::mem::discriminant(config);
    BACKENDS.iter().find(|d| std::mem::discriminant(&(d.empty)()) == case)
}

/// Where `backend` sits in [`BACKENDS`] (for per-backend arrays).
pub fn index(backend: Backend) -> Option<usize> {
    BACKENDS.iter().position(|d| d.backend == backend)
}

/// `a, b and c`, for messages that list names.
pub fn and_list<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(AsRef::as_ref).collect();
            format!("{} and {}", init.join(", "), last.as_ref())
        }
    }
}

/// Every backend's name, `embedded, postgres, kafka, pulsar`.
pub fn names() -> String {
    BACKENDS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
}

impl BackendDescription {
    /// The setting named `field`.
    pub fn setting(&self, field: &str) -> Option<&'static Setting> {
        self.settings.iter().find(|s| s.field == field)
    }

    /// The partitions a namespace with `config` asks for, and the name of
    /// the setting that says so: a backend's `partitions` count (its
    /// default when 0), or 1, and no setting, for a backend without one
    /// (the `max_partitions` quota).
    pub fn partitions(&self, config: Option<&BackendConfig>) -> (u32, Option<&'static str>) {
        let Some(Setting { field, kind: Kind::Count(count), .. }) = self.setting("partitions") else {
            return (1, None);
        };
        let given = config.and_then(|c| c.config.as_ref()).and_then(|c| (count.field.get)(c)).copied();
        (count.resolve(given.unwrap_or(0)).unwrap_or(count.max), Some(*field))
    }

    /// Checks that an update from `old` to `new` (both already valid)
    /// changes its settings only as each one's [`Change`] allows; the
    /// error names the field as the client wrote it (at `path`).
    pub fn check_change(
        &'static self,
        old: Option<&BackendConfig>,
        new: Option<&BackendConfig>,
        path: &str,
    ) -> Result<(), Invalid> {
        let value = |config: Option<&BackendConfig>, count: &Count| {
            let given = config.and_then(|c| c.config.as_ref()).and_then(|c| (count.field.get)(c)).copied();
            count.resolve(given.unwrap_or(0)).unwrap_or(count.max)
        };
        for setting in self.settings {
            let Kind::Count(count) = &setting.kind else { continue };
            let (was, asked) = (value(old, count), value(new, count));
            let field = format!("{path}.{}.{}", self.name, setting.field);
            match count.change {
                Change::Fixed { why } if asked != was => {
                    return Err(invalid(field, format!("cannot change from {was} to {asked}: {why}")));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks that `config` (the spec's `backend_config`, at `path`, e.g.
    /// `spec.backend_config`) fits this backend: its case, then every
    /// setting by shape. Errors name the field as the client wrote it
    /// (`spec.backend_config.postgres.dsn`).
    pub fn check_config(&'static self, config: Option<&BackendConfig>, path: &str) -> Result<(), Invalid> {
        match config.and_then(|c| c.config.as_ref()) {
            None if self.settings.iter().any(|s| matches!(s.presence, Presence::Required { .. })) => {
                Err(invalid(format!("{path}.{}", self.name), format!("is required for backend {}", self.name)))
            }
            None => Ok(()),
            Some(config) => match of_config(config) {
                Some(given) if std::ptr::eq(given, self) => {
                    let path = format!("{path}.{}", self.name);
                    self.settings.iter().try_for_each(|s| s.check(config, &path))
                }
                given => Err(invalid(
                    path,
                    format!("holds {} settings but the backend is {}", given.map_or("unknown", |g| g.name), self.name),
                )),
            },
        }
    }
}

/// Checks a spec's `backend_config` against its `backend` (see
/// [`BackendDescription::check_config`]); an unknown backend is refused
/// as `spec.backend` would be.
pub fn check_config(backend: Backend, config: Option<&BackendConfig>, path: &str) -> Result<(), Invalid> {
    match describe(backend) {
        Some(d) => d.check_config(config, path),
        None => Err(invalid("spec.backend", format!("must be one of {}", names()))),
    }
}

impl Setting {
    /// The setting's value in `config`; `None` when `config` is another
    /// backend's.
    pub fn value(&self, config: &Config) -> Option<Value> {
        match &self.kind {
            Kind::Text(t) => (t.field.get)(config).map(|v| Value::Text(v.to_owned())),
            Kind::Count(c) => (c.field.get)(config).copied().map(Value::Count),
            Kind::Switch(s) => (s.field.get)(config).copied().map(Value::Switch),
            Kind::List(l) => (l.field.get)(config).map(|v| Value::List(v.to_vec())),
        }
    }

    /// Sets the setting in `config` (nothing when `config` is another
    /// backend's); the error says what the setting takes when `value` is
    /// of another kind.
    pub fn set(&self, config: &mut Config, value: Value) -> Result<(), String> {
        match (&self.kind, value) {
            (Kind::Text(t), Value::Text(v)) => (t.field.set)(config, v),
            (Kind::Count(c), Value::Count(v)) => (c.field.set)(config, v),
            (Kind::Switch(s), Value::Switch(v)) => (s.field.set)(config, v),
            (Kind::List(l), Value::List(v)) => (l.field.set)(config, v),
            (kind, _) => return Err(format!("{} takes {}", self.field, kind.expects())),
        }
        Ok(())
    }

    /// Checks the setting's value in `config` (a case of this setting's
    /// backend), naming it `{path}.{field}`.
    pub fn check(&self, config: &Config, path: &str) -> Result<(), Invalid> {
        let field = || format!("{path}.{}", self.field);
        let missing = match self.presence {
            Presence::Required { missing } => Some(missing),
            Presence::Optional => None,
        };
        match &self.kind {
            Kind::Text(t) => {
                let value = (t.field.get)(config).unwrap_or_default();
                if value.trim().is_empty()
                    && let Some(missing) = missing
                {
                    return Err(invalid(field(), missing));
                }
                if value.is_empty() {
                    return Ok(());
                }
                if let Some(max) = t.max_len.filter(|max| value.len() > *max) {
                    return Err(invalid(field(), format!("is longer than {max} bytes")));
                }
                t.check.map_or(Ok(()), |check| check(value)).map_err(|e| invalid(field(), e))
            }
            Kind::Count(c) => match (c.field.get)(config).copied().unwrap_or_default() {
                v if v > c.max => Err(invalid(field(), format!("{v} is above {}", c.max))),
                _ => Ok(()),
            },
            Kind::Switch(_) => Ok(()),
            Kind::List(l) => {
                let items = (l.field.get)(config).unwrap_or_default();
                if items.is_empty()
                    && let Some(missing) = missing
                {
                    return Err(invalid(field(), missing));
                }
                if items.len() > l.max_items {
                    return Err(invalid(field(), format!("lists more than {} {}", l.max_items, l.noun)));
                }
                let Some(check) = l.item else { return Ok(()) };
                for (i, item) in items.iter().enumerate() {
                    check(item).map_err(|e| invalid(format!("{}[{i}]", field()), e))?;
                }
                Ok(())
            }
        }
    }
}

impl Kind {
    /// What a value of this kind is, for messages: `a string`, …
    pub fn expects(&self) -> &'static str {
        match self {
            Self::Text(_) => "a string",
            Self::Count(_) => "a whole number",
            Self::Switch(_) => "true or false",
            Self::List(_) => "a list of strings",
        }
    }
}

/// The [`Field`] `$field` of the `oneof` case `$case`, read as `&$get` and
/// written as `$set`: `field!(Postgres.dsn: str, String)`.
macro_rules! field {
    ($case:ident . $field:ident : $get:ty, $set:ty) => {
        $crate::backends::Field {
            get: {
                fn get(c: &Config) -> Option<&$get> {
                    if let Config::$case(c) = c { Some(&c.$field) } else { None }
                }
                get
            },
            set: {
                fn set(c: &mut Config, v: $set) {
                    if let Config::$case(c) = c {
                        c.$field = v;
                    }
                }
                set
            },
        }
    };
}
pub(crate) use field;

#[cfg(test)]
mod tests;
