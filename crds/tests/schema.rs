//! The committed CRDs, the examples and the invalid fixtures, checked against the types,
//! the generated OpenAPI schema and the CEL rules.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hearth_crds::validation::{self, openapi_schema};
use hearth_crds::{Resource, parse_stack};
use serde::Deserialize;
use serde_json::Value;

/// This package's directory, read when the test runs (cargo and nextest set it), so a test
/// binary reused from a build in another checkout still reads this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

fn repo() -> PathBuf {
    manifest_dir().join("..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

#[test]
fn committed_crds_match_what_crdgen_writes() {
    for dir in ["manifests/crds", "helm/hearth/crds"] {
        for (name, expected) in hearth_crds::crd_files().unwrap() {
            let path = repo().join(dir).join(&name);
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("{} is missing ({e}); run `cargo run -p hearth-crds --bin crdgen`", path.display())
            });
            assert!(
                committed == expected,
                "{} differs from the types; run `cargo run -p hearth-crds --bin crdgen`",
                path.display()
            );
        }
        let on_disk = yaml_files(&repo().join(dir)).len();
        assert_eq!(on_disk, 4, "{dir} should hold exactly the four Hearth CRDs");
    }
}

#[test]
fn every_example_parses_validates_and_round_trips() {
    let files = yaml_files(&repo().join("manifests/examples"));
    assert!(!files.is_empty());
    let mut kinds = BTreeSet::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let resources = parse_stack(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resources.len(), documents(path).len(), "{}", path.display());
        for r in &resources {
            kinds.insert(r.kind());
            // Typed → JSON → typed keeps every field.
            let json = match r {
                Resource::Model(m) => serde_json::to_value(m),
                Resource::Cascade(c) => serde_json::to_value(c),
                Resource::KnowledgeBase(k) => serde_json::to_value(k),
                Resource::Agent(a) => serde_json::to_value(a),
            }
            .unwrap();
            assert_eq!(&Resource::from_value(json).unwrap(), r);
        }
    }
    assert_eq!(kinds.len(), 4, "the examples should show every kind, found {kinds:?}");
}

#[test]
fn quickstart_is_a_complete_stack() {
    let path = repo().join("manifests/examples/quickstart.yaml");
    let stack = parse_stack(&std::fs::read_to_string(&path).unwrap(), "quickstart").unwrap();
    let count = |kind: &str| stack.iter().filter(|r| r.kind() == kind).count();
    assert!(count("Model") >= 2);
    assert_eq!(count("Cascade"), 1);
    assert_eq!(count("KnowledgeBase"), 1);
    assert_eq!(count("Agent"), 1);
    let embedding_models = stack
        .iter()
        .filter(|r| matches!(r, Resource::Model(m) if m.spec.task == hearth_crds::model::ModelTask::Embedding))
        .count();
    assert_eq!(embedding_models, 1);
}

fn expectation(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} must start with `# expect: FIELD`", path.display()))
        .to_owned()
}

#[test]
fn every_invalid_fixture_is_rejected_with_a_message_naming_its_field() {
    let files = yaml_files(&repo().join("tests/fixtures/invalid"));
    assert!(files.len() >= 30, "expected the full set of invalid fixtures, found {}", files.len());
    for path in files {
        let expected = expectation(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        let err = parse_stack(&text, &path.display().to_string())
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", path.display()));
        let message = err.to_string();
        assert!(
            message.contains(&expected),
            "{}: expected the error to name `{expected}`, got:\n{message}",
            path.display()
        );
    }
}

/// Every CEL rule in the CRDs, as (kind, message).
fn cel_rules() -> BTreeSet<(String, String)> {
    fn walk(kind: &str, v: &Value, out: &mut BTreeSet<(String, String)>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                    for rule in rules {
                        out.insert((kind.to_owned(), rule["message"].as_str().unwrap().to_owned()));
                    }
                }
                map.values().for_each(|c| walk(kind, c, out));
            }
            Value::Array(items) => items.iter().for_each(|c| walk(kind, c, out)),
            _ => {}
        }
    }
    let mut rules = BTreeSet::new();
    for crd in hearth_crds::crds() {
        walk(&crd.spec.names.kind, &openapi_schema(&crd), &mut rules);
    }
    rules
}

#[test]
fn every_cel_rule_passes_on_the_examples_and_fires_on_some_fixture() {
    let rules = cel_rules();
    assert!(rules.len() >= 12, "expected the cross-field rules, found {rules:?}");
    for path in yaml_files(&repo().join("manifests/examples")) {
        for doc in documents(&path) {
            let errors = validation::cel_errors(&doc);
            assert!(errors.is_empty(), "{}: a CEL rule rejects a valid example: {errors:?}", path.display());
        }
    }
    let mut fired = BTreeSet::new();
    for path in yaml_files(&repo().join("tests/fixtures/invalid")) {
        for doc in documents(&path) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            for e in validation::cel_errors(&doc) {
                assert!(
                    rules.contains(&(kind.clone(), e.message.clone())),
                    "{}: CEL failed to evaluate rather than reject: {e}",
                    path.display()
                );
                fired.insert((kind.clone(), e.message));
            }
        }
    }
    let never: Vec<_> = rules.difference(&fired).collect();
    assert!(never.is_empty(), "CEL rules no invalid fixture makes fire: {never:?}");
}

#[test]
fn every_field_is_documented() {
    fn walk(path: &str, v: &Value, missing: &mut Vec<String>) {
        if let Some(Value::Object(props)) = v.get("properties") {
            for (name, child) in props {
                let child_path = format!("{path}.{name}");
                let top_level = path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str());
                if child.get("description").is_none() && !top_level {
                    missing.push(child_path.clone());
                }
                walk(&child_path, child, missing);
            }
        }
        if let Some(items) = v.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in hearth_crds::crds() {
        walk(&crd.spec.names.kind, &openapi_schema(&crd), &mut missing);
    }
    assert!(missing.is_empty(), "fields without a description (kubectl explain would be empty): {missing:#?}");
}

#[test]
fn crds_carry_status_short_names_and_printer_columns() {
    for crd in hearth_crds::crds() {
        let kind = &crd.spec.names.kind;
        assert_eq!(crd.spec.group, "hearth.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert!(!crd.spec.names.short_names.clone().unwrap_or_default().is_empty(), "{kind} has no short name");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{kind} lacks the status subresource"
        );
        let columns: Vec<_> =
            version.additional_printer_columns.clone().unwrap_or_default().into_iter().map(|c| c.name).collect();
        assert!(columns.contains(&"Ready".to_owned()), "{kind}: {columns:?}");
        assert!(columns.contains(&"Age".to_owned()), "{kind}: {columns:?}");
    }
}

#[test]
fn a_stack_reports_every_bad_document_by_position() {
    let stack = "apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {name: ok}\nspec: {source: {uri: 'file:///m.gguf'}}\n---\n\
                 apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {name: bad}\nspec: {source: {uri: 'ftp://x'}}\n---\n\
                 apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {name: ok}\nspec: {source: {uri: 'file:///m.gguf'}}\n";
    let err = parse_stack(stack, "stack.yaml").unwrap_err();
    assert_eq!(err.errors.len(), 2, "{err}");
    assert_eq!(err.errors[0].document, 2);
    assert_eq!(err.errors[1].document, 3);
    let text = err.to_string();
    assert!(text.contains("document 2: Model \"bad\" is invalid: spec.source.uri"), "{text}");
    assert!(text.contains("defined twice"), "{text}");
}
