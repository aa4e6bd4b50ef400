//! The services a node runs, and the test services a boot can ask for.
//!
//! Built-in services grow with each subsystem (machine API, store, API server, …).
//! Test services exist to prove the supervisor and PID 1 under fault; they run only
//! when asked for by name (`cairn.test=crashloop,orphans` on the kernel command line,
//! or `cairn node --test-service crashloop`).

use std::sync::Arc;

use crate::supervisor::Service;

pub mod agent;
pub mod apiserver;
pub mod kube_client;
pub mod leader_elected;
pub mod link_monitor;
pub mod listen;
pub mod network;
pub mod podnet;
pub mod runtime;
pub mod store;
pub mod testing;

/// The services every node runs, in start order.
pub fn builtin() -> Vec<Arc<dyn Service>> {
    vec![Arc::new(link_monitor::LinkMonitorService)]
}

/// Why a requested test service was refused.
#[derive(Debug, thiserror::Error)]
#[error("unknown test service {name:?} (known: {known})")]
pub struct UnknownTestService {
    /// What was asked for.
    pub name: String,
    /// What exists.
    pub known: String,
}

/// The test service of that name.
pub fn test_service(name: &str) -> Result<Arc<dyn Service>, UnknownTestService> {
    match name {
        "crashloop" => Ok(Arc::new(testing::Crashloop)),
        "orphans" => Ok(Arc::new(testing::Orphans)),
        "stubborn" => Ok(Arc::new(testing::Stubborn)),
        "beacon" => Ok(Arc::new(testing::Beacon)),
        _ => Err(UnknownTestService {
            name: name.to_owned(),
            known: "crashloop, orphans, stubborn, beacon".to_owned(),
        }),
    }
}
