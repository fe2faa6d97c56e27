//! Qualitative samples: one PNG strip per test image, `input | output | target`.

use std::path::Path;

use tch::{Device, Kind, Tensor};
use ugc_data::ClassTable;

use crate::error::{EvalError, Result};
use crate::labels::unit_to_bytes;

/// Colours label ids `[N, H, W]` with the class table's colours: `[N, 3, H, W]` in `[0, 1]`.
pub fn colorize(labels: &Tensor, table: &ClassTable) -> Tensor {
    let mut lut = vec![0f32; 3 * table.onehot_channels.max(1)];
    for c in &table.classes {
        for k in 0..3 {
            lut[3 * c.id as usize + k] = f32::from(c.color[k]) / 255.0;
        }
    }
    let lut = Tensor::from_slice(&lut).view([-1, 3]);
    let l = labels.to_device(Device::Cpu).to_kind(Kind::Int64);
    let size = l.size();
    let flat = l.flatten(0, -1).clamp(0, lut.size()[0] - 1);
    lut.index_select(0, &flat)
        .view([size[0], size[1], size[2], 3])
        .permute([0, 3, 1, 2])
}

/// File-name-safe version of an example id.
fn safe_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `dir/<id>.png` for each image: the three `[N, 3, H, W]` `[0, 1]` batches side by
/// side. Returns the file names written.
pub fn write_strips(
    dir: &Path,
    ids: &[String],
    input: &Tensor,
    output: &Tensor,
    target: &Tensor,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let strip = Tensor::cat(
        &[
            input.to_device(Device::Cpu),
            output.to_device(Device::Cpu),
            target.to_device(Device::Cpu),
        ],
        3,
    );
    let s = strip.size();
    let (h, w) = (s[2] as u32, s[3] as u32);
    let bytes = unit_to_bytes(&strip)?;
    let per = (3 * h * w) as usize;
    let mut names = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let img = image::RgbImage::from_raw(w, h, bytes[i * per..(i + 1) * per].to_vec())
            .ok_or_else(|| EvalError::Check(format!("sample {id}: wrong buffer size")))?;
        let name = format!("{}.png", safe_name(id));
        let p = dir.join(&name);
        img.save(&p)
            .map_err(|e| EvalError::bad(&p, format!("cannot write PNG: {e}")))?;
        names.push(name);
    }
    Ok(names)
}
