//! Every per-backend part of the CLI, built from the backends'
//! descriptions ([`prism_proto::backends`]) rather than written per
//! backend: `--backend`'s values, each backend's flags (under a "<Backend>
//! backend" heading, their help with defaults and limits), the spec file's
//! `backend_config: { <backend>: {…} }` and `backend`, and the JSON of a
//! `backend_config`. A new backend's description brings all of them.

use std::collections::HashSet;
use std::fmt;

use clap::builder::PossibleValue;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, ValueEnum, value_parser};
use prism_proto::backends::{self, BACKENDS, BackendDescription, Kind, Presence, Setting, Value};
use prism_proto::capabilities;
use prism_proto::control::backend_config::Config;
use prism_proto::control::{Backend, BackendConfig, NamespaceSpec};
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::usage;

/// Every backend's name, as a list serde and clap can hold.
const NAMES: [&str; BACKENDS.len()] = {
    let mut names = [""; BACKENDS.len()];
    let mut i = 0;
    while i < BACKENDS.len() {
        names[i] = BACKENDS[i].name;
        i += 1;
    }
    names
};

/// `--backend` and the spec file's `backend`: one of the described
/// backends, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendName(pub Backend);

const BACKEND_NAMES: [BackendName; BACKENDS.len()] = {
    let mut all = [BackendName(Backend::Unspecified); BACKENDS.len()];
    let mut i = 0;
    while i < BACKENDS.len() {
        all[i] = BackendName(BACKENDS[i].backend);
        i += 1;
    }
    all
};

impl From<BackendName> for Backend {
    fn from(b: BackendName) -> Self {
        b.0
    }
}

impl ValueEnum for BackendName {
    fn value_variants<'a>() -> &'a [Self] {
        &BACKEND_NAMES
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        backends::describe(self.0).map(|d| PossibleValue::new(d.name))
    }
}

impl<'de> Deserialize<'de> for BackendName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor, so the parser's error says where the name is.
        struct Name;
        impl Visitor<'_> for Name {
            type Value = BackendName;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a backend's name ({})", backends::names())
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<BackendName, E> {
                backends::by_name(name).map(|d| BackendName(d.backend)).ok_or_else(|| E::unknown_variant(name, &NAMES))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// The per-backend flags given on a command line, in the order of the
/// descriptions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendArgs {
    given: Vec<Given>,
}

#[derive(Debug, Clone)]
struct Given {
    backend: &'static BackendDescription,
    setting: &'static Setting,
    value: Value,
}

impl PartialEq for Given {
    fn eq(&self, other: &Self) -> bool {
        self.setting.flag == other.setting.flag && self.value == other.value
    }
}

impl BackendArgs {
    /// These flags and `--flag value` (for tests and callers that build
    /// flags without parsing a command line); `None` when no backend has
    /// the flag or the value is of another kind.
    pub fn with(mut self, flag: &str, value: Value) -> Option<Self> {
        let (backend, setting) =
            BACKENDS.iter().find_map(|d| d.settings.iter().find(|s| s.flag == flag).map(|s| (d, s)))?;
        setting.set(&mut (backend.empty)(), value.clone()).ok()?;
        self.given.push(Given { backend, setting, value });
        Some(self)
    }

    /// Applies the flags to `spec`'s `backend_config`. Flags of another
    /// backend than `spec.backend` are a usage error naming them.
    pub fn apply(&self, spec: &mut NamespaceSpec) -> anyhow::Result<()> {
        let backend = Backend::try_from(spec.backend).unwrap_or(Backend::Unspecified);
        if let Some(other) = self.given.iter().find(|g| g.backend.backend != backend) {
            let flags: Vec<String> = other.backend.settings.iter().map(|s| format!("--{}", s.flag)).collect();
            let verb = if flags.len() == 1 { "applies" } else { "apply" };
            return Err(usage(format!(
                "{} {verb} to backend {} only, not {}",
                backends::and_list(&flags),
                other.backend.name,
                capabilities::backend_name(backend)
            )));
        }
        let config = &mut spec.backend_config.get_or_insert_default().config;
        if let Some(first) = self.given.first() {
            let mine = config.as_ref().and_then(backends::of_config).is_some_and(|d| d.backend == backend);
            let config = match config {
                Some(config) if mine => config,
                _ => config.insert((first.backend.empty)()),
            };
            for g in &self.given {
                g.setting.set(config, g.value.clone()).map_err(usage)?;
            }
        }
        // An empty `BackendConfig` says nothing; omit it (the control plane
        // then asks for the backend's settings by their field name).
        if spec.backend_config.as_deref().is_some_and(|c| c.config.is_none()) {
            spec.backend_config = None;
        }
        Ok(())
    }
}

/// `--help` for a setting: its line, then its default, limits and how
/// to give it.
fn help(s: &Setting) -> String {
    let mut notes = Vec::new();
    if matches!(s.presence, Presence::Required { .. }) {
        notes.push("required".to_owned());
    }
    match &s.kind {
        Kind::Text(t) if !t.default.is_empty() => notes.push(format!("default {}", t.default)),
        Kind::Text(_) => {}
        Kind::Count(c) => notes.push(format!("0 = default {}, at most {}", c.default, c.max)),
        Kind::Switch(_) => notes.push(format!("`--{}=false` to turn off", s.flag)),
        Kind::List(l) => {
            notes.push(format!("repeat for more, at most {}; replaces the list on update", l.max_items));
        }
    }
    if notes.is_empty() { s.help.to_owned() } else { format!("{} ({})", s.help, notes.join("; ")) }
}

fn arg(d: &BackendDescription, s: &'static Setting) -> Arg {
    let arg = Arg::new(s.flag)
        .long(s.flag)
        .value_name(s.value_name)
        .help(help(s))
        .help_heading(format!("{} backend", d.title));
    match &s.kind {
        Kind::Text(_) => arg.value_parser(value_parser!(String)).action(ArgAction::Set),
        Kind::Count(_) => arg.value_parser(value_parser!(u32)).action(ArgAction::Set),
        Kind::Switch(_) => {
            arg.value_parser(value_parser!(bool)).action(ArgAction::Set).num_args(0..=1).default_missing_value("true")
        }
        Kind::List(_) => arg.value_parser(value_parser!(String)).action(ArgAction::Append),
    }
}

impl Args for BackendArgs {
    fn augment_args(cmd: Command) -> Command {
        BACKENDS.iter().flat_map(|d| d.settings.iter().map(move |s| arg(d, s))).fold(cmd, |cmd, arg| cmd.arg(arg))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

fn matched(m: &ArgMatches, s: &Setting) -> Result<Option<Value>, clap::parser::MatchesError> {
    Ok(match &s.kind {
        Kind::Text(_) => m.try_get_one::<String>(s.flag)?.cloned().map(Value::Text),
        Kind::Count(_) => m.try_get_one::<u32>(s.flag)?.copied().map(Value::Count),
        Kind::Switch(_) => m.try_get_one::<bool>(s.flag)?.copied().map(Value::Switch),
        Kind::List(_) => m.try_get_many::<String>(s.flag)?.map(|v| Value::List(v.cloned().collect())),
    })
}

impl FromArgMatches for BackendArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self::default();
        args.update_from_arg_matches(m)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for backend in BACKENDS {
            for setting in backend.settings {
                let value = matched(m, setting).map_err(|e| {
                    clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("--{}: {e}", setting.flag))
                })?;
                if let Some(value) = value {
                    self.given.retain(|g| g.setting.flag != setting.flag);
                    self.given.push(Given { backend, setting, value });
                }
            }
        }
        Ok(())
    }
}

/// A spec file's `backend_config`: a map with one key, the backend's name,
/// whose value maps the backend's settings by field name. A map rather
/// than a tagged enum so YAML needs no `!tag`; unknown backends and fields
/// are errors naming them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendConfigFile {
    /// Each backend's settings given, in file order (at most one may be).
    given: Vec<Config>,
}

impl BackendConfigFile {
    /// The typed `backend_config`; an error when settings of more than
    /// one backend are given.
    pub fn to_proto(&self) -> anyhow::Result<Option<BackendConfig>> {
        match self.given.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(BackendConfig { config: Some(one.clone()) })),
            many => {
                let given: Vec<&str> = many.iter().filter_map(backends::of_config).map(|d| d.name).collect();
                Err(usage(format!(
                    "backend_config: holds settings of {}; give those of one backend",
                    given.join(" and ")
                )))
            }
        }
    }
}

impl<'de> Deserialize<'de> for BackendConfigFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BackendsVisitor)
    }
}

struct BackendsVisitor;

impl<'de> Visitor<'de> for BackendsVisitor {
    type Value = BackendConfigFile;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a map with one key, the backend's name ({})", backends::names())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut given = Vec::new();
        let mut seen = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            let Some(d) = backends::by_name(&name) else {
                return Err(de::Error::unknown_field(&name, &NAMES));
            };
            if !seen.insert(d.backend) {
                return Err(de::Error::custom(format_args!("duplicate field `{name}`")));
            }
            if let Some(config) = map.next_value_seed(SettingsSeed(d))? {
                given.push(config);
            }
        }
        Ok(BackendConfigFile { given })
    }
}

/// One backend's settings in a spec file; `null` is the same as absent.
struct SettingsSeed(&'static BackendDescription);

impl<'de> DeserializeSeed<'de> for SettingsSeed {
    type Value = Option<Config>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for SettingsSeed {
    type Value = Option<Config>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the settings of backend {}", self.0.name)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let d = self.0;
        let mut config = (d.empty)();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let Some(setting) = d.setting(&key) else {
                let fields: Vec<String> = d.settings.iter().map(|s| format!("`{}`", s.field)).collect();
                return Err(de::Error::custom(if fields.is_empty() {
                    format!("unknown field `{key}`, there are no fields")
                } else {
                    format!("unknown field `{key}`, expected one of {}", fields.join(", "))
                }));
            };
            if !seen.insert(setting.field) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let value = match &setting.kind {
                Kind::Text(_) => Value::Text(map.next_value()?),
                Kind::Count(_) => Value::Count(map.next_value()?),
                Kind::Switch(_) => Value::Switch(map.next_value()?),
                Kind::List(_) => Value::List(map.next_value()?),
            };
            setting.set(&mut config, value).map_err(de::Error::custom)?;
        }
        Ok(Some(config))
    }
}

/// A `backend_config` as JSON: `{"postgres": {"dsn": …, …}}`, every
/// setting under its field name; `null` when empty.
pub fn to_json(c: &BackendConfig) -> serde_json::Value {
    let Some(d) = c.config.as_ref().and_then(backends::of_config) else { return serde_json::Value::Null };
    let Some(config) = &c.config else { return serde_json::Value::Null };
    let settings: serde_json::Map<String, serde_json::Value> = d
        .settings
        .iter()
        .filter_map(|s| {
            let value = match s.value(config)? {
                Value::Text(v) => serde_json::Value::from(v),
                Value::Count(v) => serde_json::Value::from(v),
                Value::Switch(v) => serde_json::Value::from(v),
                Value::List(v) => serde_json::Value::from(v),
            };
            Some((s.field.to_owned(), value))
        })
        .collect();
    serde_json::json!({ d.name: settings })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use prism_proto::control::{KafkaConfig, PostgresConfig};

    use super::*;

    #[test]
    fn every_flag_fits_the_command_line() {
        // Panics, naming it, if a backend's flag collides with another flag.
        crate::Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_into_the_backends_case() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            backend: BackendArgs,
        }
        let flags =
            Flags::try_parse_from(["x", "--bootstrap-server", "a:1", "--bootstrap-server", "b:2", "--partitions", "3"])
                .expect("valid flags");
        let mut spec = NamespaceSpec { backend: Backend::Kafka as i32, ..NamespaceSpec::default() };
        flags.backend.apply(&mut spec).expect("kafka flags on kafka");
        let want =
            KafkaConfig { bootstrap_servers: vec!["a:1".into(), "b:2".into()], partitions: 3, ..Default::default() };
        assert_eq!(spec.backend_config, Some(Box::new(BackendConfig { config: Some(Config::Kafka(want)) })));
        assert!(Flags::try_parse_from(["x", "--partitions", "-1"]).is_err());
        let tls = Flags::try_parse_from(["x", "--require-tls"]).expect("a bare switch");
        assert_eq!(tls.backend, BackendArgs::default().with("require-tls", Value::Switch(true)).expect("a flag"));
        let err = tls.backend.apply(&mut spec).expect_err("postgres flags on kafka");
        assert!(err.to_string().starts_with("--dsn, --password-from, --pool-size, --schema and --require-tls apply"));
    }

    #[test]
    fn spec_files_hold_one_backends_settings() {
        let parse = |yaml: &str| serde_yaml::from_str::<BackendConfigFile>(yaml).map_err(|e| e.to_string());
        let pulsar = parse("pulsar: { service_url: \"pulsar://b:6650\", topic: audit }").expect("valid");
        let Ok(Some(BackendConfig { config: Some(Config::Pulsar(p)) })) = pulsar.to_proto() else {
            panic!("pulsar settings: {pulsar:?}");
        };
        assert_eq!((p.service_url.as_str(), p.topic.as_str()), ("pulsar://b:6650", "audit"));
        assert!(parse("postgres: null").expect("null is absent").to_proto().expect("none").is_none());
        let embedded = parse("embedded: {}").expect("valid").to_proto().expect("one");
        assert_eq!(embedded, Some(BackendConfig { config: Some(Config::Embedded(Default::default())) }));
        let two = parse("embedded: {}\nkafka: { partitions: 2 }").expect("parses");
        let err = two.to_proto().expect_err("two backends");
        assert!(err.to_string().contains("holds settings of embedded and kafka"), "{err}");
        assert!(parse("kafka: { partitions: 2, partitions: 3 }").is_err());
        assert!(parse("embedded: { x: 1 }").expect_err("no fields").contains("`x`"));
    }

    #[test]
    fn json_names_every_setting() {
        let pg = BackendConfig {
            config: Some(Config::Postgres(PostgresConfig {
                dsn: "host=db".into(),
                pool_size: 4,
                ..Default::default()
            })),
        };
        assert_eq!(
            to_json(&pg),
            serde_json::json!({ "postgres": {
                "dsn": "host=db", "pool_size": 4, "schema": "", "require_tls": false, "password_ref": "",
            }})
        );
        let kafka = BackendConfig {
            config: Some(Config::Kafka(KafkaConfig { bootstrap_servers: vec!["b:1".into()], ..Default::default() })),
        };
        assert_eq!(
            to_json(&kafka),
            serde_json::json!({ "kafka": { "bootstrap_servers": ["b:1"], "partitions": 0, "replication_factor": 0 }})
        );
        assert_eq!(
            to_json(&BackendConfig { config: Some(Config::Embedded(Default::default())) }),
            serde_json::json!({ "embedded": {} })
        );
        assert_eq!(to_json(&BackendConfig { config: None }), serde_json::Value::Null);
    }
}
