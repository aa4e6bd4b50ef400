//! PID 1's entry point. If PID 1 exits or panics the kernel panics, so nothing here
//! returns: a failed boot phase becomes maintenance, a panic that escapes everything
//! else becomes an emergency mode that still obeys power requests, and a failed
//! `reboot(2)` leaves the machine up.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::boot::NodeOptions;
use crate::host::Host;
use crate::logging::{self, DEFAULT_FILTER, panic_message};
use crate::node;
use crate::power::{self, PowerAction};
use crate::sys::RealSyscalls;

/// Runs the machine. Never returns.
pub fn main() -> ! {
    let started = Instant::now();
    let logs = logging::init(DEFAULT_FILTER);
    logging::install_panic_hook();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        "cairn starting as PID 1"
    );
    let host = Host::Pid1 {
        sys: Arc::new(RealSyscalls),
    };
    let runtime = runtime_or_retry();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(node::run(
            host.clone(),
            NodeOptions::default(),
            logs,
            started,
        ))
    }));
    match outcome {
        Ok(action) => {
            let _ = host.finish(action);
        }
        Err(panic) => {
            error!(
                panic = %panic_message(panic.as_ref()),
                "PID 1's main task panicked; emergency mode: only power requests are served"
            );
            let action = runtime.block_on(emergency_power_request());
            nix::unistd::sync();
            let _ = host.finish(action);
        }
    }
    halt_forever()
}

fn runtime_or_retry() -> tokio::runtime::Runtime {
    loop {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn")
            .enable_all()
            .build()
        {
            Ok(runtime) => return runtime,
            Err(err) => {
                error!(error = %err, "cannot start the async runtime; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

async fn emergency_power_request() -> PowerAction {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    if power::listen_for_signals(tx, true).is_err() {
        std::future::pending::<()>().await;
    }
    match rx.recv().await {
        Some(request) => request.action,
        None => std::future::pending().await,
    }
}

fn halt_forever() -> ! {
    error!("PID 1 has nothing left to do; the machine stays up until it is reset");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
