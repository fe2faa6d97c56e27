//! The `synth` kind: its schema (`schema.yaml`) and typed parameters.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ugc_engine::ParamProblem;

/// A built-in synthetic task (also the `ugc-pipe synth` verb's first argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SynthTask {
    /// Label maps -> photos in a Cityscapes layout (a Cityscapes analogue).
    Labels2photo,
    /// Edge maps -> photos in a pix2pix aligned layout (an edges2shoes analogue).
    Edges2photo,
}

impl SynthTask {
    /// Every task, in the order of the schema's `enum`.
    pub const ALL: [SynthTask; 2] = [SynthTask::Labels2photo, SynthTask::Edges2photo];

    /// The task's name as written in pipelines and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SynthTask::Labels2photo => "labels2photo",
            SynthTask::Edges2photo => "edges2photo",
        }
    }
}

impl fmt::Display for SynthTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A task name that is not one of [`SynthTask::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `task`: unknown synthetic task `{0}` (labels2photo | edges2photo)")]
pub struct UnknownTask(pub String);

impl FromStr for SynthTask {
    type Err = UnknownTask;
    fn from_str(s: &str) -> Result<Self, UnknownTask> {
        SynthTask::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownTask(s.to_string()))
    }
}

/// What a `synth` stage generates (ranges in `schema.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub task: SynthTask,
    /// Training images.
    pub n: usize,
    /// Test (`val`) images.
    pub n_test: usize,
    /// Image side in pixels.
    pub size: u32,
    pub seed: u64,
    /// `labels2photo` only: number of classes used.
    pub classes: usize,
    /// Fraction of the unlabeled inputs made bad (the ADF benchmark); `None` = clean.
    /// Optional without a default so that existing stages keep their cache keys.
    pub bad_unlabeled_fraction: Option<f64>,
    /// `label_ratio` of the split that places the bad inputs among its unlabeled ids.
    pub bad_split_label_ratio: Option<f64>,
    /// `holdout` of that split (`None` = the split's default).
    pub bad_split_holdout: Option<f64>,
    /// `seed` of that split (`None` = the split's default).
    pub bad_split_seed: Option<u64>,
}

/// The split's default `holdout` (`crates/kinds/src/split/schema.yaml`).
pub const SPLIT_DEFAULT_HOLDOUT: f64 = 0.1;
/// The split's default `seed`.
pub const SPLIT_DEFAULT_SEED: u64 = 0;

/// Where the bad unlabeled inputs go: the fraction and the split whose unlabeled ids
/// receive them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadUnlabeled {
    pub fraction: f64,
    pub label_ratio: f64,
    pub holdout: f64,
    pub split_seed: u64,
}

impl BadUnlabeled {
    /// How many of `n` training examples get bad inputs: `round(fraction * unlabeled)`.
    pub fn count(&self, n: usize) -> usize {
        let unl = unlabeled_count(n, self.label_ratio, self.holdout).unwrap_or(0);
        (self.fraction * unl as f64).round() as usize
    }
}

/// Unlabeled inputs a split of `n` examples leaves, by the split's size rule
/// (`ugc_data::split::split_sizes`: hold-out `round(holdout*n)`, labeled
/// `round(label_ratio*rest)` clamped to `1..=rest`); `None` when nothing is left to train
/// on. Here because the plan-time check needs it and this crate has no libtorch; a
/// `ugc-data` test ties the two.
pub fn unlabeled_count(n: usize, label_ratio: f64, holdout: f64) -> Option<usize> {
    let n_hold = (holdout * n as f64).round() as usize;
    if n_hold >= n {
        return None;
    }
    let pool = n - n_hold;
    let n_lab = ((label_ratio * pool as f64).round() as usize).clamp(1, pool);
    Some(pool - n_lab)
}

impl Params {
    /// The bad-input settings, `None` when every input is clean (absent or 0 fraction).
    /// Call after `check` passed: a missing `bad_split_label_ratio` reads as `None` here.
    pub fn bad_unlabeled(&self) -> Option<BadUnlabeled> {
        let fraction = self.bad_unlabeled_fraction.filter(|f| *f > 0.0)?;
        Some(BadUnlabeled {
            fraction,
            label_ratio: self.bad_split_label_ratio?,
            holdout: self.bad_split_holdout.unwrap_or(SPLIT_DEFAULT_HOLDOUT),
            split_seed: self.bad_split_seed.unwrap_or(SPLIT_DEFAULT_SEED),
        })
    }
}

impl crate::KindParams for Params {
    fn check(&self) -> Vec<ParamProblem> {
        let mut out = Vec::new();
        let Some(f) = self.bad_unlabeled_fraction else {
            for (name, set) in [
                (
                    "bad_split_label_ratio",
                    self.bad_split_label_ratio.is_some(),
                ),
                ("bad_split_holdout", self.bad_split_holdout.is_some()),
                ("bad_split_seed", self.bad_split_seed.is_some()),
            ] {
                if set {
                    out.push(ParamProblem::new(
                        name,
                        "has no effect without `bad_unlabeled_fraction`",
                    ));
                }
            }
            return out;
        };
        if f == 0.0 {
            return out;
        }
        if self.task != SynthTask::Labels2photo {
            out.push(ParamProblem::new(
                "bad_unlabeled_fraction",
                format!(
                    "bad unlabeled inputs exist for task labels2photo only, not {}",
                    self.task
                ),
            ));
        }
        let Some(ratio) = self.bad_split_label_ratio else {
            out.push(ParamProblem::new(
                "bad_unlabeled_fraction",
                "needs `bad_split_label_ratio`: the label_ratio of the split that reads \
                 this dataset (the bad inputs go among its unlabeled ids)",
            ));
            return out;
        };
        let holdout = self.bad_split_holdout.unwrap_or(SPLIT_DEFAULT_HOLDOUT);
        match unlabeled_count(self.n, ratio, holdout) {
            None => out.push(ParamProblem::new(
                "bad_split_holdout",
                format!("{holdout} of n = {} leaves no example to train on", self.n),
            )),
            Some(unl) if (f * unl as f64).round() < 1.0 => out.push(ParamProblem::new(
                "bad_unlabeled_fraction",
                format!(
                    "{f} of the {unl} unlabeled inputs (n = {}, label ratio {ratio}, \
                     hold-out {holdout}) rounds to no bad input",
                    self.n
                ),
            )),
            Some(_) => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_round_trip_and_unknown_names_say_which() {
        for t in SynthTask::ALL {
            assert_eq!(t.name().parse::<SynthTask>(), Ok(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.name());
        }
        let e = "pix2pix".parse::<SynthTask>().unwrap_err().to_string();
        assert!(e.contains("`task`") && e.contains("pix2pix"), "{e}");
    }

    #[test]
    fn bad_inputs_need_their_split_and_labels2photo() {
        use crate::Kind;
        use crate::testing::assert_refused;
        use serde_json::json;
        let base = json!({"task": "labels2photo", "n": 200});
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        assert_refused(
            Kind::Synth,
            with(json!({"bad_unlabeled_fraction": 0.3})),
            "bad_unlabeled_fraction",
        );
        assert_refused(
            Kind::Synth,
            with(json!({"bad_split_seed": 1})),
            "bad_split_seed",
        );
        assert_refused(
            Kind::Synth,
            with(json!({"task": "edges2photo", "bad_unlabeled_fraction": 0.3,
                        "bad_split_label_ratio": 0.25})),
            "bad_unlabeled_fraction",
        );
        // n = 4: hold-out 0, labeled 1, unlabeled 3; 0.1 of 3 rounds to none.
        assert_refused(
            Kind::Synth,
            with(json!({"n": 4, "bad_unlabeled_fraction": 0.1, "bad_split_label_ratio": 0.25})),
            "bad_unlabeled_fraction",
        );
    }

    #[test]
    fn unlabeled_count_follows_the_split_rule() {
        // 200 examples, hold-out 20, pool 180: 25% -> 45 labeled, 10% -> 18 labeled.
        assert_eq!(unlabeled_count(200, 0.25, 0.1), Some(135));
        assert_eq!(unlabeled_count(200, 0.1, 0.1), Some(162));
        // At least one labeled example; a hold-out of everything leaves nothing.
        assert_eq!(unlabeled_count(3, 0.01, 0.0), Some(2));
        assert_eq!(unlabeled_count(2, 0.5, 0.9), None);
        let b = BadUnlabeled {
            fraction: 0.3,
            label_ratio: 0.25,
            holdout: 0.1,
            split_seed: 0,
        };
        assert_eq!(b.count(200), 41); // round(0.3 * 135) = round(40.5) = 41
    }
}
