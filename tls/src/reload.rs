//! A TLS configuration built from files and rebuilt when their contents
//! change: one [`ArcSwap`] that handshakes load, and one task that polls
//! the files and stores the next configuration.
//!
//! Polling, not file-system notifications: it needs no extra dependency,
//! works the same on every file system and through the symlink swaps of
//! mounted secrets (Kubernetes), and a stat-and-read of a few small files
//! once a second costs nothing. Contents are compared, not modification
//! times, so a copy that keeps the old time (`cp -p`) is noticed too.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::error::Result;
use crate::pem::File;

/// How often the files of a TLS configuration are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Builds a configuration from the files' contents.
pub(crate) type Build<T> = Box<dyn Fn(&[File]) -> Result<T> + Send + Sync>;

/// What the files looked like at the last check.
struct Seen {
    /// The files the configuration in force was built from.
    loaded: Vec<File>,
    /// The last state that could not be used (already logged).
    refused: Option<Result<Vec<File>>>,
}

/// A `T` built from files, rebuilt when they change while anything holds
/// this. Needs a tokio runtime to re-read by itself; without one it stays
/// as loaded unless [`Reloading::check`] is called.
pub(crate) struct Reloading<T> {
    /// What this is, for logs: "server certificate", "client tls".
    what: &'static str,
    sources: Vec<(&'static str, std::path::PathBuf)>,
    build: Build<T>,
    current: ArcSwap<T>,
    seen: tokio::sync::Mutex<Seen>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Reads the files and builds the first `T` now (a bad file is an
    /// error naming its setting), then watches them.
    pub fn load(
        what: &'static str,
        sources: Vec<(&'static str, std::path::PathBuf)>,
        build: Build<T>,
    ) -> Result<Arc<Self>> {
        let files = sources.iter().map(|(field, path)| File::read(field, path)).collect::<Result<Vec<_>>>()?;
        let first = build(&files)?;
        let seen = tokio::sync::Mutex::new(Seen { loaded: files, refused: None });
        let me = Arc::new(Self { what, sources, build, current: ArcSwap::from_pointee(first), seen });
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(watch(Arc::downgrade(&me)));
            }
            Err(_) => tracing::warn!(what, "no async runtime: tls files are not re-read when they change"),
        }
        Ok(me)
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Reads the files and, when they differ from what is loaded, builds
    /// and stores the next configuration: `Ok(true)` when it did,
    /// `Ok(false)` when nothing changed. A failure keeps the last good
    /// configuration and is logged once per distinct state of the files
    /// (a rotation written in two steps may be caught halfway; the next
    /// check sees it whole).
    pub async fn check(&self) -> Result<bool> {
        let mut seen = self.seen.lock().await;
        let read = self.read().await;
        if matches!(&read, Ok(files) if *files == seen.loaded) {
            seen.refused = None;
            return Ok(false);
        }
        let outcome = read.clone().and_then(|files| (self.build)(&files).map(|next| (files, next)));
        match outcome {
            Ok((files, next)) => {
                self.current.store(Arc::new(next));
                let paths: Vec<_> = files.iter().map(|f| f.path.display().to_string()).collect();
                tracing::info!(what = self.what, files = ?paths, "tls files changed: new connections use them");
                *seen = Seen { loaded: files, refused: None };
                Ok(true)
            }
            Err(error) => {
                if seen.refused.as_ref() != Some(&read) {
                    tracing::warn!(
                        what = self.what,
                        %error,
                        "tls files changed but cannot be used: keeping the previous ones"
                    );
                    seen.refused = Some(read);
                }
                Err(error)
            }
        }
    }

    /// The files as they are now.
    async fn read(&self) -> Result<Vec<File>> {
        let mut files = Vec::with_capacity(self.sources.len());
        for (field, path) in &self.sources {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| crate::error::TlsError::config(field, format!("cannot read {}: {e}", path.display())))?;
            files.push(File { field, path: path.clone(), bytes });
        }
        Ok(files)
    }
}

/// Checks the files every [`RELOAD_INTERVAL`] until the configuration is
/// dropped.
async fn watch<T: Send + Sync + 'static>(me: Weak<Reloading<T>>) {
    let mut every = tokio::time::interval(RELOAD_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(me) = me.upgrade() else { return };
        // Errors are logged by `check`; the last good files stay in use.
        let _ = me.check().await;
    }
}
