//! Who may reach a Hearth server: its declared clients, and Prometheus for the metrics.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::BuildContext;
use super::metadata::{HTTP_PORT, Owner, client_label};

/// Ingress to the owner's pods only from pods in the same namespace labelled
/// `hearth.dev/client-of-<owner>: "true"`, from the monitoring namespace, and, for Cascade
/// routers, from the operator (it reads their escalation ratio); egress is left open (the
/// fetch step downloads weights).
pub(crate) fn desired_network_policy(
    owner: &Owner,
    name: String,
    component: &str,
    ctx: &BuildContext,
) -> NetworkPolicy {
    let port = || {
        Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(HTTP_PORT)),
            protocol: Some("TCP".into()),
            end_port: None,
        }])
    };
    let selector =
        |labels: BTreeMap<String, String>| LabelSelector { match_labels: Some(labels), ..LabelSelector::default() };
    let mut rules = vec![NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(selector(BTreeMap::from([(client_label(&owner.name), "true".to_owned())]))),
            ..NetworkPolicyPeer::default()
        }]),
        ports: port(),
    }];
    if !ctx.monitoring_namespace_labels.is_empty() {
        rules.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(selector(ctx.monitoring_namespace_labels.clone())),
                ..NetworkPolicyPeer::default()
            }]),
            ports: port(),
        });
    }
    if let Some(namespace) = ctx.operator_namespace.as_ref().filter(|_| component == "router") {
        rules.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(selector(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    namespace.clone(),
                )]))),
                pod_selector: Some(selector(BTreeMap::from([
                    ("app.kubernetes.io/part-of".to_owned(), "hearth".to_owned()),
                    ("app.kubernetes.io/component".to_owned(), "operator".to_owned()),
                ]))),
                ..NetworkPolicyPeer::default()
            }]),
            ports: port(),
        });
    }
    NetworkPolicy {
        metadata: owner.meta(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(owner.pod_selector(component)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            egress: None,
        }),
    }
}
