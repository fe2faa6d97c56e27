//! The headline: the headline method against each baseline, stated with its uncertainty.
//! With one seed a difference is set against the run-to-run spread (`spread`, measured in
//! docs/results.md); with several, each method is mean ± std and the difference is paired
//! seed by seed (mean ± std of the per-seed differences, a paired t, seeds ahead).

use std::collections::BTreeMap;

use crate::params::ReportParams;
use crate::record::{EvalRecord, value_text};
use crate::stats::Summary;
use crate::tables::method_of;

/// One comparison of the headline method with a baseline, at one matrix point.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub method: String,
    pub baseline: String,
    /// Matrix values other than the seed, e.g. `label_ratio=0.1` (empty outside a sweep).
    pub at: String,
    /// Both in display units.
    pub a: Summary,
    pub b: Summary,
    /// Per-seed differences a - b over the seeds both have (display units).
    pub paired: Vec<f64>,
}

/// The matrix point of a record without its seed, as text.
fn point_key(r: &EvalRecord, params: &ReportParams) -> String {
    r.point
        .iter()
        .filter(|(k, _)| **k != params.seed_var)
        .map(|(k, v)| format!("{k}={}", value_text(v).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Seed -> metric (display units) of `method`'s records at each matrix point; a method
/// with several models at one point (e.g. two teachers) is not comparable there.
fn by_point(
    records: &[EvalRecord],
    params: &ReportParams,
    method: &str,
) -> BTreeMap<String, BTreeMap<String, f64>> {
    let key = params.metric.key();
    let k = params.metric.display_scale();
    let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut inputs: BTreeMap<String, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| !r.reference && method_of(r, params) == method)
    {
        let Some(v) = r.metrics.get(key) else {
            continue;
        };
        let p = point_key(r, params);
        inputs.entry(p.clone()).or_default().insert(&r.input);
        out.entry(p)
            .or_default()
            .insert(r.var(&params.seed_var).unwrap_or_default(), v * k);
    }
    out.retain(|p, _| inputs[p].len() == 1);
    out
}

/// Every comparison of `headline_method` with each `headline_vs` method present. A baseline
/// at another matrix point only (e.g. the original at 100% labels, outside the label sweep)
/// is compared at each point of the headline method.
pub fn comparisons(records: &[EvalRecord], params: &ReportParams) -> Vec<Comparison> {
    let mine = by_point(records, params, &params.headline_method);
    let mut out = Vec::new();
    for vs in &params.headline_vs {
        let theirs = by_point(records, params, vs);
        for (at, a_seeds) in &mine {
            let b_seeds = match theirs.get(at) {
                Some(b) => b,
                None if theirs.len() == 1 => theirs.values().next().expect("one"),
                None => continue,
            };
            let a: Vec<f64> = a_seeds.values().copied().collect();
            let b: Vec<f64> = b_seeds.values().copied().collect();
            let (Some(sa), Some(sb)) = (Summary::of(&a), Summary::of(&b)) else {
                continue;
            };
            let paired = a_seeds
                .iter()
                .filter_map(|(seed, x)| b_seeds.get(seed).map(|y| x - y))
                .collect();
            out.push(Comparison {
                method: params.headline_method.clone(),
                baseline: vs.clone(),
                at: at.clone(),
                a: sa,
                b: sb,
                paired,
            });
        }
    }
    out
}

/// The sentences of one comparison, in markdown.
pub fn sentence(c: &Comparison, params: &ReportParams) -> String {
    let d = params.metric_decimals;
    let name = crate::params::metric_display(params.metric.key());
    let unit = if params.metric.display_scale() == 100.0 {
        " points"
    } else {
        ""
    };
    let at = if c.at.is_empty() {
        String::new()
    } else {
        format!(" at {}", c.at)
    };
    let higher = params.higher(params.metric);
    let better = |diff: f64| {
        if diff == 0.0 {
            "level"
        } else if (diff > 0.0) == higher {
            "ahead"
        } else {
            "behind"
        }
    };
    if c.a.n == 1 && c.b.n == 1 {
        let diff = c.a.mean - c.b.mean;
        let mut s = format!(
            "{} {:.d$} vs {} {:.d$} {name}{at}: {} by {:.d$}{unit}, one seed.",
            c.method,
            c.a.mean,
            c.baseline,
            c.b.mean,
            better(diff),
            diff.abs()
        );
        match params.spread.get(params.metric.key()) {
            Some(sp) => {
                let sp = sp * params.metric.display_scale();
                let src = "parameter `spread`; by default the std of the per-seed \
                           differences UGC − student alone over 6 seeds in docs/results.md";
                if diff.abs() < sp {
                    s.push_str(&format!(
                        " The run-to-run spread is {sp:.d$}{unit} ({src}): a difference below it \
                         is not significant, so one seed cannot tell these two apart."
                    ));
                } else {
                    s.push_str(&format!(
                        " That is more than the run-to-run spread of {sp:.d$}{unit} ({src}), \
                         but one seed is no test: run several seeds (a `{}` matrix) to confirm.",
                        params.seed_var
                    ));
                }
            }
            None => s.push_str(&format!(
                " No run-to-run spread of {name} is known (parameter `spread`): with one seed \
                 the difference may be noise."
            )),
        }
        return s;
    }
    let mut s = format!(
        "{} {:.d$} ± {:.d$} (n={}) vs {} {:.d$} ± {:.d$} (n={}) {name}{at}.",
        c.method, c.a.mean, c.a.std, c.a.n, c.baseline, c.b.mean, c.b.std, c.b.n
    );
    match Summary::of(&c.paired) {
        Some(p) if p.n > 1 => {
            let ahead = c
                .paired
                .iter()
                .filter(|x| (**x > 0.0) == higher && **x != 0.0)
                .count();
            let t = if p.std > 0.0 {
                format!(
                    ", paired t {:.1} on {} degrees of freedom",
                    p.mean / (p.std / (p.n as f64).sqrt()),
                    p.n - 1
                )
            } else {
                String::new()
            };
            s.push_str(&format!(
                " Paired per-seed difference {:+.d$} ± {:.d$}{unit} over {} seeds{t}; {} ahead in \
                 {ahead} of {} seeds.",
                p.mean, p.std, p.n, c.method, p.n
            ));
            if p.mean.abs() < p.std {
                s.push_str(
                    " The mean difference is inside its seed-to-seed spread: not significant.",
                );
            }
        }
        _ => s.push_str(" The two share no seed: no paired difference."),
    }
    s
}
