//! Nested JSON objects as dotted names (`model.ngf`), the one spelling of a nested
//! parameter or metric everywhere (`--set model.ngf=8`, `metrics.json`, `exp show`,
//! TensorBoard's hparams).

use serde_json::Value;

/// The leaves of `v`, an object, in document order, named by their dotted path: every
/// value that is not a non-empty object (scalars, lists, nulls, and `{}`, which has no
/// leaves to name). A `v` that is not an object has no names: nothing.
pub fn dotted_leaves(v: &Value) -> Vec<(String, &Value)> {
    fn walk<'a>(name: String, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    walk(format!("{name}.{k}"), x, out);
                }
            }
            leaf => out.push((name, leaf)),
        }
    }
    let mut out = Vec::new();
    if let Value::Object(m) = v {
        for (k, x) in m {
            walk(k.clone(), x, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leaves_are_named_by_their_dotted_path_in_document_order() {
        let v = json!({"z": 1, "model": {"ngf": 8, "opts": {}, "deep": {"x": null}}, "w": [1]});
        let got: Vec<(String, Value)> = dotted_leaves(&v)
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("z".into(), json!(1)),
                ("model.ngf".into(), json!(8)),
                ("model.opts".into(), json!({})),
                ("model.deep.x".into(), Value::Null),
                ("w".into(), json!([1])),
            ]
        );
        assert!(dotted_leaves(&json!(3)).is_empty());
    }
}
