//! Adaptive Data Filter (ADF): scores each teacher pseudo-label of an unlabeled input and
//! keeps those above a threshold that adapts to the score distribution.
//!
//! Criterion (see `docs/method.md`):
//! - `agreement` (default with two or more teachers): score = minus the mean absolute
//!   difference between the teachers' outputs, averaged over teacher pairs. Structurally
//!   different teachers (wide vs deep) that disagree on an input signal that at least one of
//!   them is wrong there, and the student would learn contradicting targets.
//! - `discriminator` (default with one teacher): score = mean of the supernet
//!   discriminator's prediction maps on `concat(input, pseudo-label)`; the hinge-trained
//!   discriminator rates how realistic the pair looks.
//!
//! Threshold (`rule`): `mad` keeps scores `>= median - k * 1.4826 * MAD` (a robust
//! "mean - k std": the median and MAD are not pulled by the bad group they must detect);
//! `otsu` splits the score histogram into two classes maximising between-class variance.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_data::{SplitManifest, Subset};
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_nn::{DiscConfig, Discriminator, Mode, build_discriminator};

use crate::MethodError;
use crate::setup::{encoding_for, read_json, write_json};
use crate::teachers::{TeacherEntry, load_teachers_json};

pub use ugc_kinds::adf::Criterion;
use ugc_kinds::adf::{Params as AdfParams, Threshold};

/// How the threshold adapts to the scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "lowercase")]
pub enum ThresholdRule {
    /// `median - k * 1.4826 * MAD`.
    Mad { k: f64 },
    /// Otsu's threshold on a `bins`-bin histogram.
    Otsu { bins: usize },
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The adaptive threshold of `scores` (higher = more reliable); `None` for no scores or a
/// non-finite score.
pub fn adaptive_threshold(scores: &[f64], rule: ThresholdRule) -> Option<f64> {
    if scores.is_empty() || scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let mut s = scores.to_vec();
    s.sort_by(f64::total_cmp);
    match rule {
        ThresholdRule::Mad { k } => {
            let med = median(&s);
            let mut dev: Vec<f64> = s.iter().map(|v| (v - med).abs()).collect();
            dev.sort_by(f64::total_cmp);
            let mad = median(&dev);
            Some(med - k * 1.4826 * mad)
        }
        ThresholdRule::Otsu { bins } => {
            let (lo, hi) = (s[0], s[s.len() - 1]);
            if hi <= lo || bins < 2 {
                return Some(lo);
            }
            let width = (hi - lo) / bins as f64;
            let mut hist = vec![0f64; bins];
            for v in &s {
                let b = (((v - lo) / width) as usize).min(bins - 1);
                hist[b] += 1.0;
            }
            let total = s.len() as f64;
            let center = |b: usize| lo + (b as f64 + 0.5) * width;
            let sum_all: f64 = (0..bins).map(|b| hist[b] * center(b)).sum();
            let (mut w0, mut sum0) = (0.0, 0.0);
            let (mut best, mut best_b) = (-1.0, 0usize);
            for (b, &h) in hist.iter().enumerate().take(bins - 1) {
                w0 += h;
                sum0 += h * center(b);
                let w1 = total - w0;
                if w0 == 0.0 || w1 == 0.0 {
                    continue;
                }
                let m0 = sum0 / w0;
                let m1 = (sum_all - sum0) / w1;
                let between = w0 * w1 * (m0 - m1).powi(2);
                if between > best {
                    best = between;
                    best_b = b;
                }
            }
            // Scores above the upper edge of the lower class's last bin are kept.
            Some(lo + (best_b as f64 + 1.0) * width)
        }
    }
}

/// Agreement score per image: minus the mean absolute difference between every pair of
/// teacher outputs (`[N, C, H, W]` each); needs at least two outputs.
pub fn agreement_scores(outputs: &[Tensor]) -> Result<Vec<f64>, String> {
    if outputs.len() < 2 {
        return Err("the agreement criterion needs at least two teachers".into());
    }
    let mut acc: Option<Tensor> = None;
    let mut pairs = 0.0;
    for i in 0..outputs.len() {
        for j in i + 1..outputs.len() {
            let d = (&outputs[i] - &outputs[j])
                .abs()
                .to_kind(Kind::Double)
                .mean_dim([1i64, 2, 3].as_slice(), false, Kind::Double);
            acc = Some(match acc {
                None => d,
                Some(a) => a + d,
            });
            pairs += 1.0;
        }
    }
    let mean = acc.expect("two or more outputs") / pairs;
    Vec::<f64>::try_from(&(-mean).to_device(Device::Cpu)).map_err(|e| e.to_string())
}

/// Discriminator realism score per image: the mean of every scale's prediction map on
/// `concat(input, pseudo)`, averaged over scales. Running statistics are not touched.
pub fn discriminator_scores(
    disc: &dyn Discriminator,
    input: &Tensor,
    pseudo: &Tensor,
) -> Result<Vec<f64>, String> {
    let x = Tensor::cat(&[input, pseudo], 1);
    let scales = tch::no_grad(|| disc.forward(&x, Mode::Eval));
    let mut acc: Option<Tensor> = None;
    for s in &scales {
        let pred = s.last().ok_or("discriminator returned an empty scale")?;
        let m = pred.to_kind(Kind::Double).flatten(1, -1).mean_dim(
            [1i64].as_slice(),
            false,
            Kind::Double,
        );
        acc = Some(match acc {
            None => m,
            Some(a) => a + m,
        });
    }
    let acc = acc.ok_or("discriminator returned no scales")? / scales.len() as f64;
    Vec::<f64>::try_from(&acc.to_device(Device::Cpu)).map_err(|e| e.to_string())
}

/// Resolves `auto` for a number of teachers; errors name the parameter.
pub fn resolve_criterion(c: Criterion, n_teachers: usize) -> Result<Criterion, StageError> {
    match (c, n_teachers) {
        (Criterion::Auto, n) if n >= 2 => Ok(Criterion::Agreement),
        (Criterion::Auto, _) => Ok(Criterion::Discriminator),
        (Criterion::Agreement, n) if n < 2 => Err(StageError::Config(format!(
            "parameter `criterion` = agreement needs two or more teachers, the teachers \
             stage has {n} (use strategy multi, or criterion discriminator)"
        ))),
        (c, _) => Ok(c),
    }
}

/// Per-image scores and the pseudo-label (mean of the teachers' outputs) of one batch.
pub fn score_batch(
    criterion: Criterion,
    input: &Tensor,
    teacher_outputs: &[Tensor],
    disc: Option<&dyn Discriminator>,
) -> Result<(Vec<f64>, Tensor), String> {
    let pseudo = Tensor::stack(teacher_outputs, 0).mean_dim(0, false, Kind::Float);
    let scores = match criterion {
        Criterion::Agreement => agreement_scores(teacher_outputs)?,
        Criterion::Discriminator => discriminator_scores(
            disc.ok_or("the discriminator criterion needs the supernet's discriminator")?,
            input,
            &pseudo,
        )?,
        Criterion::Auto => return Err("criterion `auto` must be resolved first".into()),
    };
    Ok((scores, pseudo))
}

/// Which ids to keep: every id when disabled, else those with `score >= threshold`.
pub fn keep_decisions(scores: &[f64], threshold: Option<f64>, enabled: bool) -> Vec<bool> {
    scores
        .iter()
        .map(|s| !enabled || threshold.is_none_or(|t| *s >= t))
        .collect()
}

/// `adf.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdfDecision {
    pub enabled: bool,
    pub criterion: Criterion,
    pub threshold_rule: ThresholdRule,
    /// The adaptive threshold computed on the scores (also when disabled, for comparison).
    pub threshold: Option<f64>,
    pub kept: Vec<String>,
    pub dropped: Vec<String>,
}

impl AdfDecision {
    /// Reads `<dir>/adf.json` of an adf stage output.
    pub fn load(dir: &Path) -> Result<Self, MethodError> {
        read_json(&dir.join("adf.json"))
    }

    pub fn kept_set(&self) -> BTreeSet<String> {
        self.kept.iter().cloned().collect()
    }
}

/// Loads the supernet's discriminator (`supernet/disc.json` + `discriminator.safetensors`).
pub fn load_discriminator(
    sup_dir: &Path,
    device: Device,
) -> Result<(VarStore, Box<dyn Discriminator>), MethodError> {
    let cfg: DiscConfig = read_json(&sup_dir.join("supernet/disc.json"))?;
    let mut vs = VarStore::new(device);
    let d = build_discriminator(&vs.root(), &cfg).map_err(MethodError::nn_at(
        sup_dir.join("supernet/disc.json").display(),
    ))?;
    let w = sup_dir.join("supernet/discriminator.safetensors");
    vs.load(&w).map_err(|e| MethodError::Weights {
        path: w.clone(),
        reason: e.to_string(),
    })?;
    Ok((vs, d))
}

/// Exported teachers, loaded (each keeps its `VarStore` alive).
pub struct Teachers {
    pub entries: Vec<TeacherEntry>,
    pub models: Vec<ugc_nn::export::LoadedModel>,
}

impl Teachers {
    /// Loads every teacher listed in `<dir>/teachers.json` from `<dir>/teachers/<role>/`.
    pub fn load(dir: &Path, device: Device) -> Result<Self, StageError> {
        let entries = load_teachers_json(dir)?;
        let mut models = Vec::new();
        for e in &entries {
            let mdir = dir.join("teachers").join(e.role.name());
            let (_, m) = ugc_nn::export::load_model(&mdir, device)
                .map_err(|err| StageError::Data(format!("{}: {err}", mdir.display())))?;
            models.push(m);
        }
        Ok(Teachers { entries, models })
    }

    /// Every teacher's output on `x` in eval mode, without gradients.
    pub fn outputs(&self, x: &Tensor) -> Result<Vec<Tensor>, ugc_nn::NnError> {
        self.models
            .iter()
            .map(|m| {
                let g = &m.generator;
                tch::no_grad(|| g.forward(x, &g.search_space().largest(), Mode::Eval))
            })
            .collect()
    }
}

/// The rule of `threshold` with its parameter (`k` for mad, `bins` for otsu; their ranges
/// are the schema's).
pub fn threshold_rule(threshold: Threshold, k: f64, bins: usize) -> ThresholdRule {
    match threshold {
        Threshold::Mad => ThresholdRule::Mad { k },
        Threshold::Otsu => ThresholdRule::Otsu { bins },
    }
}

/// The `adf` stage kind (`stages/adf.yaml`).
pub struct AdfStage {
    schema: KindSchema,
}

impl AdfStage {
    pub fn new(schema: KindSchema) -> Self {
        AdfStage { schema }
    }
}

impl StageKind for AdfStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let p: AdfParams = ctx.typed_params()?;
        if p.torch_threads > 0 {
            tch::set_num_threads(p.torch_threads);
        }
        let rule = threshold_rule(p.threshold, p.k, p.bins);
        let device = crate::device::tch_device(ctx.device)?;
        let teachers_dir = ctx.require_input("teachers")?.dir.clone();
        let split_dir = ctx.require_input("split")?.dir.clone();
        let teachers = Teachers::load(&teachers_dir, device)?;
        let criterion = resolve_criterion(p.criterion, teachers.entries.len())?;
        let disc = if criterion == Criterion::Discriminator {
            let sup = ctx.input_of_kind("supernet").ok_or_else(|| {
                StageError::Config(format!(
                    "stage `{}`: criterion discriminator needs the `supernet` stage among its \
                     deps (its discriminator scores the pseudo-labels)",
                    ctx.node
                ))
            })?;
            Some(load_discriminator(&sup.dir, device)?)
        } else {
            None
        };
        let manifest = SplitManifest::load(&split_dir).map_err(MethodError::data_at(format!(
            "split of stage `{}`",
            ctx.node
        )))?;
        let enc = encoding_for(&teachers.models[0].generator.arch().clone(), &manifest)?;
        let loader = ugc_data::Loader::new(
            &manifest,
            &split_dir,
            Subset::Unlabeled,
            ugc_data::LoaderConfig {
                encoding: enc,
                device,
                threads: 1,
                augment: ugc_data::augment::AugmentConfig {
                    load_size: p.image_size.map(|s| (s, s)),
                    crop_size: None,
                    random: false,
                    flip: false,
                },
                ..ugc_data::LoaderConfig::eval(p.batch_size)
            },
        )
        .map_err(MethodError::data_at("unlabeled loader"))?;
        let pseudo_dir = ctx.out_dir.join("pseudo");
        std::fs::create_dir_all(&pseudo_dir).map_err(|e| MethodError::io(&pseudo_dir, e))?;
        ctx.progress.start("score", loader.len() as u64);
        let mut ids = Vec::new();
        let mut scores = Vec::new();
        for b in loader.epoch(0) {
            if ctx.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            let b = b.map_err(MethodError::data_at("unlabeled batch"))?;
            let outs = teachers
                .outputs(&b.input)
                .map_err(MethodError::nn_at("running the teachers"))?;
            let (s, pseudo) = score_batch(
                criterion,
                &b.input,
                &outs,
                disc.as_ref().map(|(_, d)| d.as_ref()),
            )
            .map_err(StageError::Failed)?;
            if p.write_pseudo {
                for (i, id) in b.ids.iter().enumerate() {
                    let path = pseudo_dir.join(format!("{id}.png"));
                    ugc_nn::infer::save_output(&pseudo.narrow(0, i as i64, 1), &path)
                        .map_err(MethodError::nn_at(path.display()))?;
                }
            }
            ids.extend(b.ids.iter().cloned());
            scores.extend(s);
            ctx.progress.set(ids.len() as u64);
        }
        let threshold = adaptive_threshold(&scores, rule);
        let mut keep = keep_decisions(&scores, threshold, p.enabled);
        let oracle = p.oracle == Some(true);
        let mut extra = serde_json::Map::new();
        let synth = ctx.input_of_kind("synth");
        if oracle && synth.is_none() {
            return Err(StageError::Config(format!(
                "stage `{}`: parameter `oracle` drops the bad inputs a `synth` dep lists; \
                 add the synth stage of the dataset to its deps",
                ctx.node
            )));
        }
        if let Some(synth) = synth {
            let truth = ugc_data::synth::bad::BadUnlabeledList::load(&synth.dir).map_err(
                MethodError::data_at(format!("synth dep of stage `{}`", ctx.node)),
            )?;
            match truth {
                Some(list) => {
                    let bad: Vec<(String, String)> = list
                        .bad
                        .iter()
                        .map(|b| (b.id.clone(), b.corruption.name().to_string()))
                        .collect();
                    let acc = filter_accuracy(&ids, &scores, threshold, p.enabled, &bad)
                        .map_err(|e| StageError::Config(format!("stage `{}`: {e}", ctx.node)))?;
                    extra = acc.metrics();
                    write_json(&ctx.out_dir.join(FILTER_TRUTH_FILE), &acc)?;
                    if oracle {
                        let bad: BTreeSet<&str> = list.bad.iter().map(|b| b.id.as_str()).collect();
                        keep = ids.iter().map(|id| !bad.contains(id.as_str())).collect();
                        extra.insert("adf.oracle".into(), 1.into());
                    }
                }
                None if oracle => {
                    return Err(StageError::Config(format!(
                        "stage `{}`: parameter `oracle` needs a synth dep with bad unlabeled \
                         inputs (bad_unlabeled_fraction); its dataset lists none",
                        ctx.node
                    )));
                }
                None => ctx.progress.message(
                    "the synth dep's dataset lists no bad unlabeled inputs: no filter accuracy",
                ),
            }
        }
        write_decision_with(
            ctx.out_dir,
            &Decision {
                ids: &ids,
                scores: &scores,
                keep: &keep,
                enabled: p.enabled,
                criterion,
                rule,
                threshold,
            },
            extra,
        )
    }
}

/// The filter benchmark's result file in an adf stage output.
pub const FILTER_TRUTH_FILE: &str = "filter_truth.json";

/// The threshold's drops within one kind of bad input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindAccuracy {
    pub bad: usize,
    pub dropped: usize,
    pub recall: f64,
}

/// How the threshold's drops (`score < threshold`) match a ground truth of bad inputs.
/// Computed from the threshold also when the filter is disabled (`enabled: false` keeps
/// everything), so the "w/o ADF" run says what the filter would have dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterAccuracy {
    /// Whether the drops were applied.
    pub enabled: bool,
    pub threshold: Option<f64>,
    pub unlabeled: usize,
    pub bad: usize,
    pub dropped: usize,
    pub bad_dropped: usize,
    /// `bad_dropped / dropped`; `None` when nothing is dropped.
    pub precision: Option<f64>,
    /// `bad_dropped / bad`.
    pub recall: f64,
    /// Probability that a bad input scores below a clean one (ties count 1/2): how well
    /// the score separates them whatever the threshold; `None` without bad or clean ones.
    pub auc: Option<f64>,
    pub score_mean_bad: Option<f64>,
    pub score_mean_clean: Option<f64>,
    /// Recall per corruption (`flip`, `blocks`).
    pub by_corruption: std::collections::BTreeMap<String, KindAccuracy>,
    pub missed_bad: Vec<String>,
    pub dropped_clean: Vec<String>,
}

impl FilterAccuracy {
    /// The `adf.*` entries of `metrics.json`.
    pub fn metrics(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("adf.truth_bad".into(), self.bad.into());
        m.insert("adf.truth_bad_dropped".into(), self.bad_dropped.into());
        m.insert("adf.recall".into(), self.recall.into());
        if let Some(p) = self.precision {
            m.insert("adf.precision".into(), p.into());
        }
        if let Some(a) = self.auc {
            m.insert("adf.truth_auc".into(), a.into());
        }
        for (k, a) in &self.by_corruption {
            m.insert(format!("adf.recall_{k}"), a.recall.into());
        }
        m
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Scores the threshold's drops on `ids` (with `scores` at the same index) against `bad`
/// (`(id, corruption)`); a bad id that was not scored is an error (the ground truth
/// belongs to another split).
pub fn filter_accuracy(
    ids: &[String],
    scores: &[f64],
    threshold: Option<f64>,
    enabled: bool,
    bad: &[(String, String)],
) -> Result<FilterAccuracy, String> {
    let index: std::collections::HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut is_bad = vec![None; ids.len()];
    for (id, kind) in bad {
        let i = *index.get(id.as_str()).ok_or_else(|| {
            format!(
                "bad input `{id}` of the synth dep is not an unlabeled input of this split: \
                 give the synth stage the split's holdout and seed, and a \
                 `bad_split_label_ratio` at least the split's label_ratio"
            )
        })?;
        is_bad[i] = Some(kind.as_str());
    }
    let drop = keep_decisions(scores, threshold, true)
        .into_iter()
        .map(|k| !k)
        .collect::<Vec<_>>();
    let (mut bad_s, mut clean_s) = (Vec::new(), Vec::new());
    let mut by: std::collections::BTreeMap<String, KindAccuracy> = Default::default();
    let (mut missed, mut dropped_clean) = (Vec::new(), Vec::new());
    for i in 0..ids.len() {
        match is_bad[i] {
            Some(kind) => {
                bad_s.push(scores[i]);
                let e = by.entry(kind.to_string()).or_insert(KindAccuracy {
                    bad: 0,
                    dropped: 0,
                    recall: 0.0,
                });
                e.bad += 1;
                e.dropped += usize::from(drop[i]);
                if !drop[i] {
                    missed.push(ids[i].clone());
                }
            }
            None => {
                clean_s.push(scores[i]);
                if drop[i] {
                    dropped_clean.push(ids[i].clone());
                }
            }
        }
    }
    for e in by.values_mut() {
        e.recall = e.dropped as f64 / e.bad as f64;
    }
    let dropped = drop.iter().filter(|d| **d).count();
    let bad_dropped = dropped - dropped_clean.len();
    let auc = (!bad_s.is_empty() && !clean_s.is_empty()).then(|| {
        let mut wins = 0.0;
        for b in &bad_s {
            for c in &clean_s {
                wins += if b < c {
                    1.0
                } else if b == c {
                    0.5
                } else {
                    0.0
                };
            }
        }
        wins / (bad_s.len() * clean_s.len()) as f64
    });
    Ok(FilterAccuracy {
        enabled,
        threshold,
        unlabeled: ids.len(),
        bad: bad_s.len(),
        dropped,
        bad_dropped,
        precision: (dropped > 0).then(|| bad_dropped as f64 / dropped as f64),
        recall: if bad_s.is_empty() {
            0.0
        } else {
            bad_dropped as f64 / bad_s.len() as f64
        },
        auc,
        score_mean_bad: mean(&bad_s),
        score_mean_clean: mean(&clean_s),
        by_corruption: by,
        missed_bad: missed,
        dropped_clean,
    })
}

/// One ADF decision to write. No `Default`: it records an outcome, every field of which
/// was computed.
pub struct Decision<'a> {
    /// Unlabeled ids, with their score and keep flag at the same index.
    pub ids: &'a [String],
    pub scores: &'a [f64],
    pub keep: &'a [bool],
    pub enabled: bool,
    pub criterion: Criterion,
    pub rule: ThresholdRule,
    pub threshold: Option<f64>,
}

/// Writes `scores.csv`, `adf.json` and `metrics.json` (shared with distill's online re-scoring).
pub fn write_decision(out: &Path, d: &Decision<'_>) -> Result<(), StageError> {
    write_decision_with(out, d, serde_json::Map::new())
}

/// [`write_decision`] with `extra` metrics merged into `metrics.json` (empty: the same bytes).
pub fn write_decision_with(
    out: &Path,
    d: &Decision<'_>,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<(), StageError> {
    let &Decision {
        ids,
        scores,
        keep,
        enabled,
        criterion,
        rule,
        threshold,
    } = d;
    let mut csv = String::from("id,score,kept\n");
    for ((id, s), k) in ids.iter().zip(scores).zip(keep) {
        csv.push_str(&format!("{id},{s},{k}\n"));
    }
    let p = out.join("scores.csv");
    std::fs::write(&p, csv).map_err(|e| MethodError::io(&p, e))?;
    let kept: Vec<String> = ids
        .iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(i, _)| i.clone())
        .collect();
    let dropped: Vec<String> = ids
        .iter()
        .zip(keep)
        .filter(|(_, k)| !**k)
        .map(|(i, _)| i.clone())
        .collect();
    let n = scores.len().max(1) as f64;
    let mean = scores.iter().sum::<f64>() / n;
    let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
    let mut m = serde_json::Map::new();
    m.insert("adf.enabled".into(), u8::from(enabled).into());
    m.insert("adf.kept".into(), kept.len().into());
    m.insert("adf.dropped".into(), dropped.len().into());
    m.insert("adf.score_mean".into(), mean.into());
    m.insert("adf.score_std".into(), std.into());
    if let Some(t) = threshold {
        m.insert("adf.threshold".into(), t.into());
    }
    m.extend(extra);
    write_json(
        &out.join("adf.json"),
        &AdfDecision {
            enabled,
            criterion,
            threshold_rule: rule,
            threshold,
            kept,
            dropped,
        },
    )?;
    Ok(write_json(
        &out.join("metrics.json"),
        &serde_json::Value::Object(m),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-normal values (Box-Muller on a fixed LCG).
    fn normal(n: usize, mean: f64, std: f64, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut u = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (a, b) = (u(), u());
                mean + std * (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
            })
            .collect()
    }

    #[test]
    fn threshold_adapts_to_the_score_distribution() {
        let a = normal(200, -0.10, 0.01, 1);
        let b = normal(200, -0.30, 0.05, 2);
        for rule in [
            ThresholdRule::Mad { k: 2.0 },
            ThresholdRule::Otsu { bins: 32 },
        ] {
            let ta = adaptive_threshold(&a, rule).unwrap();
            let tb = adaptive_threshold(&b, rule).unwrap();
            // Each threshold lies inside (or at the edge of) its own distribution.
            assert!(ta > -0.2 && tb < -0.15, "{rule:?}: {ta} {tb}");
        }
        assert!(adaptive_threshold(&[], ThresholdRule::Mad { k: 2.0 }).is_none());
        assert!(adaptive_threshold(&[1.0, f64::NAN], ThresholdRule::Mad { k: 2.0 }).is_none());
    }

    #[test]
    fn a_clear_outlier_group_is_dropped() {
        // 90 good pseudo-labels (teachers agree) and 10 where they disagree badly.
        let mut scores = normal(90, -0.05, 0.01, 3);
        scores.extend(normal(10, -0.60, 0.05, 4));
        for rule in [
            ThresholdRule::Mad { k: 3.0 },
            ThresholdRule::Otsu { bins: 64 },
        ] {
            let t = adaptive_threshold(&scores, rule);
            let keep = keep_decisions(&scores, t, true);
            assert!(keep[..90].iter().all(|k| *k), "{rule:?}: good one dropped");
            assert!(keep[90..].iter().all(|k| !*k), "{rule:?}: outlier kept");
            // Disabled ADF keeps everything (the "w/o ADF" ablation).
            assert!(keep_decisions(&scores, t, false).iter().all(|k| *k));
        }
    }

    #[test]
    fn filter_accuracy_counts_the_thresholds_drops_against_the_truth() {
        let ids: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
        // Threshold -0.5: u0 (bad), u1 (clean), u4 (bad) are dropped; u2 (bad) is kept.
        let scores = [-0.9, -0.6, -0.2, -0.1, -0.7, -0.3];
        let truth = [
            ("u0".to_string(), "flip".to_string()),
            ("u2".to_string(), "flip".to_string()),
            ("u4".to_string(), "blocks".to_string()),
        ];
        for enabled in [true, false] {
            let a = filter_accuracy(&ids, &scores, Some(-0.5), enabled, &truth).unwrap();
            assert_eq!((a.bad, a.dropped, a.bad_dropped), (3, 3, 2));
            assert_eq!(a.precision, Some(2.0 / 3.0));
            assert_eq!(a.recall, 2.0 / 3.0);
            assert_eq!(a.by_corruption["flip"].recall, 0.5);
            assert_eq!(a.by_corruption["blocks"].recall, 1.0);
            assert_eq!(a.missed_bad, ["u2"]);
            assert_eq!(a.dropped_clean, ["u1"]);
            // Bad scores -0.9, -0.2, -0.7 against clean -0.6, -0.1, -0.3: -0.9 and -0.7
            // are below all three, -0.2 only below -0.1: 7 of the 9 pairs.
            assert_eq!(a.auc, Some(7.0 / 9.0));
            assert_eq!(a.metrics()["adf.recall_blocks"], 1.0);
        }
        // Nothing dropped: no precision; a bad id outside the scored ids is refused.
        let a = filter_accuracy(&ids, &scores, Some(-1.0), true, &truth).unwrap();
        assert_eq!((a.precision, a.recall), (None, 0.0));
        assert!(!a.metrics().contains_key("adf.precision"));
        let other = [("x9".to_string(), "flip".to_string())];
        let e = filter_accuracy(&ids, &scores, Some(-0.5), true, &other).unwrap_err();
        assert!(
            e.contains("`x9`") && e.contains("bad_split_label_ratio"),
            "{e}"
        );
    }

    #[test]
    fn agreement_orders_by_teacher_disagreement() {
        // Draws from libtorch's one generator: not while another test depends on it.
        let _rng = ugc_engine::testing::torch_rng();
        let base = Tensor::rand([3, 3, 8, 8], (Kind::Float, Device::Cpu));
        let noise = Tensor::from_slice(&[0.0f32, 0.1, 0.5]).view([3, 1, 1, 1]);
        let other = &base + &noise;
        let s = agreement_scores(&[base.shallow_clone(), other]).unwrap();
        // Identical outputs disagree by exactly 0; `(b + 0.5) - b` in float32 is 0.5 up to
        // two roundings of values <= 1.5 each, then a float32 mean of 3x8x8 = 192 of them.
        assert!(s[0] == 0.0 && s[0] > s[1] && s[1] > s[2], "{s:?}");
        let within = 2.0 * 1.5 * ugc_tolerance::U_F32 * 2.0
            + 0.5 * ugc_tolerance::gamma(192, ugc_tolerance::Precision::F32);
        assert!((s[2] + 0.5).abs() <= within);
        assert!(agreement_scores(&[base]).is_err());
        assert!(resolve_criterion(Criterion::Agreement, 1).is_err());
        assert_eq!(
            resolve_criterion(Criterion::Auto, 1).unwrap(),
            Criterion::Discriminator
        );
        assert_eq!(
            threshold_rule(Threshold::Otsu, 1.0, 8),
            ThresholdRule::Otsu { bins: 8 }
        );
        assert_eq!(
            threshold_rule(Threshold::Mad, 1.5, 8),
            ThresholdRule::Mad { k: 1.5 }
        );
    }
}
