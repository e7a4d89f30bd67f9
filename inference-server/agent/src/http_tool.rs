//! HTTP API operations as agent tools, read from an OpenAPI 3.x document.
//!
//! [`parse_operations`] picks the operations an agent is allowed to call (by `operationId`) and
//! turns each into an [`Operation`]: a method, a path template, its parameters and its JSON body
//! schema, with local `$ref`s inlined so the schema can be shown to a model as is.
//! [`Operation::request`] turns a model's arguments into a request, and is where the safety lies:
//! arguments are validated against [`Operation::arguments_schema`] first, path parameters are
//! percent-encoded byte by byte so they can never add segments or dot-segments, the scheme, host
//! and base path come from the caller and never from the model, and headers that carry
//! credentials or framing cannot be set.
//!
//! Limits, documented rather than guessed: only `application/json` (and `+json`) request bodies
//! are supported; cookie parameters are dropped (an operation with a required one is rejected);
//! header parameters named `Accept`, `Content-Type` or `Authorization` are ignored, as OpenAPI
//! says, and so are the other headers in [`FORBIDDEN_HEADERS`] (the runtime sets those itself);
//! query arrays are sent exploded (`?tag=a&tag=b`), path arrays joined with `,`, objects as JSON.

use std::collections::HashMap;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::schema::{self, SchemaError};

/// Header names a tool call may never set, compared case-insensitively.
pub const FORBIDDEN_HEADERS: &[&str] =
    &["host", "authorization", "cookie", "content-length", "transfer-encoding", "connection"];

/// Header parameters that OpenAPI says to ignore, in addition to [`FORBIDDEN_HEADERS`].
const IGNORED_HEADERS: &[&str] = &["accept", "content-type"];

/// The longest description kept for an operation, in characters.
const MAX_DESCRIPTION_CHARS: usize = 500;

/// How many `$ref`s may be followed in a row for parameters, bodies and path items.
const MAX_REF_DEPTH: usize = 32;

const METHODS: &[(&str, Method)] = &[
    ("get", Method::GET),
    ("put", Method::PUT),
    ("post", Method::POST),
    ("delete", Method::DELETE),
    ("options", Method::OPTIONS),
    ("head", Method::HEAD),
    ("patch", Method::PATCH),
    ("trace", Method::TRACE),
];

/// Why a document could not be read or a call could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    /// The text is neither JSON nor YAML.
    #[error("cannot parse the OpenAPI document: {0}")]
    Parse(String),
    /// The document is not OpenAPI 3.x (for example Swagger 2.0).
    #[error("unsupported OpenAPI version `{0}`; expected 3.x")]
    UnsupportedVersion(String),
    /// The document is OpenAPI but something in it cannot be used.
    #[error("invalid OpenAPI document: {0}")]
    Invalid(String),
    /// Allowed operationIds that the document does not define.
    #[error("operationId(s) not found in the OpenAPI document: {}", .0.join(", "))]
    MissingOperations(Vec<String>),
    /// The model's arguments do not fit the operation.
    #[error("invalid arguments: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidArguments(Vec<SchemaError>),
    /// A header parameter that a tool call may not set.
    #[error("header `{0}` cannot be set by a tool call")]
    ForbiddenHeader(String),
    /// The configured base URL is unusable.
    #[error("invalid base URL `{url}`: {reason}")]
    InvalidBaseUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where a parameter goes in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamLocation {
    /// A `{name}` placeholder in the path template.
    Path,
    /// A query-string pair.
    Query,
    /// A request header.
    Header,
}

/// One parameter of an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    /// The name as in the document; also the argument's property name.
    pub name: String,
    /// Where the value is sent.
    pub location: ParamLocation,
    /// Whether the call must supply it (always true for path parameters).
    pub required: bool,
    /// The value's JSON Schema, refs inlined, with the parameter's description folded in.
    pub schema: Value,
}

/// One HTTP operation an agent may call.
#[derive(Debug, Clone)]
pub struct Operation {
    /// The document's `operationId`; also the tool's name.
    pub operation_id: String,
    /// The HTTP method.
    pub method: Method,
    /// The path template, like `/orders/{id}`.
    pub path: String,
    /// Summary and description, trimmed to 500 characters.
    pub description: String,
    /// Path, query and header parameters (path-level ones merged in, the operation's winning).
    pub parameters: Vec<Parameter>,
    /// The `application/json` request body's schema, refs inlined.
    pub body_schema: Option<Value>,
    /// Whether the request body must be sent.
    pub body_required: bool,
}

/// Reads an OpenAPI 3.x document (JSON or YAML) and returns the operations in `allow`, in that
/// order. An allowed operationId that the document lacks is an error naming it.
pub fn parse_operations(document: &str, allow: &[String]) -> Result<Vec<Operation>, OpenApiError> {
    let root = parse_document(document)?;
    let version = root.get("openapi").map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
    match version {
        Some(version) if version.starts_with("3.") => {}
        Some(version) => return Err(OpenApiError::UnsupportedVersion(version)),
        None => {
            let swagger = root.get("swagger").and_then(Value::as_str).map(|v| format!("swagger {v}"));
            return Err(OpenApiError::UnsupportedVersion(swagger.unwrap_or_else(|| "none".to_string())));
        }
    }
    let paths = root
        .get("paths")
        .and_then(Value::as_object)
        .ok_or_else(|| OpenApiError::Invalid("the document has no `paths` object".to_string()))?;

    let mut found: HashMap<&str, Operation> = HashMap::new();
    for (path, item) in paths {
        let item = follow_refs(&root, item)?;
        for (key, method) in METHODS {
            let Some(operation) = item.get(*key) else { continue };
            let Some(id) = operation.get("operationId").and_then(Value::as_str) else { continue };
            if !allow.iter().any(|allowed| allowed == id) {
                continue;
            }
            if found.contains_key(id) {
                return Err(OpenApiError::Invalid(format!("operationId `{id}` is used by more than one operation")));
            }
            found.insert(id, build_operation(&root, path, method.clone(), item, operation, id)?);
        }
    }

    let mut operations = Vec::new();
    let mut missing = Vec::new();
    for id in allow {
        if operations.iter().any(|operation: &Operation| &operation.operation_id == id) {
            continue;
        }
        match found.remove(id.as_str()) {
            Some(operation) => operations.push(operation),
            None if !missing.contains(id) => missing.push(id.clone()),
            None => {}
        }
    }
    if missing.is_empty() { Ok(operations) } else { Err(OpenApiError::MissingOperations(missing)) }
}

impl Operation {
    /// The schema of the arguments a model passes: an object with one property per parameter
    /// plus `body`, listing the required ones and allowing nothing else.
    pub fn arguments_schema(&self) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for parameter in &self.parameters {
            properties.insert(parameter.name.clone(), parameter.schema.clone());
            if parameter.required {
                required.push(Value::String(parameter.name.clone()));
            }
        }
        if let Some(body) = &self.body_schema {
            properties.insert("body".to_string(), body.clone());
            if self.body_required {
                required.push(Value::String("body".to_string()));
            }
        }
        json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
    }

    /// Builds the HTTP request for a model's `arguments` against `base_url` (which may carry a
    /// base path such as `https://api.example.com/v1`). Nothing in `arguments` can change the
    /// scheme, host, port or base path.
    pub fn request(
        &self,
        client: &reqwest::Client,
        base_url: &str,
        arguments: &Value,
    ) -> Result<reqwest::RequestBuilder, OpenApiError> {
        schema::validate(&self.arguments_schema(), arguments).map_err(OpenApiError::InvalidArguments)?;
        let empty = Map::new();
        let arguments = arguments.as_object().unwrap_or(&empty);
        let invalid = |name: &str, message: String| {
            OpenApiError::InvalidArguments(vec![SchemaError { path: format!("$.{name}"), message }])
        };
        let bad_base =
            |reason: &str| OpenApiError::InvalidBaseUrl { url: base_url.to_string(), reason: reason.to_string() };

        let base = reqwest::Url::parse(base_url).map_err(|error| bad_base(&error.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad_base("the scheme must be http or https"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad_base("a base URL cannot have a query or fragment"));
        }

        let mut path = String::new();
        for piece in template_pieces(&self.path) {
            match piece {
                Piece::Literal(text) => path.push_str(text),
                Piece::Placeholder(name) => {
                    let value = arguments.get(name).map(value_text).unwrap_or_default();
                    // `.` and `..` stay dot-segments even when encoded (`%2E%2E`), so refuse them.
                    if value.is_empty() || value == "." || value == ".." {
                        return Err(invalid(name, "a path parameter must not be empty, `.` or `..`".to_string()));
                    }
                    path.push_str(&encode_path_segment(&value));
                }
            }
        }
        let url = reqwest::Url::parse(&format!("{}{path}", base_url.trim_end_matches('/')))
            .map_err(|error| bad_base(&error.to_string()))?;
        if url.scheme() != base.scheme()
            || url.host() != base.host()
            || url.port_or_known_default() != base.port_or_known_default()
        {
            return Err(bad_base("the operation path would leave the base URL"));
        }

        let mut builder = client.request(self.method.clone(), url);
        let mut query = Vec::new();
        for parameter in &self.parameters {
            let Some(value) = arguments.get(&parameter.name) else { continue };
            match parameter.location {
                ParamLocation::Path => {}
                ParamLocation::Query => match value {
                    Value::Null => {}
                    Value::Array(items) => {
                        query.extend(items.iter().map(|item| (parameter.name.clone(), value_text(item))))
                    }
                    other => query.push((parameter.name.clone(), value_text(other))),
                },
                ParamLocation::Header => {
                    if value.is_null() {
                        continue;
                    }
                    if FORBIDDEN_HEADERS.iter().any(|denied| parameter.name.eq_ignore_ascii_case(denied)) {
                        return Err(OpenApiError::ForbiddenHeader(parameter.name.clone()));
                    }
                    let name = reqwest::header::HeaderName::from_bytes(parameter.name.as_bytes())
                        .map_err(|_| invalid(&parameter.name, "not a valid header name".to_string()))?;
                    let header_value = reqwest::header::HeaderValue::from_str(&value_text(value))
                        .map_err(|_| invalid(&parameter.name, "not a valid header value".to_string()))?;
                    builder = builder.header(name, header_value);
                }
            }
        }
        if !query.is_empty() {
            builder = builder.query(&query);
        }
        if self.body_schema.is_some()
            && let Some(body) = arguments.get("body")
        {
            builder = builder.json(body);
        }
        Ok(builder)
    }
}

/// Reads a response body, stopping at `max_bytes`; the flag says whether anything was cut off.
pub async fn read_capped(response: reqwest::Response, max_bytes: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    // The declared length only sizes the buffer; it is not trusted as a limit.
    let expected = response.content_length().unwrap_or(0).min(max_bytes as u64).min(1 << 20);
    let mut body = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = max_bytes.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// Percent-encodes every byte outside RFC 3986's unreserved set (`A-Z a-z 0-9 - . _ ~`).
fn encode_path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A value as it appears in a path, query or header: strings bare, arrays joined with `,`,
/// objects as JSON.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

enum Piece<'a> {
    Literal(&'a str),
    Placeholder(&'a str),
}

/// Splits `/orders/{id}/items` into literals and placeholder names.
fn template_pieces(template: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        if open > 0 {
            pieces.push(Piece::Literal(&rest[..open]));
        }
        pieces.push(Piece::Placeholder(&rest[open + 1..open + close]));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest));
    }
    pieces
}

fn parse_document(document: &str) -> Result<Value, OpenApiError> {
    if document.trim_start().starts_with('{') {
        return serde_json::from_str(document).map_err(|error| OpenApiError::Parse(format!("JSON: {error}")));
    }
    let mut yaml: serde_yaml::Value =
        serde_yaml::from_str(document).map_err(|error| OpenApiError::Parse(format!("YAML: {error}")))?;
    yaml.apply_merge().map_err(|error| OpenApiError::Parse(format!("YAML merge keys: {error}")))?;
    Ok(yaml_to_json(yaml))
}

/// Converts YAML to JSON, turning non-string keys (`200:` under `responses`) into strings.
fn yaml_to_json(yaml: serde_yaml::Value) -> Value {
    match yaml {
        serde_yaml::Value::Null => Value::Null,
        serde_yaml::Value::Bool(flag) => Value::Bool(flag),
        serde_yaml::Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                Value::from(integer)
            } else if let Some(integer) = number.as_u64() {
                Value::from(integer)
            } else {
                number.as_f64().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
            }
        }
        serde_yaml::Value::String(text) => Value::String(text),
        serde_yaml::Value::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        serde_yaml::Value::Mapping(mapping) => Value::Object(
            mapping
                .into_iter()
                .map(|(key, value)| {
                    let key = match yaml_to_json(key) {
                        Value::String(text) => text,
                        other => other.to_string(),
                    };
                    (key, yaml_to_json(value))
                })
                .collect(),
        ),
        serde_yaml::Value::Tagged(tagged) => yaml_to_json(tagged.value),
    }
}

/// Follows `$ref`s (local only) until a non-reference object is reached.
fn follow_refs<'a>(root: &'a Value, mut value: &'a Value) -> Result<&'a Value, OpenApiError> {
    for _ in 0..MAX_REF_DEPTH {
        let Some(reference) = value.get("$ref") else { return Ok(value) };
        let reference = reference.as_str().unwrap_or_default();
        let pointer = reference.strip_prefix('#').ok_or_else(|| {
            OpenApiError::Invalid(format!("$ref `{reference}` is not local; only `#/...` references are supported"))
        })?;
        value = root
            .pointer(pointer)
            .ok_or_else(|| OpenApiError::Invalid(format!("$ref `{reference}` points to nothing in the document")))?;
    }
    Err(OpenApiError::Invalid(format!("$ref chain deeper than {MAX_REF_DEPTH}")))
}

fn build_operation(
    root: &Value,
    path: &str,
    method: Method,
    item: &Value,
    operation: &Value,
    id: &str,
) -> Result<Operation, OpenApiError> {
    let invalid = |message: String| OpenApiError::Invalid(format!("operation `{id}`: {message}"));
    let inline = |schema: &Value| schema::inline_refs(schema, root).map_err(|message| invalid(message.clone()));

    // Path-level parameters first, so the operation's own ones replace them by (name, in).
    let mut merged: Vec<(String, String, &Value)> = Vec::new();
    for list in [item.get("parameters"), operation.get("parameters")].into_iter().flatten() {
        let Some(list) = list.as_array() else { return Err(invalid("`parameters` is not a list".to_string())) };
        for parameter in list {
            let parameter = follow_refs(root, parameter)?;
            let name = parameter
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("a parameter has no name".into()))?;
            let location = parameter.get("in").and_then(Value::as_str).unwrap_or_default();
            merged.retain(|(existing, existing_location, _)| !(existing == name && existing_location == location));
            merged.push((name.to_string(), location.to_string(), parameter));
        }
    }

    let mut parameters: Vec<Parameter> = Vec::new();
    for (name, location, parameter) in merged {
        let required = parameter.get("required").and_then(Value::as_bool).unwrap_or(false);
        let location = match location.as_str() {
            "path" => ParamLocation::Path,
            "query" => ParamLocation::Query,
            "header" => {
                let lower = name.to_ascii_lowercase();
                if FORBIDDEN_HEADERS.contains(&lower.as_str()) || IGNORED_HEADERS.contains(&lower.as_str()) {
                    continue;
                }
                ParamLocation::Header
            }
            "cookie" if required => {
                return Err(invalid(format!("required cookie parameter `{name}` is not supported")));
            }
            "cookie" => continue,
            other => return Err(invalid(format!("parameter `{name}` has unknown location `{other}`"))),
        };
        if parameters.iter().any(|existing| existing.name == name) {
            return Err(invalid(format!("parameter name `{name}` is used in two locations")));
        }
        let raw_schema = parameter
            .get("schema")
            .or_else(|| {
                parameter
                    .get("content")
                    .and_then(Value::as_object)
                    .and_then(|content| content.values().next()?.get("schema"))
            })
            .cloned()
            .unwrap_or_else(|| json!({}));
        let mut schema = inline(&raw_schema)?;
        if let (Value::Object(map), Some(description)) = (&mut schema, parameter.get("description"))
            && !map.contains_key("description")
        {
            map.insert("description".to_string(), description.clone());
        }
        parameters.push(Parameter { name, location, required: required || location == ParamLocation::Path, schema });
    }

    for piece in template_pieces(path) {
        if let Piece::Placeholder(name) = piece
            && !parameters.iter().any(|p| p.name == name && p.location == ParamLocation::Path)
        {
            return Err(invalid(format!("path `{path}` uses `{{{name}}}` but declares no such path parameter")));
        }
    }

    let (body_schema, body_required) = match operation.get("requestBody") {
        None => (None, false),
        Some(body) => {
            let body = follow_refs(root, body)?;
            let required = body.get("required").and_then(Value::as_bool).unwrap_or(false);
            let content = body.get("content").and_then(Value::as_object);
            let json_media = content.and_then(|content| {
                content.iter().find(|(media, _)| {
                    let media = media.to_ascii_lowercase();
                    media.starts_with("application/json")
                        || media.split(';').next().is_some_and(|m| m.trim().ends_with("+json"))
                })
            });
            match json_media {
                Some((_, media)) => (Some(inline(media.get("schema").unwrap_or(&json!({})))?), required),
                None if required => {
                    return Err(invalid(
                        "its required request body is not JSON; only JSON bodies are supported".into(),
                    ));
                }
                None => (None, false),
            }
        }
    };
    if body_schema.is_some() && parameters.iter().any(|p| p.name == "body") {
        return Err(invalid("a parameter named `body` clashes with the request body argument".to_string()));
    }

    let text = |key: &str| operation.get(key).and_then(Value::as_str).map(str::trim).unwrap_or_default();
    let description =
        [text("summary"), text("description")].into_iter().filter(|t| !t.is_empty()).collect::<Vec<_>>().join("\n");
    let description = if description.chars().count() > MAX_DESCRIPTION_CHARS {
        let cut: String = description.chars().take(MAX_DESCRIPTION_CHARS - 1).collect();
        format!("{}…", cut.trim_end())
    } else {
        description
    };

    Ok(Operation {
        operation_id: id.to_string(),
        method,
        path: path.to_string(),
        description,
        parameters,
        body_schema,
        body_required,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::Request;
    use axum::routing::get;

    const PETSTORE: &str = r##"
openapi: 3.0.3
info: {title: Orders, version: "1"}
paths:
  /orders/{id}:
    parameters:
      - $ref: '#/components/parameters/OrderId'
      - name: verbose
        in: query
        schema: {type: boolean}
    get:
      operationId: getOrder
      summary: Fetch one order.
      description: Returns the order with its items.
      parameters:
        - name: verbose
          in: query
          required: true
          description: Include line items.
          schema: {type: boolean}
        - name: X-Request-Id
          in: header
          schema: {type: string}
        - name: Authorization
          in: header
          schema: {type: string}
      responses:
        200: {description: ok}
    delete:
      operationId: deleteOrder
      responses:
        204: {description: gone}
  /orders:
    post:
      operationId: createOrder
      requestBody:
        $ref: '#/components/requestBodies/NewOrder'
      parameters:
        - name: tag
          in: query
          schema: {type: array, items: {type: string}}
      responses:
        201: {description: created}
components:
  parameters:
    OrderId:
      name: id
      in: path
      required: true
      schema: {type: string}
  requestBodies:
    NewOrder:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/NewOrder'}
  schemas:
    NewOrder:
      type: object
      required: [sku, qty]
      additionalProperties: false
      properties:
        sku: {type: string}
        qty: {type: integer, minimum: 1}
"##;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn operation(id: &str) -> Operation {
        parse_operations(PETSTORE, &ids(&[id])).unwrap().remove(0)
    }

    #[test]
    fn parses_allowed_operations_with_merged_parameters_and_refs() {
        let operations = parse_operations(PETSTORE, &ids(&["createOrder", "getOrder"])).unwrap();
        assert_eq!(operations.len(), 2);
        assert_eq!(operations[0].operation_id, "createOrder");
        let get_order = &operations[1];
        assert_eq!(get_order.method, Method::GET);
        assert_eq!(get_order.path, "/orders/{id}");
        assert_eq!(get_order.description, "Fetch one order.\nReturns the order with its items.");
        let summary: Vec<(&str, ParamLocation, bool)> =
            get_order.parameters.iter().map(|p| (p.name.as_str(), p.location, p.required)).collect();
        // The operation's `verbose` replaced the path-level one; Authorization was dropped.
        assert_eq!(
            summary,
            [
                ("id", ParamLocation::Path, true),
                ("verbose", ParamLocation::Query, true),
                ("X-Request-Id", ParamLocation::Header, false)
            ]
        );
        assert_eq!(get_order.parameters[1].schema, json!({"type": "boolean", "description": "Include line items."}));
        assert!(get_order.body_schema.is_none());

        let create = &operations[0];
        assert!(create.body_required);
        assert_eq!(create.body_schema.as_ref().unwrap()["properties"]["qty"], json!({"type": "integer", "minimum": 1}));
        let schema = create.arguments_schema();
        assert_eq!(schema["required"], json!(["body"]));
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(schema["properties"]["tag"]["type"], json!("array"));
    }

    #[test]
    fn names_missing_operation_ids() {
        let error = parse_operations(PETSTORE, &ids(&["getOrder", "refundOrder", "listPets"])).unwrap_err();
        assert!(
            matches!(&error, OpenApiError::MissingOperations(missing) if missing == &ids(&["refundOrder", "listPets"]))
        );
        assert_eq!(error.to_string(), "operationId(s) not found in the OpenAPI document: refundOrder, listPets");
    }

    #[test]
    fn accepts_json_documents_and_rejects_swagger_2() {
        let document = json!({"openapi": "3.1.0", "paths": {"/ping": {"get": {"operationId": "ping"}}}}).to_string();
        let operations = parse_operations(&document, &ids(&["ping"])).unwrap();
        assert_eq!(operations[0].arguments_schema()["properties"], json!({}));
        let swagger = r#"{"swagger": "2.0", "paths": {}}"#;
        assert!(matches!(parse_operations(swagger, &[]).unwrap_err(), OpenApiError::UnsupportedVersion(_)));
        assert!(matches!(parse_operations("paths: [unclosed", &[]).unwrap_err(), OpenApiError::Parse(_)));
    }

    #[test]
    fn rejects_path_placeholders_without_parameters() {
        let document = "openapi: '3.0.0'\npaths:\n  /a/{x}:\n    get: {operationId: a}\n";
        let error = parse_operations(document, &ids(&["a"])).unwrap_err();
        assert!(error.to_string().contains("declares no such path parameter"), "{error}");
    }

    #[test]
    fn encodes_path_parameters_so_they_cannot_traverse() {
        let client = reqwest::Client::new();
        let get_order = operation("getOrder");
        let request = get_order
            .request(&client, "http://api.test/v1/", &json!({"id": "../admin", "verbose": true}))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(request.url().as_str(), "http://api.test/v1/orders/..%2Fadmin?verbose=true");
        let request = get_order
            .request(&client, "http://api.test", &json!({"id": "a b/ü?#", "verbose": false}))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(request.url().path(), "/orders/a%20b%2F%C3%BC%3F%23");
        for dots in ["..", ".", ""] {
            let error =
                get_order.request(&client, "http://api.test", &json!({"id": dots, "verbose": true})).unwrap_err();
            assert!(error.to_string().contains("must not be empty"), "{dots:?}: {error}");
        }
    }

    #[test]
    fn validates_arguments_before_building() {
        let client = reqwest::Client::new();
        let create = operation("createOrder");
        let error = create.request(&client, "http://api.test", &json!({"body": {"sku": "A", "qty": "2"}})).unwrap_err();
        assert_eq!(error.to_string(), "invalid arguments: `$.body.qty`: expected integer, got string");
        let error = create
            .request(&client, "http://api.test", &json!({"body": {"sku": "A", "qty": 1}, "host": "evil"}))
            .unwrap_err();
        assert!(matches!(error, OpenApiError::InvalidArguments(_)), "{error}");
        assert!(create.request(&client, "http://api.test", &json!({})).is_err());
        assert!(matches!(
            create.request(&client, "file:///etc", &json!({"body": {"sku": "A", "qty": 1}})).unwrap_err(),
            OpenApiError::InvalidBaseUrl { .. }
        ));
    }

    #[test]
    fn refuses_forbidden_and_malformed_headers() {
        let client = reqwest::Client::new();
        let mut get_order = operation("getOrder");
        let error = get_order
            .request(
                &client,
                "http://api.test",
                &json!({"id": "1", "verbose": true, "X-Request-Id": "a\r\nHost: evil"}),
            )
            .unwrap_err();
        assert!(error.to_string().contains("not a valid header value"), "{error}");
        get_order.parameters.push(Parameter {
            name: "Cookie".into(),
            location: ParamLocation::Header,
            required: false,
            schema: json!({"type": "string"}),
        });
        let error = get_order
            .request(&client, "http://api.test", &json!({"id": "1", "verbose": true, "Cookie": "s=1"}))
            .unwrap_err();
        assert!(matches!(error, OpenApiError::ForbiddenHeader(name) if name == "Cookie"));
    }

    async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}")
    }

    async fn echo(request: Request) -> axum::Json<Value> {
        let method = request.method().to_string();
        let uri = request.uri().clone();
        let header = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap();
        let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
        axum::Json(json!({"method": method, "path": uri.path(), "query": uri.query(), "header": header, "body": body}))
    }

    #[tokio::test]
    async fn sends_the_request_to_a_server() {
        let base = serve(Router::new().fallback(echo)).await;
        let client = reqwest::Client::new();
        let create = operation("createOrder");
        let arguments = json!({"tag": ["a b", "c&d"], "body": {"sku": "X-1", "qty": 2}});
        let response = create.request(&client, &format!("{base}/api/"), &arguments).unwrap().send().await.unwrap();
        let seen: Value = response.json().await.unwrap();
        assert_eq!(
            seen,
            json!({
                "method": "POST",
                "path": "/api/orders",
                "query": "tag=a+b&tag=c%26d",
                "header": null,
                "body": {"sku": "X-1", "qty": 2}
            })
        );

        let get_order = operation("getOrder");
        let arguments = json!({"id": "../admin", "verbose": true, "X-Request-Id": "r-1"});
        let seen: Value =
            get_order.request(&client, &base, &arguments).unwrap().send().await.unwrap().json().await.unwrap();
        assert_eq!(seen["method"], "GET");
        assert_eq!(seen["path"], "/orders/..%2Fadmin");
        assert_eq!(seen["query"], "verbose=true");
        assert_eq!(seen["header"], "r-1");
    }

    #[tokio::test]
    async fn caps_response_bodies() {
        let app = Router::new()
            .route("/big", get(|| async { "x".repeat(3 * 1024 * 1024) }))
            .route("/small", get(|| async { "hello" }));
        let base = serve(app).await;
        let client = reqwest::Client::new();
        let response = client.get(format!("{base}/big")).send().await.unwrap();
        let (body, truncated) = read_capped(response, 100_000).await.unwrap();
        assert_eq!(body.len(), 100_000);
        assert!(truncated);
        let response = client.get(format!("{base}/small")).send().await.unwrap();
        let (body, truncated) = read_capped(response, 5).await.unwrap();
        assert_eq!((body.as_slice(), truncated), (b"hello".as_slice(), false));
    }
}
