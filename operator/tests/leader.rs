//! Leader election against the in-memory API server: one leader at a time, takeover after
//! the holder stops renewing, and no split brain when candidates race.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use hearth_operator::leader::{LeaseConfig, Role, try_acquire};
use hearth_test_apiserver::FakeApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

fn candidate(identity: &str, seconds: u64) -> LeaseConfig {
    LeaseConfig {
        name: "hearth-operator".into(),
        namespace: "hearth-system".into(),
        identity: identity.into(),
        duration: Duration::from_secs(seconds),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_takeover_after_expiry() {
    let server = FakeApiServer::start().await;
    let leases: Api<Lease> = Api::namespaced(server.client(), "hearth-system");
    let a = candidate("a", 1);
    let b = candidate("b", 1);
    assert_eq!(try_acquire(&leases, &a).await.unwrap(), Role::Leader);
    assert_eq!(try_acquire(&leases, &b).await.unwrap(), Role::Follower);
    assert_eq!(try_acquire(&leases, &a).await.unwrap(), Role::Leader, "the holder renews");
    assert_eq!(try_acquire(&leases, &b).await.unwrap(), Role::Follower);
    // `a` stops renewing; after the lease duration `b` takes over.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(try_acquire(&leases, &b).await.unwrap(), Role::Leader);
    assert_eq!(try_acquire(&leases, &a).await.unwrap(), Role::Follower, "the old holder must not come back");
    let lease = leases.get("hearth-operator").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_candidates_elect_exactly_one() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    for round in 0..5 {
        let name = format!("race-{round}");
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let leases: Api<Lease> = Api::namespaced(client.clone(), "hearth-system");
                let mut config = candidate(&format!("c{i}"), 30);
                config.name = name.clone();
                tokio::spawn(async move { try_acquire(&leases, &config).await.unwrap() })
            })
            .collect();
        let mut leaders = 0;
        for t in tasks {
            if t.await.unwrap() == Role::Leader {
                leaders += 1;
            }
        }
        assert_eq!(leaders, 1, "round {round}: exactly one candidate may win");
    }
}
