//! The `export` stage kind: writes a dep's model as a standalone compact model dir
//! (`<out>/model/`: `model.safetensors` + `model.json`, DESIGN §2) and proves it: the
//! exported model is loaded back and must reproduce the source model's output on a fixed
//! random input (seeded), within `tolerance`.

use serde_json::json;
use tch::{Device, Kind, Tensor};
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_nn::export::{WEIGHTS_FILE, export_subnet, load_model};
use ugc_nn::{Mode, profile};

use ugc_kinds::export::Params;

use crate::error::{EvalError, Result};
use crate::model_source::find_model;
use crate::util::{file_digest, write_json};

/// Re-exports a model as a standalone compact model (schema and parameters:
/// `ugc_kinds::export`).
pub struct ExportStage {
    schema: KindSchema,
}

impl ExportStage {
    pub fn new(schema: KindSchema) -> Self {
        ExportStage { schema }
    }
}

impl StageKind for ExportStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> std::result::Result<(), StageError> {
        let p: Params = ctx.typed_params()?;
        export(ctx, &p).map_err(StageError::from)
    }
}

fn export(ctx: &StageContext<'_>, p: &Params) -> Result<()> {
    let source = find_model(ctx, p.model.as_deref(), p.role.map(|r| r.name()))?;
    // The check runs on the CPU: it is about the weights and the architecture, and CPU
    // results are deterministic.
    let (meta, mut src) = load_model(&source.dir, Device::Cpu)?;
    let sub = src.generator.search_space().largest();
    let out_dir = ctx.out_dir.join("model");
    let new_meta = export_subnet(src.generator.as_ref(), &sub, &out_dir)?;
    let (_, mut exported) = load_model(&out_dir, Device::Cpu)?;

    // The comparison runs in float64 (the float32 weights convert exactly): it checks that
    // the exported model computes the same function, so its difference is rounding at
    // ~1e-16, not float32 rounding, which depends on the CPU's kernels (AVX2 vs AVX-512
    // sum in other orders) and grows with the model's size.
    src.vs.double();
    exported.vs.double();
    tch::manual_seed(p.seed as i64);
    let x = Tensor::randn(
        [1, meta.arch.input_nc, p.size, p.size],
        (Kind::Float, Device::Cpu),
    )
    .to_kind(Kind::Double);
    let a = tch::no_grad(|| src.generator.forward(&x, &sub, Mode::Eval))?;
    let b = tch::no_grad(|| {
        exported
            .generator
            .forward(&x, &exported.generator.search_space().largest(), Mode::Eval)
    })?;
    if a.size() != b.size() {
        return Err(EvalError::Check(format!(
            "exported model's output {:?} differs in shape from the source's {:?}",
            b.size(),
            a.size()
        )));
    }
    let diff = (&a - &b).abs().max().double_value(&[]);
    // NaN differences fail too.
    if diff.is_nan() || diff > p.tolerance {
        return Err(EvalError::Check(format!(
            "exported model differs from {} by up to {diff:e} on the check input (tolerance {:e})",
            source.dir.display(),
            p.tolerance
        )));
    }
    let cost = profile(
        &new_meta.arch,
        None,
        [new_meta.arch.input_nc, p.size, p.size],
    )?;
    write_json(
        &ctx.out_dir.join("export.json"),
        &json!({
            "source": {"stage": source.stage, "kind": source.kind, "role": source.role,
                       "weights_blake3": file_digest(&source.dir.join(WEIGHTS_FILE))?,
                       "config": meta.source_subnet},
            "model": {"arch": new_meta.arch.arch.name(), "config": new_meta.source_subnet,
                      "weights_blake3": file_digest(&out_dir.join(WEIGHTS_FILE))?},
            "check": {"input": [1, meta.arch.input_nc, p.size, p.size], "seed": p.seed,
                      "max_abs_diff": diff, "tolerance": p.tolerance},
            "macs": cost.macs,
            "params": cost.params,
        }),
    )?;
    write_json(
        &ctx.out_dir.join("metrics.json"),
        &json!({"macs": cost.macs, "params": cost.params, "max_abs_diff": diff}),
    )
}
