//! Number formats of the paper's tables: MACs and params with as many digits as it takes to
//! tell every row apart, label constraints as percentages, metrics with a fixed number of
//! decimals (± std over seeds), "–" where a number is missing or does not apply.

use crate::stats::Summary;

/// `866_000_000` -> `0.866G`.
pub fn macs_g(macs: f64) -> String {
    format!("{:.3}G", macs / 1e9)
}

/// `106_000` -> `0.106M`.
pub fn params_m(params: f64) -> String {
    format!("{:.3}M", params / 1e6)
}

/// `0.25` -> `25%`, `0.125` -> `12.5%`.
pub fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if (p - p.round()).abs() < 1e-6 {
        format!("{:.0}%", p.round())
    } else {
        let s = format!("{p:.2}");
        format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// What a table shows for a number that is missing or does not apply.
pub const DASH: &str = "–";

/// The unit a column of counts is written in: the largest of G, M, K that its largest
/// value reaches (as 1.0 or more).
pub fn count_unit(values: &[f64]) -> (f64, &'static str) {
    let max = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    if max >= 1e9 {
        (1e9, "G")
    } else if max >= 1e6 {
        (1e6, "M")
    } else if max >= 1e3 {
        (1e3, "K")
    } else {
        (1.0, "")
    }
}

/// One column of counts (MACs or params) in a common unit with the fewest decimals (at
/// least 3 significant digits for the smallest value) that write different values
/// differently; NaN (no model) is a dash.
pub fn counts_distinct(values: &[f64]) -> Vec<String> {
    let (unit, suffix) = count_unit(values);
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let min = finite
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let mut decimals = if min.is_finite() {
        (2 - (min / unit).log10().floor() as i64).clamp(0, 9) as usize
    } else {
        0
    };
    let render = |d: usize, v: f64| format!("{:.d$}{suffix}", v / unit);
    // Values equal to 1 part in 1e9 are the same model size, not digits to show.
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
    while decimals < 9 {
        let clash = finite.iter().enumerate().any(|(i, &a)| {
            finite[i + 1..]
                .iter()
                .any(|&b| !same(a, b) && render(decimals, a) == render(decimals, b))
        });
        if !clash {
            break;
        }
        decimals += 1;
    }
    values
        .iter()
        .map(|&v| {
            if v.is_finite() {
                render(decimals, v)
            } else {
                DASH.to_string()
            }
        })
        .collect()
}

/// `32×32`.
pub fn size(h: u32, w: u32) -> String {
    format!("{h}×{w}")
}

/// `44.46` for one run, `44.46 ± 0.31` for several.
pub fn metric(s: &Summary, decimals: usize) -> String {
    if s.n > 1 {
        format!("{:.d$} ± {:.d$}", s.mean, s.std, d = decimals)
    } else {
        format!("{:.d$}", s.mean, d = decimals)
    }
}

/// A compression or reduction ratio such as `12.6×`.
pub fn ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.1}×")
    } else {
        let s = format!("{r:.2}");
        format!("{}×", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// Plain number for CSV cells: shortest round-trip form.
pub fn csv_number(x: f64) -> String {
    format!("{x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_number_formats() {
        assert_eq!(macs_g(866_000_000.0), "0.866G");
        assert_eq!(macs_g(56_799_000_000.0), "56.799G");
        assert_eq!(params_m(106_000.0), "0.106M");
        assert_eq!(percent(0.1), "10%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(ratio(2.0), "2×");
        assert_eq!(ratio(21.23), "21.2×");
        assert_eq!(ratio(1.5), "1.5×");
        let s = Summary::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(metric(&s, 2), "2.00 ± 1.00");
        let one = Summary::of(&[44.456]).unwrap();
        assert_eq!(metric(&one, 2), "44.46");
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn counts_get_the_digits_that_tell_rows_apart() {
        // The students: 6.54M, 6.69M and 7.03M MACs printed as 0.007G each.
        let v = [6.54e6, 6.69e6, 7.03e6, 20.2e6, f64::NAN];
        assert_eq!(
            counts_distinct(&v),
            ["6.54M", "6.69M", "7.03M", "20.20M", "–"]
        );
        // Close values get more decimals; equal values stay equal.
        let v = [1.2341e9, 1.2344e9, 1.2341e9];
        assert_eq!(counts_distinct(&v), ["1.2341G", "1.2344G", "1.2341G"]);
        assert_eq!(counts_distinct(&[418e6, 2.1e9]), ["0.418G", "2.100G"]);
        assert_eq!(counts_distinct(&[950.0]), ["950"]);
    }
}
