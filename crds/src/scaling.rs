//! Replica counts and autoscaling, shared by every resource that runs pods.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The signal a HorizontalPodAutoscaler (or KEDA) scales on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ScalingMetric {
    /// Requests being served per pod (`hearth_server_inflight_requests`).
    #[default]
    InflightRequests,
    /// Requests waiting in each pod's queue (`hearth_server_queue_depth`).
    QueueDepth,
    /// CPU utilisation, in percent of the pod's request.
    Cpu,
}

/// How the number of replicas follows load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas").field_path(".minReplicas"),
    validation = Rule::new("self.minReplicas >= 1 || self.scaleToZero").message("minReplicas may be 0 only when scaleToZero is true").field_path(".minReplicas"),
)]
pub struct Autoscaling {
    /// Fewest replicas kept running (0 only with scaleToZero).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas the autoscaler may start.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// What to scale on.
    #[serde(default)]
    pub metric: ScalingMetric,
    /// Target value of the metric per pod: requests for inflightRequests and queueDepth,
    /// percent for cpu.
    #[serde(default = "default_target")]
    #[schemars(range(min = 1, max = 10000))]
    pub target: i32,
    /// Scale to zero replicas when idle. Needs KEDA in the cluster; without it the
    /// resource reports a condition saying so and keeps minReplicas at 1.
    #[serde(default)]
    pub scale_to_zero: bool,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_target() -> i32 {
    4
}
