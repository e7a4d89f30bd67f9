//! Property tests for bad manifests (fuzz targets run as ordinary tests): arbitrary YAML and
//! JSON documents, and the example manifests with one field dropped, retyped, renamed or set to
//! an extreme, go through `parse_stack` and the typed serde paths without a panic; a refusal
//! names the document and the field at fault, and whatever is accepted round-trips.
//!
//! Runs are reproducible: a fixed seed and a capped case count, so a failure prints the same
//! shrunk input on every run. `PROPTEST_RNG_SEED=<n>` explores other seeds, `PROPTEST_CASES=<n>`
//! runs more cases.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use hearth_crds::stack::StackErrorKind;
use hearth_crds::validation::{ValidationError, openapi_schema, without_null_fields};
use hearth_crds::{Agent, Cascade, KnowledgeBase, Model, Resource, parse_stack};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed};
use serde::Deserialize;
use serde_json::{Value, json};

/// Cases per property when `PROPTEST_CASES` is not set.
const CASES: u32 = 256;
/// Cases for the mutated examples: each takes about half a millisecond, and the fields worth
/// breaking are a few among hundreds.
const MUTATION_CASES: u32 = 2048;
const SEED: u64 = 0x4845_4152_5448; // "HEARTH"

fn config(cases: u32) -> Config {
    let from_env = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() { from_env.cases } else { cases },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(SEED)
        },
        failure_persistence: None,
        ..from_env
    }
}

/// This package's directory, read at run time (a binary reused from another checkout still
/// reads this checkout's files).
fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from).join("..")
}

/// Every example stack: (file name, its documents).
fn examples() -> &'static [(String, Vec<Value>)] {
    static EXAMPLES: OnceLock<Vec<(String, Vec<Value>)>> = OnceLock::new();
    EXAMPLES.get_or_init(|| {
        let dir = repo().join("manifests/examples");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no examples in {}", dir.display());
        files
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path).unwrap();
                let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
                    .map(|d| Value::deserialize(d).unwrap())
                    .filter(|v| !v.is_null())
                    .collect();
                (path.file_name().unwrap().to_string_lossy().into_owned(), docs)
            })
            .collect()
    })
}

/// The message of every CEL rule in the CRDs: those errors may point at a field next to the one
/// that changed (a cross-field rule names the field it is about).
fn cel_messages() -> &'static BTreeSet<String> {
    static MESSAGES: OnceLock<BTreeSet<String>> = OnceLock::new();
    MESSAGES.get_or_init(|| {
        fn walk(v: &Value, out: &mut BTreeSet<String>) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                        out.extend(rules.iter().filter_map(|r| r["message"].as_str().map(str::to_owned)));
                    }
                    map.values().for_each(|c| walk(c, out));
                }
                Value::Array(items) => items.iter().for_each(|c| walk(c, out)),
                _ => {}
            }
        }
        let mut out = BTreeSet::new();
        for crd in hearth_crds::crds() {
            walk(&openapi_schema(&crd), &mut out);
        }
        out
    })
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `spec.stages[1].minConfidence`, as the validation errors write paths.
fn dotted(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Every node of a document, the root included.
fn paths(value: &Value, prefix: &mut Vec<Segment>, out: &mut Vec<Vec<Segment>>) {
    out.push(prefix.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(Segment::Key(k.clone()));
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(Segment::Index(i));
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(value: &'a mut Value, path: &[Segment]) -> &'a mut Value {
    path.iter().fold(value, |v, segment| match segment {
        Segment::Key(k) => &mut v[k.as_str()],
        Segment::Index(i) => &mut v[*i],
    })
}

/// Placeholder for a scalar written as raw YAML text.
const RAW: &str = "@@raw@@";

/// One change to one field of an example.
#[derive(Clone, Debug)]
enum Mutation {
    /// Remove the field (or list item).
    Drop,
    /// Give it another value (of another type, or an extreme of its own).
    Replace(Value),
    /// Rename the field to one no schema knows.
    Rename(String),
    /// Write it as this raw YAML scalar (`.nan`, `1e400`, tags, anchors…).
    Raw(&'static str),
}

fn edge_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(i64::MIN)),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(u64::from(u32::MAX) + 1)),
        Just(json!(i64::from(i32::MAX) + 1)),
        Just(json!(1e308)),
        Just(json!(-1e308)),
        Just(json!(1e20)),
        Just(json!(1e-308)),
        Just(json!(0.5)),
        Just(json!(1.0)),
        Just(json!(16.0)),
        Just(json!(-0.0)),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9-]{1,12}",
        ".{0,16}",
        Just("x".repeat(5000)),
        Just("hf://org/repo/file.gguf".to_owned()),
        Just("Ünïcödé 東京 🚀".to_owned()),
        Just("-leading-dash".to_owned()),
        Just("UPPER".to_owned()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        edge_number(),
        text().prop_map(Value::String)
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z]{1,10}", inner), 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => Just(Mutation::Drop),
        4 => edge_number().prop_map(Mutation::Replace),
        3 => json_value().prop_map(Mutation::Replace),
        1 => "x[A-Z][a-zA-Z]{0,8}".prop_map(Mutation::Rename),
        2 => prop::sample::select(
            &[
                ".nan", ".inf", "-.inf", "1e400", "-1e400", "123456789012345678901234567890", "0x7fffffffffffffff",
                "0o777", "~", "!!binary aGVsbG8=", "!!str 5", "!!float 3", "2024-01-01", "yes", "0.1e-500", "'",
                "*undefined", "[1, [2, [3]]]", "{a: {b: c}}", "!custom x",
            ][..],
        )
        .prop_map(Mutation::Raw),
    ]
}

/// An example stack with one document changed: what is sent, and where the change is.
#[derive(Debug)]
struct Mutated {
    file: String,
    yaml: String,
    /// Position of the changed document, from 1.
    document: usize,
    /// The changed document as parsed back (None when it no longer parses or is empty).
    doc: Option<Value>,
    /// The changed field, and for a rename the new name's path as well.
    paths: Vec<String>,
    /// Whether the change was written as raw YAML text.
    raw: bool,
}

fn mutate(file: Index, doc: Index, node: Index, mutation: &Mutation) -> Mutated {
    let (name, docs) = &examples()[file.index(examples().len())];
    let mut docs = docs.clone();
    let d = doc.index(docs.len());
    let mut all = Vec::new();
    paths(&docs[d], &mut Vec::new(), &mut all);
    let path = all[node.index(all.len())].clone();
    match mutation {
        Mutation::Drop | Mutation::Rename(_) if path.is_empty() => docs[d] = Value::Null,
        Mutation::Drop | Mutation::Rename(_) => {
            let (last, parent) = path.split_last().expect("not the root");
            let removed = match (node_mut(&mut docs[d], parent), last) {
                (Value::Object(map), Segment::Key(k)) => map.remove(k),
                (Value::Array(items), Segment::Index(i)) => Some(items.remove(*i)),
                _ => None,
            };
            if let (Mutation::Rename(new), Some(value), Value::Object(map)) =
                (mutation, removed, node_mut(&mut docs[d], parent))
            {
                map.insert(new.clone(), value);
            }
        }
        Mutation::Replace(value) => *node_mut(&mut docs[d], &path) = value.clone(),
        Mutation::Raw(_) => *node_mut(&mut docs[d], &path) = json!(RAW),
    }
    let mut yaml: String = docs.iter().map(|v| format!("---\n{}", serde_yaml::to_string(v).unwrap())).collect();
    if let Mutation::Raw(raw) = mutation {
        yaml = yaml.replace(&format!("'{RAW}'"), raw).replace(RAW, raw);
    }
    let reparsed = yaml_documents(&yaml);
    let mut paths = vec![dotted(&path)];
    if let (Mutation::Rename(new), Some((_, parent))) = (mutation, path.split_last()) {
        let mut renamed = parent.to_vec();
        renamed.push(Segment::Key(new.clone()));
        paths.push(dotted(&renamed));
    }
    Mutated {
        file: name.clone(),
        yaml,
        document: d + 1,
        doc: reparsed.get(d).cloned().flatten().filter(|v| !v.is_null()),
        paths,
        raw: matches!(mutation, Mutation::Raw(_)),
    }
}

/// The documents of a YAML stream, up to and including the first that does not parse (`None`):
/// after a syntax error the stream's iterator never ends.
fn yaml_documents(yaml: &str) -> Vec<Option<Value>> {
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(yaml) {
        let doc = Value::deserialize(d).ok();
        let broken = doc.is_none();
        docs.push(doc);
        if broken {
            break;
        }
    }
    docs
}

/// Whether an error at `error` is about a change at `changed`: the same field, one that holds
/// it (a required field gone, a wrong object), one it holds, or a sibling (cross-field rules).
fn related(changed: &str, error: &str) -> bool {
    let holds = |outer: &str, inner: &str| {
        outer.is_empty()
            || inner == outer
            || inner.starts_with(&format!("{outer}."))
            || inner.starts_with(&format!("{outer}["))
    };
    let parent = |p: &str| p.rfind(['.', '[']).map_or("", |i| &p[..i]).to_owned();
    holds(error, changed) || holds(changed, error) || parent(error) == parent(changed)
}

/// Typed resource → JSON → typed keeps every field.
fn round_trips(r: &Resource) -> Result<(), TestCaseError> {
    let json = match r {
        Resource::Model(m) => serde_json::to_value(m),
        Resource::Cascade(c) => serde_json::to_value(c),
        Resource::KnowledgeBase(k) => serde_json::to_value(k),
        Resource::Agent(a) => serde_json::to_value(a),
    }
    .unwrap();
    let back = Resource::from_value(json.clone()).map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
    prop_assert_eq!(&back, r);
    Ok(())
}

/// The typed serde paths (what the operator's watch and `hearth-server up` deserialise with)
/// never panic, and agree with validation where validation accepts (on the document as
/// validated: null fields unset, as the API server prunes them).
fn typed_paths_agree(doc: &Value, accepted: bool) -> Result<(), TestCaseError> {
    fn typed<T: serde::de::DeserializeOwned>(doc: &Value) -> bool {
        let _ = serde_yaml::from_str::<T>(&serde_yaml::to_string(doc).unwrap());
        let _ = serde_json::from_value::<T>(doc.clone());
        serde_json::from_value::<T>(without_null_fields(doc)).is_ok()
    }
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let typed = match kind {
        "Model" => typed::<Model>(doc),
        "Cascade" => typed::<Cascade>(doc),
        "KnowledgeBase" => typed::<KnowledgeBase>(doc),
        "Agent" => typed::<Agent>(doc),
        _ => return Ok(()),
    };
    if accepted {
        prop_assert!(typed, "validation accepted a {} the types refuse: {}", kind, doc);
    }
    Ok(())
}

/// A refusal names the document, and each field error names a field.
fn check_refusal(err: &hearth_crds::stack::StackError, documents: usize) -> Result<(), TestCaseError> {
    let text = err.to_string();
    prop_assert!(!err.errors.is_empty());
    for e in &err.errors {
        prop_assert!((1..=documents).contains(&e.document), "document {} of {}", e.document, documents);
        prop_assert!(text.contains(&format!("document {}: ", e.document)), "{}", text);
        if let StackErrorKind::Invalid(ValidationError::Invalid { errors, .. }) = &e.error {
            prop_assert!(!errors.is_empty(), "{}", text);
            for f in errors {
                prop_assert!(
                    !f.path.is_empty() || f.message.contains("is a required property"),
                    "a field error that names no field: {:?} in {}",
                    f,
                    text
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(MUTATION_CASES))]

    /// One field of an example dropped, retyped, renamed or set to an extreme: accepted (and then
    /// it round-trips), or refused for that document with an error that names the field.
    #[test]
    fn a_mutated_example_is_accepted_or_refused_naming_the_field(
        file in any::<Index>(), doc in any::<Index>(), node in any::<Index>(), mutation in mutation(),
    ) {
        let m = mutate(file, doc, node, &mutation);
        let documents = examples().iter().find(|(f, _)| *f == m.file).map_or(0, |(_, d)| d.len());
        match parse_stack(&m.yaml, &m.file) {
            Ok(resources) => {
                let expected = documents - usize::from(m.doc.is_none());
                prop_assert_eq!(resources.len(), expected, "documents lost from {}", m.yaml);
                for r in &resources {
                    round_trips(r)?;
                }
                if let Some(doc) = &m.doc {
                    typed_paths_agree(doc, true)?;
                }
            }
            Err(err) => {
                check_refusal(&err, documents)?;
                let text = err.to_string();
                if let Some(doc) = &m.doc {
                    typed_paths_agree(doc, false)?;
                }
                for e in &err.errors {
                    match &e.error {
                        // Renaming or dropping `metadata.name` can make two documents one.
                        StackErrorKind::Duplicate { first, .. } => {
                            prop_assert!(e.document == m.document || *first == m.document, "{}", text);
                        }
                        StackErrorKind::Yaml(_) => {
                            prop_assert!(m.raw, "our own YAML does not parse: {}", text);
                            prop_assert_eq!(e.document, m.document, "{}", text);
                        }
                        StackErrorKind::Invalid(v) => {
                            prop_assert_eq!(e.document, m.document, "an unchanged document refused: {}", text);
                            let named = m.paths.iter().any(|changed| match v {
                                ValidationError::NotAnObject(_) => changed.is_empty(),
                                ValidationError::ApiVersion { .. } => changed.is_empty() || changed == "apiVersion",
                                ValidationError::Kind(_) => changed.is_empty() || changed == "kind",
                                ValidationError::Invalid { errors, .. } => {
                                    errors.iter().any(|f| related(changed, &f.path) || cel_messages().contains(&f.message))
                                }
                            });
                            prop_assert!(named, "changed {:?}, but the error names other fields: {}", m.paths, text);
                        }
                    }
                }
            }
        }
    }

}

proptest! {
    #![proptest_config(config(CASES))]

    /// Arbitrary YAML streams (syntax pieces, tags, anchors, document markers) never panic the
    /// parser; a refusal names its document.
    #[test]
    fn arbitrary_yaml_is_parsed_or_refused(pieces in prop::collection::vec(prop_oneof![
        3 => prop::sample::select(&[
            "---\n", "...\n", "apiVersion: hearth.dev/v1alpha1\n", "kind: Model\n", "kind: Cascade\n", "kind: Agent\n",
            "kind: KnowledgeBase\n", "metadata:\n  name: m\n", "spec:\n", "  source:\n    uri: file:///m.gguf\n",
            "  stages:\n    - model: a\n", ": ", "- ", "{", "}", "[", "]", ", ", "&a ", "*a ", "<<: *a\n", "!!binary ",
            "!!float ", "!tag ", "? ", "|\n", ">-\n", "'", "\"", "\n", "\n  ", "\t", "# comment\n", "~", "null",
            "1e400", ".nan", "0x1F", "%YAML 1.2\n", "\u{feff}", "é", "🚀",
        ][..]).prop_map(str::to_owned),
        1 => "[a-zA-Z0-9 ]{1,8}",
        1 => any::<char>().prop_map(String::from),
    ], 0..48)) {
        let yaml = pieces.concat();
        if let Err(err) = parse_stack(&yaml, "fuzz.yaml") {
            let documents = yaml_documents(&yaml).len().max(1);
            check_refusal(&err, documents)?;
        }
    }

    /// Arbitrary JSON documents, most of them in a Hearth envelope so they reach the schema and
    /// the CEL rules: validated without a panic, and the typed paths agree.
    #[test]
    fn arbitrary_documents_are_validated_or_refused(
        kind in prop::sample::select(&["Model", "Cascade", "KnowledgeBase", "Agent", "Other"][..]),
        spec in json_value(),
        name in prop_oneof![Just("ok".to_owned()), text()],
        metadata in prop::collection::vec((prop::sample::select(&[
            "namespace", "labels", "annotations", "generation", "uid", "resourceVersion", "creationTimestamp",
            "deletionTimestamp", "finalizers", "ownerReferences", "generateName", "managedFields",
        ][..]), json_value()), 0..3),
        enveloped in prop::bool::weighted(0.9),
        bare in json_value(),
    ) {
        let doc = if enveloped {
            let mut meta: serde_json::Map<String, Value> = metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            meta.insert("name".into(), json!(name));
            json!({"apiVersion": "hearth.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec})
        } else {
            bare
        };
        let accepted = Resource::from_value(doc.clone());
        typed_paths_agree(&doc, accepted.is_ok())?;
        if let Ok(r) = &accepted {
            round_trips(r)?;
        }
        let yaml = serde_json::to_string(&doc).unwrap();
        match parse_stack(&yaml, "fuzz.json") {
            Ok(resources) => prop_assert_eq!(resources.len(), usize::from(!doc.is_null())),
            Err(err) => check_refusal(&err, 1)?,
        }
    }
}

/// Aliases that expand exponentially are refused, not expanded until memory runs out.
#[test]
fn a_billion_laughs_is_refused_quickly() {
    let mut yaml = String::from(
        "apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {name: lol}\nspec:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        yaml.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    let started = std::time::Instant::now();
    let err = parse_stack(&yaml, "laughs.yaml").expect_err("refused");
    assert!(started.elapsed().as_secs() < 5, "took {:?}", started.elapsed());
    assert_eq!(err.errors[0].document, 1, "{err}");
}

/// Regression: a Quantity (`x-kubernetes-int-or-string`) of the wrong type passed the schema and
/// was refused by the types with no field and no name: `Model "" is invalid: invalid type: null,
/// expected Quantity`.
#[test]
fn a_quantity_of_the_wrong_type_is_refused_naming_the_field() {
    for (value, accepted) in [
        ("null", true),
        ("true", false),
        ("{a: 1}", false),
        ("[1]", false),
        ("1.5", false),
        ("2", true),
        ("'500m'", true),
    ] {
        let yaml = format!(
            "apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {{name: m}}\n\
             spec: {{source: {{uri: 'file:///m.gguf'}}, resources: {{limits: {{cpu: {value}}}}}}}\n"
        );
        match parse_stack(&yaml, "quantity.yaml") {
            Ok(_) => assert!(accepted, "cpu: {value} was accepted"),
            Err(err) => {
                assert!(!accepted, "cpu: {value} was refused: {err}");
                let text = err.to_string();
                assert!(text.contains("Model \"m\" is invalid: spec.resources.limits.cpu"), "cpu: {value}: {text}");
            }
        }
    }
}

/// Regression: a null field passed the CEL rules' `has()` but reached the types as unset, so a
/// Cascade's first stage could have no threshold (and never escalate) and an Agent tool no kind.
#[test]
fn a_null_field_counts_as_unset_for_the_rules() {
    let cascade = "apiVersion: hearth.dev/v1alpha1\nkind: Cascade\nmetadata: {name: c}\n\
                   spec: {stages: [{model: a, minConfidence: null}, {model: b}]}\n";
    let err = parse_stack(cascade, "cascade.yaml").expect_err("a first stage without a threshold");
    assert!(err.to_string().contains("spec.stages: every stage but the last must set minConfidence"), "{err}");
    let nan = cascade.replace("minConfidence: null", "minConfidence: .nan");
    assert!(parse_stack(&nan, "cascade.yaml").is_err(), ".nan reads as null");
    let agent = "apiVersion: hearth.dev/v1alpha1\nkind: Agent\nmetadata: {name: a}\n\
                 spec: {model: {model: m}, tools: [{retrieval: null}]}\n";
    let err = parse_stack(agent, "agent.yaml").expect_err("a tool of no kind");
    assert!(err.to_string().contains("set exactly one of retrieval, http, agent, mcp or calculator"), "{err}");
    // A null optional field is simply unset, and a null defaulted one takes its default.
    let model = "apiVersion: hearth.dev/v1alpha1\nkind: Model\nmetadata: {name: m}\n\
                 spec: {source: {uri: 'file:///m.gguf'}, contextLength: null, replicas: null}\n";
    let stack = parse_stack(model, "model.yaml").unwrap_or_else(|e| panic!("{e}"));
    let Resource::Model(m) = &stack[0] else { panic!("not a Model") };
    assert_eq!((m.spec.context_length, m.spec.replicas), (None, 1));
}
