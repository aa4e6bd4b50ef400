//! The running machine config, and every way to change it (`apply-config` modes).
//!
//! One lock serialises changes. A refused config changes nothing. A live change that
//! fails half-way is rolled back to the previous config before the error is returned.
//! With a state partition, the accepted config is written atomically to
//! `config.yaml` (and a staged one to `staged.yaml`, promoted at the next boot);
//! without one the node is ephemeral and refuses changes that would be lost.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::machine_api::{ApplyMode, ApplyOutcome, ApplyRequest, ApplyResponse};
use cairn_api::machine_config::{self, ConfigChanges, ConfigError, MachineConfig};
use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::power::{PowerAction, PowerRequest};

/// The file the accepted config is kept in, under the state directory.
pub const CONFIG_FILE: &str = "config.yaml";
/// The file a staged config waits in until the next boot.
pub const STAGED_FILE: &str = "staged.yaml";
/// How long a `try` apply lasts without confirmation, unless the request says.
pub const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(60);

/// Applies the live part of a config change to the running machine.
pub trait LiveApply: Send + Sync {
    /// Moves the machine from `old` to `new` (only sections [`machine_config::changes`]
    /// calls live differ).
    fn apply<'a>(
        &'a self,
        old: &'a MachineConfig,
        new: &'a MachineConfig,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// Why an apply was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The document is invalid; nothing changed.
    #[error("the new machine config is invalid; nothing was changed")]
    Invalid(#[source] ConfigError),
    /// `no-reboot` or `try`, but some changes need a reboot.
    #[error("these changes need a reboot, which mode {mode} does not allow: {}", .fields.join(", "))]
    NeedsReboot {
        /// The mode asked for.
        mode: &'static str,
        /// The sections that need a reboot.
        fields: Vec<String>,
    },
    /// The change must survive a reboot, but the node has no state partition.
    #[error(
        "{what}, but this node is ephemeral (no machine.install.disk): the config would be lost at reboot"
    )]
    Ephemeral {
        /// What needed persistence.
        what: String,
    },
    /// A `try` is waiting for confirmation.
    #[error("a try apply is pending; confirm it or wait {0} s for its rollback")]
    TryPending(u64),
    /// Nothing to confirm.
    #[error("no try apply is pending")]
    NothingToConfirm,
    /// Applying live failed; the previous config was restored.
    #[error("applying live failed ({0}); the previous config is back in place")]
    Live(String),
    /// The config could not be saved; nothing changed.
    #[error("cannot save the config to {path}; nothing was changed")]
    Persist {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ApplyError {
    /// Every problem, for the API's `problems` list.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ApplyError::Invalid(err) => err.problems(),
            ApplyError::NeedsReboot { fields, .. } => fields.clone(),
            _ => Vec::new(),
        }
    }
}

struct PendingTry {
    previous: MachineConfig,
    deadline: Instant,
    cancel: CancellationToken,
}

struct Inner {
    current: MachineConfig,
    staged: Option<MachineConfig>,
    pending_try: Option<PendingTry>,
}

/// Owner of the running config.
pub struct ConfigManager {
    inner: Mutex<Inner>,
    state_dir: Option<PathBuf>,
    live: Arc<dyn LiveApply>,
    power: mpsc::UnboundedSender<PowerRequest>,
}

impl ConfigManager {
    /// Starts from the config the node booted with.
    pub fn new(
        current: MachineConfig,
        state_dir: Option<PathBuf>,
        live: Arc<dyn LiveApply>,
        power: mpsc::UnboundedSender<PowerRequest>,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                current,
                staged: None,
                pending_try: None,
            }),
            state_dir,
            live,
            power,
        })
    }

    /// The running config.
    pub async fn current(&self) -> MachineConfig {
        self.inner.lock().await.current.clone()
    }

    /// Whether a staged config waits for the next boot.
    pub async fn has_staged(&self) -> bool {
        self.inner.lock().await.staged.is_some()
    }

    /// Seconds until a pending `try` rolls back.
    pub async fn try_rollback_in(&self) -> Option<u64> {
        self.inner.lock().await.pending_try.as_ref().map(|t| {
            t.deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
        })
    }

    /// Whether the node keeps its config across reboots.
    pub fn is_persistent(&self) -> bool {
        self.state_dir.is_some()
    }

    /// Applies a new config as the request's mode says.
    pub async fn apply(
        self: &Arc<Self>,
        request: ApplyRequest,
    ) -> Result<ApplyResponse, ApplyError> {
        let new = MachineConfig::from_yaml(&request.config).map_err(ApplyError::Invalid)?;
        let mut inner = self.inner.lock().await;
        if let Some(pending) = &inner.pending_try {
            return Err(ApplyError::TryPending(
                pending
                    .deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs(),
            ));
        }
        let changes = machine_config::changes(&inner.current, &new);
        let response = |outcome, rollback_in_secs| ApplyResponse {
            outcome,
            changes: changes.clone(),
            rollback_in_secs,
        };
        match request.mode {
            ApplyMode::Staged => {
                self.persist(STAGED_FILE, &new, "a staged config must survive the reboot")?;
                inner.staged = Some(new);
                info!(changes = ?changes, "machine config staged for the next boot");
                Ok(response(ApplyOutcome::Staged, None))
            }
            _ if changes.is_empty() => Ok(response(ApplyOutcome::Unchanged, None)),
            ApplyMode::Reboot => self.apply_with_reboot(&mut inner, new, &changes),
            ApplyMode::Auto if !changes.needs_reboot.is_empty() => {
                self.apply_with_reboot(&mut inner, new, &changes)
            }
            ApplyMode::NoReboot | ApplyMode::Try if !changes.needs_reboot.is_empty() => {
                Err(ApplyError::NeedsReboot {
                    mode: if request.mode == ApplyMode::Try {
                        "try"
                    } else {
                        "no-reboot"
                    },
                    fields: changes.needs_reboot.clone(),
                })
            }
            ApplyMode::Try => {
                self.apply_live(&mut inner, &new).await?;
                let timeout = request
                    .try_timeout_secs
                    .map(Duration::from_secs)
                    .unwrap_or(DEFAULT_TRY_TIMEOUT);
                let previous = std::mem::replace(&mut inner.current, new);
                let cancel = CancellationToken::new();
                inner.pending_try = Some(PendingTry {
                    previous,
                    deadline: Instant::now() + timeout,
                    cancel: cancel.clone(),
                });
                tokio::spawn(Arc::clone(self).roll_back_after(timeout, cancel));
                info!(timeout_s = timeout.as_secs(), changes = ?changes.live, "machine config applied on trial");
                Ok(response(
                    ApplyOutcome::AppliedWithRollback,
                    Some(timeout.as_secs()),
                ))
            }
            ApplyMode::Auto | ApplyMode::NoReboot => {
                self.apply_live(&mut inner, &new).await?;
                if let Err(err) = self.persist(CONFIG_FILE, &new, "") {
                    // Keep running and saved configs the same: undo the live change.
                    let _ = self.live.apply(&new, &inner.current).await;
                    return Err(err);
                }
                inner.current = new;
                info!(changes = ?changes.live, "machine config applied live");
                Ok(response(ApplyOutcome::AppliedLive, None))
            }
        }
    }

    fn apply_with_reboot(
        &self,
        inner: &mut Inner,
        new: MachineConfig,
        changes: &ConfigChanges,
    ) -> Result<ApplyResponse, ApplyError> {
        self.persist(CONFIG_FILE, &new, "these changes need a reboot")?;
        inner.current = new;
        info!(changes = ?changes, "machine config saved; rebooting to apply it");
        self.request_power(PowerAction::Reboot, "apply-config");
        Ok(ApplyResponse {
            outcome: ApplyOutcome::Rebooting,
            changes: changes.clone(),
            rollback_in_secs: None,
        })
    }

    async fn apply_live(&self, inner: &mut Inner, new: &MachineConfig) -> Result<(), ApplyError> {
        if let Err(reason) = self.live.apply(&inner.current, new).await {
            warn!(%reason, "live apply failed; restoring the previous config");
            if let Err(again) = self.live.apply(new, &inner.current).await {
                warn!(reason = %again, "restoring the previous config failed too");
            }
            return Err(ApplyError::Live(reason));
        }
        Ok(())
    }

    /// Confirms a pending `try`: it stays, and is saved.
    pub async fn confirm(&self) -> Result<(), ApplyError> {
        let mut inner = self.inner.lock().await;
        let Some(pending) = inner.pending_try.take() else {
            return Err(ApplyError::NothingToConfirm);
        };
        if let Err(err) = self.persist(CONFIG_FILE, &inner.current, "") {
            inner.pending_try = Some(pending);
            return Err(err);
        }
        pending.cancel.cancel();
        info!("try apply confirmed");
        Ok(())
    }

    async fn roll_back_after(self: Arc<Self>, timeout: Duration, cancel: CancellationToken) {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(timeout) => {}
        }
        let mut inner = self.inner.lock().await;
        // Confirmed while we waited for the lock.
        if cancel.is_cancelled() {
            return;
        }
        let Some(pending) = inner.pending_try.take() else {
            return;
        };
        match self.live.apply(&inner.current, &pending.previous).await {
            Ok(()) => warn!(
                timeout_s = timeout.as_secs(),
                "try apply not confirmed; rolled back"
            ),
            Err(reason) => warn!(%reason, "try apply not confirmed; rolling back failed"),
        }
        inner.current = pending.previous;
    }

    fn persist(&self, file: &str, config: &MachineConfig, why: &str) -> Result<(), ApplyError> {
        let Some(dir) = &self.state_dir else {
            if why.is_empty() {
                // Live changes on an ephemeral node simply are not saved.
                return Ok(());
            }
            return Err(ApplyError::Ephemeral {
                what: why.to_owned(),
            });
        };
        let text = config
            .to_yaml()
            .map_err(|e| persist_error(dir, file, std::io::Error::other(e.to_string())))?;
        write_atomically(&dir.join(file), text.as_bytes())
            .map_err(|source| persist_error(dir, file, source))
    }

    fn request_power(&self, action: PowerAction, cause: &str) {
        let power = self.power.clone();
        let cause = cause.to_owned();
        // Let the API answer first.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = power.send(PowerRequest { action, cause });
        });
    }
}

fn persist_error(dir: &Path, file: &str, source: std::io::Error) -> ApplyError {
    ApplyError::Persist {
        path: dir.join(file),
        source,
    }
}

/// Writes a file so that a crash leaves either the old or the new content: a temporary
/// file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// At boot: the config saved on the state partition, promoting a staged one first.
pub fn load_saved(state_dir: &Path) -> std::io::Result<Option<(String, bool)>> {
    let staged = state_dir.join(STAGED_FILE);
    let promoted = staged.exists();
    if promoted {
        std::fs::rename(&staged, state_dir.join(CONFIG_FILE))?;
        std::fs::File::open(state_dir)?.sync_all()?;
    }
    match std::fs::read_to_string(state_dir.join(CONFIG_FILE)) {
        Ok(text) => Ok(Some((text, promoted))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use cairn_api::bundle::{NodeSpec, Secrets};
    use cairn_api::machine_config::{InstallSpec, MachineType};
    use futures::FutureExt;

    use super::*;

    /// Records live applies as "old-hostname -> new-hostname"; fails when the new
    /// hostname is "explode".
    #[derive(Default)]
    struct Recorder(StdMutex<Vec<String>>);

    impl LiveApply for Recorder {
        fn apply<'a>(
            &'a self,
            old: &'a MachineConfig,
            new: &'a MachineConfig,
        ) -> BoxFuture<'a, Result<(), String>> {
            async move {
                let (a, b) = (
                    old.machine.hostname.clone().unwrap_or_default(),
                    new.machine.hostname.clone().unwrap_or_default(),
                );
                self.0.lock().unwrap().push(format!("{a} -> {b}"));
                if b == "explode" {
                    Err("hostname refused".into())
                } else {
                    Ok(())
                }
            }
            .boxed()
        }
    }

    fn config(hostname: &str) -> MachineConfig {
        let secrets = Secrets::generate("test").unwrap();
        secrets
            .machine_config(&NodeSpec {
                machine_type: MachineType::Controlplane,
                hostname: hostname.into(),
                addresses: vec!["10.5.0.2/24".into()],
                endpoint: "https://10.5.0.2:6443".into(),
                control_planes: vec!["10.5.0.2".into()],
                install_disk: None,
            })
            .unwrap()
    }

    fn with_hostname(base: &MachineConfig, hostname: &str) -> String {
        let mut copy = base.clone();
        copy.machine.hostname = Some(hostname.into());
        copy.to_yaml().unwrap()
    }

    fn manager(
        state_dir: Option<PathBuf>,
    ) -> (
        Arc<ConfigManager>,
        Arc<Recorder>,
        mpsc::UnboundedReceiver<PowerRequest>,
        MachineConfig,
    ) {
        let base = config("node-1");
        let recorder = Arc::new(Recorder::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let manager = ConfigManager::new(base.clone(), state_dir, recorder.clone(), tx);
        (manager, recorder, rx, base)
    }

    fn request(config: String, mode: ApplyMode) -> ApplyRequest {
        ApplyRequest {
            config,
            mode,
            try_timeout_secs: Some(1),
        }
    }

    #[tokio::test]
    async fn live_change_is_applied_and_saved() {
        let dir = tempfile::tempdir().unwrap();
        let (manager, recorder, _power, base) = manager(Some(dir.path().to_owned()));
        let answer = manager
            .apply(request(with_hostname(&base, "node-2"), ApplyMode::Auto))
            .await
            .unwrap();
        assert_eq!(answer.outcome, ApplyOutcome::AppliedLive);
        assert_eq!(answer.changes.live, ["machine.hostname"]);
        assert_eq!(recorder.0.lock().unwrap().as_slice(), ["node-1 -> node-2"]);
        let saved = std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap();
        assert!(saved.contains("node-2"));
    }

    #[tokio::test]
    async fn invalid_config_changes_nothing_and_lists_every_problem() {
        let (manager, recorder, _power, base) = manager(None);
        let mut bad = base.clone();
        bad.machine.hostname = Some("Bad_Name".into());
        bad.machine.network.interfaces[0].addresses = vec!["10.0.0.300/24".into()];
        let err = manager
            .apply(request(bad.to_yaml().unwrap(), ApplyMode::Auto))
            .await
            .unwrap_err();
        assert_eq!(err.problems().len(), 2, "{:?}", err.problems());
        assert!(recorder.0.lock().unwrap().is_empty());
        assert_eq!(manager.current().await, base);
    }

    #[tokio::test]
    async fn failed_live_apply_is_rolled_back() {
        let (manager, recorder, _power, base) = manager(None);
        let err = manager
            .apply(request(
                with_hostname(&base, "explode"),
                ApplyMode::NoReboot,
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, ApplyError::Live(_)));
        assert_eq!(
            recorder.0.lock().unwrap().as_slice(),
            ["node-1 -> explode", "explode -> node-1"]
        );
        assert_eq!(manager.current().await, base);
    }

    #[tokio::test]
    async fn no_reboot_refuses_changes_that_need_one_and_names_them() {
        let (manager, _, _power, base) = manager(None);
        let mut new = base.clone();
        new.machine.install = Some(InstallSpec {
            disk: "/dev/vda".into(),
        });
        let err = manager
            .apply(request(new.to_yaml().unwrap(), ApplyMode::NoReboot))
            .await
            .unwrap_err();
        assert_eq!(err.problems(), ["machine.install"]);
    }

    #[tokio::test]
    async fn ephemeral_node_refuses_reboot_and_staged_applies() {
        let (manager, _, _power, base) = manager(None);
        let mut new = base.clone();
        new.machine.install = Some(InstallSpec {
            disk: "/dev/vda".into(),
        });
        for mode in [ApplyMode::Auto, ApplyMode::Staged] {
            let err = manager
                .apply(request(new.to_yaml().unwrap(), mode))
                .await
                .unwrap_err();
            assert!(matches!(err, ApplyError::Ephemeral { .. }), "{err}");
        }
    }

    #[tokio::test]
    async fn reboot_mode_saves_then_asks_for_a_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let (manager, recorder, mut power, base) = manager(Some(dir.path().to_owned()));
        let answer = manager
            .apply(request(with_hostname(&base, "node-2"), ApplyMode::Reboot))
            .await
            .unwrap();
        assert_eq!(answer.outcome, ApplyOutcome::Rebooting);
        assert_eq!(power.recv().await.unwrap().action, PowerAction::Reboot);
        assert!(
            recorder.0.lock().unwrap().is_empty(),
            "nothing applied live"
        );
        assert!(
            std::fs::read_to_string(dir.path().join(CONFIG_FILE))
                .unwrap()
                .contains("node-2")
        );
    }

    #[tokio::test]
    async fn staged_config_is_promoted_at_the_next_boot_only() {
        let dir = tempfile::tempdir().unwrap();
        let (manager, recorder, _power, base) = manager(Some(dir.path().to_owned()));
        manager
            .apply(request(with_hostname(&base, "node-1"), ApplyMode::Auto))
            .await
            .unwrap();
        let answer = manager
            .apply(request(with_hostname(&base, "node-3"), ApplyMode::Staged))
            .await
            .unwrap();
        assert_eq!(answer.outcome, ApplyOutcome::Staged);
        assert!(recorder.0.lock().unwrap().is_empty());
        assert_eq!(
            manager.current().await.machine.hostname.as_deref(),
            Some("node-1")
        );
        let (text, promoted) = load_saved(dir.path()).unwrap().unwrap();
        assert!(promoted && text.contains("node-3"));
        assert!(!dir.path().join(STAGED_FILE).exists());
    }

    #[tokio::test]
    async fn unconfirmed_try_rolls_back_and_confirmed_try_stays() {
        let (manager, recorder, _power, base) = manager(None);
        let answer = manager
            .apply(request(with_hostname(&base, "trial"), ApplyMode::Try))
            .await
            .unwrap();
        assert_eq!(answer.outcome, ApplyOutcome::AppliedWithRollback);
        assert!(matches!(
            manager
                .apply(request(with_hostname(&base, "x"), ApplyMode::Auto))
                .await,
            Err(ApplyError::TryPending(_))
        ));
        for _ in 0..100 {
            if manager.try_rollback_in().await.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            manager.current().await.machine.hostname.as_deref(),
            Some("node-1")
        );
        assert_eq!(
            recorder.0.lock().unwrap().as_slice(),
            ["node-1 -> trial", "trial -> node-1"]
        );

        manager
            .apply(request(with_hostname(&base, "kept"), ApplyMode::Try))
            .await
            .unwrap();
        manager.confirm().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            manager.current().await.machine.hostname.as_deref(),
            Some("kept")
        );
        assert!(matches!(
            manager.confirm().await,
            Err(ApplyError::NothingToConfirm)
        ));
    }
}
