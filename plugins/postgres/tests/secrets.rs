//! The password of a namespace comes from its `password_ref`, resolved on
//! the gateway through its declared secrets, against a real server whose
//! role must log in with a password: the right secret provisions and
//! serves; a wrong one, an undeclared one or another tenant's leaves it
//! unserved with a reason that names the reference, never a password.

use std::collections::BTreeMap;

use prism_plugin_api::kv::{Mutation, NewItem, PageLimits, Selector, WriteStamp};
use prism_plugin_api::secrets::{SecretEntry, Secrets};
use prism_plugin_api::{Namespace, Plugin, PluginError};
use prism_plugin_postgres::{PostgresPlugin, PostgresPluginConfig};
use prism_proto::control::{Abstraction, NamespaceSpec, PostgresConfig};
use prism_testkit::postgres::{PostgresServer, skip_reason};

const PASSWORD: &str = "the-role-password-4d1f";
const WRONG: &str = "not-the-role-password-9e2a";

fn namespace(name: &str, dsn: &str, password_ref: &str) -> Namespace {
    let mut ns = Namespace {
        name: name.into(),
        create_revision: 7,
        spec: NamespaceSpec { abstraction: Abstraction::KeyValue as i32, ..Default::default() },
    };
    let pg = PostgresConfig { dsn: dsn.into(), password_ref: password_ref.into(), ..Default::default() };
    ns.spec.backend_config = Some(Box::new(prism_proto::control::BackendConfig {
        config: Some(prism_proto::control::backend_config::Config::Postgres(pg)),
    }));
    ns
}

fn file_entry(path: &std::path::Path, tenants: &[&str]) -> SecretEntry {
    SecretEntry { env: None, file: Some(path.into()), tenants: tenants.iter().map(|t| (*t).to_owned()).collect() }
}

#[tokio::test]
async fn the_password_comes_from_the_declared_secret_only() {
    let Some(server) = PostgresServer::start_or_skip().expect("start postgres") else {
        println!("{}", skip_reason());
        return;
    };
    let dsn = server.add_password_role("app", PASSWORD).expect("a password role");
    let dir = tempfile::tempdir().expect("temp dir");
    let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
    std::fs::write(&right, format!("{PASSWORD}\n")).expect("write");
    std::fs::write(&wrong, WRONG).expect("write");
    let secrets = Secrets::new(BTreeMap::from([
        ("app".to_owned(), file_entry(&right, &["acme"])),
        ("wrong".to_owned(), file_entry(&wrong, &["acme"])),
    ]));
    let plugin = PostgresPlugin::new(PostgresPluginConfig::default()).expect("plugin").with_secrets(secrets.into());

    let served = namespace("acme/served", &dsn, "secret:app");
    plugin.provision(&served).await.expect("the role logs in with the declared secret");
    let kv = plugin.key_value().expect("key-value").open(&served).expect("open");
    let put = Mutation::Put(NewItem { key: b"k".to_vec(), value: b"v".to_vec(), expires_at: None });
    let stamp = WriteStamp { generation_time: prism_plugin_api::now_micros(), token: None };
    kv.mutate("r", &[put], &stamp).await.expect("a write through the password-protected role");
    let limits = PageLimits::new(1 << 20, None);
    let page = kv.get("r", &Selector::All, None, limits, prism_plugin_api::now_micros()).await.expect("read");
    assert_eq!(page.items.len(), 1);

    for (name, reference, reason) in [
        ("acme/unset", "", "asks for a password and the namespace names none"),
        ("acme/wrong", "secret:wrong", "refused the namespace's credentials"),
        ("acme/undeclared", "env:HOME", "env:HOME: is not declared in this gateway's [gateway.secrets]"),
        ("globex/borrowed", "secret:app", "secret:app: is not declared for tenant globex"),
    ] {
        let error = plugin.provision(&namespace(name, &dsn, reference)).await.expect_err(name);
        assert!(matches!(error, PluginError::Unavailable { .. }), "{name}: {error:?}");
        let message = error.report().message;
        assert!(message.contains(reason), "{name}: {message}");
        for secret in [PASSWORD, WRONG] {
            assert!(!message.contains(secret) && !format!("{error:?}").contains(secret), "{name}: {error:?}");
        }
    }
}
