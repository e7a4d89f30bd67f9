//! Who owns the replica count: the Deployment itself, a HorizontalPodAutoscaler, or (for
//! scale to zero) a KEDA ScaledObject; and the PodDisruptionBudget that follows from it.

use hearth_crds::scaling::{Autoscaling, ScalingMetric};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::metadata::Owner;
use super::{BuildContext, BuildNote, NoteReason};

/// The per-pod metric a HorizontalPodAutoscaler or KEDA reads for a request-based signal.
pub(crate) fn pods_metric_name(metric: ScalingMetric) -> Option<&'static str> {
    match metric {
        ScalingMetric::InflightRequests => Some("hearth_server_inflight_requests"),
        ScalingMetric::QueueDepth => Some("hearth_server_queue_depth"),
        ScalingMetric::Cpu => None,
    }
}

/// KEDA's ScaledObject type (`keda.sh/v1alpha1`), for a dynamic API.
pub fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"), "scaledobjects")
}

/// What scales a workload.
pub(crate) struct Scaling {
    /// `spec.replicas` of the Deployment; `None` when an autoscaler owns the count.
    pub replicas: Option<i32>,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub scaled_object: Option<DynamicObject>,
    /// The fewest replicas expected to run, which decides whether a PDB makes sense.
    pub min_replicas: i32,
    pub note: Option<BuildNote>,
}

/// Decides how a workload scales. `zero_unsupported` is `None` for workloads that may scale
/// to zero through KEDA, else the sentence explaining why this one may not.
pub(crate) fn desired_scaling(
    owner: &Owner,
    workload: &str,
    component: &str,
    replicas: i32,
    autoscaling: Option<&Autoscaling>,
    zero_unsupported: Option<&str>,
    ctx: &BuildContext,
) -> Scaling {
    let Some(autoscaling) = autoscaling else {
        return Scaling {
            replicas: Some(replicas),
            hpa: None,
            scaled_object: None,
            min_replicas: replicas,
            note: None,
        };
    };
    let mut note = None;
    if autoscaling.scale_to_zero {
        let metric = pods_metric_name(autoscaling.metric);
        match (zero_unsupported, ctx.keda_available, metric) {
            (None, true, Some(metric)) => {
                let scaled_object = desired_scaled_object(owner, workload, component, autoscaling, metric, ctx);
                return Scaling {
                    replicas: None,
                    hpa: None,
                    scaled_object: Some(scaled_object),
                    min_replicas: autoscaling.min_replicas,
                    note: None,
                };
            }
            (None, false, _) => {
                note = Some(BuildNote::new(
                    NoteReason::ScaleToZeroUnavailable,
                    "scaleToZero needs KEDA, which is not installed in the cluster (no keda.sh ScaledObject CRD); a HorizontalPodAutoscaler keeps at least 1 replica. Install KEDA to scale to zero.",
                ));
            }
            (None, true, None) => {
                note = Some(BuildNote::new(
                    NoteReason::ScaleToZeroUnavailable,
                    "scaleToZero needs a request metric (inflightRequests or queueDepth): CPU use cannot wake a model from zero replicas; a HorizontalPodAutoscaler keeps at least 1 replica.",
                ));
            }
            (Some(reason), _, _) => {
                note = Some(BuildNote::new(
                    NoteReason::ScaleToZeroUnavailable,
                    format!("{reason}; a HorizontalPodAutoscaler keeps at least 1 replica."),
                ));
            }
        }
    }
    let min_replicas = autoscaling.min_replicas.max(1);
    let hpa = desired_hpa(owner, workload, component, autoscaling, min_replicas);
    Scaling { replicas: None, hpa: Some(hpa), scaled_object: None, min_replicas, note }
}

fn desired_hpa(
    owner: &Owner,
    workload: &str,
    component: &str,
    autoscaling: &Autoscaling,
    min_replicas: i32,
) -> HorizontalPodAutoscaler {
    let metric = match pods_metric_name(autoscaling.metric) {
        None => MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(autoscaling.target),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        },
        Some(name) => MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier { name: name.into(), selector: None },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(autoscaling.target.to_string())),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        },
    };
    HorizontalPodAutoscaler {
        metadata: owner.meta(workload.to_owned(), component),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: workload.to_owned(),
            },
            min_replicas: Some(min_replicas),
            max_replicas: autoscaling.max_replicas.max(min_replicas),
            metrics: Some(vec![metric]),
            behavior: None,
        }),
        status: None,
    }
}

/// A ScaledObject with a Prometheus trigger on the pods' own metric. KEDA divides the query
/// (a sum over the Deployment's pods) by `threshold` to get the replicas, as an HPA does with
/// an AverageValue target.
fn desired_scaled_object(
    owner: &Owner,
    workload: &str,
    component: &str,
    autoscaling: &Autoscaling,
    metric: &str,
    ctx: &BuildContext,
) -> DynamicObject {
    let mut object = DynamicObject::new(workload, &scaled_object_resource());
    object.metadata = owner.meta(workload.to_owned(), component);
    // Pods of a Deployment are named <deployment>-<replicaset hash>-<suffix>; matching both
    // parts keeps another workload whose name starts with this one out of the sum.
    let query = format!("sum({metric}{{namespace=\"{}\",pod=~\"{workload}-[a-z0-9]+-[a-z0-9]+\"}})", owner.namespace);
    object.data = json!({
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload},
            "minReplicaCount": autoscaling.min_replicas.max(0),
            "maxReplicaCount": autoscaling.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "triggers": [{
                "type": "prometheus",
                "metadata": {
                    "serverAddress": ctx.prometheus_address,
                    "query": query,
                    "threshold": autoscaling.target.to_string(),
                    "activationThreshold": "0",
                },
            }],
        },
    });
    object
}

/// A PodDisruptionBudget keeping one pod up during voluntary disruptions, when more than
/// one replica is expected (with one, it would block node drains for good).
pub(crate) fn desired_pdb(
    owner: &Owner,
    workload: &str,
    component: &str,
    min_replicas: i32,
) -> Option<PodDisruptionBudget> {
    (min_replicas > 1).then(|| PodDisruptionBudget {
        metadata: owner.meta(workload.to_owned(), component),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(owner.pod_selector(component)),
            // A pod that never became ready (e.g. still loading weights) must not block a drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            max_unavailable: None,
        }),
        status: None,
    })
}
