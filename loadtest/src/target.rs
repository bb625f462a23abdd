//! What a run sends its load to, parsed from `--target` (and `compare
//! --baseline`): a gateway endpoint, a control plane whose routing client
//! finds the gateways, or PostgreSQL (directly or through PgBouncer) doing
//! the postgres plugin's SQL — the baselines of "Gateway → Postgres".

use std::fmt;
use std::str::FromStr;

/// `--target control-plane:ADDR`: every call through `prism_client::Prism`.
pub const CONTROL_PLANE_PREFIX: &str = "control-plane:";
/// `--target pg:DSN`: the plugin's KeyValue SQL sent with tokio-postgres.
pub const POSTGRES_PREFIX: &str = "pg:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One gateway endpoint (`host:port` or `http://host:port`): every call
    /// goes there, and a misrouted namespace is an error.
    Gateway(String),
    /// A control plane (`control-plane:host:port`): calls go through
    /// `prism_client::Prism`, which resolves and watches the namespace's
    /// shard, spreads calls over its gateways, follows redirects and
    /// retries what is safe to retry.
    ControlPlane(String),
    /// PostgreSQL (`pg:DSN`, a libpq string or `postgres://` URL): the
    /// postgres plugin's get and put of one record, issued directly with
    /// tokio-postgres. A DSN that points at PgBouncer makes the PgBouncer
    /// baseline.
    Postgres(String),
}

impl Target {
    /// KeyValue only: what the postgres baseline implements.
    pub fn serves_time_series(&self) -> bool {
        !matches!(self, Self::Postgres(_))
    }
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let s = s.trim();
        let target = if let Some(addr) = s.strip_prefix(CONTROL_PLANE_PREFIX) {
            Self::ControlPlane(addr.trim().to_owned())
        } else if let Some(dsn) = s.strip_prefix(POSTGRES_PREFIX) {
            Self::Postgres(dsn.trim().to_owned())
        } else {
            Self::Gateway(s.to_owned())
        };
        let (what, value) = match &target {
            Self::Gateway(a) => ("gateway endpoint", a),
            Self::ControlPlane(a) => ("control-plane address", a),
            Self::Postgres(d) => ("PostgreSQL DSN", d),
        };
        anyhow::ensure!(!value.is_empty(), "the target's {what} is empty (got {s:?})");
        if let Self::Postgres(dsn) = &target {
            // Parsed here so a typo fails before anything is sent; the
            // message of tokio-postgres names the bad part, not the password.
            dsn.parse::<tokio_postgres::Config>()
                .map_err(|e| anyhow::anyhow!("the target's PostgreSQL DSN is invalid: {e}"))?;
        }
        Ok(target)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gateway(a) => f.write_str(a),
            Self::ControlPlane(a) => write!(f, "{CONTROL_PLANE_PREFIX}{a}"),
            // A DSN may hold a password: say where, not how.
            Self::Postgres(dsn) => match dsn.parse::<tokio_postgres::Config>() {
                Ok(c) => {
                    let hosts: Vec<String> = c
                        .get_hosts()
                        .iter()
                        .map(|h| match h {
                            tokio_postgres::config::Host::Tcp(h) => h.clone(),
                            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                        })
                        .collect();
                    let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
                    write!(
                        f,
                        "{POSTGRES_PREFIX}{}:{}/{}",
                        hosts.join(","),
                        ports.join(","),
                        c.get_dbname().unwrap_or("")
                    )
                }
                Err(_) => write!(f, "{POSTGRES_PREFIX}<invalid DSN>"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_choose_the_kind_of_target() -> anyhow::Result<()> {
        assert_eq!("127.0.0.1:7401".parse::<Target>()?, Target::Gateway("127.0.0.1:7401".into()));
        assert_eq!("control-plane:127.0.0.1:7400".parse::<Target>()?, Target::ControlPlane("127.0.0.1:7400".into()));
        let pg: Target = "pg:host=127.0.0.1 port=6432 user=postgres password=hunter2 dbname=postgres".parse()?;
        assert!(matches!(pg, Target::Postgres(_)));
        let shown = pg.to_string();
        assert_eq!(shown, "pg:127.0.0.1:6432/postgres");
        assert!(!shown.contains("hunter2"));
        Ok(())
    }

    #[test]
    fn empty_and_malformed_targets_are_refused() {
        for bad in ["", "control-plane:", "pg:", "pg:host=x port=notaport"] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?}");
        }
    }
}
