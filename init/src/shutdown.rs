//! Orderly shutdown: services in reverse start order, then every other process
//! (TERM, a grace period, KILL), then sync and unmount. The caller then hands the
//! machine to `reboot(2)` through [`Host::finish`].

use std::time::{Duration, Instant};

use tracing::info;

use crate::host::Host;
use crate::power::PowerRequest;
use crate::reaper::Reaper;
use crate::supervisor::Supervisor;

/// How long processes get between SIGTERM and SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(5);

/// Runs the shutdown sequence up to (not including) the final `reboot(2)`.
pub async fn run(request: &PowerRequest, host: &Host, supervisor: &Supervisor, reaper: &Reaper) {
    let started = Instant::now();
    info!(action = %request.action, cause = %request.cause, "shutdown: begin");

    supervisor.stop_all().await;
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shutdown: services stopped"
    );

    host.terminate_processes(reaper, TERMINATE_GRACE).await;
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shutdown: processes ended"
    );

    host.sync_and_unmount();
    info!(
        action = %request.action,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shutdown: complete"
    );
}
