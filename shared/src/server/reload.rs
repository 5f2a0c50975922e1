//! Config reload without a restart: on SIGHUP, when the config file changes (checked every
//! `reload.watch_interval`), or when asked ([`Reloader::reload`]), the file is read again with the
//! same layering as at start (defaults < file < `BFF_` env < flags: the environment and the flags
//! of the process still win), validated, and swapped in atomically as a new request stack
//! (`super::stack`), with the fragment cache's freshness, the listener's TLS settings and the log
//! level. Requests in flight finish on the stack they started with.
//!
//! Keys only a restart can apply (`Settings::keep_restart_only`: the listen addresses, turning TLS
//! on or off, …) keep their running value; the rest of the new config is applied, and the one log
//! line of the reload names them. A config that does not load (bad TOML, an unknown key, a value
//! refused by validation, files it names that are unusable) changes nothing: one `error` line says
//! why. Each reload is counted in `bff_config_reloads_total{result}`.
//!
//! The file check follows what Kubernetes does to a mounted ConfigMap (a symlink swapped to a new
//! directory) and what editors do (write a new file, rename it over the old): the path is
//! resolved and the file read at every check, and its content's hash decides whether it changed
//! (a config file is a few kilobytes; its size and modification time alone would miss an edit
//! within the file system's timestamp granularity, and a `touch` changes nothing).

use std::{
    hash::{Hash, Hasher},
    path::Path,
    sync::Arc,
};

use arc_swap::ArcSwap;

use super::{ServerError, stack::Process, stack::Stack, tls::Tls};
use crate::config::{BinaryDefaults, ConfigError, LoadOptions, Settings, same};

/// A rewrite of loaded settings, applied again to each reloaded config.
pub type SettingsRewrite = Arc<dyn Fn(&mut Settings) + Send + Sync>;

/// Where the config comes from, to read it again: what the binary loaded at start.
#[derive(Clone, Default)]
pub struct ConfigSource {
    /// The file, the environment and the flags, as at start.
    pub load: LoadOptions,
    /// A rewrite applied after each load (`--demo` points the backends at its fixtures and trusts
    /// their identity provider).
    pub adjust: Option<SettingsRewrite>,
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource")
            .field("file", &self.load.file)
            .field("adjust", &self.adjust.is_some())
            .finish()
    }
}

/// Why a reload was refused (the running config stays in use).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read, parsed or validated.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `log.level` is not a log filter.
    #[error("invalid config key `log.level`: {0}")]
    LogLevel(#[from] crate::telemetry::LogLevelError),
    /// The new `tls.*` files are unusable.
    #[error("invalid config key `tls`: {0}")]
    Tls(#[from] super::tls::TlsError),
    /// A part of the new config could not be built (a backend's TLS files, a Redis URL, the
    /// persisted-operation manifest).
    #[error(transparent)]
    Build(#[from] ServerError),
}

/// A reload that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The keys whose new value is now in use (each down to its section's direct key:
    /// `backends.top10`, `rate_limits.policies`).
    pub changed: Vec<String>,
    /// The keys whose new value needs a restart: their running value is kept.
    pub needs_restart: Vec<&'static str>,
}

/// What started a reload, for its log line.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Call,
    Signal,
    File,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Call => "request",
            Self::Signal => "SIGHUP",
            Self::File => "file change",
        }
    }
}

/// Reloads a running application's config. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    source: ConfigSource,
    defaults: BinaryDefaults,
    /// The stack requests are served by.
    live: Arc<ArcSwap<Stack>>,
    process: Arc<Process>,
    tls: Option<Arc<Tls>>,
    /// One reload at a time: each builds on the stack the previous one installed.
    one_at_a_time: parking_lot::Mutex<()>,
}

impl Reloader {
    pub(crate) fn new(
        source: ConfigSource,
        defaults: BinaryDefaults,
        live: Arc<ArcSwap<Stack>>,
        process: Arc<Process>,
        tls: Option<Arc<Tls>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                defaults,
                live,
                process,
                tls,
                one_at_a_time: parking_lot::Mutex::new(()),
            }),
        }
    }

    /// The settings in use (the restart-only keys at their running values).
    pub fn settings(&self) -> Arc<Settings> {
        self.inner.live.load().settings.clone()
    }

    /// Reads the config again and applies it, as SIGHUP does; logs the outcome in one line and
    /// counts it. Call inside the runtime.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.reload_for(Trigger::Call)
    }

    fn reload_for(&self, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        let _one = self.inner.one_at_a_time.lock();
        let outcome = self.apply();
        let by = trigger.as_str();
        match &outcome {
            Ok(r) if !r.needs_restart.is_empty() => tracing::warn!(
                by,
                changed = %r.changed.join(","),
                needs_restart = %r.needs_restart.join(","),
                "config reloaded; the changes to needs_restart are not applied until a restart"
            ),
            Ok(r) if r.changed.is_empty() => {
                tracing::info!(by, "config reloaded; nothing changed");
            }
            Ok(r) => tracing::info!(by, changed = %r.changed.join(","), "config reloaded"),
            Err(e) => tracing::error!(
                by,
                error = %e,
                "config reload refused; the running config stays in use"
            ),
        }
        if let Some(m) = &self.inner.process.metrics {
            m.config_reload(outcome.is_ok());
        }
        outcome
    }

    /// Loads, checks and builds everything first; only then swaps anything in.
    fn apply(&self) -> Result<Reloaded, ReloadError> {
        let inner = &*self.inner;
        let running = inner.live.load_full();
        let (mut new, _warnings) = Settings::load_reporting(&inner.defaults, &inner.source.load)?;
        // The warnings (ignored `BFF_` variables) were logged at start; the environment has
        // not changed since.
        if let Some(adjust) = &inner.source.adjust {
            adjust(&mut new);
        }
        let needs_restart = new.keep_restart_only(&running.settings);
        let changed = new.changed_keys(&running.settings);
        let level = (new.log.level != running.settings.log.level).then(|| new.log.level.clone());
        if let Some(level) = &level {
            crate::telemetry::log_filter(level)?;
        }
        let tls = match &inner.tls {
            Some(tls) => tls.prepare(&new.tls)?,
            None => None,
        };
        let new = Arc::new(new);
        let stack = Stack::build(new.clone(), &inner.process, Some(&running))?;

        // Nothing below can fail.
        if let (Some(tls), Some(config)) = (&inner.tls, tls) {
            tls.install(&new.tls, config);
        }
        if !same(&new.cache, &running.settings.cache) {
            inner.process.cache.reconfigure(new.cache.clone());
        }
        if let Some(level) = &level
            && let Err(e) = crate::telemetry::set_log_level(level)
        {
            // Checked above; a filter that parses cannot fail to install.
            tracing::warn!(error = %e, "log level not changed");
        }
        inner.live.store(Arc::new(stack));
        Ok(Reloaded {
            changed,
            needs_restart,
        })
    }

    /// Reloads on SIGHUP and, every `reload.watch_interval` (read anew each round), when the
    /// config file changed; until the handle is aborted. The signal is registered before this
    /// returns, so a SIGHUP from then on reloads instead of ending the process.
    pub(crate) fn watch(&self) -> tokio::task::JoinHandle<()> {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let reloader = self.clone();
        tokio::spawn(async move {
            let file = reloader.inner.source.load.file.clone();
            let mut seen = file.as_deref().map(Seen::now);
            loop {
                let interval = reloader.settings().reload.watch_interval;
                let poll = async {
                    match &file {
                        Some(_) if !interval.is_zero() => tokio::time::sleep(interval).await,
                        _ => std::future::pending::<()>().await,
                    }
                };
                #[cfg(unix)]
                let signalled = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await.is_some(),
                        None => std::future::pending::<bool>().await,
                    }
                };
                #[cfg(not(unix))]
                let signalled = std::future::pending::<bool>();
                let trigger = tokio::select! {
                    got = signalled => {
                        if !got {
                            #[cfg(unix)]
                            {
                                hup = None;
                            }
                            continue;
                        }
                        Trigger::Signal
                    }
                    () = poll => {
                        let (Some(path), Some(before)) = (&file, &mut seen) else { continue };
                        if !before.changed(path) {
                            continue;
                        }
                        Trigger::File
                    }
                };
                if let (Trigger::Signal, Some(path)) = (trigger, &file) {
                    // What a signal reloads, the file check need not reload again.
                    seen = Some(Seen::now(path));
                }
                let _ = reloader.reload_for(trigger);
            }
        })
    }
}

/// What the file check last saw of the config file: its content's hash (`None`: unreadable).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen(Option<u64>);

impl Seen {
    fn now(path: &Path) -> Self {
        Self(content_hash(path))
    }

    /// Whether the content changed since last seen (updating what was seen).
    fn changed(&mut self, path: &Path) -> bool {
        let now = Self::now(path);
        let changed = now != *self;
        *self = now;
        changed
    }
}

/// A hash of the bytes of the file `path` names now (symlinks followed), `None` when it cannot
/// be read.
fn content_hash(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The check sees an edit in place, a file renamed over the old one and a Kubernetes-style
    /// symlink swap, and ignores a `touch` or a rewrite with the same content.
    #[test]
    fn the_file_check_sees_content_changes_however_the_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!(
            "bff-reload-seen-{}-{}",
            std::process::id(),
            line!()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bff.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        let mut seen = Seen::now(&path);
        assert!(!seen.changed(&path), "nothing happened");

        std::fs::write(&path, "a = 2\n").unwrap();
        assert!(seen.changed(&path), "edited in place, same size");
        assert!(!seen.changed(&path), "seen once");

        std::fs::write(&path, "a = 2\n").unwrap();
        assert!(!seen.changed(&path), "rewritten with the same bytes");

        let tmp = dir.join("bff.toml.tmp");
        std::fs::write(&tmp, "a = 3\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(seen.changed(&path), "a new file renamed over it");

        #[cfg(unix)]
        {
            // ConfigMap layout: bff.toml -> ..data/bff.toml, ..data -> ..v1, swapped to ..v2.
            let k8s = dir.join("k8s");
            for (v, text) in [("..v1", "b = 1\n"), ("..v2", "b = 2\n")] {
                std::fs::create_dir_all(k8s.join(v)).unwrap();
                std::fs::write(k8s.join(v).join("bff.toml"), text).unwrap();
            }
            std::os::unix::fs::symlink("..v1", k8s.join("..data")).unwrap();
            std::os::unix::fs::symlink("..data/bff.toml", k8s.join("bff.toml")).unwrap();
            let path = k8s.join("bff.toml");
            let mut seen = Seen::now(&path);
            std::os::unix::fs::symlink("..v2", k8s.join("..data_tmp")).unwrap();
            std::fs::rename(k8s.join("..data_tmp"), k8s.join("..data")).unwrap();
            assert!(seen.changed(&path), "the symlink swap");
            assert!(!seen.changed(&path));
        }

        std::fs::remove_file(&path).unwrap();
        assert!(
            seen.changed(&path),
            "gone: the reload then says it cannot read it"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
