//! "Did you mean": the known names close to a mistyped one. One rule for every unknown
//! name (stage, node, kind, parameter, reference, `--set` key), here in the engine so that
//! both the spec's errors and the CLI's (which depends on the engine) use it.

/// The names within a small edit distance of `name` (a third of its length, at least 2),
/// closest first, ties in the order given; `name` itself is never suggested.
pub fn suggest<'a, I, S>(name: &str, names: I) -> Vec<String>
where
    I: IntoIterator<Item = &'a S>,
    S: AsRef<str> + ?Sized + 'a,
{
    let limit = (name.chars().count() / 3).max(2);
    let mut close: Vec<(usize, usize, String)> = Vec::new();
    for (i, n) in names.into_iter().enumerate() {
        let n = n.as_ref();
        if n == name || close.iter().any(|(_, _, c)| c == n) {
            continue;
        }
        let d = edit_distance(name, n);
        if d <= limit {
            close.push((d, i, n.to_string()));
        }
    }
    close.sort();
    close.into_iter().map(|(_, _, n)| n).collect()
}

/// `"; did you mean `a` or `b`?"` for the close names, or `""` when there is none: ready to
/// append to a message.
pub fn did_you_mean<'a, I, S>(name: &str, names: I) -> String
where
    I: IntoIterator<Item = &'a S>,
    S: AsRef<str> + ?Sized + 'a,
{
    let close = suggest(name, names);
    if close.is_empty() {
        return String::new();
    }
    let quoted: Vec<String> = close.iter().map(|n| format!("`{n}`")).collect();
    format!("; did you mean {}?", quoted.join(" or "))
}

/// Levenshtein distance over chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if ca == *cb {
                diag
            } else {
                1 + diag.min(up).min(row[j])
            };
            diag = up;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_come_closest_first_and_far_ones_not_at_all() {
        let names = ["split", "supernet", "search", "distill"];
        assert_eq!(suggest("supernt", &names), ["supernet"]);
        assert_eq!(suggest("splt", &names), ["split"]);
        assert!(suggest("zzzzzz", &names).is_empty());
        // Both within 2 of `serch`: the closer one first.
        assert_eq!(
            suggest("serch", &["search", "seach2"]),
            ["search", "seach2"]
        );
        assert_eq!(did_you_mean("distil", &names), "; did you mean `distill`?");
        assert_eq!(did_you_mean("zzzzzz", &names), "");
        // The exact name is not a suggestion of itself.
        assert!(suggest("split", &names).is_empty());
    }

    #[test]
    fn distance_counts_chars_not_bytes() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("é", "e"), 1);
    }
}
