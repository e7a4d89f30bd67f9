//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one reconciles at a time.
//!
//! The holder renews the Lease every `renew_every`; a candidate takes it over when the
//! holder's `renewTime` is older than the lease duration. Every write is a replace with the
//! Lease's resourceVersion, so two candidates racing for an expired Lease cannot both win:
//! the loser gets 409 Conflict and stays a follower.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// Settings of one candidate.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name, e.g. `hearth-operator`.
    pub name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This candidate's identity (the pod name).
    pub identity: String,
    /// How long a holder's claim lasts without renewal.
    pub duration: Duration,
}

/// The outcome of one election round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// This candidate holds the Lease.
    Leader,
    /// Someone else holds a live Lease.
    Follower,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Whether a Lease held by someone else has expired at `at`.
pub fn expired(spec: &LeaseSpec, at: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else { return true };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    at.as_second() - renewed.0.as_second() > duration
}

/// Tries once to acquire or renew the Lease.
pub async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<Role, kube::Error> {
    let duration = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let mine = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(duration),
        acquire_time: acquired.or_else(|| Some(now())),
        renew_time: Some(now()),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match api.get_opt(&config.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(config.name.clone()), ..ObjectMeta::default() },
                spec: Some(mine(0, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Role::Leader),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Role::Follower),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let held_by_me = spec.holder_identity.as_deref() == Some(config.identity.as_str());
            if !held_by_me && !expired(&spec, Timestamp::now()) {
                return Ok(Role::Follower);
            }
            let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!held_by_me);
            let acquired = if held_by_me { spec.acquire_time.clone() } else { None };
            lease.spec = Some(mine(transitions, acquired));
            // Replace carries the resourceVersion we read: a racing writer makes this 409.
            match api.replace(&config.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(Role::Leader),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Role::Follower),
                Err(e) => Err(e),
            }
        }
    }
}

/// Blocks until this candidate becomes leader, retrying every `retry`.
pub async fn acquire(api: &Api<Lease>, config: &LeaseConfig, retry: Duration) {
    loop {
        match try_acquire(api, config).await {
            Ok(Role::Leader) => return,
            Ok(Role::Follower) => {}
            Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
        }
        tokio::time::sleep(retry).await;
    }
}

/// Renews the Lease until renewal fails for longer than the lease duration; returns then
/// (the caller must stop reconciling: another replica may take over).
pub async fn hold(api: &Api<Lease>, config: &LeaseConfig, renew_every: Duration) {
    let mut last_success = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(renew_every).await;
        match try_acquire(api, config).await {
            Ok(Role::Leader) => last_success = tokio::time::Instant::now(),
            Ok(Role::Follower) => {
                tracing::warn!("lost the leader lease to another replica");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the leader lease failed");
                if last_success.elapsed() > config.duration {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_after_its_duration_without_renewal() {
        let renewed = Timestamp::from_second(1_000).unwrap();
        let spec = LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        };
        assert!(!expired(&spec, Timestamp::from_second(1_010).unwrap()));
        assert!(expired(&spec, Timestamp::from_second(1_016).unwrap()));
        assert!(expired(&LeaseSpec::default(), Timestamp::from_second(0).unwrap()));
    }
}
