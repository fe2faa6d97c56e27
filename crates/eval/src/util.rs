//! Small helpers shared by the stages: JSON output, digests, devices, typed parameters.

use std::path::Path;

use serde::Serialize;
use tch::Device;
use ugc_engine::DeviceKind;

use crate::error::{EvalError, Result};

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| EvalError::bad(path, format!("cannot serialise: {e}")))?;
    std::fs::write(path, text).map_err(|e| EvalError::io(path, e))
}

/// Reads and parses a JSON file, naming it in errors.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EvalError::bad(path, e.to_string()))
}

/// Hex BLAKE3 digest of a file's bytes.
pub fn file_digest(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// The engine's device as a `tch` device.
pub fn tch_device(d: DeviceKind) -> Device {
    match d {
        DeviceKind::Cpu => Device::Cpu,
        DeviceKind::Cuda(i) => Device::Cuda(i),
    }
}

/// A `metrics.json` value: JSON has no infinities or NaN, so those are refused here rather
/// than silently written as `null`.
pub fn finite(name: &str, v: f64) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(EvalError::Check(format!(
            "metric `{name}` is not a finite number ({v})"
        )))
    }
}
