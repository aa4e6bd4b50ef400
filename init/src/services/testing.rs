//! Test services that misbehave on purpose, to prove supervision and reaping.

use std::process::Command;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::info;

use crate::reaper::zombie_children;
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
                // A child that ended a moment ago is a zombie until the reaper's next
                // pass (slow under TCG, and at most a second apart): one still there two seconds
                // later is leaked.
                let seen = zombie_children(me);
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                let zombies = zombie_children(me).intersection(&seen).count();
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

/// Starts a child that blocks SIGTERM and then waits forever, so shutdown has to fall
/// back to SIGKILL for it.
pub struct Stubborn;

impl Service for Stubborn {
    fn name(&self) -> &str {
        "stubborn"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        async move {
            let exe = std::env::current_exe()
                .map_err(|e| ServiceError::failed("cannot find my own executable", e))?;
            let mut child = ctx
                .reaper
                .spawn(
                    Command::new(&exe)
                        .args(["internal", "ignore-term"])
                        .stdout(std::process::Stdio::piped()),
                )
                .map_err(|e| ServiceError::failed("cannot start the stubborn child", e))?;
            // Only once it says so has it blocked SIGTERM (its start is slow under TCG).
            if let Some(stdout) = child.stdout.take() {
                let mut line = String::new();
                let _ = tokio::task::spawn_blocking(move || {
                    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                })
                .await;
            }
            info!(
                pid = child.pid(),
                "stubborn child started; it ignores SIGTERM"
            );
            // On shutdown, leave the child behind: the host must deal with it.
            tokio::select! {
                () = ctx.shutdown.cancelled() => Ok(()),
                exit = child.wait() => Err(ServiceError::Failed {
                    message: format!("stubborn child ended on its own ({exit})"),
                    source: None,
                }),
            }
        }
        .boxed()
    }
}

/// The UDP port beacons use.
pub const BEACON_PORT: u16 = 7946;

/// Proves that nodes share an L2 segment: every 500 ms it sends its hostname to the
/// IPv6 all-nodes group (`ff02::1`) on every link that is up, and logs each other
/// node it hears from, once.
pub struct Beacon;

impl Service for Beacon {
    fn name(&self) -> &str {
        "beacon"
    }

    fn run(&self, ctx: ServiceContext) -> BoxFuture<'static, Result<(), ServiceError>> {
        async move {
            let me = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            let socket =
                tokio::net::UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, BEACON_PORT))
                    .await
                    .map_err(|e| ServiceError::failed("cannot bind the beacon port", e))?;
            let netlink = cairn_net::Netlink::connect()
                .map_err(|e| ServiceError::failed("cannot open netlink", e))?;
            let mut heard = std::collections::BTreeSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut buffer = [0u8; 256];
            let message = format!("cairn-beacon {me}");
            loop {
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tick.tick() => {
                        let links = netlink.links().await.unwrap_or_default();
                        for link in links.iter().filter(|l| l.up && l.name != "lo") {
                            let target = std::net::SocketAddrV6::new(
                                std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                                BEACON_PORT,
                                0,
                                link.index,
                            );
                            // Fails until the link-local address has passed DAD; retried.
                            let _ = socket.send_to(message.as_bytes(), target).await;
                        }
                    }
                    received = socket.recv_from(&mut buffer) => {
                        let Ok((len, from)) = received else { continue };
                        let text = String::from_utf8_lossy(&buffer[..len]);
                        if let Some(peer) = text.strip_prefix("cairn-beacon ")
                            && peer != me
                            && heard.insert(peer.to_owned())
                        {
                            info!(from = peer, address = %from.ip(), "beacon received");
                        }
                    }
                }
            }
        }
        .boxed()
    }
}
