//! Supervised services: start them, restart them when they fail or panic (with capped
//! exponential backoff), keep their state, and stop them in reverse order.
//!
//! A service is an async task (most of Cairn runs in-process, k3s-style); a service
//! that needs a separate process starts it through the [`Reaper`] and waits for it.
//! A panic in a service unwinds into its task and is reported as that service's exit:
//! it never reaches PID 1.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::error_chain;
use crate::logging::panic_message;
use crate::reaper::Reaper;

/// Why a run of a service ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A failure worth retrying (the supervisor restarts the service after a backoff).
    #[error("{message}")]
    Failed {
        /// What went wrong.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A failure that retrying cannot fix; the service is marked failed and left alone.
    #[error("{0}")]
    Fatal(String),
}

impl ServiceError {
    /// A retryable failure caused by `source`.
    pub fn failed(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ServiceError::Failed {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// When a service that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Whatever the reason (long-running daemons).
    Always,
    /// Only after an error or a panic (one-shot jobs).
    OnFailure,
}

/// What a service gets when it starts.
#[derive(Clone)]
pub struct ServiceContext {
    /// Cancelled when the service must stop; a service returns promptly when it fires.
    pub shutdown: CancellationToken,
    /// For services that start processes.
    pub reaper: Reaper,
}

/// Something the supervisor runs.
pub trait Service: Send + Sync + 'static {
    /// Unique, short, lowercase name (`link-monitor`).
    fn name(&self) -> &str;

    /// When to restart it; [`RestartPolicy::Always`] unless overridden.
    fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy::Always
    }

    /// One run of the service, until it ends or `ctx.shutdown` fires.
    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>>;
}

/// Capped exponential backoff between restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// A run that lasted this long resets the delay to `initial`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before restart number `attempt` (0-based): initial × 2^attempt, capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Where a service is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// About to run.
    Starting,
    /// Running.
    Running,
    /// Ended badly; waiting before the next start.
    BackingOff {
        /// The delay being waited.
        delay: Duration,
    },
    /// Ended with a fatal error; not restarted.
    Failed,
    /// Ended successfully and its policy does not restart it.
    Finished,
    /// Asked to stop, waiting for it.
    Stopping,
    /// Stopped by the supervisor.
    Stopped,
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceState::Starting => write!(f, "starting"),
            ServiceState::Running => write!(f, "running"),
            ServiceState::BackingOff { delay } => {
                write!(f, "backing-off ({} ms)", delay.as_millis())
            }
            ServiceState::Failed => write!(f, "failed"),
            ServiceState::Finished => write!(f, "finished"),
            ServiceState::Stopping => write!(f, "stopping"),
            ServiceState::Stopped => write!(f, "stopped"),
        }
    }
}

/// How a run of a service ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Returned `Ok`.
    Completed,
    /// Returned an error (its chain, as text).
    Error(String),
    /// Returned a fatal error.
    Fatal(String),
    /// Panicked (the panic message).
    Panicked(String),
    /// Stopped because the supervisor asked it to.
    Stopped,
    /// Stopped to be started again, on request.
    Restarted,
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Completed => write!(f, "completed"),
            ExitReason::Error(e) => write!(f, "failed: {e}"),
            ExitReason::Fatal(e) => write!(f, "failed fatally: {e}"),
            ExitReason::Panicked(m) => write!(f, "panicked: {m}"),
            ExitReason::Stopped => write!(f, "stopped"),
            ExitReason::Restarted => write!(f, "restarted on request"),
        }
    }
}

/// The last exit of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastExit {
    /// Why it ended.
    pub reason: ExitReason,
    /// When (wall clock).
    pub at: SystemTime,
    /// How long that run lasted.
    pub ran_for: Duration,
}

/// A snapshot of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// Current state.
    pub state: ServiceState,
    /// How many times it was restarted.
    pub restarts: u32,
    /// Its last exit, if it ever ended.
    pub last_exit: Option<LastExit>,
}

struct Supervised {
    name: String,
    cancel: CancellationToken,
    restart: Arc<Notify>,
    task: JoinHandle<()>,
}

/// Runs services and keeps their status.
#[derive(Clone)]
pub struct Supervisor {
    backoff: Backoff,
    stop_grace: Duration,
    reaper: Reaper,
    statuses: Arc<Mutex<BTreeMap<String, ServiceStatus>>>,
    started: Arc<Mutex<Vec<Supervised>>>,
}

/// Why the supervisor refused a request.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A service of that name is already supervised.
    #[error("service {0:?} is already running")]
    Duplicate(String),
    /// No service has that name.
    #[error("no service named {0:?}")]
    Unknown(String),
}

impl Supervisor {
    /// A supervisor using `backoff` between restarts and giving each service
    /// `stop_grace` to stop before it is aborted.
    pub fn new(backoff: Backoff, stop_grace: Duration, reaper: Reaper) -> Self {
        Self {
            backoff,
            stop_grace,
            reaper,
            statuses: Arc::default(),
            started: Arc::default(),
        }
    }

    fn statuses_mut(&self) -> MutexGuard<'_, BTreeMap<String, ServiceStatus>> {
        self.statuses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts supervising a service.
    pub fn start(&self, service: Arc<dyn Service>) -> Result<(), SupervisorError> {
        let name = service.name().to_owned();
        {
            let mut statuses = self.statuses_mut();
            if statuses.contains_key(&name) {
                return Err(SupervisorError::Duplicate(name));
            }
            statuses.insert(
                name.clone(),
                ServiceStatus {
                    name: name.clone(),
                    state: ServiceState::Starting,
                    restarts: 0,
                    last_exit: None,
                },
            );
        }
        let cancel = CancellationToken::new();
        let restart = Arc::new(Notify::new());
        let task = tokio::spawn(self.clone().supervise(
            service,
            cancel.clone(),
            Arc::clone(&restart),
        ));
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Supervised {
                name,
                cancel,
                restart,
                task,
            });
        Ok(())
    }

    /// Restarts a service now: a running one is stopped (within the stop grace) and
    /// started again, one backing off starts at once; the backoff starts over.
    pub fn restart(&self, name: &str) -> Result<(), SupervisorError> {
        let started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let supervised = started
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| SupervisorError::Unknown(name.to_owned()))?;
        supervised.restart.notify_one();
        Ok(())
    }

    /// Every service's status, by name.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.statuses_mut().values().cloned().collect()
    }

    /// One service's status.
    pub fn status(&self, name: &str) -> Option<ServiceStatus> {
        self.statuses_mut().get(name).cloned()
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut ServiceStatus)) {
        if let Some(status) = self.statuses_mut().get_mut(name) {
            change(status);
        }
    }

    async fn supervise(
        self,
        service: Arc<dyn Service>,
        cancel: CancellationToken,
        restart: Arc<Notify>,
    ) {
        let name = service.name().to_owned();
        let span = info_span!("service", name = %name);
        let mut attempt: u32 = 0;
        loop {
            self.update(&name, |s| s.state = ServiceState::Starting);
            let run_token = cancel.child_token();
            let ctx = ServiceContext {
                shutdown: run_token.clone(),
                reaper: self.reaper.clone(),
            };
            let started = Instant::now();
            let mut run = tokio::spawn(service.run(ctx).instrument(span.clone()));
            self.update(&name, |s| s.state = ServiceState::Running);
            let mut restart_requested = false;
            let joined = tokio::select! {
                joined = &mut run => joined,
                () = restart.notified() => {
                    restart_requested = true;
                    run_token.cancel();
                    self.update(&name, |s| s.state = ServiceState::Stopping);
                    match tokio::time::timeout(self.stop_grace, &mut run).await {
                        Ok(joined) => joined,
                        Err(_) => {
                            run.abort();
                            let _ = run.await;
                            Ok(Ok(()))
                        }
                    }
                }
                () = cancel.cancelled() => {
                    self.update(&name, |s| s.state = ServiceState::Stopping);
                    match tokio::time::timeout(self.stop_grace, &mut run).await {
                        Ok(joined) => joined,
                        Err(_) => {
                            warn!(service = %name, grace_ms = self.stop_grace.as_millis(), "service did not stop in time; aborting it");
                            run.abort();
                            let _ = run.await;
                            Ok(Ok(()))
                        }
                    }
                }
            };
            let ran_for = started.elapsed();
            let reason = match joined {
                _ if cancel.is_cancelled() => ExitReason::Stopped,
                _ if restart_requested => ExitReason::Restarted,
                Ok(Ok(())) => ExitReason::Completed,
                Ok(Err(ServiceError::Fatal(message))) => ExitReason::Fatal(message),
                Ok(Err(err)) => ExitReason::Error(error_chain(&err)),
                Err(join) if join.is_panic() => {
                    ExitReason::Panicked(panic_message(join.into_panic().as_ref()))
                }
                Err(_) => ExitReason::Stopped,
            };
            self.update(&name, |s| {
                s.last_exit = Some(LastExit {
                    reason: reason.clone(),
                    at: SystemTime::now(),
                    ran_for,
                });
            });
            let final_state = match &reason {
                ExitReason::Stopped => Some(ServiceState::Stopped),
                ExitReason::Fatal(_) => Some(ServiceState::Failed),
                ExitReason::Completed if service.restart_policy() == RestartPolicy::OnFailure => {
                    Some(ServiceState::Finished)
                }
                _ => None,
            };
            if let Some(state) = final_state {
                info!(service = %name, %reason, state = %state, "service ended");
                self.update(&name, |s| s.state = state);
                return;
            }
            if restart_requested {
                attempt = 0;
                self.update(&name, |s| s.restarts += 1);
                info!(service = %name, "service restarted on request");
                continue;
            }
            if ran_for >= self.backoff.reset_after {
                attempt = 0;
            }
            let delay = self.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            let mut restarts = 0;
            self.update(&name, |s| {
                s.restarts += 1;
                restarts = s.restarts;
                s.state = ServiceState::BackingOff { delay };
            });
            warn!(
                service = %name,
                restart = restarts,
                delay_ms = delay.as_millis() as u64,
                "service {reason}; restarting after backoff"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = restart.notified() => {
                    attempt = 0;
                    info!(service = %name, "backoff cut short by a restart request");
                }
                () = cancel.cancelled() => {
                    self.update(&name, |s| s.state = ServiceState::Stopped);
                    return;
                }
            }
        }
    }

    /// Stops every service, the last started first, each within the stop grace.
    pub async fn stop_all(&self) {
        let services: Vec<Supervised> =
            std::mem::take(&mut *self.started.lock().unwrap_or_else(|p| p.into_inner()));
        for supervised in services.into_iter().rev() {
            let started = Instant::now();
            supervised.cancel.cancel();
            // The supervision task itself enforces the grace and aborts the service.
            let _ = supervised.task.await;
            info!(
                service = %supervised.name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "service stopped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::FutureExt;

    use super::*;

    struct Scripted {
        name: &'static str,
        runs: Arc<AtomicU32>,
        behaviour: fn(u32) -> Result<(), ServiceError>,
        policy: RestartPolicy,
        /// Each run waits for its shutdown token before behaving.
        blocks: bool,
    }

    impl Service for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        fn restart_policy(&self) -> RestartPolicy {
            self.policy
        }
        fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
            let run = self.runs.fetch_add(1, Ordering::SeqCst);
            let (behaviour, blocks) = (self.behaviour, self.blocks);
            async move {
                if blocks {
                    ctx.shutdown.cancelled().await;
                }
                behaviour(run)
            }
            .boxed()
        }
    }

    fn quick_backoff() -> Backoff {
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            reset_after: Duration::from_secs(60),
        }
    }

    fn supervisor() -> Supervisor {
        Supervisor::new(quick_backoff(), Duration::from_millis(200), Reaper::new())
    }

    async fn wait_until(
        supervisor: &Supervisor,
        name: &str,
        done: impl Fn(&ServiceStatus) -> bool,
    ) -> ServiceStatus {
        for _ in 0..500 {
            if let Some(status) = supervisor.status(name)
                && done(&status)
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "{name} never reached the expected state: {:?}",
            supervisor.status(name)
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let backoff = quick_backoff();
        let delays: Vec<u128> = (0..5).map(|a| backoff.delay(a).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 40, 40]);
        assert_eq!(backoff.delay(u32::MAX), backoff.max);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn panicking_service_is_restarted_and_the_panic_recorded() {
        let supervisor = supervisor();
        let runs = Arc::new(AtomicU32::new(0));
        supervisor
            .start(Arc::new(Scripted {
                name: "crashy",
                runs: runs.clone(),
                behaviour: |run| {
                    if run < 3 {
                        panic!("boom {run}")
                    } else {
                        Ok(())
                    }
                },
                policy: RestartPolicy::OnFailure,
                blocks: false,
            }))
            .expect("start");
        let status = wait_until(&supervisor, "crashy", |s| s.state == ServiceState::Finished).await;
        assert_eq!(status.restarts, 3);
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(
            status.last_exit.map(|e| e.reason),
            Some(ExitReason::Completed)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fatal_error_marks_failed_without_restart() {
        let supervisor = supervisor();
        supervisor
            .start(Arc::new(Scripted {
                name: "doomed",
                runs: Arc::default(),
                behaviour: |_| Err(ServiceError::Fatal("bad setup".into())),
                policy: RestartPolicy::Always,
                blocks: false,
            }))
            .expect("start");
        let status = wait_until(&supervisor, "doomed", |s| s.state == ServiceState::Failed).await;
        assert_eq!(status.restarts, 0);
        assert_eq!(
            status.last_exit.map(|e| e.reason),
            Some(ExitReason::Fatal("bad setup".into()))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_all_stops_running_and_backing_off_services() {
        let supervisor = supervisor();
        supervisor
            .start(Arc::new(Scripted {
                name: "daemon",
                runs: Arc::default(),
                behaviour: |_| Ok(()),
                policy: RestartPolicy::Always,
                blocks: true,
            }))
            .expect("start");
        supervisor
            .start(Arc::new(Scripted {
                name: "flaky",
                runs: Arc::default(),
                behaviour: |_| {
                    Err(ServiceError::Failed {
                        message: "nope".into(),
                        source: None,
                    })
                },
                policy: RestartPolicy::Always,
                blocks: false,
            }))
            .expect("start");
        wait_until(&supervisor, "daemon", |s| s.state == ServiceState::Running).await;
        wait_until(&supervisor, "flaky", |s| s.restarts >= 2).await;
        supervisor.stop_all().await;
        for status in supervisor.statuses() {
            assert_eq!(status.state, ServiceState::Stopped, "{status:?}");
        }
        assert!(matches!(
            supervisor.start(Arc::new(Scripted {
                name: "daemon",
                runs: Arc::default(),
                behaviour: |_| Ok(()),
                policy: RestartPolicy::Always,
                blocks: false,
            })),
            Err(SupervisorError::Duplicate(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_on_request_stops_the_run_and_starts_a_new_one() {
        let supervisor = supervisor();
        let runs = Arc::new(AtomicU32::new(0));
        supervisor
            .start(Arc::new(Scripted {
                name: "daemon",
                runs: Arc::clone(&runs),
                behaviour: |_| Ok(()),
                policy: RestartPolicy::Always,
                blocks: true,
            }))
            .expect("start");
        wait_until(&supervisor, "daemon", |s| s.state == ServiceState::Running).await;
        assert!(matches!(
            supervisor.restart("nosuch"),
            Err(SupervisorError::Unknown(_))
        ));
        supervisor.restart("daemon").expect("restart");
        let status = wait_until(&supervisor, "daemon", |s| s.restarts == 1).await;
        assert_eq!(
            status.last_exit.map(|e| e.reason),
            Some(ExitReason::Restarted)
        );
        wait_until(&supervisor, "daemon", |s| s.state == ServiceState::Running).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        supervisor.stop_all().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn services_stop_in_reverse_start_order() {
        struct Recorder {
            name: &'static str,
            stops: Arc<Mutex<Vec<&'static str>>>,
        }
        impl Service for Recorder {
            fn name(&self) -> &str {
                self.name
            }
            fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
                let (name, stops) = (self.name, Arc::clone(&self.stops));
                async move {
                    ctx.shutdown.cancelled().await;
                    stops.lock().unwrap().push(name);
                    Ok(())
                }
                .boxed()
            }
        }
        let supervisor = supervisor();
        let stops = Arc::new(Mutex::new(Vec::new()));
        for name in ["first", "second", "third"] {
            supervisor
                .start(Arc::new(Recorder {
                    name,
                    stops: Arc::clone(&stops),
                }))
                .expect("start");
            wait_until(&supervisor, name, |s| s.state == ServiceState::Running).await;
        }
        supervisor.stop_all().await;
        assert_eq!(*stops.lock().unwrap(), ["third", "second", "first"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn service_ignoring_shutdown_is_aborted_after_the_grace() {
        struct Stubborn;
        impl Service for Stubborn {
            fn name(&self) -> &str {
                "stubborn"
            }
            fn run(&self, _ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
                futures::future::pending().boxed()
            }
        }
        let supervisor = supervisor();
        supervisor.start(Arc::new(Stubborn)).expect("start");
        wait_until(&supervisor, "stubborn", |s| {
            s.state == ServiceState::Running
        })
        .await;
        tokio::time::timeout(Duration::from_secs(30), supervisor.stop_all())
            .await
            .expect("stop_all returns although the service ignores its shutdown token");
        assert_eq!(
            supervisor.status("stubborn").map(|s| s.state),
            Some(ServiceState::Stopped)
        );
    }
}
