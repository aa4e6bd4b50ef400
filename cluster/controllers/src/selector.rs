//! Label selectors (`matchLabels` and `matchExpressions`) matched against an object's
//! labels, as controllers pick the pods they own.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`. An empty selector matches everything, as in
/// Kubernetes; an unknown operator matches nothing.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_label && by_expression
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(value: serde_json::Value) -> LabelSelector {
        serde_json::from_value(value).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn labels_and_expressions_must_all_hold() {
        let s = selector(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }));
        assert!(matches(&s, &labels(&[("app", "web"), ("tier", "edge")])));
        assert!(!matches(&s, &labels(&[("app", "web"), ("tier", "back")])));
        assert!(!matches(
            &s,
            &labels(&[("app", "web"), ("tier", "front"), ("canary", "1")])
        ));
        assert!(!matches(&s, &labels(&[("tier", "front")])));
        assert!(matches(&LabelSelector::default(), &labels(&[])));
        let bad = selector(serde_json::json!({
            "matchExpressions": [{"key": "a", "operator": "Near"}]}));
        assert!(!matches(&bad, &labels(&[("a", "1")])));
    }
}
