//! In-process tier: candidates electing a leader through a real API server (and its
//! store) in this process. One of two leads and the other never runs its work at the
//! same time; the second takes over when the first stops (and releases the lease); a
//! leader whose lease someone else takes stops its work.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_apiserver::testing::TestServer;
use cairn_leader::{ElectionOptions, lead};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

async fn client(server: &TestServer) -> kube::Client {
    let text = server.kubeconfig("admin", Some("system:masters")).unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn options(identity: &str) -> ElectionOptions {
    ElectionOptions {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..ElectionOptions::new("kube-system", "test-lease", identity)
    }
}

/// Who is running its work right now, and the most that ever ran at once.
#[derive(Default)]
struct Tally {
    running: AtomicUsize,
    most: AtomicUsize,
    by: std::sync::Mutex<Vec<String>>,
}

/// A candidate whose work records itself in `tally` until its term ends.
fn candidate(
    client: kube::Client,
    identity: &str,
    tally: &Arc<Tally>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let tally = Arc::clone(tally);
    let name = identity.to_owned();
    tokio::spawn(lead(client, options(identity), stop.clone(), move |term| {
        let tally = Arc::clone(&tally);
        let name = name.clone();
        async move {
            let now = tally.running.fetch_add(1, Ordering::SeqCst) + 1;
            tally.most.fetch_max(now, Ordering::SeqCst);
            tally.by.lock().unwrap().push(name);
            term.cancelled().await;
            tally.running.fetch_sub(1, Ordering::SeqCst);
        }
    }))
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get("test-lease")
        .await
        .ok()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_candidate_leads_at_a_time_and_another_takes_over_when_it_stops() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestServer::start().await.unwrap();
    let client = client(&server).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let tally = Arc::new(Tally::default());
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = candidate(client.clone(), "node-a", &tally, &stop_a);
    let b = candidate(client.clone(), "node-b", &tally, &stop_b);

    until("a leader", || tally.running.load(Ordering::SeqCst) == 1).await;
    // Both keep campaigning for a while; the other must never start.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        tally.by.lock().unwrap().len(),
        1,
        "leadership changed hands"
    );
    let first = tally.by.lock().unwrap()[0].clone();
    assert_eq!(holder(&leases).await.as_deref(), Some(first.as_str()));

    let (stop_first, first_task, second) = if first == "node-a" {
        (&stop_a, a, "node-b")
    } else {
        (&stop_b, b, "node-a")
    };
    stop_first.cancel();
    first_task.await.unwrap();
    until("the other candidate to take over", || {
        tally.by.lock().unwrap().len() == 2 && tally.running.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(tally.by.lock().unwrap()[1], second);
    assert_eq!(tally.most.load(Ordering::SeqCst), 1, "two leaders at once");
    let lease = leases.get("test-lease").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some(second));
    assert_eq!(lease.lease_transitions, Some(1));
    stop_a.cancel();
    stop_b.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_stops_its_work() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestServer::start().await.unwrap();
    let client = client(&server).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let task = candidate(client.clone(), "node-a", &tally, &stop);
    until("leadership", || tally.running.load(Ordering::SeqCst) == 1).await;

    // An intruder overwrites the lease and keeps renewing it.
    let intruder = CancellationToken::new();
    let renewing = {
        let leases = leases.clone();
        let intruder = intruder.clone();
        tokio::spawn(async move {
            while !intruder.is_cancelled() {
                if let Ok(mut lease) = leases.get("test-lease").await {
                    let spec = lease.spec.get_or_insert_with(Default::default);
                    spec.holder_identity = Some("intruder".into());
                    spec.renew_time = Some(MicroTime(Timestamp::now()));
                    let _ = leases
                        .replace("test-lease", &PostParams::default(), &lease)
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    until("the leader to stop its work", || {
        tally.running.load(Ordering::SeqCst) == 0
    })
    .await;
    // While the intruder renews, the candidate does not take the lease back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tally.running.load(Ordering::SeqCst), 0);
    assert_eq!(holder(&leases).await.as_deref(), Some("intruder"));

    // Once the intruder stops renewing, its lease runs out and the candidate leads again.
    intruder.cancel();
    renewing.await.unwrap();
    until("leadership again", || {
        tally.running.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(holder(&leases).await.as_deref(), Some("node-a"));
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        holder(&leases).await,
        None,
        "a stopped leader releases its lease"
    );
}
