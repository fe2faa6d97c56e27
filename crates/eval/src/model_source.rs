//! Finding the model a stage should read among its deps: `<dep>/model/` of a `train`,
//! `distill`, `export` (or any model-producing) stage, or `<dep>/teachers/<role>/` of a
//! `teachers` stage.

use std::path::PathBuf;

use ugc_engine::StageContext;
use ugc_nn::export::{META_FILE, WEIGHTS_FILE};

use crate::error::{EvalError, Result};

/// Deps of these kinds never hold the model under evaluation.
const NOT_MODELS: [&str; 3] = ["split", "evaluator", "synth"];
/// Teacher roles written by the `teachers` stage.
pub const ROLES: [&str; 3] = ["largest", "wide", "deep"];

/// Where the model is and which stage produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    /// The model directory (`model.safetensors` + `model.json`).
    pub dir: PathBuf,
    /// Dep name and kind of the producing stage.
    pub stage: String,
    pub kind: String,
    /// Teacher role, for a `teachers` dep.
    pub role: Option<String>,
}

/// Picks the model dep: the one named by `model` when given, else the only dep whose kind is
/// not `split`/`evaluator`/`synth`. For a `teachers` dep, `role` selects the teacher.
pub fn find_model(
    ctx: &StageContext<'_>,
    model: Option<&str>,
    role: Option<&str>,
) -> Result<ModelSource> {
    let input = match model {
        Some(name) => ctx.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
            EvalError::param(
                "model",
                name,
                format!("no dep of stage `{}` has this name", ctx.node),
            )
        })?,
        None => {
            let cands: Vec<_> = ctx
                .inputs
                .iter()
                .filter(|i| !NOT_MODELS.contains(&i.kind.as_str()))
                .collect();
            match cands.as_slice() {
                [one] => *one,
                [] => {
                    return Err(EvalError::Input(format!(
                        "stage `{}` needs a model-producing dep (train, distill, export or teachers) among its deps",
                        ctx.node
                    )));
                }
                many => {
                    let names: Vec<&str> = many.iter().map(|i| i.name.as_str()).collect();
                    return Err(EvalError::param(
                        "model",
                        "(unset)",
                        format!(
                            "stage `{}` has several model deps ({}); name one",
                            ctx.node,
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
    };
    let (dir, role) = if input.kind == "teachers" {
        let role = role.ok_or_else(|| {
            EvalError::param(
                "role",
                "(unset)",
                format!(
                    "dep `{}` is a teachers stage; choose one of {}",
                    input.name,
                    ROLES.join(", ")
                ),
            )
        })?;
        if !ROLES.contains(&role) {
            return Err(EvalError::param(
                "role",
                role,
                format!("expected one of {}", ROLES.join(", ")),
            ));
        }
        (
            input.dir.join("teachers").join(role),
            Some(role.to_string()),
        )
    } else {
        (input.dir.join("model"), None)
    };
    for f in [META_FILE, WEIGHTS_FILE] {
        let p = dir.join(f);
        if !p.is_file() {
            return Err(EvalError::Input(format!(
                "dep `{}` (kind {}) has no model: {} is missing",
                input.name,
                input.kind,
                p.display()
            )));
        }
    }
    Ok(ModelSource {
        dir,
        stage: input.name.clone(),
        kind: input.kind.clone(),
        role,
    })
}
