//! Which kinds the server serves: registration, lookup by URL, and the discovery documents.

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::{CronJob, Job},
    coordination::v1::Lease,
    core::v1::{ConfigMap, Event as CoreEvent, PersistentVolumeClaim, Secret, Service},
    events::v1::Event,
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// One kind the server serves: its group/version/kind/plural, its scope and whether it has a
/// `/status` subresource (which changes how updates treat `.status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// Group, version, kind and plural name.
    pub api: ApiResource,
    /// `true` for namespaced kinds, `false` for cluster-scoped ones.
    pub namespaced: bool,
    /// Whether `.status` is written only through the `/status` subresource.
    pub status_subresource: bool,
}

impl ResourceInfo {
    /// A namespaced kind without a status subresource.
    pub fn namespaced(api: ApiResource) -> Self {
        Self { api, namespaced: true, status_subresource: false }
    }

    /// A cluster-scoped kind without a status subresource.
    pub fn cluster(api: ApiResource) -> Self {
        Self { api, namespaced: false, status_subresource: false }
    }

    /// The same kind with a `/status` subresource.
    pub fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// Every served version of a CustomResourceDefinition, with its scope and subresources.
    pub fn from_crd(crd: &CustomResourceDefinition) -> Vec<Self> {
        let spec = &crd.spec;
        spec.versions
            .iter()
            .filter(|version| version.served)
            .map(|version| {
                let gvk = GroupVersionKind::gvk(&spec.group, &version.name, &spec.names.kind);
                Self {
                    api: ApiResource::from_gvk_with_plural(&gvk, &spec.names.plural),
                    namespaced: spec.scope == "Namespaced",
                    status_subresource: version.subresources.as_ref().is_some_and(|s| s.status.is_some()),
                }
            })
            .collect()
    }

    /// The `apiVersion` objects of this kind carry.
    pub(crate) fn api_version(&self) -> &str {
        &self.api.api_version
    }
}

impl From<ApiResource> for ResourceInfo {
    /// A namespaced kind without a status subresource.
    fn from(api: ApiResource) -> Self {
        Self::namespaced(api)
    }
}

fn typed<K: kube::Resource<DynamicType = ()>>(namespaced: bool, status_subresource: bool) -> ResourceInfo {
    ResourceInfo { api: ApiResource::erase::<K>(&()), namespaced, status_subresource }
}

/// The kinds the Hearth operator reads and writes: the built-in kinds it creates, Leases for
/// leader election, CustomResourceDefinitions, and the four Hearth CRDs.
pub fn operator_kinds() -> Vec<ResourceInfo> {
    let mut kinds = vec![
        typed::<ConfigMap>(true, false),
        typed::<Secret>(true, false),
        typed::<Service>(true, true),
        typed::<PersistentVolumeClaim>(true, true),
        typed::<CoreEvent>(true, false),
        typed::<Event>(true, false),
        typed::<Deployment>(true, true),
        typed::<StatefulSet>(true, true),
        typed::<Job>(true, true),
        typed::<CronJob>(true, true),
        typed::<HorizontalPodAutoscaler>(true, true),
        typed::<PodDisruptionBudget>(true, true),
        typed::<NetworkPolicy>(true, false),
        typed::<Lease>(true, false),
        typed::<CustomResourceDefinition>(false, true),
    ];
    kinds.extend(hearth_crds::crds().iter().flat_map(ResourceInfo::from_crd));
    kinds
}

/// KEDA's ScaledObject (`keda.sh/v1alpha1`), for tests of scale-to-zero.
pub fn keda_scaled_object() -> ResourceInfo {
    let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
    ResourceInfo::namespaced(ApiResource::from_gvk_with_plural(&gvk, "scaledobjects")).with_status()
}

/// The registered kinds, in registration order; an index into it names a kind internally.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) kinds: Vec<ResourceInfo>,
}

impl Registry {
    /// Registers a kind, replacing an earlier registration of the same group/version/plural.
    pub(crate) fn add(&mut self, info: ResourceInfo) {
        match self.find(&info.api.group, &info.api.version, &info.api.plural) {
            Some(i) => self.kinds[i] = info,
            None => self.kinds.push(info),
        }
    }

    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.kinds.iter().position(|k| k.api.group == group && k.api.version == version && k.api.plural == plural)
    }

    fn group_versions(&self) -> Vec<(String, String)> {
        let mut seen: Vec<(String, String)> = Vec::new();
        for k in &self.kinds {
            let gv = (k.api.group.clone(), k.api.version.clone());
            if !k.api.group.is_empty() && !seen.contains(&gv) {
                seen.push(gv);
            }
        }
        seen
    }

    /// The discovery document for a path below the root (`api`, `apis`, `apis/{g}`,
    /// `api/v1`, `apis/{g}/{v}`, `version`), if the path is a discovery path.
    pub(crate) fn discovery(&self, segments: &[&str]) -> Option<Value> {
        let group_doc = |group: &str, versions: Vec<&(String, String)>| {
            let versions: Vec<Value> =
                versions.iter().map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": group, "versions": versions.clone(), "preferredVersion": versions.first()})
        };
        let gvs = self.group_versions();
        match segments {
            ["version"] => Some(json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-hearth-fake", "gitCommit": "",
                "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "none",
                "compiler": "rustc", "platform": "linux/amd64"
            })),
            ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
            ["apis"] => {
                let mut groups: Vec<&str> = Vec::new();
                for (g, _) in &gvs {
                    if !groups.contains(&g.as_str()) {
                        groups.push(g);
                    }
                }
                let groups: Vec<Value> =
                    groups.iter().map(|g| group_doc(g, gvs.iter().filter(|(x, _)| x == g).collect())).collect();
                Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
            }
            ["apis", group] => {
                let versions: Vec<_> = gvs.iter().filter(|(g, _)| g == group).collect();
                (!versions.is_empty()).then(|| {
                    let mut doc = group_doc(group, versions);
                    doc["kind"] = json!("APIGroup");
                    doc["apiVersion"] = json!("v1");
                    doc
                })
            }
            ["api", version] => Some(self.resource_list("", version)),
            ["apis", group, version] => {
                gvs.iter().any(|(g, v)| g == group && v == version).then(|| self.resource_list(group, version))
            }
            _ => None,
        }
    }

    fn resource_list(&self, group: &str, version: &str) -> Value {
        let verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
        let mut resources = Vec::new();
        for k in self.kinds.iter().filter(|k| k.api.group == group && k.api.version == version) {
            resources.push(json!({
                "name": k.api.plural, "singularName": k.api.kind.to_lowercase(), "namespaced": k.namespaced,
                "kind": k.api.kind, "verbs": verbs,
            }));
            if k.status_subresource {
                resources.push(json!({
                    "name": format!("{}/status", k.api.plural), "singularName": "", "namespaced": k.namespaced,
                    "kind": k.api.kind, "verbs": ["get", "patch", "update"],
                }));
            }
        }
        let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hearth_crds_register_with_plural_and_status() {
        let kinds = operator_kinds();
        for plural in ["models", "cascades", "knowledgebases", "agents"] {
            let k = kinds.iter().find(|k| k.api.group == "hearth.dev" && k.api.plural == plural);
            let k = k.unwrap_or_else(|| panic!("{plural} not registered"));
            assert!(k.namespaced && k.status_subresource, "{plural}: {k:?}");
        }
    }

    #[test]
    fn discovery_lists_groups_and_resources() {
        let mut registry = Registry::default();
        operator_kinds().into_iter().for_each(|k| registry.add(k));
        let apis = registry.discovery(&["apis"]).unwrap();
        let names: Vec<&str> = apis["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"apps") && names.contains(&"hearth.dev"), "{names:?}");
        let apps = registry.discovery(&["apis", "apps", "v1"]).unwrap();
        let resources: Vec<&str> =
            apps["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(resources, ["deployments", "deployments/status", "statefulsets", "statefulsets/status"]);
        assert!(registry.discovery(&["apis", "nope", "v1"]).is_none());
    }
}
