//! The HTTP face: URL parsing, verbs, query parameters, faults, and the discovery documents.

use crate::error::ApiError;
use crate::faults::Faults;
use crate::journal::{PatchType, Verb};
use crate::resources::Registry;
use crate::selector::Selector;
use crate::store::{DeleteParams, PatchBody, Store, Target, WatchStart, WriteParams};
use crate::watch::{self, WatchFilter, WatchOptions};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Everything a request handler needs.
pub(crate) struct App {
    pub(crate) store: Arc<Store>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) faults: Faults,
    pub(crate) bookmark_interval: Duration,
}

/// The router: every path goes to one handler, which parses Kubernetes' URL layout itself.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new().fallback(handle).with_state(app)
}

/// A resource URL, parsed: `/api/v1/...` or `/apis/{group}/{version}/...`, then
/// `[namespaces/{ns}/]{plural}[/{name}[/status]]`.
struct Route {
    kind: usize,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(registry: &Registry, segments: &[&str]) -> Result<Route, ApiError> {
    let not_found = || ApiError::new(404, "NotFound", "the server could not find the requested resource");
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(*sub)),
        _ => return Err(not_found()),
    };
    let kind = registry.find(group, version, plural).ok_or_else(not_found)?;
    let info = &registry.kinds[kind];
    let status = match subresource {
        None => false,
        Some("status") if info.status_subresource => true,
        Some(_) => return Err(not_found()),
    };
    if (info.namespaced && namespace.is_none() && name.is_some()) || (!info.namespaced && namespace.is_some()) {
        return Err(not_found());
    }
    Ok(Route { kind, namespace, name, status })
}

fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| v == "true" || v == "1")
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

async fn handle(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    if method == Method::GET
        && let Some(doc) = app.registry.discovery(&segments)
    {
        return Json(doc).into_response();
    }
    match serve(&app, &method, &segments, &query, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn serve(
    app: &App,
    method: &Method,
    segments: &[&str],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let route = route(&app.registry, segments)?;
    let info = &app.registry.kinds[route.kind];
    let verb = match (method.as_str(), route.name.is_some()) {
        ("GET", true) => Verb::Get,
        ("GET", false) if flag(query, "watch") => Verb::Watch,
        ("GET", false) => Verb::List,
        ("POST", false) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => return Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not allowed here"))),
    };
    app.store.count_request(verb, &info.api.plural);
    let client = headers.get(crate::CLIENT_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let decision = app.faults.decide(verb, &info.api.plural, client.as_deref());
    if let Some(delay) = decision.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(error) = decision.error {
        return Err(error);
    }
    if query.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request("dryRun is not supported by the fake API server"));
    }
    let selector =
        Selector::parse(query.get("labelSelector").map(String::as_str), query.get("fieldSelector").map(String::as_str))
            .map_err(ApiError::bad_request)?;
    let target = Target {
        kind: route.kind,
        namespace: route.namespace.clone().unwrap_or_default(),
        name: route.name.clone().unwrap_or_default(),
        status: route.status,
    };
    let params = WriteParams {
        field_manager: query.get("fieldManager").cloned(),
        force: flag(query, "force"),
        client: client.clone(),
    };
    let store = &app.store;
    let ok = |object: Value| Ok(Json(object).into_response());
    match verb {
        Verb::Get => ok(store.get(&target)?),
        Verb::List => {
            let limit = query.get("limit").and_then(|l| l.parse().ok());
            let continue_after = query.get("continue").map(String::as_str).filter(|c| !c.is_empty());
            ok(store.list(route.kind, route.namespace.as_deref(), &selector, limit, continue_after))
        }
        Verb::Watch => {
            let rv = query.get("resourceVersion").map(String::as_str).unwrap_or_default();
            let initial_events = flag(query, "sendInitialEvents");
            let start = match rv.parse::<u64>() {
                Ok(rv) if rv > 0 && !initial_events => WatchStart::After(rv),
                _ => WatchStart::Snapshot,
            };
            let timeout = query.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800);
            let options = WatchOptions {
                start,
                timeout: Duration::from_secs(timeout),
                bookmarks: flag(query, "allowWatchBookmarks").then_some(app.bookmark_interval),
                initial_events_end: initial_events,
                type_meta: (info.api_version().to_string(), info.api.kind.clone()),
            };
            let filter = WatchFilter { kind: route.kind, namespace: route.namespace.clone(), selector };
            let closers = watch::Closers {
                all: app.faults.watch_closer(),
                crashed: app.faults.crash_watcher(),
                client: client.clone(),
            };
            let body = watch::stream(Arc::clone(store), filter, options, closers);
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Verb::Create => {
            let object = parse_json(&body)?;
            let body_ns = object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
            if info.namespaced && !body_ns.is_empty() && Some(body_ns) != route.namespace.as_deref() {
                return Err(ApiError::bad_request("the namespace of the object does not match the URL"));
            }
            if info.namespaced && route.namespace.is_none() {
                return Err(ApiError::bad_request("a namespaced object is created under /namespaces/{ns}/"));
            }
            let created = store.create(&target, object, &params)?;
            Ok((StatusCode::CREATED, Json(created)).into_response())
        }
        Verb::Update => ok(store.replace(&target, parse_json(&body)?, &params)?),
        Verb::Patch => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let patch = match content_type.split(';').next().unwrap_or_default().trim() {
                "application/apply-patch+yaml" => PatchBody::Apply(
                    serde_json::from_slice(&body)
                        .or_else(|_| serde_yaml::from_slice(&body))
                        .map_err(|e| ApiError::bad_request(format!("the apply body is not YAML or JSON: {e}")))?,
                ),
                "application/merge-patch+json" => PatchBody::Merge(parse_json(&body)?, PatchType::Merge),
                "application/strategic-merge-patch+json" => PatchBody::Merge(parse_json(&body)?, PatchType::Strategic),
                "application/json-patch+json" => PatchBody::Json(
                    serde_json::from_slice(&body)
                        .map_err(|e| ApiError::bad_request(format!("the body is not a JSON patch: {e}")))?,
                ),
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("unsupported patch type {other:?}"),
                    ));
                }
            };
            let exists = store.get(&target).is_ok();
            let patched = store.patch(&target, patch, &params)?;
            Ok(if exists {
                Json(patched).into_response()
            } else {
                (StatusCode::CREATED, Json(patched)).into_response()
            })
        }
        Verb::Delete | Verb::DeleteCollection => {
            let options = if body.is_empty() { Value::Null } else { parse_json(&body)? };
            let policy = query.get("propagationPolicy").map(String::as_str).or(options["propagationPolicy"].as_str());
            let precondition = |field: &str| options["preconditions"][field].as_str().map(str::to_string);
            let params = DeleteParams {
                orphan: policy == Some("Orphan"),
                uid: precondition("uid"),
                resource_version: precondition("resourceVersion"),
                client,
            };
            if verb == Verb::Delete {
                ok(store.delete(&target, &params)?)
            } else {
                ok(store.delete_collection(route.kind, route.namespace.as_deref(), &selector, &params)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::operator_kinds;

    fn registry() -> Registry {
        let mut registry = Registry::default();
        operator_kinds().into_iter().for_each(|k| registry.add(k));
        registry
    }

    #[test]
    fn routes_namespaced_cluster_and_status_paths() {
        let registry = registry();
        let r = route(&registry, &["apis", "apps", "v1", "namespaces", "ns", "deployments", "web", "status"]).unwrap();
        assert_eq!((r.namespace.as_deref(), r.name.as_deref(), r.status), (Some("ns"), Some("web"), true));
        let r = route(&registry, &["api", "v1", "configmaps"]).unwrap();
        assert_eq!((r.namespace, r.name), (None, None));
        let crds = ["apis", "apiextensions.k8s.io", "v1", "customresourcedefinitions", "models.hearth.dev"];
        assert!(route(&registry, &crds).is_ok());
        assert!(route(&registry, &["api", "v1", "namespaces", "ns", "configmaps", "a", "status"]).is_err());
        assert!(route(&registry, &["api", "v1", "configmaps", "a"]).is_err(), "namespaced get needs a namespace");
        assert!(route(&registry, &["apis", "hearth.dev", "v1alpha1", "namespaces", "ns", "widgets"]).is_err());
    }
}
