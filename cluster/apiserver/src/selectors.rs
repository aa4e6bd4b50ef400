//! Label selectors (`app=web,tier in (a,b),!canary`) and field selectors
//! (`spec.nodeName=n1,status.phase!=Failed`) as list and watch requests carry them,
//! parsed with Kubernetes' syntax and error messages, and matched against objects.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ApiError;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value` (also true without the key).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true without the key).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key>n`.
    GreaterThan(String, i64),
    /// `key<n`.
    LessThan(String, i64),
}

/// A parsed label selector: every requirement must hold (empty: everything matches).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The requirements.
    pub requirements: Vec<Requirement>,
}

fn bad(what: &str) -> ApiError {
    ApiError::BadRequest(format!("unable to parse requirement: {what}"))
}

/// Splits on commas that are outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn check_key(key: &str) -> Result<String, ApiError> {
    let key = key.trim();
    let valid = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(bad(&format!("invalid label key {key:?}")))
    }
}

fn check_value(value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(bad(&format!("invalid label value: {value:?}")))
    }
}

fn value_set(text: &str) -> Result<Vec<String>, ApiError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| bad(&format!("found '{}', expected: '('", text.trim())))?;
    inner.split(',').map(check_value).collect()
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad("found '', expected: identifier"));
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(check_key(key)?)
            } else if let Some((key, rest)) = split_word(part, " notin ") {
                Requirement::NotIn(check_key(key)?, value_set(rest)?)
            } else if let Some((key, rest)) = split_word(part, " in ") {
                Requirement::In(check_key(key)?, value_set(rest)?)
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(check_key(key)?, check_value(value)?)
            } else if let Some((key, value)) = part.split_once("==") {
                Requirement::Equals(check_key(key)?, check_value(value)?)
            } else if let Some((key, value)) = part.split_once('=') {
                Requirement::Equals(check_key(key)?, check_value(value)?)
            } else if let Some((key, value)) = part.split_once('>') {
                let n = value.trim().parse().map_err(|_| {
                    bad(&format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {value}"
                    ))
                })?;
                Requirement::GreaterThan(check_key(key)?, n)
            } else if let Some((key, value)) = part.split_once('<') {
                let n = value.trim().parse().map_err(|_| {
                    bad(&format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {value}"
                    ))
                })?;
                Requirement::LessThan(check_key(key)?, n)
            } else {
                Requirement::Exists(check_key(part)?)
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// A `matchLabels`/`matchExpressions` selector object (a workload's
    /// `spec.selector`) as a selector; `None` when it is malformed.
    pub fn from_object(selector: &Value) -> Option<Self> {
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (key, value) in labels {
                requirements.push(Requirement::Equals(key.clone(), value.as_str()?.to_owned()));
            }
        }
        if let Some(expressions) = selector.get("matchExpressions").and_then(Value::as_array) {
            for expression in expressions {
                let key = expression.get("key")?.as_str()?.to_owned();
                let values: Vec<String> = expression
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|v| {
                        v.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                requirements.push(match expression.get("operator")?.as_str()? {
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    _ => return None,
                });
            }
        }
        Some(Self { requirements })
    }

    /// Whether no requirement is set.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::GreaterThan(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            Requirement::LessThan(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }

    /// Whether the object's `metadata.labels` satisfy the selector.
    pub fn matches_object(&self, object: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        self.matches(&labels_of(object))
    }

    /// The selector in query syntax (`a=b,c in (d)`), as `Scale.status.selector` shows it.
    pub fn to_query(&self) -> String {
        self.requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
                Requirement::GreaterThan(k, n) => format!("{k}>{n}"),
                Requirement::LessThan(k, n) => format!("{k}<{n}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn split_word<'a>(part: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    let at = part.find(word)?;
    Some((&part[..at], &part[at + word.len()..]))
}

/// The object's `metadata.labels`.
pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    /// The field label (`spec.nodeName`).
    pub field: String,
    /// `=` (true) or `!=` (false).
    pub equals: bool,
    /// The value (with `\,`, `\=` and `\\` unescaped).
    pub value: String,
}

/// A parsed field selector (empty: everything matches).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// The terms, all of which must hold.
    pub terms: Vec<FieldTerm>,
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits on `,` not preceded by a backslash.
fn split_unescaped(text: &str, at: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            current.push('\\');
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == at {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in split_unescaped(text, ',') {
            let (field, equals, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            terms.push(FieldTerm {
                field: field.trim().to_owned(),
                equals,
                value: unescape(value),
            });
        }
        Ok(Self { terms })
    }

    /// Whether no term is set.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value of `metadata.name` the selector asks for, if it names one.
    pub fn name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == "metadata.name" && t.equals)
            .map(|t| t.value.as_str())
    }

    /// Whether `value_of(field)` satisfies every term.
    pub fn matches(&self, value_of: impl Fn(&str) -> String) -> bool {
        self.terms
            .iter()
            .all(|t| (value_of(&t.field) == t.value) == t.equals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn label_selectors_parse_and_match_as_kubernetes_does() {
        let s = LabelSelector::parse("app=web,tier in (a, b),!canary,env!=prod,track,n>5").unwrap();
        assert_eq!(s.requirements.len(), 6);
        let good = labels(&[("app", "web"), ("tier", "b"), ("track", "x"), ("n", "7")]);
        assert!(s.matches(&good));
        let mut bad = good.clone();
        bad.insert("canary".into(), "1".into());
        assert!(!s.matches(&bad));
        let mut prod = good.clone();
        prod.insert("env".into(), "prod".into());
        assert!(!s.matches(&prod));
        assert!(
            LabelSelector::parse("a notin (x)")
                .unwrap()
                .matches(&labels(&[]))
        );
        assert!(LabelSelector::parse("a=b c").is_err());
        assert!(LabelSelector::parse("").unwrap().is_empty());
        let from = LabelSelector::from_object(&json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}))
        .unwrap();
        assert_eq!(from.to_query(), "app=web,tier in (a)");
    }

    #[test]
    fn field_selectors_parse_escapes_and_match() {
        let s = FieldSelector::parse(r"involvedObject.name=a\,b,type!=Normal").unwrap();
        assert_eq!(s.terms[0].value, "a,b");
        assert!(s.matches(|f| if f == "type" {
            "Warning".into()
        } else {
            "a,b".into()
        }));
        assert!(!s.matches(|_| "Normal".into()));
        assert_eq!(
            FieldSelector::parse("spec.nodeName=").unwrap().terms[0].value,
            ""
        );
        let err = FieldSelector::parse("a>b").unwrap_err();
        assert!(err.to_string().contains("can't understand 'a>b'"));
        assert_eq!(
            FieldSelector::parse("metadata.name=x").unwrap().name(),
            Some("x")
        );
    }
}
