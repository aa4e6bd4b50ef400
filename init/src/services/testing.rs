//! Test services that misbehave on purpose, to prove supervision and reaping.

use std::process::Command;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::info;

use crate::reaper::count_zombie_children;
use crate::supervisor::{Service, ServiceContext, ServiceError};

/// Panics 50 ms after every start, forever: the supervisor must restart it with growing
/// delays, and PID 1 must not notice.
pub struct Crashloop;

impl Service for Crashloop {
    fn name(&self) -> &str {
        "crashloop"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        async move {
            tokio::select! {
                () = ctx.shutdown.cancelled() => Ok(()),
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    panic!("crashloop test service: deliberate panic")
                }
            }
        }
        .boxed()
    }
}

/// How many orphans each round makes.
pub const ORPHANS_PER_ROUND: u32 = 5;

/// Makes orphans and counts zombies: each round starts a helper that starts
/// [`ORPHANS_PER_ROUND`] short-lived children and exits at once, so the children are
/// re-parented to this node's process; after they end, no zombie may remain.
pub struct Orphans;

impl Service for Orphans {
    fn name(&self) -> &str {
        "orphans"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        async move {
            let exe = std::env::current_exe()
                .map_err(|e| ServiceError::failed("cannot find my own executable", e))?;
            let me = std::process::id();
            for round in 1u32.. {
                let helper = ctx
                    .reaper
                    .spawn(Command::new(&exe).args([
                        "internal",
                        "spawn-orphans",
                        "--count",
                        &ORPHANS_PER_ROUND.to_string(),
                        "--linger-ms",
                        "100",
                    ]))
                    .map_err(|e| ServiceError::failed("cannot start the orphan helper", e))?;
                let helper_exit = helper.wait().await;
                // The orphans linger 100 ms; give them time to end and be reaped.
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(600)) => {}
                }
                let zombies = count_zombie_children(me);
                info!(
                    round,
                    spawned = ORPHANS_PER_ROUND,
                    zombies,
                    orphans_reaped = ctx.reaper.orphans_reaped(),
                    helper = %helper_exit,
                    "orphan round"
                );
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(400)) => {}
                }
            }
            Ok(())
        }
        .boxed()
    }
}
