//! Standard status conditions, shaped as `metav1.Condition` and read the way kstatus reads
//! them: a summary `Ready`, `Reconciling` while work is in flight, `Stalled` when progress
//! needs a change from the user.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Summary condition: the resource does what its spec asks.
pub const READY: &str = "Ready";
/// The controller is working towards the desired state (kstatus "in progress").
pub const RECONCILING: &str = "Reconciling";
/// The controller cannot make progress without a change to the spec or the cluster.
pub const STALLED: &str = "Stalled";
/// A Cascade escalates more requests than its maxEscalationRatio allows (it keeps serving).
pub const ESCALATION_BUDGET_EXCEEDED: &str = "EscalationBudgetExceeded";

/// The status of a condition, as in `metav1.ConditionStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The controller cannot tell yet.
    Unknown,
}

/// One observation of a resource's state, as in `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Kind of condition: Ready, Reconciling, Stalled, or one specific to the resource.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether the condition holds: True, False or Unknown.
    pub status: ConditionStatus,
    /// A CamelCase word a program can match on, e.g. `WeightsDownloaded` or `FitsNoNode`.
    pub reason: String,
    /// A sentence for a person: what happened and, when something is wrong, what to do.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (not when the condition was last written).
    pub last_transition_time: Time,
    /// The metadata.generation of the spec this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition stamped with the current time.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        observed_generation: Option<i64>,
    ) -> Self {
        Self {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            observed_generation,
        }
    }
}

/// Records `new` in `conditions`, replacing any condition of the same type. The transition
/// time of the old condition is kept when the status did not change, so `lastTransitionTime`
/// means what it says. Returns whether anything other than timestamps changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            let changed = *old != new;
            *old = new;
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// The condition of the given type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is present and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_transition_time_when_status_is_unchanged() {
        let mut conditions = vec![];
        let first = Condition::new(READY, ConditionStatus::False, "Pending", "waiting", Some(1));
        let first_time = first.last_transition_time.clone();
        assert!(set_condition(&mut conditions, first));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let same = Condition::new(READY, ConditionStatus::False, "Pending", "waiting", Some(1));
        assert!(!set_condition(&mut conditions, same));
        assert_eq!(conditions[0].last_transition_time, first_time);
        let ready = Condition::new(READY, ConditionStatus::True, "Available", "serving", Some(1));
        assert!(set_condition(&mut conditions, ready));
        assert_ne!(conditions[0].last_transition_time, first_time);
        assert_eq!(conditions.len(), 1);
        assert!(is_true(&conditions, READY));
        assert!(!is_true(&conditions, STALLED));
    }
}
