//! Image folders as the reference tools read them: pytorch-fid's file list (the image
//! extensions it globs, not recursive, sorted by name), PIL's `convert('RGB')` pixels, and
//! pairs matched by file name for the full-reference metrics. Every error names the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{MetricsError, Result};

/// The extensions pytorch-fid's `compute_statistics_of_path` globs (`*.png`, ...). The glob
/// is case-sensitive on Linux, so `X.PNG` is not an image to it and is not one here.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp",
];

/// The images of `dir` in pytorch-fid's order: files directly in `dir` whose extension is
/// one of [`IMAGE_EXTENSIONS`], sorted by name. An empty list is an error naming `dir`.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(MetricsError::InvalidParam(format!(
            "{}: not a folder of images{}",
            dir.display(),
            if dir.exists() {
                ""
            } else {
                " (it does not exist)"
            }
        )));
    }
    let rd = std::fs::read_dir(dir).map_err(|e| MetricsError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| MetricsError::io(dir, e))?;
        let path = entry.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e));
        if is_image && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(MetricsError::InvalidParam(format!(
            "{}: no images (files named *.{})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", *.")
        )));
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// An 8-bit RGB image, row-major `H x W x 3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Reads `path` as PIL's `Image.open(path).convert('RGB')` does for 8-bit images: grey is
/// replicated, alpha is dropped (not composited), palettes are expanded. 16-bit images are
/// refused: PIL's conversion of them clips rather than scales, and no convention is shared.
pub fn read_rgb8(path: &Path) -> Result<Rgb8> {
    let img = image::ImageReader::open(path)
        .map_err(|e| MetricsError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| MetricsError::io(path, e))?
        .decode()
        .map_err(|e| MetricsError::LabelImage {
            path: path.to_path_buf(),
            reason: format!("cannot decode the image: {e}"),
        })?;
    use image::DynamicImage as D;
    let rgb = match img {
        D::ImageRgb8(i) => i,
        D::ImageLuma8(_) | D::ImageLumaA8(_) | D::ImageRgba8(_) => img.to_rgb8(),
        other => {
            return Err(MetricsError::LabelImage {
                path: path.to_path_buf(),
                reason: format!(
                    "{:?} pixels: only 8-bit grey, grey+alpha, RGB and RGBA images are read",
                    other.color()
                ),
            });
        }
    };
    Ok(Rgb8 {
        width: rgb.width(),
        height: rgb.height(),
        data: rgb.into_raw(),
    })
}

/// `N x 3 x H x W` float32 in `[0, 1]` (torchvision's `ToTensor`: byte / 255) of images that
/// must share one size; a different size is an error naming the file, as the reference's
/// batching would fail on it.
pub fn batch_tensor(images: &[(PathBuf, Rgb8)]) -> Result<Tensor> {
    let (first_path, first) = images
        .first()
        .ok_or_else(|| MetricsError::InvalidParam("an empty batch of images".into()))?;
    let (w, h) = (first.width, first.height);
    let mut bytes = Vec::with_capacity(images.len() * first.data.len());
    for (p, img) in images {
        if (img.width, img.height) != (w, h) {
            return Err(MetricsError::Mismatch(format!(
                "{} is {}x{} but {} is {w}x{h}: every image of a folder must have one size \
                 (pytorch-fid batches them the same way)",
                p.display(),
                img.width,
                img.height,
                first_path.display()
            )));
        }
        bytes.extend_from_slice(&img.data);
    }
    let t = Tensor::from_slice(&bytes)
        .view([images.len() as i64, h as i64, w as i64, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        / 255.0;
    Ok(t.contiguous())
}

/// Files of `a` and `b` paired by file name (both listed by [`list_images`]). Names present
/// on one side only are an error listing them.
pub fn pair_by_name(a: &Path, b: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let by_name = |files: Vec<PathBuf>| -> BTreeMap<String, PathBuf> {
        files
            .into_iter()
            .map(|p| {
                (
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                    p,
                )
            })
            .collect()
    };
    let fa = by_name(list_images(a)?);
    let mut fb = by_name(list_images(b)?);
    let mut only_a = Vec::new();
    let mut pairs = Vec::new();
    for (name, pa) in fa {
        match fb.remove(&name) {
            Some(pb) => pairs.push((pa, pb)),
            None => only_a.push(name),
        }
    }
    let only_b: Vec<String> = fb.into_keys().collect();
    if !(only_a.is_empty() && only_b.is_empty()) {
        let show = |v: &[String]| {
            let mut s = v.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 8 {
                s.push_str(&format!(" (and {} more)", v.len() - 8));
            }
            s
        };
        let mut parts = Vec::new();
        if !only_a.is_empty() {
            parts.push(format!(
                "{} only in {}: {}",
                only_a.len(),
                a.display(),
                show(&only_a)
            ));
        }
        if !only_b.is_empty() {
            parts.push(format!(
                "{} only in {}: {}",
                only_b.len(),
                b.display(),
                show(&only_b)
            ));
        }
        return Err(MetricsError::Mismatch(format!(
            "images are paired by file name; {}",
            parts.join("; ")
        )));
    }
    Ok(pairs)
}

/// Reads a pair and checks that both images have one size (an error names both files).
pub fn read_pair(pa: &Path, pb: &Path) -> Result<(Rgb8, Rgb8)> {
    let (x, y) = (read_rgb8(pa)?, read_rgb8(pb)?);
    if (x.width, x.height) != (y.width, y.height) {
        return Err(MetricsError::Mismatch(format!(
            "{} is {}x{} but {} is {}x{}",
            pa.display(),
            x.width,
            x.height,
            pb.display(),
            y.width,
            y.height
        )));
    }
    Ok((x, y))
}
