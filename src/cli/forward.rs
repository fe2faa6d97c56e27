//! The verbs that need libtorch run in `ugc-pipe-worker`, installed next to `ugc-pipe`.
//! Keeping libtorch out of the head process makes `run` of a cached pipeline, `status`
//! and `dag` start in milliseconds instead of the second libtorch's start-up costs.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use super::{CliError, CliResult};

/// Name of the worker binary.
pub const WORKER: &str = "ugc-pipe-worker";

/// The worker binary next to the running `ugc-pipe`.
pub fn worker_path() -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot locate the ugc-pipe executable: {e}")))?;
    let worker = exe.with_file_name(WORKER);
    if worker.is_file() {
        Ok(worker)
    } else {
        Err(CliError::failed(format!(
            "{} is missing: ugc-pipe runs stages and model verbs through it (`cargo build` builds both)",
            worker.display()
        )))
    }
}

/// Replaces this process with the worker, same arguments: exit code, signals and output
/// are the worker's own.
pub fn to_worker() -> CliResult {
    let worker = worker_path()?;
    let err = std::process::Command::new(&worker)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(CliError::failed(format!(
        "starting {}: {err}",
        worker.display()
    )))
}
