//! The `teachers` stage: slices the teacher sub-nets chosen by `search` out of the supernet
//! and exports each as a compact model (`teachers/<role>/`).
//!
//! Strategies: `largest` (the whole supernet, GAN Compression's teacher), `wide` (OMGD's
//! wide teacher), `deep` (extra residual blocks present), `multi` (wide + deep: the two are
//! structurally complementary, one spends its MACs on width, the other on depth, which is
//! UGC's/OMGD's reason for distilling from both).

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;
use ugc_data::{SplitManifest, Subset};
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_nn::SubnetConfig;

use crate::MethodError;
use crate::search::{ChosenConfig, SearchConfigs};
use crate::setup::{EvalSpec, encoding_for, load_supernet, read_batches, read_json, write_json};

use ugc_kinds::teachers::Params as TeachersParams;
pub use ugc_kinds::teachers::{Role, Strategy};

/// The searched config of `role`.
pub fn config_of(role: Role, c: &SearchConfigs) -> &ChosenConfig {
    match role {
        Role::Largest => &c.largest,
        Role::Wide => &c.wide_teacher,
        Role::Deep => &c.deep_teacher,
    }
}

/// One entry of `teachers.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherEntry {
    pub role: Role,
    pub config: String,
    pub macs: u64,
    pub params: u64,
}

/// Reads `<dir>/teachers.json` of a teachers stage output.
pub fn load_teachers_json(dir: &Path) -> Result<Vec<TeacherEntry>, StageError> {
    let v: Vec<TeacherEntry> = read_json(&dir.join("teachers.json"))?;
    if v.is_empty() {
        return Err(StageError::Data(format!(
            "{}: no teachers listed",
            dir.join("teachers.json").display()
        )));
    }
    Ok(v)
}

/// The `teachers` stage kind (`stages/teachers.yaml`).
pub struct TeachersStage {
    schema: KindSchema,
}

impl TeachersStage {
    pub fn new(schema: KindSchema) -> Self {
        TeachersStage { schema }
    }
}

impl StageKind for TeachersStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let p: TeachersParams = ctx.typed_params()?;
        let device = crate::device::tch_device(ctx.device)?;
        let search_dir = ctx.require_input("search")?.dir.clone();
        let sup_dir = ctx.require_input("supernet")?.dir.clone();
        let configs = SearchConfigs::load(&search_dir)?;
        let sup = load_supernet(&sup_dir, device)?;
        let space = sup.generator.search_space();
        // BN families: the supernet's running statistics mix every sampled sub-net, so each
        // teacher is recalibrated on its own activations before export (GAN Compression).
        let calib: Vec<Tensor> = if sup.generator.batch_norms().is_empty() {
            Vec::new()
        } else {
            let split = ctx.input_of_kind("split").ok_or_else(|| {
                StageError::Config(format!(
                    "stage `{}`: {} uses batch norm, so its teachers are recalibrated before \
                     export; add the `split` stage to deps",
                    ctx.node, sup.arch.arch
                ))
            })?;
            let m = SplitManifest::load(&split.dir).map_err(MethodError::data_at(format!(
                "split of stage `{}`",
                ctx.node
            )))?;
            let enc = encoding_for(&sup.arch, &m)?;
            let mut v = Vec::new();
            for subset in [Subset::Labeled, Subset::Unlabeled] {
                for b in read_batches(
                    &m,
                    &split.dir,
                    subset,
                    p.batch_size.max(1),
                    p.calib_batches,
                    &EvalSpec {
                        encoding: enc,
                        image_size: p.image_size,
                        device,
                    },
                )? {
                    v.push(b.input);
                }
            }
            v
        };
        let roles = p.strategy.roles();
        ctx.progress.start("export", roles.len() as u64);
        let mut entries = Vec::new();
        let mut metrics = serde_json::Map::new();
        for (i, role) in roles.into_iter().enumerate() {
            let chosen = config_of(role, &configs);
            let sub: SubnetConfig = chosen.config.parse().map_err(|e| {
                StageError::Data(format!(
                    "{}: {} config: {e}",
                    search_dir.join("configs.json").display(),
                    role.name()
                ))
            })?;
            space.check(&sub).map_err(|e| {
                StageError::Data(format!(
                    "{}: the {} config does not belong to the supernet of {}: {e}",
                    search_dir.join("configs.json").display(),
                    role.name(),
                    sup_dir.display()
                ))
            })?;
            if !calib.is_empty() {
                ugc_nn::recalibrate_bn(sup.generator.as_ref(), &sub, calib.iter()).map_err(
                    MethodError::nn_at(format!("recalibrating the {} teacher", role.name())),
                )?;
            }
            let dir = ctx.out_dir.join("teachers").join(role.name());
            let meta = ugc_nn::export::export_subnet(sup.generator.as_ref(), &sub, &dir).map_err(
                MethodError::nn_at(format!("exporting the {} teacher", role.name())),
            )?;
            metrics.insert(format!("{}.macs", role.name()), chosen.macs.into());
            metrics.insert(format!("{}.params", role.name()), meta.params.into());
            entries.push(TeacherEntry {
                role,
                config: chosen.config.clone(),
                macs: chosen.macs,
                params: meta.params,
            });
            ctx.progress.set(i as u64 + 1);
        }
        metrics.insert("teachers.count".into(), entries.len().into());
        write_json(&ctx.out_dir.join("teachers.json"), &entries)?;
        Ok(write_json(
            &ctx.out_dir.join("metrics.json"),
            &serde_json::Value::Object(metrics),
        )?)
    }
}
