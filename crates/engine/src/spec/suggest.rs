//! "Did you mean": the known names close to a mistyped one. One rule for every unknown
//! name (stage, node, kind, parameter, reference, `--set` key), here in the engine so that
//! both the spec's errors and the CLI's (which depends on the engine) use it.

/// The names within a small edit distance of `name` (a third of its length, at least 1;
/// a swap of two neighbours counts 1), closest first, ties in the order given; `name`
/// itself is never suggested. At least 1 rather than 2: with 2, every one-letter stage
/// would be suggested for any two-letter typo.
pub fn suggest<'a, I, S>(name: &str, names: I) -> Vec<String>
where
    I: IntoIterator<Item = &'a S>,
    S: AsRef<str> + ?Sized + 'a,
{
    let limit = (name.chars().count() / 3).max(1);
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

/// Edit distance over chars: insertions, deletions, substitutions and swaps of two
/// neighbours (`sede` -> `seed`) each count 1 (optimal string alignment).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Three rows: i-2, i-1 and i.
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
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
        // Both within 3 of `supernett`: the closer one first.
        assert_eq!(
            suggest("supernett", &["supernet2x", "supernet"]),
            ["supernet", "supernet2x"]
        );
        // Short names: one edit only, else every one-letter name is close to `dd`.
        assert_eq!(suggest("dd", &["a", "b", "d"]), ["d"]);
        assert_eq!(did_you_mean("distil", &names), "; did you mean `distill`?");
        assert_eq!(did_you_mean("zzzzzz", &names), "");
        // The exact name is not a suggestion of itself.
        assert!(suggest("split", &names).is_empty());
    }

    #[test]
    fn distance_counts_chars_and_neighbour_swaps_as_one_edit() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("é", "e"), 1);
        assert_eq!(edit_distance("sede", "seed"), 1);
        assert_eq!(edit_distance("nfg", "ngf"), 1);
    }
}
