//! `link-monitor`: logs links appearing, going up or down, and losing carrier, from
//! netlink events, for the node's log (the `network` service acts on changes).

use std::collections::BTreeMap;

use cairn_net::monitor::{LinkEvent, LinkMonitor};
use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::info;

use crate::supervisor::{Service, ServiceContext, ServiceError};

/// Follows link changes in the node's network namespace.
pub struct LinkMonitorService;

impl Service for LinkMonitorService {
    fn name(&self) -> &str {
        "link-monitor"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        async move {
            let mut monitor = LinkMonitor::subscribe()
                .map_err(|e| ServiceError::failed("cannot subscribe to link events", e))?;
            let mut known: BTreeMap<u32, (bool, bool)> = BTreeMap::new();
            info!("watching link changes");
            loop {
                let event = tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    event = monitor.next() => event,
                };
                match event {
                    None => {
                        return Err(ServiceError::Failed {
                            message: "netlink event socket closed".into(),
                            source: None,
                        });
                    }
                    Some(LinkEvent::Changed(link)) => {
                        let now = (link.up, link.carrier);
                        if known.insert(link.index, now) != Some(now) {
                            info!(link = %link.name, up = link.up, carrier = link.carrier, "link changed");
                        }
                    }
                    Some(LinkEvent::Removed(link)) => {
                        known.remove(&link.index);
                        info!(link = %link.name, "link removed");
                    }
                }
            }
        }
        .boxed()
    }
}
