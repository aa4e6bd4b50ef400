//! Named boot phases: each is timed, logged on the console, recorded in the node's
//! state, and contained (an error or a panic in a phase ends boot in maintenance
//! instead of taking PID 1 down).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tracing::{error, info};

use crate::error_chain;
use crate::logging::panic_message;

/// Where a boot phase is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseState {
    /// Running now.
    Running,
    /// Finished successfully.
    Done {
        /// How long it took.
        elapsed: Duration,
    },
    /// Not run on this kind of host.
    Skipped {
        /// Why.
        why: String,
    },
    /// Failed; boot stopped here.
    Failed {
        /// How long it ran.
        elapsed: Duration,
        /// The error chain or panic message.
        reason: String,
    },
}

/// One phase's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseStatus {
    /// The phase's name (`early`, `modules`, …).
    pub name: &'static str,
    /// Its state.
    pub state: PhaseState,
}

/// The node's overall condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Boot phases are running.
    Booting,
    /// Every phase finished.
    Ready,
    /// A phase failed; the node stays up, reachable and obedient to power requests.
    Maintenance {
        /// The failed phase and why, in one line.
        reason: String,
    },
    /// Stopping everything.
    ShuttingDown,
}

#[derive(Debug)]
struct StateInner {
    stage: Stage,
    phases: Vec<PhaseStatus>,
}

/// The node's boot record, shared with whatever reports health.
#[derive(Clone, Debug)]
pub struct NodeState {
    inner: Arc<Mutex<StateInner>>,
}

impl Default for NodeState {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(StateInner {
                stage: Stage::Booting,
                phases: Vec::new(),
            })),
        }
    }
}

impl NodeState {
    fn lock(&self) -> MutexGuard<'_, StateInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.lock().stage.clone()
    }

    /// Moves to another stage.
    pub fn set_stage(&self, stage: Stage) {
        self.lock().stage = stage;
    }

    /// Every phase seen so far, in order.
    pub fn phases(&self) -> Vec<PhaseStatus> {
        self.lock().phases.clone()
    }

    fn set_phase(&self, name: &'static str, state: PhaseState) {
        let mut inner = self.lock();
        match inner.phases.iter_mut().find(|p| p.name == name) {
            Some(phase) => phase.state = state,
            None => inner.phases.push(PhaseStatus { name, state }),
        }
    }
}

/// A boot phase failed: the node goes to maintenance for this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("phase {phase} failed: {reason}")]
pub struct PhaseFailure {
    /// The phase.
    pub phase: &'static str,
    /// The error chain or panic message.
    pub reason: String,
}

/// Runs phases against a [`NodeState`].
pub struct Phases<'a> {
    state: &'a NodeState,
}

impl<'a> Phases<'a> {
    /// Records into `state`.
    pub fn new(state: &'a NodeState) -> Self {
        Self { state }
    }

    /// Runs one phase: logs its start and its duration, and turns an error or a panic
    /// into a [`PhaseFailure`].
    pub async fn run<T, E, F>(&self, name: &'static str, phase: F) -> Result<T, PhaseFailure>
    where
        F: Future<Output = Result<T, E>>,
        E: std::error::Error,
    {
        self.state.set_phase(name, PhaseState::Running);
        info!(phase = name, "phase start");
        let started = Instant::now();
        let outcome = AssertUnwindSafe(phase).catch_unwind().await;
        let elapsed = started.elapsed();
        let reason = match outcome {
            Ok(Ok(value)) => {
                self.state.set_phase(name, PhaseState::Done { elapsed });
                info!(phase = name, elapsed_ms = millis(elapsed), "phase done");
                return Ok(value);
            }
            Ok(Err(err)) => error_chain(&err),
            Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
        };
        error!(phase = name, elapsed_ms = millis(elapsed), %reason, "phase failed");
        self.state.set_phase(
            name,
            PhaseState::Failed {
                elapsed,
                reason: reason.clone(),
            },
        );
        Err(PhaseFailure {
            phase: name,
            reason,
        })
    }

    /// Records a phase that does not apply to this host.
    pub fn skip(&self, name: &'static str, why: &str) {
        info!(phase = name, why, "phase skipped");
        self.state.set_phase(
            name,
            PhaseState::Skipped {
                why: why.to_owned(),
            },
        );
    }
}

/// Milliseconds with three decimals, for logs.
pub fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[tokio::test(flavor = "current_thread")]
    async fn successful_phase_is_recorded_done() {
        let state = NodeState::default();
        let value = Phases::new(&state)
            .run("early", async { Ok::<_, std::io::Error>(7) })
            .await
            .expect("ok");
        assert_eq!(value, 7);
        assert!(matches!(state.phases()[0].state, PhaseState::Done { .. }));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn failing_phase_reports_the_whole_error_chain() {
        let state = NodeState::default();
        let failure = Phases::new(&state)
            .run("config", async {
                Err::<(), _>(Outer(std::io::Error::other("inner cause")))
            })
            .await
            .expect_err("fails");
        assert_eq!(failure.phase, "config");
        assert_eq!(failure.reason, "outer: inner cause");
        assert!(matches!(state.phases()[0].state, PhaseState::Failed { .. }));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn panicking_phase_is_contained() {
        let state = NodeState::default();
        let failure = Phases::new(&state)
            .run("network", async {
                if state.phases().len() < 100 {
                    panic!("netlink exploded");
                }
                Ok::<(), std::io::Error>(())
            })
            .await
            .expect_err("contained");
        assert_eq!(failure.reason, "panicked: netlink exploded");
    }
}
