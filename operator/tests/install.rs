//! The plain install manifests parse into Kubernetes types and run under the restricted
//! Pod Security profile.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use hearth_operator::builders::restricted_profile_violations;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde::Deserialize;
use serde_json::Value;

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

#[test]
fn the_operator_deployment_is_restricted_and_runs_two_replicas() {
    let docs = documents(include_str!("../../manifests/install/operator.yaml"));
    let deployment: Deployment = docs
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .map(|d| serde_json::from_value(d).unwrap())
        .expect("a Deployment");
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2), "two replicas with leader election");
    let pod = spec.template.spec.unwrap();
    assert_eq!(restricted_profile_violations(&pod), Vec::<String>::new());
}

#[test]
fn rbac_grants_only_what_the_controllers_use() {
    let docs = documents(include_str!("../../manifests/install/rbac.yaml"));
    let role: ClusterRole =
        docs.into_iter().find(|d| d["kind"] == "ClusterRole").map(|d| serde_json::from_value(d).unwrap()).unwrap();
    let rules = role.rules.unwrap();
    for rule in &rules {
        assert!(!rule.verbs.iter().any(|v| v == "*"), "no wildcard verbs: {rule:?}");
        assert!(!rule.resources.clone().unwrap_or_default().iter().any(|r| r == "*" || r == "secrets"), "{rule:?}");
    }
    let hearth: Vec<_> = rules.iter().filter(|r| r.api_groups.clone().unwrap_or_default() == ["hearth.dev"]).collect();
    for rule in &hearth {
        let resources = rule.resources.clone().unwrap_or_default();
        let writes = rule.verbs.iter().any(|v| v == "update" || v == "patch" || v == "create");
        let status_only = resources.iter().all(|r| r.ends_with("/status"));
        // The one exception: the KnowledgeBase finalizer, patched into metadata.finalizers.
        let finalizer = resources == ["knowledgebases"] && rule.verbs == ["patch"];
        assert!(!writes || status_only || finalizer, "the operator never writes a spec: {rule:?}");
    }
    assert!(hearth.iter().any(|r| r.resources.as_ref().is_some_and(|r| r.contains(&"agents".to_owned()))));
}
