//! JSON Schema validation for tool arguments, so a model's call is checked before anything runs.
//!
//! Covers the subset that tool schemas (OpenAPI 3.0/3.1 and MCP `inputSchema`) use in practice:
//! `type` (a name or a list; `integer` accepts any number without a fractional part, so `3.0` is
//! an integer as in JSON Schema), `properties`, `patternProperties`, `required`,
//! `additionalProperties` (boolean or schema), `minProperties`, `maxProperties`, `enum`, `const`
//! (numbers compare by value: `3 == 3.0`), `minimum`, `maximum`, `exclusiveMinimum`,
//! `exclusiveMaximum` (numbers, or OpenAPI 3.0 booleans), `multipleOf`, `minLength`, `maxLength`
//! (counted in characters), `pattern`, `items` (a schema, or a list for tuples), `prefixItems`,
//! `minItems`, `maxItems`, `uniqueItems`, `contains`, `anyOf`, `oneOf`, `allOf`, `not`,
//! `if`/`then`/`else`, OpenAPI 3.0 `nullable`, and local `$ref`s (`#/$defs/X`,
//! `#/definitions/X`, `#/components/schemas/X`, any JSON pointer into the root).
//!
//! Deliberate gaps, all documented rather than guessed:
//! - `format` is ignored (an annotation only, as JSON Schema's default says).
//! - Any keyword not listed above is ignored, as JSON Schema requires of unknown keywords.
//! - `pattern` uses the `regex` crate, whose syntax is close to but not the ECMA-262 dialect;
//!   a pattern it cannot compile (lookaround, backreferences) fails validation with an error that
//!   says so, so a value is never reported as valid without its pattern being checked.
//! - Remote `$ref`s (another file, a URL) are reported as errors, never fetched.
//!
//! Validation is bounded: `$ref` chains deeper than [`MAX_REF_DEPTH`] and schemas that need more
//! than [`MAX_STEPS`] keyword checks fail instead of looping.

use std::fmt;

use serde_json::{Map, Value};

/// How many `$ref`s may be followed in a row while validating or inlining.
pub const MAX_REF_DEPTH: usize = 32;

/// How many schema nodes one validation may visit before it gives up as too complex.
pub const MAX_STEPS: usize = 200_000;

/// How many nodes [`inline_refs`] may produce before it gives up.
const MAX_INLINED_NODES: usize = 100_000;

/// One way a value fails its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Where in the value the problem is, like `$.body.items[2].qty`.
    pub path: String,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "`{}`: {}", self.path, self.message)
    }
}

impl std::error::Error for SchemaError {}

/// Validates `value` against `schema`, resolving local `$ref`s against the schema itself.
pub fn validate(schema: &Value, value: &Value) -> Result<(), Vec<SchemaError>> {
    validate_with_root(schema, value, schema)
}

/// Validates `value` against `schema`, resolving local `$ref`s against `root` (for example the
/// whole OpenAPI document when `schema` is one operation's request body).
pub fn validate_with_root(schema: &Value, value: &Value, root: &Value) -> Result<(), Vec<SchemaError>> {
    let mut validator = Validator { root, steps: 0, errors: Vec::new() };
    validator.check(schema, value, "$", 0);
    if validator.steps > MAX_STEPS {
        validator.error("$", format!("schema is too complex to check (more than {MAX_STEPS} steps)"));
    }
    if validator.errors.is_empty() { Ok(()) } else { Err(validator.errors) }
}

/// Returns `schema` with every local `$ref` replaced by what it points to in `root`, for showing
/// a self-contained schema to a model. Keywords beside a `$ref` are kept and win over the target's.
/// A recursive reference is not expanded a second time: it becomes `{"description": "recursive
/// reference to …"}` (any value). `$defs` and `definitions` are dropped from the top level, since
/// nothing refers to them any more.
pub fn inline_refs(schema: &Value, root: &Value) -> Result<Value, String> {
    let mut inliner = Inliner { root, stack: Vec::new(), nodes: 0 };
    let mut inlined = inliner.inline(schema)?;
    if let Value::Object(map) = &mut inlined {
        map.remove("$defs");
        map.remove("definitions");
    }
    Ok(inlined)
}

/// Resolves a local reference (`#` or `#/json/pointer`) against `root`.
fn resolve<'a>(root: &'a Value, reference: &str) -> Result<&'a Value, String> {
    let Some(pointer) = reference.strip_prefix('#') else {
        return Err(format!("unsupported $ref `{reference}`: only local references (`#/...`) are resolved"));
    };
    root.pointer(pointer).ok_or_else(|| format!("$ref `{reference}` points to nothing in the document"))
}

struct Validator<'a> {
    root: &'a Value,
    steps: usize,
    errors: Vec<SchemaError>,
}

impl<'a> Validator<'a> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(SchemaError { path: path.to_string(), message: message.into() });
    }

    /// Runs `schema` against `value` on a scratch error list, for the combinators.
    fn trial(&mut self, schema: &Value, value: &Value, path: &str, ref_depth: usize) -> Vec<SchemaError> {
        let saved = std::mem::take(&mut self.errors);
        self.check(schema, value, path, ref_depth);
        std::mem::replace(&mut self.errors, saved)
    }

    fn check(&mut self, schema: &Value, value: &Value, path: &str, ref_depth: usize) {
        // Past the budget every check passes silently; validate_with_root then fails the whole value.
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return;
        }
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => return self.error(path, "no value is allowed here"),
            Value::Object(schema) => schema,
            other => return self.error(path, format!("invalid schema: expected an object or boolean, got {other}")),
        };

        if let Some(reference) = schema.get("$ref") {
            let Some(reference) = reference.as_str() else {
                return self.error(path, "invalid schema: `$ref` is not a string");
            };
            if ref_depth >= MAX_REF_DEPTH {
                return self
                    .error(path, format!("$ref `{reference}` nests deeper than {MAX_REF_DEPTH} (cyclic schema?)"));
            }
            match resolve(self.root, reference) {
                Ok(target) => self.check(target, value, path, ref_depth + 1),
                Err(message) => return self.error(path, message),
            }
        }

        if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }

        if let Some(types) = schema.get("type")
            && !self.check_type(types, value, path)
        {
            return;
        }

        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.iter().any(|candidate| json_equal(candidate, value))
        {
            self.error(
                path,
                format!("expected one of {}, got {}", abbreviate(&Value::Array(allowed.clone())), abbreviate(value)),
            );
        }
        if let Some(expected) = schema.get("const")
            && !json_equal(expected, value)
        {
            self.error(path, format!("expected {}, got {}", abbreviate(expected), abbreviate(value)));
        }

        match value {
            Value::Number(number) => {
                if let Some(number) = number.as_f64() {
                    self.check_number(schema, number, path);
                }
            }
            Value::String(text) => self.check_string(schema, text, path),
            Value::Array(items) => self.check_array(schema, items, path, ref_depth),
            Value::Object(object) => self.check_object(schema, object, path, ref_depth),
            Value::Null | Value::Bool(_) => {}
        }

        self.check_combinators(schema, value, path, ref_depth);
    }

    /// Checks `type`; returns whether the value has one of the listed types.
    fn check_type(&mut self, types: &Value, value: &Value, path: &str) -> bool {
        let names: Vec<&str> = match types {
            Value::String(name) => vec![name.as_str()],
            Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
            _ => {
                self.error(path, "invalid schema: `type` is neither a string nor a list");
                return false;
            }
        };
        if names.iter().any(|name| has_type(value, name)) {
            return true;
        }
        let expected = match names.as_slice() {
            [] => "no type".to_string(),
            [one] => (*one).to_string(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
        };
        self.error(path, format!("expected {expected}, got {}", type_name(value)));
        false
    }

    fn check_number(&mut self, schema: &Map<String, Value>, number: f64, path: &str) {
        let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
        // OpenAPI 3.0 spells exclusive bounds as booleans beside minimum/maximum.
        let minimum_exclusive = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
        let maximum_exclusive = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
        if let Some(minimum) = bound("minimum") {
            if minimum_exclusive && number <= minimum {
                self.error(path, format!("expected a number greater than {minimum}, got {number}"));
            } else if number < minimum {
                self.error(path, format!("expected a number of at least {minimum}, got {number}"));
            }
        }
        if let Some(maximum) = bound("maximum") {
            if maximum_exclusive && number >= maximum {
                self.error(path, format!("expected a number less than {maximum}, got {number}"));
            } else if number > maximum {
                self.error(path, format!("expected a number of at most {maximum}, got {number}"));
            }
        }
        if let Some(minimum) = bound("exclusiveMinimum")
            && number <= minimum
        {
            self.error(path, format!("expected a number greater than {minimum}, got {number}"));
        }
        if let Some(maximum) = bound("exclusiveMaximum")
            && number >= maximum
        {
            self.error(path, format!("expected a number less than {maximum}, got {number}"));
        }
        if let Some(divisor) = bound("multipleOf")
            && divisor > 0.0
        {
            let quotient = number / divisor;
            if (quotient - quotient.round()).abs() > 1e-9 * quotient.abs().max(1.0) {
                self.error(path, format!("expected a multiple of {divisor}, got {number}"));
            }
        }
    }

    fn check_string(&mut self, schema: &Map<String, Value>, text: &str, path: &str) {
        let length = text.chars().count();
        if let Some(minimum) = schema.get("minLength").and_then(Value::as_u64)
            && (length as u64) < minimum
        {
            self.error(path, format!("expected at least {minimum} characters, got {length}"));
        }
        if let Some(maximum) = schema.get("maxLength").and_then(Value::as_u64)
            && (length as u64) > maximum
        {
            self.error(path, format!("expected at most {maximum} characters, got {length}"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match compile(pattern) {
                Ok(regex) if regex.is_match(text) => {}
                Ok(_) => {
                    self.error(path, format!("expected a string matching `{pattern}`, got {}", abbreviate_str(text)))
                }
                Err(message) => self.error(path, message),
            }
        }
    }

    fn check_array(&mut self, schema: &Map<String, Value>, items: &[Value], path: &str, ref_depth: usize) {
        let count = items.len();
        if let Some(minimum) = schema.get("minItems").and_then(Value::as_u64)
            && (count as u64) < minimum
        {
            self.error(path, format!("expected at least {minimum} items, got {count}"));
        }
        if let Some(maximum) = schema.get("maxItems").and_then(Value::as_u64)
            && (count as u64) > maximum
        {
            self.error(path, format!("expected at most {maximum} items, got {count}"));
        }
        if schema.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
            'outer: for (first, item) in items.iter().enumerate() {
                for (second, other) in items.iter().enumerate().skip(first + 1) {
                    if json_equal(item, other) {
                        self.error(path, format!("expected unique items, but items {first} and {second} are equal"));
                        break 'outer;
                    }
                }
            }
        }
        // A list under `items` (draft 4–2019) or `prefixItems` (2020-12) describes positions.
        let positional = match (schema.get("prefixItems"), schema.get("items")) {
            (Some(Value::Array(prefix)), _) | (None, Some(Value::Array(prefix))) => Some(prefix),
            _ => None,
        };
        let rest = match schema.get("items") {
            Some(Value::Array(_)) => None,
            other => other,
        };
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            match positional.and_then(|prefix| prefix.get(index)) {
                Some(item_schema) => self.check(item_schema, item, &item_path, ref_depth),
                None => {
                    if let Some(item_schema) = rest {
                        self.check(item_schema, item, &item_path, ref_depth);
                    }
                }
            }
        }
        if let Some(contains) = schema.get("contains")
            && !items.iter().any(|item| self.trial(contains, item, path, ref_depth).is_empty())
        {
            self.error(path, "expected at least one item matching `contains`");
        }
    }

    fn check_object(&mut self, schema: &Map<String, Value>, object: &Map<String, Value>, path: &str, ref_depth: usize) {
        let count = object.len();
        if let Some(minimum) = schema.get("minProperties").and_then(Value::as_u64)
            && (count as u64) < minimum
        {
            self.error(path, format!("expected at least {minimum} properties, got {count}"));
        }
        if let Some(maximum) = schema.get("maxProperties").and_then(Value::as_u64)
            && (count as u64) > maximum
        {
            self.error(path, format!("expected at most {maximum} properties, got {count}"));
        }
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    self.error(path, format!("missing required property `{name}`"));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let mut patterns = Vec::new();
        if let Some(pattern_properties) = schema.get("patternProperties").and_then(Value::as_object) {
            for (pattern, property_schema) in pattern_properties {
                match compile(pattern) {
                    Ok(regex) => patterns.push((regex, property_schema)),
                    Err(message) => self.error(path, message),
                }
            }
        }
        let additional = schema.get("additionalProperties");
        for (name, property) in object {
            let property_path = child_path(path, name);
            let mut matched = false;
            if let Some(property_schema) = properties.and_then(|properties| properties.get(name)) {
                matched = true;
                self.check(property_schema, property, &property_path, ref_depth);
            }
            for (regex, property_schema) in &patterns {
                if regex.is_match(name) {
                    matched = true;
                    self.check(property_schema, property, &property_path, ref_depth);
                }
            }
            match additional {
                Some(Value::Bool(false)) if !matched => {
                    let known: Vec<&str> =
                        properties.map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default();
                    let hint = if known.is_empty() {
                        "no properties are allowed".to_string()
                    } else {
                        format!("allowed: {}", known.join(", "))
                    };
                    self.error(path, format!("unexpected property `{name}` ({hint})"));
                }
                Some(additional @ Value::Object(_)) if !matched => {
                    self.check(additional, property, &property_path, ref_depth);
                }
                _ => {}
            }
        }
    }

    fn check_combinators(&mut self, schema: &Map<String, Value>, value: &Value, path: &str, ref_depth: usize) {
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.check(sub, value, path, ref_depth);
            }
        }
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
            let mut closest: Option<Vec<SchemaError>> = None;
            for sub in any {
                let errors = self.trial(sub, value, path, ref_depth);
                if errors.is_empty() {
                    closest = None;
                    break;
                }
                if closest.as_ref().is_none_or(|best| errors.len() < best.len()) {
                    closest = Some(errors);
                }
            }
            if let Some(closest) = closest {
                self.error(path, format!("does not match any schema in anyOf{}", summarize(&closest)));
            }
        }
        if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
            let mut matching = 0;
            let mut closest: Option<Vec<SchemaError>> = None;
            for sub in one {
                let errors = self.trial(sub, value, path, ref_depth);
                if errors.is_empty() {
                    matching += 1;
                } else if closest.as_ref().is_none_or(|best| errors.len() < best.len()) {
                    closest = Some(errors);
                }
            }
            match matching {
                1 => {}
                0 => {
                    let closest = closest.unwrap_or_default();
                    self.error(path, format!("does not match any schema in oneOf{}", summarize(&closest)));
                }
                many => self.error(path, format!("matches {many} schemas in oneOf; expected exactly one")),
            }
        }
        if let Some(not) = schema.get("not")
            && self.trial(not, value, path, ref_depth).is_empty()
        {
            self.error(path, "matches the schema under `not`");
        }
        if let Some(condition) = schema.get("if") {
            let branch = if self.trial(condition, value, path, ref_depth).is_empty() { "then" } else { "else" };
            if let Some(sub) = schema.get(branch) {
                self.check(sub, value, path, ref_depth);
            }
        }
    }
}

fn summarize(errors: &[SchemaError]) -> String {
    match errors.first() {
        Some(first) => format!(" (closest: {first})"),
        None => String::new(),
    }
}

fn compile(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|error| format!("cannot check pattern `{pattern}`: unsupported regular expression ({error})"))
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => is_integer(value),
        _ => false,
    }
}

fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(number) => {
            number.is_i64() || number.is_u64() || number.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0)
        }
        _ => false,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) if is_integer(value) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// JSON equality with numbers compared by value, so `3` equals `3.0`.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(key, value)| y.get(key).is_some_and(|other| json_equal(value, other)))
        }
        _ => a == b,
    }
}

/// A value's JSON text, cut short so error messages stay readable.
fn abbreviate(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 80 { text } else { format!("{}…", text.chars().take(80).collect::<String>()) }
}

fn abbreviate_str(text: &str) -> String {
    abbreviate(&Value::String(text.to_string()))
}

/// `$.name` for identifier-like keys, `$["odd key"]` otherwise.
fn child_path(path: &str, key: &str) -> String {
    let mut chars = key.chars();
    let identifier = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier { format!("{path}.{key}") } else { format!("{path}[{}]", Value::String(key.to_string())) }
}

struct Inliner<'a> {
    root: &'a Value,
    stack: Vec<String>,
    nodes: usize,
}

impl Inliner<'_> {
    fn inline(&mut self, schema: &Value) -> Result<Value, String> {
        self.nodes += 1;
        if self.nodes > MAX_INLINED_NODES {
            return Err(format!("schema is too large once references are inlined (over {MAX_INLINED_NODES} nodes)"));
        }
        match schema {
            Value::Object(map) => {
                let reference = match map.get("$ref") {
                    Some(Value::String(reference)) => Some(reference.clone()),
                    Some(_) => return Err("`$ref` is not a string".to_string()),
                    None => None,
                };
                let mut out = Map::new();
                if let Some(reference) = reference {
                    if self.stack.contains(&reference) {
                        out.insert(
                            "description".to_string(),
                            Value::String(format!("recursive reference to `{reference}` (not expanded)")),
                        );
                    } else {
                        if self.stack.len() >= MAX_REF_DEPTH {
                            return Err(format!("$ref `{reference}` nests deeper than {MAX_REF_DEPTH}"));
                        }
                        let target = resolve(self.root, &reference)?;
                        self.stack.push(reference);
                        let resolved = self.inline(target);
                        self.stack.pop();
                        match resolved? {
                            Value::Object(resolved) => out = resolved,
                            // A boolean schema behind a reference, with nothing beside it.
                            other if map.len() == 1 => return Ok(other),
                            Value::Bool(true) => {}
                            other => {
                                out.insert("allOf".to_string(), Value::Array(vec![other]));
                            }
                        }
                    }
                }
                for (key, value) in map {
                    if key != "$ref" {
                        out.insert(key.clone(), self.inline(value)?);
                    }
                }
                Ok(Value::Object(out))
            }
            Value::Array(items) => {
                items.iter().map(|item| self.inline(item)).collect::<Result<Vec<_>, _>>().map(Value::Array)
            }
            other => Ok(other.clone()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(schema: Value, value: Value) -> Vec<String> {
        match validate(&schema, &value) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn checks_types_with_integer_semantics_of_json_schema() {
        assert!(errors(json!({"type": "integer"}), json!(3)).is_empty());
        assert!(errors(json!({"type": "integer"}), json!(3.0)).is_empty());
        assert_eq!(errors(json!({"type": "integer"}), json!(3.5)), ["`$`: expected integer, got number"]);
        assert_eq!(errors(json!({"type": "integer"}), json!("3")), ["`$`: expected integer, got string"]);
        assert!(errors(json!({"type": ["string", "null"]}), json!(null)).is_empty());
        assert_eq!(
            errors(json!({"type": ["string", "null"]}), json!(1)),
            ["`$`: expected string or null, got integer"]
        );
        assert!(errors(json!({"type": "number"}), json!(1)).is_empty());
        assert_eq!(errors(json!({"type": "boolean"}), json!("true")), ["`$`: expected boolean, got string"]);
        assert_eq!(errors(json!(false), json!(1)), ["`$`: no value is allowed here"]);
        assert!(errors(json!(true), json!({"anything": 1})).is_empty());
    }

    #[test]
    fn reports_nested_paths() {
        let schema = json!({
            "type": "object",
            "properties": {"body": {"type": "object", "properties": {
                "items": {"type": "array", "items": {"type": "object", "properties": {"qty": {"type": "integer"}}}},
                "odd key": {"type": "string"}
            }}}
        });
        let value = json!({"body": {"items": [{"qty": 1}, {"qty": 2}, {"qty": "three"}], "odd key": 5}});
        assert_eq!(
            errors(schema, value),
            [
                "`$.body.items[2].qty`: expected integer, got string",
                "`$.body[\"odd key\"]`: expected string, got integer"
            ]
        );
    }

    #[test]
    fn checks_required_and_additional_properties() {
        let schema = json!({
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {}},
            "required": ["a", "c"],
            "additionalProperties": false
        });
        assert_eq!(
            errors(schema.clone(), json!({"b": 1, "z": 2})),
            [
                "`$`: missing required property `a`",
                "`$`: missing required property `c`",
                "`$`: unexpected property `z` (allowed: a, b)"
            ]
        );
        // `c` is required but not listed under `properties`, so `additionalProperties: false` rejects it.
        assert_eq!(errors(schema, json!({"a": "x", "c": 1})), ["`$`: unexpected property `c` (allowed: a, b)"]);
        let typed = json!({"type": "object", "additionalProperties": {"type": "integer"}});
        assert_eq!(errors(typed, json!({"n": 1, "m": "x"})), ["`$.m`: expected integer, got string"]);
        let patterned = json!({"patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": false});
        assert_eq!(
            errors(patterned, json!({"x-a": "ok", "y": 1})),
            ["`$`: unexpected property `y` (no properties are allowed)"]
        );
    }

    #[test]
    fn checks_enum_const_and_numeric_bounds() {
        assert!(errors(json!({"enum": ["a", 3]}), json!(3.0)).is_empty());
        assert_eq!(errors(json!({"enum": ["a", "b"]}), json!("c")), ["`$`: expected one of [\"a\",\"b\"], got \"c\""]);
        assert_eq!(errors(json!({"const": 1}), json!(2)), ["`$`: expected 1, got 2"]);
        let bounded = json!({"minimum": 1, "maximum": 10});
        assert!(errors(bounded.clone(), json!(10)).is_empty());
        assert_eq!(errors(bounded.clone(), json!(0)), ["`$`: expected a number of at least 1, got 0"]);
        assert_eq!(errors(bounded, json!(10.5)), ["`$`: expected a number of at most 10, got 10.5"]);
        let exclusive = json!({"exclusiveMinimum": 0, "exclusiveMaximum": 1});
        assert_eq!(errors(exclusive.clone(), json!(0)), ["`$`: expected a number greater than 0, got 0"]);
        assert_eq!(errors(exclusive, json!(1)), ["`$`: expected a number less than 1, got 1"]);
        let openapi30 = json!({"minimum": 0, "exclusiveMinimum": true});
        assert_eq!(errors(openapi30, json!(0)), ["`$`: expected a number greater than 0, got 0"]);
        assert!(errors(json!({"multipleOf": 0.1}), json!(0.3)).is_empty());
        assert_eq!(errors(json!({"multipleOf": 2}), json!(3)).len(), 1);
    }

    #[test]
    fn checks_strings_in_characters_and_patterns() {
        let schema = json!({"type": "string", "minLength": 2, "maxLength": 3});
        assert!(errors(schema.clone(), json!("äöü")).is_empty());
        assert_eq!(errors(schema.clone(), json!("a")), ["`$`: expected at least 2 characters, got 1"]);
        assert_eq!(errors(schema, json!("abcd")), ["`$`: expected at most 3 characters, got 4"]);
        let pattern = json!({"pattern": "^[A-Z]{3}-\\d+$"});
        assert!(errors(pattern.clone(), json!("ABC-12")).is_empty());
        assert_eq!(errors(pattern, json!("abc")), ["`$`: expected a string matching `^[A-Z]{3}-\\d+$`, got \"abc\""]);
        // Unanchored, as in JSON Schema.
        assert!(errors(json!({"pattern": "b"}), json!("abc")).is_empty());
        // A pattern the regex crate cannot compile fails closed instead of passing unchecked.
        let lookahead = errors(json!({"pattern": "^(?=a)"}), json!("a"));
        assert_eq!(lookahead.len(), 1);
        assert!(lookahead[0].contains("cannot check pattern"), "{lookahead:?}");
        assert!(errors(json!({"format": "email"}), json!("not an email")).is_empty());
    }

    #[test]
    fn checks_arrays() {
        let schema =
            json!({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3, "uniqueItems": true});
        assert!(errors(schema.clone(), json!([1, 2])).is_empty());
        assert_eq!(errors(schema.clone(), json!([])), ["`$`: expected at least 1 items, got 0"]);
        assert_eq!(errors(schema.clone(), json!([1, 2, 3, 4])), ["`$`: expected at most 3 items, got 4"]);
        assert_eq!(
            errors(schema.clone(), json!([1, 1.0])),
            ["`$`: expected unique items, but items 0 and 1 are equal"]
        );
        assert_eq!(errors(schema, json!([1, "x"])), ["`$[1]`: expected integer, got string"]);
        let tuple = json!({"prefixItems": [{"type": "string"}, {"type": "integer"}], "items": {"type": "boolean"}});
        assert!(errors(tuple.clone(), json!(["a", 1, true, false])).is_empty());
        assert_eq!(errors(tuple, json!(["a", 1, 2])), ["`$[2]`: expected boolean, got integer"]);
        assert_eq!(errors(json!({"contains": {"const": 5}}), json!([1, 2])).len(), 1);
    }

    #[test]
    fn checks_combinators_and_nullable() {
        let any = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
        assert!(errors(any.clone(), json!(1)).is_empty());
        assert_eq!(
            errors(any, json!(1.5)),
            ["`$`: does not match any schema in anyOf (closest: `$`: expected string, got number)"]
        );
        let one = json!({"oneOf": [{"type": "integer"}, {"type": "number"}]});
        assert!(errors(one.clone(), json!(1.5)).is_empty());
        assert_eq!(errors(one, json!(1)), ["`$`: matches 2 schemas in oneOf; expected exactly one"]);
        let all = json!({"allOf": [{"minimum": 1}, {"maximum": 2}]});
        assert_eq!(errors(all, json!(3)), ["`$`: expected a number of at most 2, got 3"]);
        assert_eq!(errors(json!({"not": {"type": "string"}}), json!("x")), ["`$`: matches the schema under `not`"]);
        let nullable = json!({"type": "string", "nullable": true});
        assert!(errors(nullable.clone(), json!(null)).is_empty());
        assert_eq!(errors(nullable, json!(1)).len(), 1);
        let conditional = json!({"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"minimum": 0}});
        assert_eq!(errors(conditional.clone(), json!("a")).len(), 1);
        assert_eq!(errors(conditional, json!(-1)).len(), 1);
    }

    #[test]
    fn resolves_local_refs_against_the_root() {
        let document = json!({
            "components": {"schemas": {
                "Order": {
                    "type": "object",
                    "properties": {"qty": {"$ref": "#/components/schemas/Qty"}},
                    "required": ["qty"]
                },
                "Qty": {"type": "integer", "minimum": 1}
            }}
        });
        let schema = json!({"$ref": "#/components/schemas/Order"});
        assert!(validate_with_root(&schema, &json!({"qty": 2}), &document).is_ok());
        let failures = validate_with_root(&schema, &json!({"qty": 0}), &document).unwrap_err();
        assert_eq!(failures[0].to_string(), "`$.qty`: expected a number of at least 1, got 0");

        let defs = json!({"$defs": {"Name": {"type": "string"}}, "properties": {"n": {"$ref": "#/$defs/Name"}}});
        assert_eq!(errors(defs, json!({"n": 1})), ["`$.n`: expected string, got integer"]);
        let legacy = json!({"definitions": {"N": {"type": "null"}}, "items": {"$ref": "#/definitions/N"}});
        assert_eq!(errors(legacy, json!([null, 1])), ["`$[1]`: expected null, got integer"]);
        let remote = errors(json!({"$ref": "other.json#/X"}), json!(1));
        assert!(remote[0].contains("only local references"), "{remote:?}");
        let dangling = errors(json!({"$ref": "#/nowhere"}), json!(1));
        assert!(dangling[0].contains("points to nothing"), "{dangling:?}");
    }

    #[test]
    fn stops_on_cyclic_refs() {
        let cyclic = json!({"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"});
        let failures = errors(cyclic, json!(1));
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains("nests deeper than"), "{failures:?}");
        // A schema that branches on itself would take exponential time without the step budget.
        let explosive = json!({"anyOf": [{"$ref": "#"}, {"$ref": "#"}, {"type": "string"}]});
        let failures = errors(explosive, json!(1));
        assert!(!failures.is_empty());
    }

    #[test]
    fn accepts_recursive_schemas_on_finite_values() {
        let tree = json!({
            "$defs": {"Node": {"type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                "v": {"type": "integer"}
            }}},
            "$ref": "#/$defs/Node"
        });
        assert!(errors(tree.clone(), json!({"children": [{"children": [{"v": 1}]}]})).is_empty());
        assert_eq!(
            errors(tree, json!({"children": [{"v": "x"}]})),
            ["`$.children[0].v`: expected integer, got string"]
        );
    }

    #[test]
    fn inlines_refs_for_display() {
        let root = json!({"components": {"schemas": {
            "Pet": {"type": "object", "properties": {"tag": {"$ref": "#/components/schemas/Tag"}}},
            "Tag": {"type": "string", "maxLength": 10}
        }}});
        let inlined = inline_refs(&json!({"$ref": "#/components/schemas/Pet", "description": "a pet"}), &root).unwrap();
        assert_eq!(
            inlined,
            json!({
                "type": "object",
                "description": "a pet",
                "properties": {"tag": {"type": "string", "maxLength": 10}}
            })
        );
        let own = json!({"$defs": {"N": {"type": "integer"}}, "properties": {"n": {"$ref": "#/$defs/N"}}});
        assert_eq!(inline_refs(&own, &own).unwrap(), json!({"properties": {"n": {"type": "integer"}}}));
        let recursive = json!({
            "$defs": {"L": {"type": "object", "properties": {"next": {"$ref": "#/$defs/L"}}}},
            "$ref": "#/$defs/L"
        });
        let inlined = inline_refs(&recursive, &recursive).unwrap();
        assert_eq!(
            inlined["properties"]["next"]["description"],
            json!("recursive reference to `#/$defs/L` (not expanded)")
        );
        assert!(inline_refs(&json!({"$ref": "#/missing"}), &root).is_err());
        // Fan-out through references must not explode the output.
        let mut defs = serde_json::Map::new();
        defs.insert("D0".into(), json!({"type": "string"}));
        for level in 1..30 {
            let previous = format!("#/$defs/D{}", level - 1);
            defs.insert(format!("D{level}"), json!({"anyOf": [{"$ref": previous}, {"$ref": previous}]}));
        }
        let bomb = json!({"$defs": defs, "$ref": "#/$defs/D29"});
        assert!(inline_refs(&bomb, &bomb).unwrap_err().contains("too large"));
    }
}
