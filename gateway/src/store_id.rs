//! This gateway's *store id*: the identity of its data directory, which is
//! what an embedded namespace's data is tied to.
//!
//! Replicas of a shard each have their own embedded store, so an embedded
//! namespace is owned by exactly one of them (`Namespace.owner_store_id`,
//! decided by the control plane; see `control-plane/src/registry.rs`). The
//! owner must be recognised across its restarts, so the id is generated
//! once (128 random bits, hex), kept in `<data_dir>/store-id`, and sent
//! with every registration. It names the disk, not the address: a gateway
//! restarted on the same directory at another port is the same owner, and
//! a new gateway on a fresh directory — even at a reused address — is not.
//! Two running gateways cannot share a directory (the embedded store's
//! file lock refuses the second), so two live instances never share an id
//! unless a directory was copied.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{GatewayError, Result};

/// The file, inside the data directory, that holds the id.
pub const FILE: &str = "store-id";

fn file(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

fn config_error(path: &Path, what: impl std::fmt::Display) -> GatewayError {
    GatewayError::Config { field: "data_dir".into(), description: format!("{}: {what}", path.display()) }
}

/// The store id kept in `data_dir`, created (with the directory) on first
/// use. A file that does not hold an id is an error naming it: replacing
/// it would give the data another owner.
pub fn load_or_create(data_dir: &Path) -> Result<String> {
    let path = file(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            prism_proto::names::validate_part(id).map_err(|e| config_error(&path, format!("not a store id: {e}")))?;
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("{:032x}", rand::random::<u128>());
            std::fs::create_dir_all(data_dir).map_err(|e| config_error(data_dir, e))?;
            // Written whole or not at all: a crash leaves no half id.
            let temp = data_dir.join(format!("{FILE}.tmp"));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&temp)?;
                f.write_all(format!("{id}\n").as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&temp, &path)
            };
            write().map_err(|e| config_error(&path, e))?;
            tracing::info!(store_id = %id, path = %path.display(), "new store id");
            Ok(id)
        }
        Err(e) => Err(config_error(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_across_opens_and_distinct_per_directory() {
        let a = tempfile::tempdir().expect("temp dir");
        let b = tempfile::tempdir().expect("temp dir");
        let first = load_or_create(&a.path().join("data")).expect("created");
        assert_eq!(first.len(), 32);
        assert!(prism_proto::names::validate_part(&first).is_ok());
        assert_eq!(load_or_create(&a.path().join("data")).expect("read"), first);
        assert_ne!(load_or_create(b.path()).expect("created"), first);
    }

    #[test]
    fn a_file_that_holds_no_id_is_refused_and_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(FILE), "Not An Id\n").expect("write");
        let e = load_or_create(dir.path()).expect_err("refused");
        assert!(e.to_string().contains("store-id"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE)).expect("kept"), "Not An Id\n");
    }
}
