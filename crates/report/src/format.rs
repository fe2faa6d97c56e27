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
