//! Who may reach a Hearth server (its declared clients, and Prometheus for the metrics), and
//! what an Agent may reach (its models, knowledge bases, delegates, DNS and the hosts its
//! guardrails allow).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
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
    NetworkPolicy {
        metadata: owner.meta(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(owner.pod_selector(component)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress_rules(owner, component, ctx)),
            egress: None,
        }),
    }
}

fn ingress_rules(owner: &Owner, component: &str, ctx: &BuildContext) -> Vec<NetworkPolicyIngressRule> {
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
    rules
}

/// Somewhere an Agent's pods may open connections to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum EgressTarget {
    /// Pods in the agent's namespace with these labels (a Model server, a Cascade router,
    /// another Agent, a managed Qdrant), on one port.
    Pods {
        /// Labels the pods carry.
        labels: BTreeMap<String, String>,
        /// The TCP port.
        port: i32,
    },
    /// A host named by a DNS name: a `guardrails.egress` entry, or an external Qdrant's URL.
    Host {
        /// The DNS name.
        host: String,
        /// TCP ports; empty means every port.
        ports: Vec<i32>,
    },
}

/// Where a DNS name leads, as far as a NetworkPolicy can say.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Destination {
    /// A Service in this namespace (a name without dots).
    OwnNamespace,
    /// A Service in another namespace (`<service>.<namespace>.svc[.<cluster domain>]`).
    Namespace(String),
    /// Anything else: a name outside the cluster.
    Outside,
}

fn destination(host: &str, cluster_domain: &str) -> Destination {
    if !host.contains('.') {
        return Destination::OwnNamespace;
    }
    let in_cluster = host
        .strip_suffix(&format!(".svc.{cluster_domain}"))
        .or_else(|| host.strip_suffix(".svc"))
        .and_then(|service| service.rsplit_once('.'));
    match in_cluster {
        Some((_, namespace)) if !namespace.is_empty() => Destination::Namespace(namespace.to_owned()),
        _ => Destination::Outside,
    }
}

/// A NetworkPolicy for an Agent: ingress as for every Hearth server (its clients and
/// monitoring), egress only to `targets` and DNS.
///
/// A NetworkPolicy selects pods, namespaces and IP blocks, never DNS names, so a host is
/// translated as narrowly as the policy can honestly express it:
/// - a Hearth workload the agent uses (its Model or Cascade, its knowledge bases' embedding
///   Models and managed Qdrant, the Agents it delegates to) is selected by its pods' labels
///   and port;
/// - a Service in the cluster, named `<service>.<namespace>.svc[.<domain>]` (or a bare name
///   for this namespace), allows its ports to every pod of that namespace: the Service's own
///   pods cannot be known from its name, and a Service's traffic reaches pods, not the
///   Service address, by the time the policy applies;
/// - any other host (outside the cluster) allows its ports to every address, because the
///   addresses behind a name change and are not known here. Such an entry therefore opens
///   the port, not just the host: pair it with an egress gateway or a DNS-aware policy
///   (Cilium, Calico) where that matters. The agent runtime's own allowlists still apply.
///
/// A host without a port gets the ports its tools' URLs name (http, mcp); when no tool names
/// it, every port of an in-cluster namespace, or 80 and 443 outside the cluster. DNS (port 53)
/// is open to every address so that node-local caches work too.
pub(crate) fn desired_agent_network_policy(
    owner: &Owner,
    name: String,
    component: &str,
    targets: &[EgressTarget],
    ctx: &BuildContext,
) -> NetworkPolicy {
    let tcp = |port: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    };
    let selector =
        |labels: BTreeMap<String, String>| LabelSelector { match_labels: Some(labels), ..LabelSelector::default() };
    let dns = NetworkPolicyEgressRule {
        to: None,
        ports: Some(vec![
            NetworkPolicyPort { port: Some(IntOrString::Int(53)), protocol: Some("UDP".into()), end_port: None },
            tcp(53),
        ]),
    };
    // One rule per port for in-namespace pods, listing every peer on that port.
    let mut pods_by_port: BTreeMap<i32, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    let mut hosts: Vec<NetworkPolicyEgressRule> = Vec::new();
    for target in targets {
        match target {
            EgressTarget::Pods { labels, port } => {
                let peers = pods_by_port.entry(*port).or_default();
                if !peers.contains(labels) {
                    peers.push(labels.clone());
                }
            }
            EgressTarget::Host { host, ports } => {
                let place = destination(host, &ctx.cluster_domain);
                let ports = match (ports.is_empty(), &place) {
                    (false, _) => Some(ports.iter().map(|p| tcp(*p)).collect()),
                    (true, Destination::Outside) => Some(vec![tcp(80), tcp(443)]),
                    (true, _) => None,
                };
                let to = match place {
                    Destination::OwnNamespace => Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector::default()),
                        ..NetworkPolicyPeer::default()
                    }]),
                    Destination::Namespace(namespace) => Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(selector(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_owned(),
                            namespace,
                        )]))),
                        ..NetworkPolicyPeer::default()
                    }]),
                    Destination::Outside => None,
                };
                let rule = NetworkPolicyEgressRule { to, ports };
                if !hosts.contains(&rule) {
                    hosts.push(rule);
                }
            }
        }
    }
    let mut egress = vec![dns];
    egress.extend(pods_by_port.into_iter().map(|(port, peers)| {
        NetworkPolicyEgressRule {
            to: Some(
                peers
                    .into_iter()
                    .map(|labels| NetworkPolicyPeer {
                        pod_selector: Some(selector(labels)),
                        ..NetworkPolicyPeer::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![tcp(port)]),
        }
    }));
    egress.extend(hosts);
    NetworkPolicy {
        metadata: owner.meta(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(owner.pod_selector(component)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress_rules(owner, component, ctx)),
            egress: Some(egress),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_placed_in_the_namespace_they_name_or_outside() {
        let place = |host| destination(host, "cluster.local");
        assert_eq!(place("orders"), Destination::OwnNamespace);
        assert_eq!(place("orders.shop.svc"), Destination::Namespace("shop".into()));
        assert_eq!(place("orders.shop.svc.cluster.local"), Destination::Namespace("shop".into()));
        assert_eq!(place("api.example.com"), Destination::Outside);
        assert_eq!(place("orders.shop"), Destination::Outside, "could as well be a public domain");
        assert_eq!(place("svc"), Destination::OwnNamespace);
    }
}
