//! The model cache: the claim weights are downloaded into, and where a source URI lands in
//! the pod (the same layout `hearth-server fetch` writes).

use std::collections::BTreeMap;

use hearth_crds::model::{ModelSpec, WeightsFormat};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::BuildContext;
use super::metadata::Owner;

/// Where the cache claim is mounted.
pub(crate) const CACHE_DIR: &str = "/models";
/// Where `pvc://CLAIM/PATH` sources are mounted: `/pvc/CLAIM`, as `hearth-server fetch`
/// expects them.
pub(crate) const PVC_SOURCE_DIR: &str = "/pvc";

const GIB: u64 = 1024 * 1024 * 1024;

/// A source URI split into scheme and the rest.
fn split_uri(uri: &str) -> (&str, &str) {
    uri.split_once("://").unwrap_or(("", uri))
}

/// The last path segment of a URI: no query, fragment or `@revision`.
fn last_segment(uri: &str) -> &str {
    let (scheme, rest) = split_uri(uri);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let rest = if scheme == "hf" { rest.split('@').next().unwrap_or(rest) } else { rest };
    rest.trim_end_matches('/').rsplit('/').next().unwrap_or(rest)
}

/// The weights format: `spec.format`, else from the file name (`.gguf`, `.safetensors`);
/// a URI whose last segment has no extension names a safetensors directory.
pub fn weights_format(spec: &ModelSpec) -> WeightsFormat {
    if let Some(format) = spec.format {
        return format;
    }
    let name = last_segment(&spec.source.uri).to_ascii_lowercase();
    if name.ends_with(".safetensors") || !name.contains('.') { WeightsFormat::Safetensors } else { WeightsFormat::Gguf }
}

/// The path the server loads inside the pod: the cached file (`/models/<last segment>`),
/// or for safetensors the cached directory; `pvc://CLAIM/PATH` and `file:///PATH` sources
/// are read in place (`/pvc/CLAIM/PATH`, `/PATH`). A safetensors URI naming the
/// `.safetensors` file itself is served from the directory holding it.
pub fn served_path(spec: &ModelSpec) -> String {
    let uri = spec.source.uri.as_str();
    let (scheme, rest) = split_uri(uri);
    let path = match scheme {
        "pvc" => format!("{PVC_SOURCE_DIR}/{}", rest.trim_end_matches('/')),
        "file" => rest.trim_end_matches('/').to_owned(),
        _ => format!("{CACHE_DIR}/{}", last_segment(uri)),
    };
    let names_file = path.to_ascii_lowercase().ends_with(".safetensors");
    if weights_format(spec) == WeightsFormat::Safetensors && names_file {
        match path.rsplit_once('/') {
            Some(("", _)) => "/".to_owned(),
            Some((dir, _)) => dir.to_owned(),
            None => path,
        }
    } else {
        path
    }
}

/// The claim a `pvc://CLAIM/PATH` source lives on.
pub(crate) fn source_claim(spec: &ModelSpec) -> Option<&str> {
    let (scheme, rest) = split_uri(&spec.source.uri);
    (scheme == "pvc").then(|| rest.split('/').next().unwrap_or(rest)).filter(|claim| !claim.is_empty())
}

/// Cache size: the weights plus 20% (partial download beside a stale copy, tokenizer,
/// config), rounded up to whole GiB, at least 1 GiB.
pub(crate) fn cache_gib(weights_bytes: u64) -> u64 {
    let with_headroom = weights_bytes.saturating_mul(6).div_ceil(5);
    with_headroom.div_ceil(GIB).max(1)
}

/// Size of a cache whose weights are unknown (the pod is then sized by `spec.resources`).
pub(crate) const UNKNOWN_WEIGHTS_CACHE_GIB: u64 = 50;

/// The `<model>-cache` claim.
pub(crate) fn desired_cache_claim(owner: &Owner, size_gib: u64, ctx: &BuildContext) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: owner.meta(format!("{}-cache", owner.name), "model-cache"),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![ctx.cache_access_mode.clone()]),
            storage_class_name: ctx.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), Quantity(format!("{size_gib}Gi")))])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uri: &str, format: Option<WeightsFormat>) -> ModelSpec {
        let mut spec: ModelSpec = serde_yaml::from_str("source: {uri: 'hf://org/repo/m.gguf'}").expect("minimal spec");
        spec.source.uri = uri.into();
        spec.format = format;
        spec
    }

    #[test]
    fn derives_the_served_path_from_the_uri() {
        let cases = [
            (
                "hf://unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf",
                None,
                "/models/gemma-3-270m-it-Q4_K_M.gguf",
            ),
            ("hf://org/repo/sub/model.gguf@v2", None, "/models/model.gguf"),
            ("https://mirror.example/a/m.gguf?sig=1", None, "/models/m.gguf"),
            ("s3://models/mistral-7b-instruct-q4_k_m.gguf", None, "/models/mistral-7b-instruct-q4_k_m.gguf"),
            (
                "hf://sentence-transformers/all-MiniLM-L6-v2",
                Some(WeightsFormat::Safetensors),
                "/models/all-MiniLM-L6-v2",
            ),
            ("hf://sentence-transformers/all-MiniLM-L6-v2", None, "/models/all-MiniLM-L6-v2"),
            ("https://host/minilm/model.safetensors", None, "/models"),
            ("pvc://weights/llm/m.gguf", None, "/pvc/weights/llm/m.gguf"),
            ("pvc://weights/minilm/", Some(WeightsFormat::Safetensors), "/pvc/weights/minilm"),
            ("file:///opt/models/m.gguf", None, "/opt/models/m.gguf"),
        ];
        for (uri, format, expected) in cases {
            assert_eq!(served_path(&spec(uri, format)), expected, "{uri}");
        }
        assert_eq!(weights_format(&spec("hf://o/r/all-MiniLM-L6-v2", None)), WeightsFormat::Safetensors);
        assert_eq!(source_claim(&spec("pvc://weights/llm/m.gguf", None)), Some("weights"));
        assert_eq!(source_claim(&spec("hf://o/r/m.gguf", None)), None);
    }

    #[test]
    fn cache_is_weights_plus_a_fifth_in_whole_gib() {
        assert_eq!(cache_gib(0), 1);
        assert_eq!(cache_gib(253_113_024), 1);
        assert_eq!(cache_gib(GIB), 2);
        assert_eq!(cache_gib(10 * GIB), 12);
        assert_eq!(cache_gib(10 * GIB + 1), 13);
    }
}
