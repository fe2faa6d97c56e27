//! `ugc-pipe synth`: the built-in synthetic datasets, outside a pipeline.

use std::path::Path;

use ugc_pipe::cli::{CliError, CliResult, print_json_or};

pub fn synth(task: &str, n: usize, size: u32, out: &Path, seed: u64, json: bool) -> CliResult {
    let task: ugc_data::SynthTask = task.parse().map_err(CliError::usage)?;
    let report = ugc_data::synth_to_dir(task, n, size, out, seed).map_err(CliError::usage)?;
    print_json_or(json, &report, || {
        println!(
            "{task}: {} train + {} test images of {size}x{size} in {} ({:.0} images/s)",
            report.n_train,
            report.n_test,
            out.display(),
            report.images_per_sec
        );
    })?;
    Ok(0)
}
