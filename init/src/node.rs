//! The node's life: boot, then ready or maintenance, then the shutdown that a power
//! request starts. Shared by PID 1 and the hosted node; their differences sit behind
//! [`Host`].

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::boot::{self, BootContext, NodeOptions};
use crate::host::Host;
use crate::logging::LogHandles;
use crate::phase::{NodeState, Phases, Stage};
use crate::power::{self, PowerAction, PowerRequest};
use crate::reaper::Reaper;
use crate::shutdown;
use crate::supervisor::{Backoff, Supervisor};

/// How long a service gets to stop before it is aborted.
pub const SERVICE_STOP_GRACE: Duration = Duration::from_secs(5);

/// Boots the node, serves until a power request, shuts down in order, and returns
/// what the machine should do next.
pub async fn run(
    host: Host,
    options: NodeOptions,
    logs: LogHandles,
    started: Instant,
) -> PowerAction {
    let (power_tx, mut power_rx) = mpsc::unbounded_channel();
    if let Err(err) = power::listen_for_signals(power_tx.clone(), host.is_pid1()) {
        error!(error = %err, "cannot listen for shutdown signals");
    }
    host.take_over_process_lifecycle();

    let reaper = Reaper::new();
    tokio::spawn(reaper.clone().run());
    let supervisor = Supervisor::new(Backoff::default(), SERVICE_STOP_GRACE, reaper.clone());
    let state = NodeState::default();
    let ctx = BootContext {
        host: host.clone(),
        options,
        logs,
        supervisor: supervisor.clone(),
        power_requests: power_tx,
        state: state.clone(),
        store: crate::services::store::StoreHandle::default(),
        runtime: crate::services::runtime::RuntimeHandle::default(),
        network: crate::services::network::NetworkHandle::default(),
        machine_api: crate::services::listen::ListenAddress::default(),
        started,
    };

    let phases = Phases::new(&state);
    let booting = boot::boot(&ctx, &phases);
    tokio::pin!(booting);
    let request = tokio::select! {
        outcome = &mut booting => {
            match outcome {
                Ok(_) => state.set_stage(Stage::Ready),
                Err(failure) => {
                    error!(
                        phase = failure.phase,
                        reason = %failure.reason,
                        "maintenance: boot stopped; the node stays up and still obeys power-off and reboot"
                    );
                    state.set_stage(Stage::Maintenance { reason: failure.to_string() });
                }
            }
            next_request(&mut power_rx).await
        }
        request = next_request(&mut power_rx) => {
            warn!("shutdown requested while booting; abandoning boot");
            request
        }
    };

    state.set_stage(Stage::ShuttingDown);
    shutdown::run(&request, &host, &supervisor, &reaper).await;
    request.action
}

async fn next_request(requests: &mut mpsc::UnboundedReceiver<PowerRequest>) -> PowerRequest {
    match requests.recv().await {
        Some(request) => request,
        // Every sender gone means nothing can ask any more; that only happens if
        // signal handling failed entirely, so stay up rather than power off.
        None => {
            info!("no power request source left; staying up");
            std::future::pending().await
        }
    }
}
