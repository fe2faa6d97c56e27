//! Number formats of the paper's tables: MACs in G and params in M with 3 decimals, label
//! constraints as percentages, metrics with a fixed number of decimals (± std over seeds).

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
}
