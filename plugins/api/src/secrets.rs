//! Resolving secret references (`env:NAME`, `file:/path`, `secret:NAME`;
//! the grammar is [`prism_proto::secrets`]) on the gateway that owns a
//! namespace, for the plugins that need a credential: the PostgreSQL
//! password today, a Kafka SASL password or a Pulsar token tomorrow.
//!
//! A reference is written by a namespace owner, who does not own the
//! gateway: resolving any variable or file it names would let the owner
//! read the gateway's own secrets (its token-signing secret, another
//! tenant's password) by pointing a DSN at a server of their own. So the
//! operator declares every secret a gateway may hand out, and to which
//! tenants, in `[gateway.secrets]`:
//!
//! ```toml
//! [gateway.secrets.pg-acme]
//! env = "PG_ACME_PASSWORD"     # or: file = "/run/secrets/pg-acme"
//! tenants = ["acme"]           # "*": every tenant
//! ```
//!
//! `secret:pg-acme` names that entry; `env:PG_ACME_PASSWORD` (or
//! `file:/run/secrets/pg-acme`) is accepted too when an entry declares that
//! variable (or file) for the namespace's tenant. Anything else is refused
//! with a reason that names the reference and never a value. Files are
//! read at each resolution (a plugin resolves when it first serves a
//! namespace's settings), so a rotated file is picked up then.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prism_proto::secrets::SecretRef;
use serde::Deserialize;

/// Largest secret, in bytes.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Stands for every tenant in [`SecretEntry::tenants`].
pub const ALL_TENANTS: &str = "*";

/// One secret the operator lets namespaces use (`[gateway.secrets.NAME]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretEntry {
    /// The environment variable holding the secret. Exactly one of `env`
    /// and `file`.
    pub env: Option<String>,
    /// A file holding the secret (one trailing line ending is ignored).
    pub file: Option<PathBuf>,
    /// The tenants whose namespaces may use it: tenant ids, or `"*"` for
    /// every tenant. Required: a secret is never handed out by default.
    pub tenants: Vec<String>,
}

/// A resolved secret. `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a reference did not resolve. `Display` names the reference (and
/// the field it came from), never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reference}: {reason}")]
pub struct SecretError {
    pub field: String,
    pub reference: String,
    pub reason: String,
}

/// The secrets a gateway may hand to plugins: `[gateway.secrets]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    entries: BTreeMap<String, SecretEntry>,
}

impl Secrets {
    pub fn new(entries: BTreeMap<String, SecretEntry>) -> Self {
        Self { entries }
    }

    /// Checks the table's shape; the error is `(field, description)`,
    /// the field relative to the table (`pg-acme.tenants`).
    pub fn validate(entries: &BTreeMap<String, SecretEntry>) -> Result<(), (String, String)> {
        for (name, entry) in entries {
            let bad = |field: &str, description: String| Err((format!("{name}{field}"), description));
            if SecretRef::parse(&format!("secret:{name}")).is_err() {
                return bad("", "is not a secret name ([A-Za-z0-9][A-Za-z0-9._-]*, at most 128 bytes)".into());
            }
            match (&entry.env, &entry.file) {
                (Some(var), None) => {
                    if let Err(e) = SecretRef::parse(&format!("env:{var}")) {
                        return bad(".env", e);
                    }
                }
                (None, Some(path)) => {
                    if !path.is_absolute() {
                        return bad(".file", format!("{} is not an absolute path", path.display()));
                    }
                    if path.to_str().is_none_or(|p| SecretRef::parse(&format!("file:{p}")).is_err()) {
                        return bad(".file", format!("{} cannot be named by a file: reference", path.display()));
                    }
                }
                _ => return bad("", "needs exactly one of env and file".into()),
            }
            if entry.tenants.is_empty() {
                return bad(".tenants", "is required: the tenants that may use it, or [\"*\"]".into());
            }
            for (i, t) in entry.tenants.iter().enumerate() {
                if t != ALL_TENANTS
                    && let Err(e) = prism_proto::names::validate_part(t)
                {
                    return bad(&format!(".tenants[{i}]"), format!("tenant id {e}"));
                }
            }
        }
        Ok(())
    }

    /// Resolves `reference` (from `field` of a namespace of `tenant`);
    /// `Ok(None)` for an empty reference.
    pub fn resolve(&self, field: &str, tenant: &str, reference: &str) -> Result<Option<Secret>, SecretError> {
        if reference.is_empty() {
            return Ok(None);
        }
        let fail = |reason: String| SecretError { field: field.to_owned(), reference: reference.to_owned(), reason };
        let parsed = SecretRef::parse(reference).map_err(fail)?;
        let allowed = |e: &SecretEntry| e.tenants.iter().any(|t| t == tenant || t == ALL_TENANTS);
        let named = |(name, e): &(&String, &SecretEntry)| match parsed {
            SecretRef::Named(wanted) => name.as_str() == wanted,
            SecretRef::Env(var) => e.env.as_deref() == Some(var),
            SecretRef::File(path) => e.file.as_deref() == Some(Path::new(path)),
        };
        // Several entries may declare one source, for different tenants.
        let entry = match self.entries.iter().filter(named).find(|(_, e)| allowed(e)) {
            Some((_, e)) => e,
            None if self.entries.iter().any(|entry| named(&entry)) => {
                return Err(fail(format!("is not declared for tenant {tenant} in this gateway's [gateway.secrets]")));
            }
            None => return Err(fail("is not declared in this gateway's [gateway.secrets]".into())),
        };
        let value = match (&entry.env, &entry.file) {
            (Some(var), _) => match std::env::var_os(var) {
                Some(v) => v.into_encoded_bytes(),
                None => return Err(fail(format!("environment variable {var} is not set on this gateway"))),
            },
            (None, Some(path)) => read_file(path).map_err(fail)?,
            (None, None) => return Err(fail("has no source".into())),
        };
        if value.is_empty() {
            return Err(fail("is empty".into()));
        }
        Ok(Some(Secret(value)))
    }
}

/// A file's content less one trailing line ending; errors name the file
/// and the reason, never the content.
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
    if size > MAX_SECRET_BYTES {
        return Err(format!("{} is {size} bytes long; a secret is at most {MAX_SECRET_BYTES}", path.display()));
    }
    let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(env: Option<&str>, file: Option<&Path>, tenants: &[&str]) -> SecretEntry {
        SecretEntry {
            env: env.map(Into::into),
            file: file.map(Into::into),
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn resolves_only_what_is_declared_for_the_tenant() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("prism-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("pg-acme");
        std::fs::write(&file, "s3cret-value\n")?;
        let path = std::env::var_os("PATH").map(|p| p.into_encoded_bytes()).unwrap_or_default();
        let secrets = Secrets::new(BTreeMap::from([
            ("pg-acme".to_owned(), entry(None, Some(&file), &["acme"])),
            ("shared".to_owned(), entry(Some("PATH"), None, &["*"])),
            ("unset".to_owned(), entry(Some("PRISM_TEST_SURELY_UNSET_VARIABLE"), None, &["acme"])),
        ]));
        Secrets::validate(&secrets.entries).map_err(|(f, d)| format!("{f}: {d}"))?;
        let field = "spec.backend_config.postgres.password_ref";
        let got = |tenant: &str, reference: &str| secrets.resolve(field, tenant, reference);
        assert_eq!(got("acme", "secret:pg-acme")?.map(|s| s.0), Some(b"s3cret-value".to_vec()));
        let by_path = format!("file:{}", file.display());
        assert_eq!(got("acme", &by_path)?.map(|s| s.0), Some(b"s3cret-value".to_vec()));
        assert_eq!(got("globex", "env:PATH")?.map(|s| s.0), Some(path));
        assert_eq!(got("acme", "")?, None);

        for (tenant, reference, reason) in [
            ("globex", "secret:pg-acme", "not declared for tenant globex"),
            ("globex", by_path.as_str(), "not declared for tenant globex"),
            ("acme", "env:HOME", "not declared in this gateway's"),
            ("acme", "file:/etc/passwd", "not declared in this gateway's"),
            ("acme", "secret:nope", "not declared in this gateway's"),
            ("acme", "secret:unset", "PRISM_TEST_SURELY_UNSET_VARIABLE is not set"),
            ("acme", "hunter2", "is not env:NAME"),
        ] {
            let err = got(tenant, reference).expect_err(reference);
            let text = err.to_string();
            assert!(text.starts_with(&format!("{field} {reference}:")), "{text}");
            assert!(text.contains(reason), "{reference}: {text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn validation_names_the_entry_field() {
        let check = |name: &str, e: SecretEntry| {
            Secrets::validate(&BTreeMap::from([(name.to_owned(), e)])).err().map(|(field, _)| field)
        };
        assert_eq!(check("ok", entry(Some("PG"), None, &["acme"])), None);
        assert_eq!(check("-bad", entry(Some("PG"), None, &["acme"])), Some("-bad".into()));
        assert_eq!(check("x", entry(None, None, &["acme"])), Some("x".into()));
        assert_eq!(check("x", entry(Some("PG"), Some(Path::new("/a")), &["acme"])), Some("x".into()));
        assert_eq!(check("x", entry(Some("P-G"), None, &["acme"])), Some("x.env".into()));
        assert_eq!(check("x", entry(None, Some(Path::new("rel")), &["acme"])), Some("x.file".into()));
        assert_eq!(check("x", entry(Some("PG"), None, &[])), Some("x.tenants".into()));
        assert_eq!(check("x", entry(Some("PG"), None, &["acme", "Bad"])), Some("x.tenants[1]".into()));
    }
}
