//! Validates a resource the way the API server would: the CRD's OpenAPI schema (types,
//! enums, ranges, patterns, required fields), unknown fields (as `kubectl apply
//! --validate=strict` reports them) and the CEL rules (`x-kubernetes-validations`). Local
//! mode and the tests use it, so a stack file is judged the same way on and off a cluster.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde_json::{Map, Value};

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `spec.stages[1].minConfidence`.
    pub path: String,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { write!(f, "{}", self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Why a document is not a valid Hearth resource.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The document is not a mapping.
    #[error("expected a mapping with apiVersion, kind, metadata and spec, found {0}")]
    NotAnObject(&'static str),
    /// `apiVersion` is missing or not Hearth's.
    #[error("apiVersion: expected \"{expected}\", found {found}")]
    ApiVersion {
        /// The version Hearth serves.
        expected: &'static str,
        /// What the document says.
        found: String,
    },
    /// `kind` is missing or not one of Hearth's.
    #[error("kind: expected one of Model, Cascade, KnowledgeBase or Agent, found {0}")]
    Kind(String),
    /// The document breaks the schema or a CEL rule.
    #[error("{kind} \"{name}\" is invalid: {}", join(.errors))]
    Invalid {
        /// The resource kind.
        kind: String,
        /// metadata.name, or `<unnamed>`.
        name: String,
        /// Every problem found, by field.
        errors: Vec<FieldError>,
    },
}

fn join(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl ValidationError {
    /// The field errors, when the document was a Hearth resource with bad fields.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Self::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }
}

/// The compiled checks for one kind.
struct KindSchema {
    openapi: Value,
    json_schema: jsonschema::Validator,
    cel: kube_cel::CompiledSchema,
}

fn schemas() -> &'static BTreeMap<String, KindSchema> {
    static SCHEMAS: OnceLock<BTreeMap<String, KindSchema>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        crate::crds()
            .into_iter()
            .map(|crd| {
                let kind = crd.spec.names.kind.clone();
                let openapi = openapi_schema(&crd);
                let json_schema = jsonschema::draft4::new(&to_json_schema(openapi.clone()))
                    .unwrap_or_else(|e| panic!("the generated {kind} schema does not compile: {e}"));
                let cel = kube_cel::compile_schema(&openapi);
                (kind, KindSchema { openapi, json_schema, cel })
            })
            .collect()
    })
}

/// The `openAPIV3Schema` of a CRD's first version, as JSON.
pub fn openapi_schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
        .unwrap_or(Value::Null)
}

/// Rewrites the OpenAPI 3.0 dialect of a structural schema into draft-4 JSON Schema:
/// `nullable: true` becomes a `null` alternative of the type, and `x-kubernetes-int-or-string`
/// (a Quantity, an IntOrString) becomes "an integer or a string", as the API server checks it
/// (without a type, draft 4 would admit anything there, and the types would refuse it later
/// with no field named).
fn to_json_schema(mut schema: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                let nullable = map.remove("nullable") == Some(Value::Bool(true));
                if nullable && let Some(Value::String(t)) = map.get("type").cloned() {
                    map.insert("type".into(), Value::Array(vec![Value::String(t), Value::String("null".into())]));
                }
                if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
                    && !map.contains_key("type")
                    && !map.contains_key("anyOf")
                {
                    let mut types = vec!["integer", "string"];
                    if nullable {
                        types.push("null");
                    }
                    let alternatives = types.into_iter().map(|t| serde_json::json!({"type": t})).collect();
                    map.insert("anyOf".into(), Value::Array(alternatives));
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut schema);
    schema
}

/// The document as the types read it: a field set to `null` is a field not set (optional fields
/// are `Option`s or have defaults), so the schema and the CEL rules judge what the operator and
/// `hearth-server up` will see. Without this, `minConfidence: null` passed a rule's `has()` yet
/// reached the router as no threshold. (The API server prunes such nulls too, for fields that
/// are not nullable.) Nulls in lists stay, for the schema to refuse.
pub fn without_null_fields(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_null_fields(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_null_fields).collect()),
        other => other.clone(),
    }
}

/// Checks a document (already parsed from YAML or JSON) against the schema and CEL rules
/// of its kind, with null fields read as unset ([`without_null_fields`]). On success returns
/// the kind.
pub fn validate(doc: &Value) -> Result<&'static str, ValidationError> {
    let doc = &without_null_fields(doc);
    let object = doc.as_object().ok_or_else(|| ValidationError::NotAnObject(type_name(doc)))?;
    match object.get("apiVersion") {
        Some(Value::String(v)) if v == crate::API_VERSION => {}
        other => {
            return Err(ValidationError::ApiVersion {
                expected: crate::API_VERSION,
                found: other.map_or_else(|| "nothing".to_owned(), |v| v.to_string()),
            });
        }
    }
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let (kind, schema) = schemas().get_key_value(kind).ok_or_else(|| {
        ValidationError::Kind(object.get("kind").map_or_else(|| "nothing".to_owned(), |v| v.to_string()))
    })?;
    let name =
        object.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("<unnamed>").to_owned();

    let mut errors = metadata_errors(object.get("metadata"));
    errors.extend(
        schema
            .json_schema
            .iter_errors(doc)
            .map(|e| FieldError { path: pointer_to_path(e.instance_path().as_str()), message: e.to_string() }),
    );
    unknown_fields(&schema.openapi, doc, "", &mut errors);
    // CEL rules assume a schema-valid object; evaluating them on a broken one only adds noise.
    if errors.is_empty() {
        errors.extend(cel_errors(doc));
    }
    if errors.is_empty() {
        Ok(kind_name(kind))
    } else {
        Err(ValidationError::Invalid { kind: kind.clone(), name, errors })
    }
}

fn kind_name(kind: &str) -> &'static str {
    match kind {
        "Model" => "Model",
        "Cascade" => "Cascade",
        "KnowledgeBase" => "KnowledgeBase",
        _ => "Agent",
    }
}

fn metadata_errors(metadata: Option<&Value>) -> Vec<FieldError> {
    let name = metadata.and_then(|m| m.get("name"));
    let problem = match name {
        None => Some("required: every resource needs a name".to_owned()),
        Some(Value::String(n)) if is_dns_label(n) => None,
        Some(other) => Some(format!(
            "expected a DNS label (lowercase letters, digits and '-', at most 63, starting and ending alphanumeric), found {other}"
        )),
    };
    problem.map(|message| FieldError { path: "metadata.name".into(), message }).into_iter().collect()
}

/// Whether `s` is an RFC 1123 DNS label: the names Hearth gives owned objects are built
/// from it.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Reports fields the schema does not know, which the API server would silently prune.
fn unknown_fields(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(fields) => {
            if let Some(Value::Object(properties)) = schema.get("properties") {
                for (key, child) in fields {
                    // The API server owns the envelope; the CRD schema describes only the rest.
                    if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
                        continue;
                    }
                    let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    match properties.get(key) {
                        Some(child_schema) => unknown_fields(child_schema, child, &child_path, errors),
                        None => errors.push(FieldError {
                            path: child_path,
                            message: format!("unknown field; expected one of {}", names(properties)),
                        }),
                    }
                }
            } else if let Some(additional @ Value::Object(_)) = schema.get("additionalProperties") {
                for (key, child) in fields {
                    unknown_fields(additional, child, &format!("{path}.{key}"), errors);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn names(properties: &Map<String, Value>) -> String {
    properties.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// Evaluates only the CEL rules of the document's kind, even where the schema already
/// fails; the tests use it to show that every rule can both pass and fire.
pub fn cel_errors(doc: &Value) -> Vec<FieldError> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let Some(schema) = schemas().get(kind) else { return Vec::new() };
    match kube_cel::validate_compiled(&schema.cel, &without_null_fields(doc), None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| FieldError { path: e.field_path.trim_start_matches('.').to_owned(), message: e.message.clone() })
            .collect(),
    }
}

/// `/spec/stages/1/minConfidence` → `spec.stages[1].minConfidence`.
fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "an empty document",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_pointers_become_dotted_paths() {
        assert_eq!(pointer_to_path("/spec/stages/1/minConfidence"), "spec.stages[1].minConfidence");
        assert_eq!(pointer_to_path(""), "");
        assert_eq!(pointer_to_path("/metadata/labels/a~1b"), "metadata.labels.a/b");
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("gemma3-270m"));
        assert!(!is_dns_label("Gemma"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    #[test]
    fn nullable_becomes_a_null_alternative() {
        let s = to_json_schema(serde_json::json!({"properties": {"a": {"type": "string", "nullable": true}}}));
        assert_eq!(s["properties"]["a"]["type"], serde_json::json!(["string", "null"]));
    }

    #[test]
    fn int_or_string_becomes_an_integer_or_a_string() {
        let s = to_json_schema(serde_json::json!({"additionalProperties": {"x-kubernetes-int-or-string": true}}));
        let expected = serde_json::json!([{"type": "integer"}, {"type": "string"}]);
        assert_eq!(s["additionalProperties"]["anyOf"], expected);
    }

    #[test]
    fn null_fields_are_unset_but_nulls_in_lists_stay() {
        let doc = serde_json::json!({"a": null, "b": {"c": null, "d": 1}, "e": [null, {"f": null}]});
        assert_eq!(without_null_fields(&doc), serde_json::json!({"b": {"d": 1}, "e": [null, {}]}));
    }
}
