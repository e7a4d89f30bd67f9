//! A stack file: one YAML stream of Hearth resources, the same documents `kubectl apply`
//! takes. `hearth-server up` reads it; so do the tests of the examples.

use std::fmt;

use serde_json::Value;

use crate::validation::{self, ValidationError};
use crate::{Agent, Cascade, KnowledgeBase, Model};

/// Any Hearth resource.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// A served model.
    Model(Box<Model>),
    /// A cascade of models.
    Cascade(Box<Cascade>),
    /// A knowledge base.
    KnowledgeBase(Box<KnowledgeBase>),
    /// An agent.
    Agent(Box<Agent>),
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Model(_) => "Model",
            Self::Cascade(_) => "Cascade",
            Self::KnowledgeBase(_) => "KnowledgeBase",
            Self::Agent(_) => "Agent",
        }
    }

    /// metadata.name.
    pub fn name(&self) -> &str {
        let meta = match self {
            Self::Model(r) => &r.metadata,
            Self::Cascade(r) => &r.metadata,
            Self::KnowledgeBase(r) => &r.metadata,
            Self::Agent(r) => &r.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }

    /// Validates one document (schema, unknown fields, CEL rules) and converts it into the
    /// typed resource.
    pub fn from_value(doc: Value) -> Result<Self, ValidationError> {
        let kind = validation::validate(&doc)?;
        // Typed as validated: a null field is an unset one.
        let doc = validation::without_null_fields(&doc);
        let name = doc["metadata"]["name"].as_str().unwrap_or("<unnamed>").to_owned();
        let typed = match kind {
            "Model" => serde_json::from_value(doc).map(|r| Self::Model(Box::new(r))),
            "Cascade" => serde_json::from_value(doc).map(|r| Self::Cascade(Box::new(r))),
            "KnowledgeBase" => serde_json::from_value(doc).map(|r| Self::KnowledgeBase(Box::new(r))),
            _ => serde_json::from_value(doc).map(|r| Self::Agent(Box::new(r))),
        };
        // The schema admitted it, so a failure here means the schema and the types disagree.
        typed.map_err(|e| ValidationError::Invalid {
            kind: kind.to_owned(),
            name,
            errors: vec![validation::FieldError { path: String::new(), message: e.to_string() }],
        })
    }
}

/// A problem with one document of a stack file.
#[derive(Debug)]
pub struct DocumentError {
    /// Position of the document in the file, counting from 1.
    pub document: usize,
    /// What is wrong with it.
    pub error: StackErrorKind,
}

/// What is wrong with a document.
#[derive(Debug, thiserror::Error)]
pub enum StackErrorKind {
    /// Not valid YAML.
    #[error("not valid YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// Valid YAML, not a valid resource.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Two documents with the same kind and name.
    #[error("{kind} \"{name}\" is defined twice (first in document {first})")]
    Duplicate {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// The earlier document.
        first: usize,
    },
}

/// Every problem found in a stack file.
#[derive(Debug)]
pub struct StackError {
    /// Where the stack came from (a path, or `<stdin>`).
    pub source_name: String,
    /// The problems, in document order.
    pub errors: Vec<DocumentError>,
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} has {} invalid document(s):", self.source_name, self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  document {}: {}", e.document, e.error)?;
        }
        Ok(())
    }
}

impl std::error::Error for StackError {}

/// Parses and validates a multi-document YAML stream of Hearth resources. Empty documents
/// are skipped; every invalid document is reported, not just the first.
pub fn parse_stack(yaml: &str, source_name: &str) -> Result<Vec<Resource>, StackError> {
    use serde::Deserialize;
    let mut resources: Vec<(usize, Resource)> = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let document = i + 1;
        let parsed = serde_json::Value::deserialize(doc);
        let result = match parsed {
            Ok(Value::Null) => continue,
            Ok(value) => Resource::from_value(value).map_err(StackErrorKind::from),
            Err(e) => {
                errors.push(DocumentError { document, error: StackErrorKind::Yaml(e) });
                // A syntax error ends the stream: later documents cannot be located reliably.
                break;
            }
        };
        match result {
            Ok(resource) => {
                if let Some((first, _)) =
                    resources.iter().find(|(_, r)| r.kind() == resource.kind() && r.name() == resource.name())
                {
                    errors.push(DocumentError {
                        document,
                        error: StackErrorKind::Duplicate {
                            kind: resource.kind(),
                            name: resource.name().to_owned(),
                            first: *first,
                        },
                    });
                } else {
                    resources.push((document, resource));
                }
            }
            Err(error) => errors.push(DocumentError { document, error }),
        }
    }
    if errors.is_empty() {
        Ok(resources.into_iter().map(|(_, r)| r).collect())
    } else {
        Err(StackError { source_name: source_name.to_owned(), errors })
    }
}
