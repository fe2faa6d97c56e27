//! `${name}` references in stage parameters.
//!
//! A string that is exactly `${name}` becomes the referenced value with its type (a number
//! stays a number, a map stays a map); inside a longer string the value is interpolated as
//! text. `$${` writes a literal `${` (for shell variables in commands).

use serde_json::{Map, Value};

/// A parsed string: literal text and references, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    Text(String),
    Ref(String),
}

/// Splits `s` into text and `${...}` references; the error says what is wrong with it.
pub(crate) fn parse_template(s: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        text.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            text.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unterminated reference in `{s}` (missing `}}`)"))?;
            let name = &tail[..end];
            validate_name(name).map_err(|m| format!("bad reference `${{{name}}}`: {m}"))?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Ref(name.to_string()));
            rest = &tail[end + 1..];
        } else {
            text.push('$');
            rest = after;
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// A reference is a dotted path of `[A-Za-z0-9_-]+` segments.
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    for seg in name.split('.') {
        if seg.is_empty()
            || !seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err("names are dotted paths of letters, digits, `_` and `-`".into());
        }
    }
    Ok(())
}

/// Every reference name in `v` (recursively), for matrix dependency analysis.
pub(crate) fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            if let Ok(pieces) = parse_template(s) {
                for p in pieces {
                    if let Piece::Ref(r) = p {
                        out.push(r);
                    }
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, out)),
        Value::Object(m) => m.values().for_each(|i| collect_refs(i, out)),
        _ => {}
    }
}

/// Whether two dotted paths overlap (one is a prefix of the other, segment-wise): a
/// reference to `model` reads the matrix variable `model.ngf` and vice versa.
pub(crate) fn paths_overlap(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    a.iter().zip(b.iter()).all(|(x, y)| x == y)
}

/// Looks `name` up in `params`, walking into maps (and lists by index).
/// The error is a hint naming what exists where the walk stopped.
pub(crate) fn lookup<'a>(params: &'a Map<String, Value>, name: &str) -> Result<&'a Value, String> {
    let mut segs = name.split('.');
    let first = segs.next().unwrap_or_default();
    let mut cur = params.get(first).ok_or_else(|| {
        format!(
            "{}params are: {}",
            super::suggest::suggest(first, params.keys())
                .first()
                .map_or(String::new(), |n| format!("did you mean `{n}`? ")),
            if params.is_empty() {
                "none".to_string()
            } else {
                params.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        )
    })?;
    let mut walked = first.to_string();
    for seg in segs {
        cur = match cur {
            Value::Object(m) => m.get(seg).ok_or_else(|| {
                format!(
                    "{}`{walked}` has keys: {}",
                    super::suggest::suggest(seg, m.keys())
                        .first()
                        .map_or(String::new(), |n| format!("did you mean `{walked}.{n}`? ")),
                    m.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?,
            Value::Array(items) => seg
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .ok_or_else(|| format!("`{walked}` is a list of {} items", items.len()))?,
            _ => return Err(format!("`{walked}` is not a map")),
        };
        walked.push('.');
        walked.push_str(seg);
    }
    Ok(cur)
}

/// A value as text inside a longer string: strings raw, everything else as compact JSON.
pub(crate) fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_refs_and_escapes() {
        assert_eq!(
            parse_template("a${x}b${y.z}").unwrap(),
            vec![
                Piece::Text("a".into()),
                Piece::Ref("x".into()),
                Piece::Text("b".into()),
                Piece::Ref("y.z".into())
            ]
        );
        assert_eq!(
            parse_template("echo $${HOME} $1").unwrap(),
            vec![Piece::Text("echo ${HOME} $1".into())]
        );
        assert!(parse_template("${x").unwrap_err().contains("unterminated"));
        assert!(parse_template("${a b}").is_err());
        assert!(parse_template("${}").is_err());
    }

    #[test]
    fn overlap_is_segment_wise() {
        assert!(paths_overlap("model", "model.ngf"));
        assert!(paths_overlap("model.ngf", "model"));
        assert!(!paths_overlap("model2", "model"));
        assert!(!paths_overlap("model.ngf", "model.n"));
    }
}
