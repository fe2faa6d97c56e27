//! The `synth` kind: its schema (`schema.yaml`) and typed parameters.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
}

impl crate::KindParams for Params {}

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
}
