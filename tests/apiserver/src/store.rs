//! The object store: every object of every kind, the global resourceVersion, the bounded event
//! history that watches resume from, and the object lifecycle (generation, status subresource,
//! finalizers, owner-reference garbage collection).

use crate::apply::{self, Managers, Scope};
use crate::error::ApiError;
use crate::faults::Faults;
use crate::journal::{Journal, PatchType, Verb, Write};
use crate::resources::{Registry, ResourceInfo};
use crate::selector::Selector;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::broadcast;

/// One object addressed by a request: kind (index into the registry), namespace ("" for
/// cluster-scoped kinds), name, and whether the request is for the `/status` subresource.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) kind: usize,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) status: bool,
}

/// A PATCH body, decoded by its content type.
pub(crate) enum PatchBody {
    Apply(Value),
    Merge(Value, PatchType),
    Json(Vec<json_patch::PatchOperation>),
}

/// The query parameters that shape a write.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteParams {
    pub(crate) field_manager: Option<String>,
    pub(crate) force: bool,
    /// Who writes ([`crate::CLIENT_HEADER`]), for the write log and crash faults.
    pub(crate) client: Option<String>,
}

/// The parts of DeleteOptions the store honours.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeleteParams {
    pub(crate) orphan: bool,
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
    pub(crate) client: Option<String>,
}

/// What happened to an object; a watch turns it into ADDED/MODIFIED/DELETED for its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as kept in the history and sent to open watches.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) kind: usize,
    pub(crate) namespace: String,
    pub(crate) event: EventType,
    pub(crate) object: Value,
    /// The object before a modification, so label-selected watches see objects leave and enter.
    pub(crate) previous: Option<Value>,
}

/// A new watch's view: the changes before it, the queue of later ones, and the resourceVersion
/// at which the one ends and the other begins.
pub(crate) type Subscription = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>, u64);

/// Where a watch starts: from the current state (sent as ADDED events), or after a resourceVersion.
pub(crate) enum WatchStart {
    Snapshot,
    After(u64),
}

#[derive(Clone)]
struct Entry {
    object: Value,
    managers: Managers,
}

/// The field manager the garbage collector's writes are logged with.
const GARBAGE_COLLECTOR: &str = "garbage-collector";

fn garbage_collector() -> WriteParams {
    WriteParams { field_manager: Some(GARBAGE_COLLECTOR.to_string()), ..WriteParams::default() }
}

type Key = (String, String);

struct State {
    registry: Arc<Registry>,
    resource_version: u64,
    /// Watches from a resourceVersion below this get 410 Gone: their events were dropped.
    compacted: u64,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    objects: Vec<BTreeMap<Key, Entry>>,
    serial: u64,
    changes: broadcast::Sender<Arc<Change>>,
    journal: Journal,
}

/// The store, shared by the HTTP handlers, the watch streams and the test handle.
pub(crate) struct Store {
    state: Mutex<State>,
    /// Refuses writes from crashed clients and counts the others, under the state's lock, so a
    /// client crashes exactly after its n-th write even with writes in flight.
    faults: Faults,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn meta(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"].as_object_mut().expect("metadata was just made an object")
}

fn finalizers_pending(object: &Value) -> bool {
    object.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

/// The object without what a no-op write may change (managedFields, resourceVersion).
fn comparable(object: &Value) -> Value {
    let mut object = object.clone();
    let m = meta(&mut object);
    m.remove("managedFields");
    m.remove("resourceVersion");
    object
}

/// What metadata.generation tracks: everything but metadata and status.
fn spec_part(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        for key in ["metadata", "status", "apiVersion", "kind"] {
            map.remove(key);
        }
    }
    object
}

fn status_of(object: &Value) -> Option<Value> {
    object.get("status").filter(|s| !s.is_null()).cloned()
}

fn with_status(mut object: Value, status: Option<Value>) -> Value {
    if let Some(map) = object.as_object_mut() {
        match status {
            Some(status) => map.insert("status".to_string(), status),
            None => map.remove("status"),
        };
    }
    object
}

/// A JSON patch, with a `test` of `null` against a missing path passing as in Kubernetes
/// (kube-runtime's finalizer helper relies on it).
fn json_patch(object: &mut Value, ops: &[json_patch::PatchOperation]) -> Result<(), ApiError> {
    let mut patched = object.clone();
    for op in ops {
        if let json_patch::PatchOperation::Test(test) = op
            && test.value.is_null()
            && patched.pointer(test.path.as_str()).is_none()
        {
            continue;
        }
        json_patch::patch(&mut patched, std::slice::from_ref(op))
            .map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch could not be applied: {e}")))?;
    }
    *object = patched;
    Ok(())
}

fn check_resource_version(body: &Value, current: &Value) -> Result<(), ApiError> {
    let wanted = body.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
    let have = current.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
    if !wanted.is_empty() && wanted != have {
        return Err(ApiError::conflict(format!(
            "Operation cannot be fulfilled: the object has been modified; please apply your changes to the \
             latest version and try again (resourceVersion {wanted} was sent, the current one is {have})"
        )));
    }
    Ok(())
}

impl Store {
    pub(crate) fn new(registry: Arc<Registry>, history_limit: usize, faults: Faults) -> Self {
        let kinds = registry.kinds.len();
        let state = State {
            registry,
            resource_version: 1,
            compacted: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            objects: vec![BTreeMap::new(); kinds],
            serial: 0,
            changes: broadcast::channel(1 << 16).0,
            journal: Journal::default(),
        };
        Self { state: Mutex::new(state), faults }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn count_request(&self, verb: Verb, resource: &str) {
        *self.lock().journal.requests.entry((verb, resource.to_string())).or_default() += 1;
    }

    pub(crate) fn requests(&self) -> BTreeMap<(Verb, String), u64> {
        self.lock().journal.requests.clone()
    }

    pub(crate) fn writes(&self) -> Vec<Write> {
        self.lock().journal.writes.clone()
    }

    pub(crate) fn clear_journal(&self) {
        self.lock().journal = Journal::default();
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.lock().resource_version
    }

    /// Forgets the event history, so watches from any earlier resourceVersion get 410 Gone.
    pub(crate) fn compact(&self) {
        let mut state = self.lock();
        state.resource_version += 1;
        state.compacted = state.resource_version;
        state.history.clear();
    }

    /// Objects of a kind, in one namespace or all, ordered by namespace and name.
    pub(crate) fn objects(&self, kind: usize, namespace: Option<&str>) -> Vec<Value> {
        let state = self.lock();
        state.objects[kind]
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, e)| e.object.clone())
            .collect()
    }

    pub(crate) fn get(&self, t: &Target) -> Result<Value, ApiError> {
        self.lock().entry(t).map(|e| e.object)
    }

    /// A list document; `limit` and `continue` page through objects in (namespace, name) order.
    pub(crate) fn list(
        &self,
        kind: usize,
        namespace: Option<&str>,
        selector: &Selector,
        limit: Option<usize>,
        continue_after: Option<&str>,
    ) -> Value {
        let state = self.lock();
        let after = continue_after.and_then(|c| c.split_once('/')).map(|(ns, n)| (ns.to_string(), n.to_string()));
        let mut items: Vec<(&Key, &Value)> = state.objects[kind]
            .iter()
            .filter(|(key, _)| namespace.is_none_or(|n| n == key.0) && after.as_ref().is_none_or(|a| *key > a))
            .map(|(key, e)| (key, &e.object))
            .filter(|(_, object)| selector.matches(object))
            .collect();
        let mut list_meta = json!({"resourceVersion": state.resource_version.to_string()});
        if let Some(limit) = limit.filter(|l| *l > 0 && items.len() > *l) {
            items.truncate(limit);
            if let Some(((ns, name), _)) = items.last() {
                list_meta["continue"] = json!(format!("{ns}/{name}"));
            }
        }
        let info = &state.registry.kinds[kind];
        json!({
            "kind": format!("{}List", info.api.kind),
            "apiVersion": info.api_version(),
            "metadata": list_meta,
            "items": items.into_iter().map(|(_, o)| o.clone()).collect::<Vec<_>>(),
        })
    }

    /// Runs one client write under the state's lock: refused when the client crashed, counted
    /// (and maybe crashing it) when it is logged.
    fn write(
        &self,
        client: Option<&str>,
        write: impl FnOnce(&mut State) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        self.faults.admit_write(client)?;
        let before = state.journal.writes.len();
        let written = write(&mut state)?;
        // Deleting an object already marked for deletion writes nothing and is not counted.
        if state.journal.writes[before..].iter().any(|w| w.client.as_deref() == client) {
            self.faults.wrote(client);
        }
        Ok(written)
    }

    pub(crate) fn create(&self, t: &Target, body: Value, params: &WriteParams) -> Result<Value, ApiError> {
        self.write(params.client.as_deref(), |state| state.create(t, body, params))
    }

    pub(crate) fn replace(&self, t: &Target, body: Value, params: &WriteParams) -> Result<Value, ApiError> {
        self.write(params.client.as_deref(), |state| {
            let old = state.entry(t)?;
            check_resource_version(&body, &old.object)?;
            let log = state.record(t, Verb::Update, None, params);
            state.update(t, old, body, params, log)
        })
    }

    pub(crate) fn patch(&self, t: &Target, patch: PatchBody, params: &WriteParams) -> Result<Value, ApiError> {
        self.write(params.client.as_deref(), |state| state.patch(t, patch, params))
    }

    pub(crate) fn delete(&self, t: &Target, params: &DeleteParams) -> Result<Value, ApiError> {
        self.write(params.client.as_deref(), |state| state.delete(t, params))
    }

    /// Deletes every selected object of a kind in a namespace (or all), returning them as a list.
    pub(crate) fn delete_collection(
        &self,
        kind: usize,
        namespace: Option<&str>,
        selector: &Selector,
        params: &DeleteParams,
    ) -> Result<Value, ApiError> {
        let mut list = self.list(kind, namespace, selector, None, None);
        let mut deleted = Vec::new();
        for item in list["items"].as_array().cloned().unwrap_or_default() {
            let target = Target {
                kind,
                namespace: item["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
                name: item["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                status: false,
            };
            let params =
                DeleteParams { orphan: params.orphan, client: params.client.clone(), ..DeleteParams::default() };
            match self.delete(&target, &params) {
                Ok(object) => deleted.push(object),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        list["items"] = Value::Array(deleted);
        Ok(list)
    }

    /// Subscribes to changes and returns the events that precede the subscription: the current
    /// objects (for a snapshot) or the history after a resourceVersion (410 Gone when compacted).
    pub(crate) fn subscribe(&self, kind: usize, start: WatchStart) -> Result<Subscription, ApiError> {
        let state = self.lock();
        let before = match start {
            WatchStart::Snapshot => state.objects[kind]
                .iter()
                .map(|((ns, _), e)| {
                    let (object, previous) = (e.object.clone(), None);
                    Arc::new(Change { kind, namespace: ns.clone(), event: EventType::Added, object, previous })
                })
                .collect(),
            WatchStart::After(rv) if rv < state.compacted => {
                let message = format!("too old resource version: {rv} ({})", state.compacted);
                return Err(ApiError::new(410, "Expired", message));
            }
            WatchStart::After(rv) => {
                state.history.iter().filter(|c| c.kind == kind && resource_version(&c.object) > rv).cloned().collect()
            }
        };
        Ok((before, state.changes.subscribe(), state.resource_version))
    }
}

fn resource_version(object: &Value) -> u64 {
    object.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl WriteParams {
    /// The manager a non-apply write is recorded under.
    fn manager(&self) -> &str {
        self.field_manager.as_deref().unwrap_or("unknown")
    }
}

impl State {
    fn plural(&self, kind: usize) -> &str {
        &self.registry.kinds[kind].api.plural
    }

    fn create(&mut self, t: &Target, mut body: Value, params: &WriteParams) -> Result<Value, ApiError> {
        let info = self.registry.kinds[t.kind].clone();
        let name = body.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let name = if name.is_empty() {
            let prefix = body.pointer("/metadata/generateName").and_then(Value::as_str).unwrap_or_default();
            if prefix.is_empty() {
                return Err(ApiError::new(422, "Invalid", "metadata.name or metadata.generateName is required"));
            }
            self.serial += 1;
            format!("{prefix}{:05x}", self.serial)
        } else {
            name
        };
        let target = Target { name, ..t.clone() };
        if self.objects[t.kind].contains_key(&(t.namespace.clone(), target.name.clone())) {
            let message = format!("{} \"{}\" already exists", info.api.plural, target.name);
            return Err(ApiError::new(409, "AlreadyExists", message));
        }
        if info.status_subresource {
            body = with_status(body, None);
        }
        let mut managers = Managers::new();
        apply::record_update(None, &body, &mut managers, params.manager(), &now());
        let log = self.record(&target, Verb::Create, None, params);
        self.commit(&target, None, body, managers, log, false)
    }

    fn patch(&mut self, t: &Target, patch: PatchBody, params: &WriteParams) -> Result<Value, ApiError> {
        let patch_type = match &patch {
            PatchBody::Apply(_) => PatchType::Apply,
            PatchBody::Merge(_, patch_type) => *patch_type,
            PatchBody::Json(_) => PatchType::Json,
        };
        let log = self.record(t, Verb::Patch, Some(patch_type), params);
        let old = self.entry(t);
        let (old, patched) = match (old, patch) {
            (old, PatchBody::Apply(applied)) if old.is_ok() || !t.status => {
                return self.server_side_apply(t, old.ok(), applied, params, log);
            }
            (Err(e), _) => return Err(e),
            (Ok(old), PatchBody::Merge(patch, _)) => {
                let mut patched = old.object.clone();
                json_patch::merge(&mut patched, &patch);
                (old, patched)
            }
            (Ok(old), PatchBody::Json(ops)) => {
                let mut patched = old.object.clone();
                json_patch(&mut patched, &ops)?;
                (old, patched)
            }
            (Ok(_), PatchBody::Apply(_)) => unreachable!("apply to an existing object is handled above"),
        };
        check_resource_version(&patched, &old.object)?;
        self.update(t, old, patched, params, log)
    }

    fn delete(&mut self, t: &Target, params: &DeleteParams) -> Result<Value, ApiError> {
        let entry = self.entry(t)?;
        let current_meta = |field: &str| entry.object["metadata"][field].as_str().unwrap_or_default().to_string();
        for (field, wanted) in [("uid", &params.uid), ("resourceVersion", &params.resource_version)] {
            if let Some(wanted) = wanted.as_deref().filter(|w| *w != current_meta(field)) {
                let message = format!(
                    "Precondition failed: {field} in precondition: {wanted}, in object: {}",
                    current_meta(field)
                );
                return Err(ApiError::conflict(message));
            }
        }
        if params.orphan {
            self.orphan_dependents(&current_meta("uid"));
        }
        let client = WriteParams { client: params.client.clone(), ..WriteParams::default() };
        let log = self.record(t, Verb::Delete, None, &client);
        self.delete_entry(t, entry, log)
    }

    /// A write-log entry for a write to `t`, completed when the write is committed.
    fn record(&self, t: &Target, verb: Verb, patch: Option<PatchType>, params: &WriteParams) -> Write {
        let info = &self.registry.kinds[t.kind];
        Write {
            verb,
            patch,
            resource: info.api.plural.clone(),
            namespace: info.namespaced.then(|| t.namespace.clone()),
            name: t.name.clone(),
            subresource: t.status.then(|| "status".to_string()),
            field_manager: params.field_manager.clone(),
            client: params.client.clone(),
            changed: true,
            resource_version: String::new(),
        }
    }

    /// Server-side apply, creating the object when it does not exist yet.
    fn server_side_apply(
        &mut self,
        t: &Target,
        old: Option<Entry>,
        applied: Value,
        params: &WriteParams,
        log: Write,
    ) -> Result<Value, ApiError> {
        let info = self.registry.kinds[t.kind].clone();
        let manager = params.field_manager.as_deref();
        let manager = manager.ok_or_else(|| ApiError::bad_request("fieldManager is required for apply patches"))?;
        for (field, want) in [("apiVersion", info.api_version()), ("kind", info.api.kind.as_str())] {
            if applied.get(field).and_then(Value::as_str) != Some(want) {
                return Err(ApiError::bad_request(format!("apply needs {field}: {want}")));
            }
        }
        let scope = match (info.status_subresource, t.status) {
            (false, _) => Scope::Whole,
            (true, false) => Scope::Main,
            (true, true) => Scope::Status,
        };
        let (current, managers) = match &old {
            Some(old) => (old.object.clone(), old.managers.clone()),
            None => (json!({"metadata": {}}), Managers::new()),
        };
        check_resource_version(&applied, &current)?;
        let (merged, managers) = apply::apply(&current, &managers, &applied, manager, params.force, scope, &now())
            .map_err(|conflicts| ApiError::conflict(apply::conflict_message(&conflicts)))?;
        self.commit(t, old, merged, managers, log, false)
    }

    fn entry(&self, t: &Target) -> Result<Entry, ApiError> {
        let found = self.objects[t.kind].get(&(t.namespace.clone(), t.name.clone())).cloned();
        found.ok_or_else(|| ApiError::not_found(self.plural(t.kind), &t.name))
    }

    /// A PUT or a merge/JSON patch: the status subresource decides which part of `body` counts.
    fn update(
        &mut self,
        t: &Target,
        old: Entry,
        body: Value,
        params: &WriteParams,
        log: Write,
    ) -> Result<Value, ApiError> {
        let info: ResourceInfo = self.registry.kinds[t.kind].clone();
        if let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str).filter(|n| *n != t.name) {
            return Err(ApiError::bad_request(format!(
                "the name in the body ({name}) does not match the URL ({})",
                t.name
            )));
        }
        let object = match (info.status_subresource, t.status) {
            (true, true) => with_status(old.object.clone(), status_of(&body)),
            (true, false) => with_status(body, status_of(&old.object)),
            (false, _) => body,
        };
        let mut managers = old.managers.clone();
        apply::record_update(Some(&old.object), &object, &mut managers, params.manager(), &now());
        self.commit(t, Some(old), object, managers, log, false)
    }

    /// Stores a new state of an object: server-owned metadata, no-op detection, generation,
    /// resourceVersion, managedFields, the write log, and the watch event. An object marked for
    /// deletion whose finalizers are all gone is removed instead.
    fn commit(
        &mut self,
        t: &Target,
        old: Option<Entry>,
        mut object: Value,
        mut managers: Managers,
        mut log: Write,
        mark_deleted: bool,
    ) -> Result<Value, ApiError> {
        let info = self.registry.kinds[t.kind].clone();
        if !object.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        object["apiVersion"] = json!(info.api_version());
        object["kind"] = json!(info.api.kind);
        let now = now();
        let m = meta(&mut object);
        m.insert("name".into(), json!(t.name));
        if info.namespaced {
            m.insert("namespace".into(), json!(t.namespace));
        } else {
            m.remove("namespace");
        }
        for key in ["managedFields", "resourceVersion", "selfLink"] {
            m.remove(key);
        }
        for key in ["labels", "annotations", "finalizers", "ownerReferences"] {
            let empty = m.get(key).is_some_and(|v| {
                v.is_null() || v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty)
            });
            if empty {
                m.remove(key);
            }
        }
        for key in ["uid", "creationTimestamp", "generation", "deletionTimestamp"] {
            match old.as_ref().and_then(|o| o.object["metadata"].get(key)) {
                Some(value) => m.insert(key.into(), value.clone()),
                None => m.remove(key),
            };
        }
        if old.is_none() {
            self.serial += 1;
            m.insert("uid".into(), json!(format!("00000000-0000-4000-8000-{:012x}", self.serial)));
            m.insert("creationTimestamp".into(), json!(now));
            m.insert("generation".into(), json!(1));
        }
        let mut generation = m.get("generation").and_then(Value::as_i64).unwrap_or(1);
        if mark_deleted {
            m.insert("deletionTimestamp".into(), json!(now));
            generation += 1;
        }
        apply::prune(&mut managers, &object);
        let key = (t.namespace.clone(), t.name.clone());
        if let Some(old) = &old
            && comparable(&old.object) == comparable(&object)
            && apply::same_owners(&old.managers, &managers)
        {
            log.changed = false;
            log.resource_version = resource_version(&old.object).to_string();
            self.journal.writes.push(log);
            return Ok(old.object.clone());
        }
        if old.as_ref().is_some_and(|old| spec_part(&old.object) != spec_part(&object)) {
            generation += 1;
        }
        self.resource_version += 1;
        let rv = self.resource_version.to_string();
        let m = meta(&mut object);
        m.insert("generation".into(), json!(generation));
        m.insert("resourceVersion".into(), json!(rv));
        if !managers.is_empty() {
            m.insert("managedFields".into(), apply::managed_fields(&managers, info.api_version()));
        }
        log.resource_version = rv;
        self.journal.writes.push(log);
        let deleting = object.pointer("/metadata/deletionTimestamp").is_some();
        if deleting && !finalizers_pending(&object) {
            self.objects[t.kind].remove(&key);
            return Ok(self.finish_delete(t, object));
        }
        let previous = old.map(|o| o.object);
        let event = if previous.is_some() { EventType::Modified } else { EventType::Added };
        self.objects[t.kind].insert(key, Entry { object: object.clone(), managers });
        self.emit(t.kind, &t.namespace, event, object.clone(), previous);
        self.collect_if_orphaned(t);
        Ok(object)
    }

    /// The garbage collector's other half: an object written with an ownerReference whose owner
    /// is gone (say, a controller applied a child just after its owner was deleted) is deleted when
    /// every owner is gone, and loses the dangling references when only some are.
    fn collect_if_orphaned(&mut self, t: &Target) {
        let Ok(entry) = self.entry(t) else { return };
        let Some(refs) = entry.object.pointer("/metadata/ownerReferences").and_then(Value::as_array) else {
            return;
        };
        let dangling: Vec<Value> = refs
            .iter()
            .filter(|r| r["uid"].as_str().is_some_and(|uid| !uid.is_empty() && !self.uid_exists(uid)))
            .cloned()
            .collect();
        if dangling.is_empty() {
            return;
        }
        if dangling.len() == refs.len() {
            let log = self.record(t, Verb::Delete, None, &garbage_collector());
            // A dependent that cannot be deleted stays, as with a real garbage collector.
            let _ = self.delete_entry(t, entry, log);
            return;
        }
        let mut object = entry.object.clone();
        if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
            refs.retain(|r| !dangling.contains(r));
        }
        let log = self.record(t, Verb::Update, None, &garbage_collector());
        let managers = entry.managers.clone();
        let _ = self.commit(t, Some(entry), object, managers, log, false);
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.objects.iter().flat_map(|objects| objects.values()).any(|e| e.object["metadata"]["uid"] == uid)
    }

    /// A delete: with finalizers the object is only marked (deletionTimestamp, MODIFIED);
    /// without, it goes now and its dependents are collected.
    fn delete_entry(&mut self, t: &Target, entry: Entry, mut log: Write) -> Result<Value, ApiError> {
        if finalizers_pending(&entry.object) {
            if entry.object.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(entry.object);
            }
            let (object, managers) = (entry.object.clone(), entry.managers.clone());
            return self.commit(t, Some(entry), object, managers, log, true);
        }
        self.objects[t.kind].remove(&(t.namespace.clone(), t.name.clone()));
        let object = self.finish_delete(t, entry.object);
        log.resource_version = resource_version(&object).to_string();
        self.journal.writes.push(log);
        Ok(object)
    }

    /// Sends DELETED for an object already taken out of the store, then deletes (in the
    /// background, honouring their finalizers) the objects it owns.
    fn finish_delete(&mut self, t: &Target, mut object: Value) -> Value {
        self.resource_version += 1;
        meta(&mut object).insert("resourceVersion".into(), json!(self.resource_version.to_string()));
        self.emit(t.kind, &t.namespace, EventType::Deleted, object.clone(), None);
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        for (dependent, entry) in self.dependents(&uid) {
            let log = self.record(&dependent, Verb::Delete, None, &garbage_collector());
            // A dependent that cannot be deleted stays, as with a real garbage collector.
            let _ = self.delete_entry(&dependent, entry, log);
        }
        object
    }

    /// Objects with an ownerReference to `uid`.
    fn dependents(&self, uid: &str) -> Vec<(Target, Entry)> {
        let mut found = Vec::new();
        for (kind, objects) in self.objects.iter().enumerate() {
            for ((namespace, name), entry) in objects {
                let refs = entry.object.pointer("/metadata/ownerReferences").and_then(Value::as_array);
                if !uid.is_empty() && refs.is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid)) {
                    let target = Target { kind, namespace: namespace.clone(), name: name.clone(), status: false };
                    found.push((target, entry.clone()));
                }
            }
        }
        found
    }

    /// `propagationPolicy: Orphan`: dependents lose their ownerReference to `uid`.
    fn orphan_dependents(&mut self, uid: &str) {
        for (target, entry) in self.dependents(uid) {
            let mut object = entry.object.clone();
            if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != uid);
            }
            let log = self.record(&target, Verb::Update, None, &garbage_collector());
            let managers = entry.managers.clone();
            let _ = self.commit(&target, Some(entry), object, managers, log, false);
        }
    }

    fn emit(&mut self, kind: usize, namespace: &str, event: EventType, object: Value, previous: Option<Value>) {
        let change = Arc::new(Change { kind, namespace: namespace.to_string(), event, object, previous });
        self.history.push_back(Arc::clone(&change));
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = resource_version(&dropped.object);
            }
        }
        // No open watch is not an error.
        let _ = self.changes.send(change);
    }
}
