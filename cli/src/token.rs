//! `prism token create`: signs an HS256 bearer token with the deployment's
//! secret file, for a service, a tenant admin or a gateway (role `shard`)
//! of a deployment whose servers verify HS256 — `prism dev`'s included
//! (its secret is `<data-dir>/dev-secret`). Nothing is sent anywhere: the
//! token is printed, e.g. for `export PRISM_TOKEN=$(prism token create …)`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use prism_gateway::auth::{self, Claims};
use prism_proto::access;

use crate::error::usage;
use crate::output::{self, Format};

/// The longest lifetime a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Sign an HS256 bearer token and print it
    Create(CreateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// File holding the HS256 secret (what the servers read: auth.hs256_secret_file; prism dev's is <data-dir>/dev-secret)
    #[arg(long, value_name = "FILE", env = "PRISM_AUTH_SECRET_FILE")]
    pub secret_file: PathBuf,
    /// The principal: the token's `sub`
    #[arg(long, value_name = "SUB")]
    pub sub: String,
    /// The tenant the principal belongs to (`tenant` claim; it is then `TENANT:SUB`); none: a global principal
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
    /// A role (repeat for more): admin and shard (global principals only), tenant-admin (with --tenant)
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// How long the token is valid: 90s, 1h, 30d (at most 3650d)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The `iss` claim, for servers that require one (auth.issuer)
    #[arg(long, value_name = "ISSUER")]
    pub issuer: Option<String>,
    /// The `aud` claim, for servers that require one (auth.audience)
    #[arg(long, value_name = "AUDIENCE")]
    pub audience: Option<String>,
}

impl CreateArgs {
    /// The claims, checked: every refusal is a usage error naming the flag.
    pub fn claims(&self) -> anyhow::Result<Claims> {
        let text = |flag: &str, value: &str| {
            if value.is_empty() || value.len() > 256 || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(usage(format!("{flag} must be 1 to 256 bytes without spaces or control characters")));
            }
            Ok(())
        };
        text("--sub", &self.sub)?;
        if let Some(t) = &self.tenant {
            prism_proto::names::validate_part(t).map_err(|e| usage(format!("--tenant: tenant id {e}")))?;
        }
        for role in &self.roles {
            text("--role", role)?;
            if self.tenant.is_some() && (role == access::ADMIN_ROLE || role == access::SHARD_ROLE) {
                return Err(usage(format!(
                    "--role {role} is a platform role, which a token with a tenant never carries; \
                     leave out --tenant for a global principal"
                )));
            }
        }
        if self.tenant.is_none() && self.roles.iter().any(|r| r == access::TENANT_ADMIN_ROLE) {
            return Err(usage(format!(
                "--role {} needs --tenant: the tenant it administers",
                access::TENANT_ADMIN_ROLE
            )));
        }
        if self.ttl.is_zero() || self.ttl > MAX_TTL {
            return Err(usage("--ttl must be more than 0 and at most 3650d"));
        }
        for (flag, value) in [("--issuer", &self.issuer), ("--audience", &self.audience)] {
            if let Some(v) = value {
                text(flag, v)?;
            }
        }
        let roles: Vec<&str> = self.roles.iter().map(String::as_str).collect();
        Ok(Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            ..Claims::new(&self.sub, self.tenant.as_deref(), &roles, self.ttl.as_secs().max(1))
        })
    }

    /// The signed token.
    pub fn sign(&self) -> anyhow::Result<(String, Claims)> {
        let claims = self.claims()?;
        let secret = auth::read_hs256_secret(&self.secret_file).map_err(|e| usage(format!("--secret-file: {e}")))?;
        let token = auth::sign_hs256(&secret, &claims)?;
        Ok((token, claims))
    }
}

pub fn run(format: Format, cmd: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create(args) = cmd;
    let (token, claims) = args.sign()?;
    match format {
        Format::Table => Ok(output::print(&format!("{token}\n"))?),
        Format::Json => {
            let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp);
            output::print_json(&serde_json::json!({
                "token": token,
                "principal": access::Caller::new(&claims.sub, claims.tenant.as_deref(), &claims.roles).name().to_string(),
                "sub": claims.sub,
                "tenant": claims.tenant,
                "roles": claims.roles,
                "expires": humantime::format_rfc3339_seconds(expires).to_string(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(secret_file: PathBuf) -> CreateArgs {
        CreateArgs {
            secret_file,
            sub: "svc-a".into(),
            tenant: Some("acme".into()),
            roles: Vec::new(),
            ttl: Duration::from_secs(3600),
            issuer: None,
            audience: None,
        }
    }

    #[test]
    fn signs_what_the_servers_verify() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("secret");
        std::fs::write(&file, "0123456789abcdef0123456789abcdef\n")?;
        let (token, _) = CreateArgs { roles: vec!["tenant-admin".into()], ..args(file.clone()) }.sign()?;
        let mut config = auth::AuthConfig { hs256_secret_file: Some(file), ..Default::default() };
        config.read_secret_file()?;
        let who = auth::Authenticator::new(&config).authenticate(Some(&format!("Bearer {token}")))?;
        assert_eq!((who.sub.as_str(), who.tenant.as_deref()), ("svc-a", Some("acme")));
        assert_eq!(who.roles, ["tenant-admin"]);
        Ok(())
    }

    #[test]
    fn refuses_weak_secrets_and_nonsense_claims() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let weak = dir.path().join("weak");
        std::fs::write(&weak, "sixteen-bytes-ok")?;
        let err = args(weak.clone()).sign().expect_err("weak secret");
        assert!(err.to_string().contains("--secret-file") && err.to_string().contains("16-byte"), "{err}");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        let missing = args(dir.path().join("missing")).sign().expect_err("no file");
        assert!(missing.to_string().contains("missing"), "{missing}");
        for (bad, flag) in [
            (CreateArgs { sub: String::new(), ..args(weak.clone()) }, "--sub"),
            (CreateArgs { tenant: Some("Acme".into()), ..args(weak.clone()) }, "--tenant"),
            (CreateArgs { roles: vec!["admin".into()], ..args(weak.clone()) }, "--role admin"),
            (
                CreateArgs { tenant: None, roles: vec!["tenant-admin".into()], ..args(weak.clone()) },
                "--role tenant-admin",
            ),
            (CreateArgs { ttl: Duration::ZERO, ..args(weak.clone()) }, "--ttl"),
        ] {
            let err = bad.claims().expect_err(flag);
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
        Ok(())
    }
}
