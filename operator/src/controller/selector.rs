//! Matching a metav1 LabelSelector against a node's labels (the apiserver does this for list
//! calls; the planner needs it in memory, against its Node cache).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Why a selector cannot be evaluated: the field path and the reason.
pub type SelectorError = (String, String);

/// Checks that every requirement is well formed, as the apiserver would for a list call.
///
/// # Errors
/// The field (under `field`) and why, for an unknown operator or values that do not fit it.
pub fn check(selector: &LabelSelector, field: &str) -> Result<(), SelectorError> {
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err((
                    format!("{at}.values"),
                    format!("operator {} needs at least one value", requirement.operator),
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err((
                    format!("{at}.values"),
                    format!("operator {} takes no values", requirement.operator),
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err((
                    format!("{at}.operator"),
                    format!("unknown operator {other:?}: use In, NotIn, Exists or DoesNotExist"),
                ));
            }
        }
    }
    Ok(())
}

/// Whether `labels` satisfy the selector (an empty selector matches everything). Assumes
/// [`check`] passed; an unknown operator matches nothing.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exact = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    exact
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|requirement| requirement_matches(requirement, labels))
}

fn requirement_matches(
    requirement: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let value = labels.get(&requirement.key);
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(json: serde_json::Value) -> LabelSelector {
        serde_json::from_value(json).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let node = labels(&[("zone", "a"), ("tier", "gold")]);
        let cases = [
            (serde_json::json!({}), true),
            (serde_json::json!({"matchLabels": {"zone": "a"}}), true),
            (serde_json::json!({"matchLabels": {"zone": "b"}}), false),
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold", "silver"]}]}),
                true,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gold"]}]}),
                false,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}),
                true,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}),
                false,
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(matches(&selector(json.clone()), &node), expected, "{json}");
        }
    }

    #[test]
    fn malformed_requirements_name_the_field() {
        let unknown =
            selector(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}));
        assert_eq!(
            check(&unknown, "spec.placement.nodeSelector")
                .unwrap_err()
                .0,
            "spec.placement.nodeSelector.matchExpressions[0].operator"
        );
        let no_values =
            selector(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In"}]}));
        assert_eq!(
            check(&no_values, "s").unwrap_err().0,
            "s.matchExpressions[0].values"
        );
    }
}
