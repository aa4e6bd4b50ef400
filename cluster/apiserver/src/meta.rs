//! Object metadata as the server keeps it: names and their rules (DNS-1123 subdomains
//! and labels), `generateName`, uids, timestamps, generations, and the checks every
//! object's `metadata` gets on create and update (with kube-apiserver's messages).

use serde_json::{Value, json};

use crate::error::FieldError;

/// The characters `generateName` suffixes are made of (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The current time as Kubernetes writes timestamps (`2026-12-02T10:00:00Z`).
pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// The current time with microseconds (`MicroTime`, for Events and Leases).
pub fn now_micro() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond()
    )
}

/// Seconds since the Unix epoch of a Kubernetes timestamp, if it is one.
pub fn parse_time(text: &str) -> Option<i64> {
    let format = time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(text, &format)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

/// A timestamp `seconds` from now.
pub fn after(seconds: i64) -> String {
    let then = time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        then.year(),
        u8::from(then.month()),
        then.day(),
        then.hour(),
        then.minute(),
        then.second()
    )
}

/// A fresh uid.
pub fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `base` (cut to 58 characters) with five random characters after it.
pub fn generated_name(base: &str) -> String {
    let mut random = [0u8; 5];
    // A failing random source leaves zeros: still a valid name, and the create retries
    // on a clash.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    let base: String = base.chars().take(58).collect();
    let suffix: String = random
        .iter()
        .map(|b| NAME_ALPHABET[usize::from(*b) % NAME_ALPHABET.len()] as char)
        .collect();
    format!("{base}{suffix}")
}

const SUBDOMAIN: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const LABEL: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1035: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";

fn is_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Why `name` is not a DNS-1123 subdomain (most kinds' names), if it is not.
pub fn subdomain_problem(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    if name.split('.').all(is_label) {
        return None;
    }
    Some(format!(
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{SUBDOMAIN}')"
    ))
}

/// Why `name` is not a DNS-1123 label (namespaces, container names), if it is not.
pub fn label_problem(name: &str) -> Option<String> {
    if name.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if is_label(name) {
        return None;
    }
    Some(format!(
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{LABEL}')"
    ))
}

/// Why `name` is not a DNS-1035 label (Service names), if it is not.
pub fn dns1035_problem(name: &str) -> Option<String> {
    if name.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if is_label(name) && name.as_bytes().first().is_some_and(u8::is_ascii_lowercase) {
        return None;
    }
    Some(format!(
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '{DNS1035}')"
    ))
}

fn qualified_name_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && let Some(why) = subdomain_problem(prefix)
    {
        return Some(format!("prefix part {why}"));
    }
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if valid {
        None
    } else {
        Some("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into())
    }
}

fn label_value_problem(value: &str) -> Option<String> {
    if value.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    let valid = value.is_empty()
        || (value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && value
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric()));
    if valid {
        None
    } else {
        Some("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
    }
}

/// Checks `labels` (a map of strings) at `path`.
pub fn check_labels(labels: Option<&Value>, path: &str, problems: &mut Vec<FieldError>) {
    let Some(labels) = labels.and_then(Value::as_object) else {
        return;
    };
    for (key, value) in labels {
        if let Some(why) = qualified_name_problem(key) {
            problems.push(FieldError::invalid(path, &Value::String(key.clone()), &why));
        }
        match value.as_str() {
            Some(text) => {
                if let Some(why) = label_value_problem(text) {
                    problems.push(FieldError::invalid(format!("{path}[{key}]"), value, &why));
                }
            }
            None => problems.push(FieldError::invalid(
                format!("{path}[{key}]"),
                value,
                "must be a string",
            )),
        }
    }
}

/// How an object's name is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain (most kinds).
    Subdomain,
    /// DNS-1123 label (namespaces).
    Label,
    /// DNS-1035 label (services).
    Dns1035,
    /// Path segment: anything but `/`, `%`, `.` and `..` (RBAC, CRs of loose kinds).
    PathSegment,
}

/// Checks `metadata` of an object being created or updated: the name by `rule`,
/// labels, annotation size, finalizers.
pub fn check_metadata(meta: &Value, rule: NameRule, namespaced: bool) -> Vec<FieldError> {
    let mut problems = Vec::new();
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    let generate = meta
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() && generate.is_empty() {
        problems.push(FieldError::required_because(
            "metadata.name",
            "name or generateName is required",
        ));
    }
    for (field, value) in [("metadata.name", name), ("metadata.generateName", generate)] {
        if value.is_empty() {
            continue;
        }
        // A generateName may end in '-': the suffix follows it.
        let checked = if field == "metadata.generateName" {
            format!("{}a", value.trim_end_matches('-'))
        } else {
            value.to_owned()
        };
        let why = match rule {
            NameRule::Subdomain => subdomain_problem(&checked),
            NameRule::Label => label_problem(&checked),
            NameRule::Dns1035 => dns1035_problem(&checked),
            NameRule::PathSegment => {
                (checked == "." || checked == ".." || checked.contains(['/', '%']))
                    .then(|| "may not contain '/' or '%', and may not be '.' or '..'".to_owned())
            }
        };
        if let Some(why) = why {
            problems.push(FieldError::invalid(
                field,
                &Value::String(value.to_owned()),
                &why,
            ));
        }
    }
    if namespaced
        && meta
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        problems.push(FieldError::required("metadata.namespace"));
    }
    check_labels(meta.get("labels"), "metadata.labels", &mut problems);
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let size: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > 256 * 1024 {
            problems.push(FieldError {
                field: "metadata.annotations".into(),
                reason: crate::error::FieldReason::TooLong,
                message: format!("Too long: may not be more than 262144 bytes (was {size})"),
            });
        }
        for (key, value) in annotations {
            if let Some(why) = qualified_name_problem(&key.to_lowercase()) {
                problems.push(FieldError::invalid(
                    "metadata.annotations",
                    &Value::String(key.clone()),
                    &why,
                ));
            }
            if !value.is_string() {
                problems.push(FieldError::invalid(
                    format!("metadata.annotations[{key}]"),
                    value,
                    "must be a string",
                ));
            }
        }
    }
    if let Some(finalizers) = meta.get("finalizers").and_then(Value::as_array) {
        for (i, finalizer) in finalizers.iter().enumerate() {
            let text = finalizer.as_str().unwrap_or("");
            if matches!(text, "orphan" | "foregroundDeletion" | "kubernetes") {
                continue;
            }
            let why = qualified_name_problem(text).or_else(|| {
                (!text.contains('/')).then(|| {
                    "name is neither a standard finalizer name nor is it fully qualified".to_owned()
                })
            });
            if let Some(why) = why {
                problems.push(FieldError::invalid(
                    format!("metadata.finalizers[{i}]"),
                    finalizer,
                    &why,
                ));
            }
        }
        let has = |name: &str| finalizers.iter().any(|f| f.as_str() == Some(name));
        if has("orphan") && has("foregroundDeletion") {
            problems.push(FieldError::invalid(
                "metadata.finalizers",
                &Value::Array(finalizers.clone()),
                "finalizer orphan and foregroundDeletion cannot be both set",
            ));
        }
    }
    problems
}

/// Sets `metadata.<key>` (making `metadata` an object when it is not one).
pub fn set_meta(object: &mut Value, key: &str, value: Value) {
    if let Value::Object(root) = object {
        let meta = root.entry("metadata").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        if let Value::Object(map) = meta {
            map.insert(key.to_owned(), value);
        }
    }
}

/// Removes `metadata.<key>`.
pub fn remove_meta(object: &mut Value, key: &str) -> Option<Value> {
    object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove(key))
}

/// `metadata.<field>` as a string.
pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// The object's `metadata.name` (empty when unset).
pub fn name_of(object: &Value) -> &str {
    meta_str(object, "name").unwrap_or("")
}

/// The object's finalizers.
pub fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the object is being deleted.
pub fn is_deleting(object: &Value) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_dns_rules_with_kubernetes_messages() {
        assert!(subdomain_problem("web.example-1").is_none());
        assert!(
            subdomain_problem("Web")
                .unwrap()
                .starts_with("a lowercase RFC 1123 subdomain")
        );
        assert!(label_problem("a.b").is_some());
        assert!(dns1035_problem("1abc").is_some());
        assert!(dns1035_problem("abc-1").is_none());
        let problems = check_metadata(&json!({"generateName": "web-"}), NameRule::Subdomain, true);
        assert_eq!(problems, vec![FieldError::required("metadata.namespace")]);
        let problems = check_metadata(
            &json!({"name": "x", "labels": {"app": "ok", "bad key!": "v", "k": "bad value!"}}),
            NameRule::Subdomain,
            false,
        );
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["metadata.labels", "metadata.labels[k]"]);
        assert!(
            check_metadata(&json!({}), NameRule::Label, false)[0]
                .to_string()
                .contains("name or generateName is required")
        );
    }

    #[test]
    fn generated_names_keep_the_base_and_add_five_safe_characters() {
        let name = generated_name("web-");
        assert_eq!(name.len(), 9);
        assert!(name.starts_with("web-"));
        assert!(name[4..].bytes().all(|b| NAME_ALPHABET.contains(&b)));
        assert!(parse_time(&now()).is_some());
    }
}
