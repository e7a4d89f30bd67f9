//! Field ownership and server-side apply.
//!
//! Ownership is tracked per field manager as a set of leaf paths (`spec.replicas`,
//! `metadata.labels.app`). Maps are merged key by key; lists are atomic (owned and replaced
//! whole, no list-map keys); an empty map is a leaf of its own. From `metadata` only labels,
//! annotations, finalizers and ownerReferences are owned, as in Kubernetes.

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// A path of map keys from the object's root to a leaf.
pub(crate) type Path = Vec<String>;

/// One field manager's entry: the manager name and whether it wrote by apply or by update
/// (Kubernetes keeps these apart, so one manager may own fields both ways).
pub(crate) type ManagerKey = (String, Operation);

/// Who owns which fields of one object.
pub(crate) type Managers = BTreeMap<ManagerKey, Ownership>;

/// How a manager last wrote its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Operation {
    Apply,
    Update,
}

/// The fields one manager owns, and when it last wrote them.
#[derive(Clone, Debug)]
pub(crate) struct Ownership {
    pub(crate) fields: BTreeSet<Path>,
    pub(crate) time: String,
}

/// The part of an object a write may touch: all of it, all but `.status` (the main resource of
/// a kind with a status subresource), or only `.status` (its `/status` subresource).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Whole,
    Main,
    Status,
}

impl Scope {
    fn admits(self, path: &[String]) -> bool {
        let status = path.first().is_some_and(|p| p == "status");
        match self {
            Scope::Whole => true,
            Scope::Main => !status,
            Scope::Status => status,
        }
    }
}

/// A field another manager owns with a different value than the apply asks for.
#[derive(Debug, PartialEq)]
pub(crate) struct Conflict {
    pub(crate) manager: String,
    pub(crate) path: Path,
}

/// The message of a 409 for apply conflicts, worded as Kubernetes words it.
pub(crate) fn conflict_message(conflicts: &[Conflict]) -> String {
    let listed: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!("conflict with \"{}\": {}", c.manager, c.path.iter().map(|p| format!(".{p}")).collect::<String>())
        })
        .collect();
    let plural = if conflicts.len() == 1 { "" } else { "s" };
    format!("Apply failed with {} conflict{plural}: {}", conflicts.len(), listed.join(", "))
}

/// The owned leaves of an object within a scope, with their values.
pub(crate) fn leaves(object: &Value, scope: Scope) -> BTreeMap<Path, Value> {
    fn collect(value: &Value, path: &mut Path, out: &mut BTreeMap<Path, Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    path.push(key.clone());
                    collect(child, path, out);
                    path.pop();
                }
            }
            Value::Null => {}
            leaf => {
                out.insert(path.clone(), leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    let Some(root) = object.as_object() else { return out };
    for (key, value) in root {
        let mut path = vec![key.clone()];
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for owned in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(v) = value.get(owned) {
                        path.push(owned.to_string());
                        collect(v, &mut path, &mut out);
                        path.pop();
                    }
                }
            }
            _ => collect(value, &mut path, &mut out),
        }
    }
    out.retain(|path, _| scope.admits(path));
    out
}

fn get_path<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |v, key| v.get(key))
}

fn set_path(object: &mut Value, path: &[String], value: Value) {
    let mut at = object;
    for key in path {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        at = at.as_object_mut().expect("just made an object").entry(key.clone()).or_insert(Value::Null);
    }
    *at = value;
}

/// Removes a leaf and any maps it leaves empty (but never `metadata` itself); returns whether
/// `value` ended up an empty map.
fn remove_path(value: &mut Value, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else { return false };
    let Some(map) = value.as_object_mut() else { return false };
    if rest.is_empty() {
        map.remove(first);
    } else if let Some(child) = map.get_mut(first)
        && remove_path(child, rest)
        && first != "metadata"
    {
        map.remove(first);
    }
    map.is_empty()
}

/// Server-side apply of `applied` by `manager` onto `current` (the stored object, or a skeleton
/// when creating). Returns the merged object and the new ownership, or the conflicts when
/// another manager owns a field with a different value and `force` is off.
pub(crate) fn apply(
    current: &Value,
    managers: &Managers,
    applied: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
    now: &str,
) -> Result<(Value, Managers), Vec<Conflict>> {
    let wanted = leaves(applied, scope);
    let own_key = (manager.to_string(), Operation::Apply);
    let mut managers = managers.clone();
    let mut conflicts = Vec::new();
    for (key, owner) in managers.iter_mut().filter(|(key, _)| **key != own_key) {
        let clashing: Vec<Path> = owner
            .fields
            .iter()
            .filter(|path| wanted.get(*path).is_some_and(|want| get_path(current, path) != Some(want)))
            .cloned()
            .collect();
        if force {
            clashing.iter().for_each(|path| {
                owner.fields.remove(path);
            });
        } else {
            conflicts.extend(clashing.into_iter().map(|path| Conflict { manager: key.0.clone(), path }));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    managers.retain(|_, o| !o.fields.is_empty());
    let previous = managers.remove(&own_key).map(|o| o.fields).unwrap_or_default();
    let mut object = current.clone();
    for path in previous.iter().filter(|p| scope.admits(p) && !wanted.contains_key(*p)) {
        if !managers.values().any(|o| o.fields.contains(path)) {
            remove_path(&mut object, path);
        }
    }
    for (path, value) in &wanted {
        set_path(&mut object, path, value.clone());
    }
    let mut fields: BTreeSet<Path> = previous.into_iter().filter(|p| !scope.admits(p)).collect();
    fields.extend(wanted.into_keys());
    managers.insert(own_key, Ownership { fields, time: now.to_string() });
    Ok((object, managers))
}

/// Records a non-apply write (create, update, patch): `manager` takes the fields whose value it
/// set or changed, away from every other manager.
pub(crate) fn record_update(old: Option<&Value>, new: &Value, managers: &mut Managers, manager: &str, now: &str) {
    let before = old.map(|o| leaves(o, Scope::Whole)).unwrap_or_default();
    let changed: Vec<Path> =
        leaves(new, Scope::Whole).into_iter().filter(|(p, v)| before.get(p) != Some(v)).map(|(p, _)| p).collect();
    if changed.is_empty() {
        return;
    }
    for owner in managers.values_mut() {
        changed.iter().for_each(|p| {
            owner.fields.remove(p);
        });
    }
    let own = managers
        .entry((manager.to_string(), Operation::Update))
        .or_insert_with(|| Ownership { fields: BTreeSet::new(), time: String::new() });
    own.fields.extend(changed);
    own.time = now.to_string();
}

/// Drops owned paths that are no longer leaves of the object, and managers left with nothing.
pub(crate) fn prune(managers: &mut Managers, object: &Value) {
    let present = leaves(object, Scope::Whole);
    for owner in managers.values_mut() {
        owner.fields.retain(|p| present.contains_key(p));
    }
    managers.retain(|_, o| !o.fields.is_empty());
}

/// Whether two ownership maps give the same fields to the same managers (times aside).
pub(crate) fn same_owners(a: &Managers, b: &Managers) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((ka, oa), (kb, ob))| ka == kb && oa.fields == ob.fields)
}

/// `metadata.managedFields` as Kubernetes writes it (`fieldsV1` with `f:` keys).
pub(crate) fn managed_fields(managers: &Managers, api_version: &str) -> Value {
    let entries: Vec<Value> = managers
        .iter()
        .map(|((name, operation), owned)| {
            let mut tree = Value::Object(Map::new());
            for path in &owned.fields {
                let keyed: Path = path.iter().map(|p| format!("f:{p}")).collect();
                set_path(&mut tree, &keyed, json!({}));
            }
            json!({
                "manager": name,
                "operation": if *operation == Operation::Apply { "Apply" } else { "Update" },
                "apiVersion": api_version,
                "time": owned.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": tree,
            })
        })
        .collect();
    Value::Array(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Path {
        p.split('.').map(str::to_string).collect()
    }

    #[test]
    fn leaves_skip_server_metadata_and_treat_lists_as_atomic() {
        let obj = json!({"apiVersion": "v1", "kind": "X",
            "metadata": {"name": "a", "uid": "u", "labels": {"app": "web"}, "finalizers": ["f"]},
            "spec": {"ports": [1, 2], "empty": {}, "gone": null}});
        let keys: Vec<Path> = leaves(&obj, Scope::Whole).into_keys().collect();
        assert_eq!(
            keys,
            vec![path("metadata.finalizers"), path("metadata.labels.app"), path("spec.empty"), path("spec.ports")]
        );
    }

    #[test]
    fn reapply_drops_fields_the_manager_stopped_sending() {
        let first = json!({"spec": {"a": 1, "nested": {"b": 2}}});
        let (obj, owners) = apply(&json!({}), &Managers::new(), &first, "op", false, Scope::Whole, "t").unwrap();
        let (obj, _) = apply(&obj, &owners, &json!({"spec": {"a": 1}}), "op", false, Scope::Whole, "t").unwrap();
        assert_eq!(obj, json!({"spec": {"a": 1}}));
    }

    #[test]
    fn conflicting_value_needs_force_and_then_moves_ownership() {
        let (obj, owners) =
            apply(&json!({}), &Managers::new(), &json!({"spec": {"a": 1}}), "one", false, Scope::Whole, "t").unwrap();
        let same = apply(&obj, &owners, &json!({"spec": {"a": 1}}), "two", false, Scope::Whole, "t");
        assert!(same.is_ok(), "equal values are shared, not conflicts");
        let err = apply(&obj, &owners, &json!({"spec": {"a": 2}}), "two", false, Scope::Whole, "t").unwrap_err();
        assert_eq!(err, vec![Conflict { manager: "one".into(), path: path("spec.a") }]);
        let (obj, owners) = apply(&obj, &owners, &json!({"spec": {"a": 2}}), "two", true, Scope::Whole, "t").unwrap();
        assert_eq!(obj["spec"]["a"], 2);
        assert!(!owners.contains_key(&("one".to_string(), Operation::Apply)));
    }

    #[test]
    fn update_takes_changed_fields_from_appliers() {
        let (obj, mut owners) =
            apply(&json!({}), &Managers::new(), &json!({"spec": {"a": 1, "b": 1}}), "op", false, Scope::Whole, "t")
                .unwrap();
        let new = json!({"spec": {"a": 5, "b": 1}});
        record_update(Some(&obj), &new, &mut owners, "kubectl", "t");
        let op = &owners[&("op".to_string(), Operation::Apply)].fields;
        assert_eq!(op.iter().cloned().collect::<Vec<_>>(), vec![path("spec.b")]);
        assert!(managed_fields(&owners, "v1")[0]["fieldsV1"]["f:spec"]["f:a"].is_object());
    }
}
