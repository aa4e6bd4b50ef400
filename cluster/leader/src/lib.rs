//! Leader election over a `coordination.k8s.io/v1` Lease, the way client-go's
//! `leaderelection` package does it, so that exactly one control plane runs a piece of
//! work (the scheduler, the controllers) and another takes over when it dies.
//!
//! A candidate reads the Lease; it takes it when nobody holds it, when it already holds
//! it, or when the holder's record has not changed for the lease's duration *as timed by
//! the candidate's own clock* (so clocks that disagree between nodes do not matter).
//! Every write is an update with the Lease's `resourceVersion`, so two candidates racing
//! for an expired lease cannot both win: the API server answers the loser 409.
//!
//! The leader renews every retry period. If it cannot renew for the renew deadline (the
//! API is unreachable, or someone else took the lease), it stops its work and becomes a
//! candidate again; the renew deadline is shorter than the lease duration, so the work
//! has stopped before anyone else may start it. On shutdown the leader releases the lease
//! (an empty holder) so a successor need not wait for it to expire.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How an election runs: which Lease, who this candidate is, and its timing.
#[derive(Debug, Clone)]
pub struct ElectionOptions {
    /// The Lease's namespace (`kube-system` for the cluster's own components).
    pub namespace: String,
    /// The Lease's name (`kube-scheduler`, `kube-controller-manager`).
    pub name: String,
    /// This candidate's identity in `holderIdentity` (the node's name).
    pub identity: String,
    /// How long a lease holds without renewal before others may take it.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_period: Duration,
}

impl ElectionOptions {
    /// Options for the Lease `namespace/name` held as `identity`, with the timing of an
    /// appliance: a lease of 6 s, a renew deadline of 4 s and a retry period of 1 s (so
    /// a dead leader is replaced within about 7 s; Kubernetes' defaults are 15/10/2 s).
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(6),
            renew_deadline: Duration::from_secs(4),
            retry_period: Duration::from_secs(1),
        }
    }
}

/// Why one attempt to acquire or renew the lease failed (the election retries).
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The API server refused or could not be reached.
    #[error("reading or writing Lease {namespace}/{name}")]
    Api {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// What the client said.
        #[source]
        source: kube::Error,
    },
}

/// The lease record as last seen, and when this candidate first saw it so.
struct Observed {
    record: Option<(Option<String>, Option<Timestamp>, Option<i32>)>,
    at: Instant,
}

/// One candidate in an election.
struct Candidate {
    api: Api<Lease>,
    options: ElectionOptions,
    observed: Observed,
}

/// What an attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This candidate holds the lease now.
    Holding,
    /// Someone else holds it (or won the race for it).
    HeldElsewhere(String),
}

impl Candidate {
    fn new(client: kube::Client, options: ElectionOptions) -> Self {
        Self {
            api: Api::namespaced(client, &options.namespace),
            options,
            observed: Observed {
                record: None,
                at: Instant::now(),
            },
        }
    }

    fn api_error(&self, source: kube::Error) -> ElectionError {
        ElectionError::Api {
            namespace: self.options.namespace.clone(),
            name: self.options.name.clone(),
            source,
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.options.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Acquires the lease if it is free or expired, or renews it if held here.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, ElectionError> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self
            .api
            .get_opt(&self.options.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.options.name.clone()),
                    namespace: Some(self.options.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.options.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Holding),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::HeldElsewhere(
                    "a candidate that created it first".into(),
                )),
                Err(e) => Err(self.api_error(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = Some((
            holder.clone(),
            spec.renew_time.as_ref().map(|t| t.0),
            spec.lease_duration_seconds,
        ));
        if record != self.observed.record {
            self.observed = Observed {
                record,
                at: Instant::now(),
            };
        }
        let held_here = holder.as_deref() == Some(self.options.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.options.lease_duration, Duration::from_secs);
        if let Some(other) = holder.as_ref().filter(|_| !held_here)
            && self.observed.at.elapsed() < duration
        {
            return Ok(Attempt::HeldElsewhere(other.clone()));
        }
        let (acquire_time, transitions) = if held_here {
            (spec.acquire_time.clone(), spec.lease_transitions)
        } else {
            (
                Some(now.clone()),
                Some(spec.lease_transitions.unwrap_or(0).saturating_add(1)),
            )
        };
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.options.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds()),
            acquire_time,
            renew_time: Some(now),
            lease_transitions: transitions,
            ..spec
        });
        match self
            .api
            .replace(&self.options.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Holding),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Attempt::HeldElsewhere(holder.unwrap_or_else(|| {
                    "a candidate that wrote it first".into()
                })))
            }
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Gives the lease up if this candidate holds it, so a successor need not wait.
    async fn release(&self) {
        let deadline = self.options.renew_deadline;
        if tokio::time::timeout(deadline, self.try_release())
            .await
            .is_err()
        {
            debug!(lease = %self.options.name, "could not release the lease in time");
        }
    }

    async fn try_release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.options.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.options.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.options.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.options.name, "leadership released"),
            Err(err) => {
                debug!(lease = %self.options.name, error = %err, "could not release the lease")
            }
        }
    }
}

/// Campaigns for the Lease in `options` until `stop` is cancelled, running `work` while
/// this candidate leads.
///
/// `work` is called each time leadership is gained, with a token that is cancelled when
/// it is lost (or at stop); the future it returns must end soon after. The next term
/// starts only after the last one's work has ended. Work that ends on its own gives the
/// leadership up, and the candidate campaigns again.
pub async fn lead<W, F>(
    client: kube::Client,
    options: ElectionOptions,
    stop: CancellationToken,
    mut work: W,
) where
    W: FnMut(CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut candidate = Candidate::new(client, options);
    let lease = candidate.options.name.clone();
    let identity = candidate.options.identity.clone();
    let mut last_holder: Option<String> = None;
    while !stop.is_cancelled() {
        match candidate.try_acquire_or_renew().await {
            Ok(Attempt::Holding) => {
                info!(%lease, %identity, "leadership acquired");
                let term = stop.child_token();
                let mut running = tokio::spawn(work(term.clone()));
                let finished = keep_leading(&mut candidate, &stop, &mut running).await;
                term.cancel();
                if !finished && let Err(err) = running.await {
                    warn!(%lease, error = %err, "the leader's work panicked");
                }
                candidate.release().await;
                last_holder = None;
                if !stop.is_cancelled() {
                    info!(%lease, %identity, "leadership lost");
                }
            }
            Ok(Attempt::HeldElsewhere(holder)) => {
                if last_holder.as_ref() != Some(&holder) {
                    info!(%lease, %holder, "another candidate leads");
                    last_holder = Some(holder);
                }
            }
            Err(err) => debug!(%lease, error = %err, "election attempt failed"),
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(candidate.options.retry_period) => {}
        }
    }
}

/// Renews the lease every retry period while the work runs; returns when leadership is
/// lost, the work ends (true) or `stop` is cancelled.
async fn keep_leading(
    candidate: &mut Candidate,
    stop: &CancellationToken,
    running: &mut tokio::task::JoinHandle<()>,
) -> bool {
    let lease = candidate.options.name.clone();
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return false,
            result = &mut *running => {
                if let Err(err) = result {
                    warn!(%lease, error = %err, "the leader's work panicked");
                } else {
                    warn!(%lease, "the leader's work ended on its own");
                }
                return true;
            }
            () = tokio::time::sleep(candidate.options.retry_period) => {}
        }
        let deadline = candidate
            .options
            .renew_deadline
            .saturating_sub(renewed.elapsed());
        match tokio::time::timeout(deadline, candidate.try_acquire_or_renew()).await {
            Ok(Ok(Attempt::Holding)) => renewed = Instant::now(),
            Ok(Ok(Attempt::HeldElsewhere(holder))) => {
                warn!(%lease, %holder, "the lease was taken over");
                return false;
            }
            Ok(Err(err)) => debug!(%lease, error = %err, "renewal failed"),
            Err(_) => {}
        }
        if renewed.elapsed() >= candidate.options.renew_deadline {
            warn!(%lease, deadline = ?candidate.options.renew_deadline, "could not renew the lease in time");
            return false;
        }
    }
}
