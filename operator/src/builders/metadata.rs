//! Names, labels and owner references shared by every owned object, and the in-cluster
//! endpoints derived from them.

use std::collections::BTreeMap;

use hearth_crds::{Agent, Cascade, KnowledgeBase, Model};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;

use super::{BuildContext, BuildError};

/// Label naming the Model an object belongs to.
pub const MODEL_LABEL: &str = "hearth.dev/model";
/// Label naming the Cascade an object belongs to.
pub const CASCADE_LABEL: &str = "hearth.dev/cascade";
/// Label naming the KnowledgeBase an object belongs to.
pub const KNOWLEDGE_BASE_LABEL: &str = "hearth.dev/knowledge-base";
/// Label naming the Agent an object belongs to.
pub const AGENT_LABEL: &str = "hearth.dev/agent";
/// The port every Hearth server listens on (API, health and metrics).
pub const HTTP_PORT: i32 = 8080;

/// Longest resource name Hearth accepts: `client-of-<name>` must fit a 63-character label
/// name, and `<name>-server` / `<name>-router` a 63-character DNS label.
const MAX_NAME_LEN: usize = 53;

/// The label a pod carries to be admitted by `target`'s NetworkPolicy (a Model or Cascade
/// in the same namespace): `hearth.dev/client-of-<target>: "true"`.
pub fn client_label(target: &str) -> String {
    format!("hearth.dev/client-of-{target}")
}

/// The OpenAI-compatible base URL of a Service's port 8080 in the cluster.
pub fn service_endpoint(service: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("http://{service}.{namespace}.svc.{cluster_domain}:{HTTP_PORT}/v1")
}

/// A Model's in-cluster endpoint: `http://<model>.<ns>.svc.<domain>:8080/v1`. A Model read
/// without a namespace is taken to live in `default`, as the API server would place it.
pub fn model_endpoint(model: &Model, ctx: &BuildContext) -> String {
    let name = model.meta().name.as_deref().unwrap_or_default();
    let namespace = model.meta().namespace.as_deref().unwrap_or("default");
    service_endpoint(name, namespace, &ctx.cluster_domain)
}

/// A Cascade router's in-cluster endpoint: `http://<cascade>-router.<ns>.svc.<domain>:8080/v1`.
pub fn cascade_endpoint(cascade: &Cascade, ctx: &BuildContext) -> String {
    let name = cascade.meta().name.as_deref().unwrap_or_default();
    let namespace = cascade.meta().namespace.as_deref().unwrap_or("default");
    service_endpoint(&format!("{name}-router"), namespace, &ctx.cluster_domain)
}

/// An Agent's in-cluster endpoint: `http://<agent>-agent.<ns>.svc.<domain>:8080/v1`.
pub fn agent_endpoint(agent: &Agent, ctx: &BuildContext) -> String {
    let name = agent.meta().name.as_deref().unwrap_or_default();
    let namespace = agent.meta().namespace.as_deref().unwrap_or("default");
    service_endpoint(&format!("{name}-agent"), namespace, &ctx.cluster_domain)
}

/// `base` followed by `suffix`, at most `max` characters: a longer `base` is cut and a short
/// hash of it added, so two long names that share a prefix still differ.
pub(crate) fn bounded_name(base: &str, suffix: &str, max: usize) -> String {
    if base.len() + suffix.len() <= max {
        return format!("{base}{suffix}");
    }
    let hash = &super::sha256_hex(base)[..5];
    let keep = max.saturating_sub(suffix.len() + hash.len() + 1);
    let cut = base[..keep.min(base.len())].trim_end_matches('-');
    format!("{cut}-{hash}{suffix}")
}

/// The resource that owns the objects being built: its identity, labels and owner reference.
#[derive(Clone, Debug)]
pub(crate) struct Owner {
    pub name: String,
    pub namespace: String,
    /// `hearth.dev/model`, `hearth.dev/cascade`, `hearth.dev/knowledge-base` or `hearth.dev/agent`.
    resource_label: &'static str,
    /// `app.kubernetes.io/name`.
    app_name: &'static str,
    owner_reference: OwnerReference,
}

impl Owner {
    /// The owner of a Model's objects.
    pub fn model(model: &Model) -> Result<Self, BuildError> {
        Self::of(model, "Model", MODEL_LABEL, "hearth-model")
    }

    /// The owner of a Cascade's objects.
    pub fn cascade(cascade: &Cascade) -> Result<Self, BuildError> {
        Self::of(cascade, "Cascade", CASCADE_LABEL, "hearth-cascade")
    }

    /// The owner of a KnowledgeBase's objects.
    pub fn knowledge_base(knowledge_base: &KnowledgeBase) -> Result<Self, BuildError> {
        Self::of(knowledge_base, "KnowledgeBase", KNOWLEDGE_BASE_LABEL, "hearth-knowledge-base")
    }

    /// The owner of an Agent's objects.
    pub fn agent(agent: &Agent) -> Result<Self, BuildError> {
        Self::of(agent, "Agent", AGENT_LABEL, "hearth-agent")
    }

    fn of<K>(
        resource: &K,
        kind: &'static str,
        resource_label: &'static str,
        app_name: &'static str,
    ) -> Result<Self, BuildError>
    where
        K: Resource<DynamicType = ()>,
    {
        let missing = |field| BuildError::MissingMetadata { kind, field };
        let meta = resource.meta();
        let name = meta.name.clone().ok_or_else(|| missing("name"))?;
        let namespace = meta.namespace.clone().ok_or_else(|| missing("namespace"))?;
        check_name(kind, &name)?;
        let mut owner_reference = resource.controller_owner_ref(&()).ok_or_else(|| missing("uid"))?;
        owner_reference.block_owner_deletion = Some(true);
        Ok(Self { name, namespace, resource_label, app_name, owner_reference })
    }

    /// The labels every owned object carries.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), self.app_name.to_owned()),
            ("app.kubernetes.io/instance".to_owned(), self.name.clone()),
            ("app.kubernetes.io/component".to_owned(), component.to_owned()),
            ("app.kubernetes.io/part-of".to_owned(), "hearth".to_owned()),
            ("app.kubernetes.io/managed-by".to_owned(), "hearth-operator".to_owned()),
            (self.resource_label.to_owned(), self.name.clone()),
        ])
    }

    /// The labels that select the owner's pods: stable for the object's lifetime, because a
    /// Deployment's selector cannot change.
    pub fn selector_labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (self.resource_label.to_owned(), self.name.clone()),
            ("app.kubernetes.io/component".to_owned(), component.to_owned()),
        ])
    }

    /// A label selector matching the owner's pods.
    pub fn pod_selector(&self, component: &str) -> LabelSelector {
        LabelSelector { match_labels: Some(self.selector_labels(component)), ..LabelSelector::default() }
    }

    /// Metadata of an owned object: name, namespace, labels and the owner reference.
    pub fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner_reference.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// Names become Service names (DNS-1035 labels) and parts of label keys.
fn check_name(kind: &'static str, name: &str) -> Result<(), BuildError> {
    let invalid = |reason: String| BuildError::InvalidName { kind, name: name.to_owned(), reason };
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "expected at most {MAX_NAME_LEN} characters (so that \"{name}-server\" and the label hearth.dev/client-of-{name} stay within Kubernetes' 63-character limits), found {}",
            name.len()
        )));
    }
    let starts_with_letter = name.starts_with(|c: char| c.is_ascii_lowercase());
    let allowed = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !starts_with_letter || !allowed || name.ends_with('-') {
        return Err(invalid(
            "expected a DNS-1035 label (lowercase letters, digits and '-', starting with a letter), because it names a Service"
                .to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels_and_refuses_what_cannot_name_a_service() {
        assert!(check_name("Model", "gemma3-270m").is_ok());
        for bad in ["3b-model", "a.b", "Upper", "trailing-", &"x".repeat(54)] {
            assert!(check_name("Model", bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn bounded_names_keep_short_names_and_cut_long_ones_with_a_hash() {
        assert_eq!(bounded_name("handbook", "-reindex", 52), "handbook-reindex");
        let long = "a".repeat(53);
        let cut = bounded_name(&long, "-reindex", 52);
        assert_eq!(cut.len(), 52);
        assert!(cut.ends_with("-reindex"));
        assert_ne!(cut, bounded_name(&format!("{}b", "a".repeat(52)), "-reindex", 52));
    }

    #[test]
    fn endpoints_use_the_cluster_domain() {
        assert_eq!(service_endpoint("gemma", "ai", "cluster.local"), "http://gemma.ai.svc.cluster.local:8080/v1");
    }
}
