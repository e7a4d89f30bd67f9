//! Label and field selectors of list, watch and delete-collection requests.

use serde_json::Value;

/// A parsed `labelSelector` plus `fieldSelector`; an object matches when every requirement holds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Selector {
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

#[derive(Debug, Clone, PartialEq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// `path=value` or `path!=value` over a dotted JSON path such as `metadata.name`.
#[derive(Debug, Clone, PartialEq)]
struct FieldRequirement {
    path: Vec<String>,
    value: String,
    equal: bool,
}

impl Selector {
    /// Parses the query's selectors; the error says which requirement is malformed.
    pub(crate) fn parse(label_selector: Option<&str>, field_selector: Option<&str>) -> Result<Self, String> {
        let labels = split_top_level(label_selector.unwrap_or_default())
            .into_iter()
            .map(parse_label_requirement)
            .collect::<Result<_, _>>()?;
        let fields = split_top_level(field_selector.unwrap_or_default())
            .into_iter()
            .map(|req| {
                let (path, value, equal) = if let Some((p, v)) = req.split_once("!=") {
                    (p, v, false)
                } else if let Some((p, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                    (p, v, true)
                } else {
                    return Err(format!("invalid field selector requirement {req:?}: expected path=value"));
                };
                let path = path.trim().split('.').map(str::to_string).collect();
                Ok(FieldRequirement { path, value: value.trim().to_string(), equal })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { labels, fields })
    }

    /// Whether the object satisfies every requirement.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        let labels_match = self.labels.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
        });
        labels_match
            && self.fields.iter().all(|req| {
                let found = req.path.iter().try_fold(object, |v, segment| v.get(segment));
                let found = match found {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                (found == req.value) == req.equal
            })
    }
}

/// Splits on commas that are not inside `( … )`, dropping empty parts.
fn split_top_level(selector: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

fn parse_label_requirement(req: &str) -> Result<LabelRequirement, String> {
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')'));
        let inner = inner.ok_or_else(|| format!("invalid label selector requirement {req:?}: expected (a,b)"))?;
        Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
    };
    if let Some(key) = req.strip_prefix('!') {
        return Ok(LabelRequirement::NotExists(key.trim().to_string()));
    }
    if let Some((k, v)) = req.split_once("!=") {
        return Ok(LabelRequirement::NotEquals(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
        return Ok(LabelRequirement::Equals(k.trim().into(), v.trim().into()));
    }
    if let Some((k, rest)) = req.split_once(" notin ") {
        return Ok(LabelRequirement::NotIn(k.trim().into(), set(rest)?));
    }
    if let Some((k, rest)) = req.split_once(" in ") {
        return Ok(LabelRequirement::In(k.trim().into(), set(rest)?));
    }
    if req.contains(|c: char| c.is_whitespace() || "()".contains(c)) {
        return Err(format!("invalid label selector requirement {req:?}"));
    }
    Ok(LabelRequirement::Exists(req.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_selectors_cover_equality_and_sets() {
        let obj = object("a", json!({"app": "web", "tier": "front"}));
        let matches = |l: &str| Selector::parse(Some(l), None).unwrap().matches(&obj);
        assert!(matches("app=web"));
        assert!(matches("app==web,tier"));
        assert!(matches("app in (web, api),tier notin (back)"));
        assert!(matches("!missing"));
        assert!(matches("app!=api"));
        assert!(!matches("app=api"));
        assert!(!matches("tier in (back)"));
        assert!(!matches("!app"));
        assert!(Selector::parse(Some("app in web"), None).is_err());
    }

    #[test]
    fn field_selectors_compare_dotted_paths() {
        let obj = object("a", json!({}));
        let matches = |f: &str| Selector::parse(None, Some(f)).unwrap().matches(&obj);
        assert!(matches("metadata.name=a"));
        assert!(matches("metadata.name!=b,metadata.namespace==ns"));
        assert!(!matches("metadata.name=b"));
        assert!(Selector::parse(None, Some("metadata.name")).is_err());
    }
}
