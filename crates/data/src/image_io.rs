//! Reading, decoding, digesting and writing images and label maps.

use std::io::Cursor;
use std::path::Path;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageEncoder, RgbImage};

use crate::error::{DataError, Result};

/// A single-channel id map (labelIds are 8-bit, Cityscapes instanceIds 16-bit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u16>,
}

impl IdMap {
    pub fn new(width: u32, height: u32) -> Self {
        IdMap {
            width,
            height,
            data: vec![0; (width * height) as usize],
        }
    }
    pub fn get(&self, x: u32, y: u32) -> u16 {
        self.data[(y * self.width + x) as usize]
    }
}

/// Reads a whole file, naming it on failure.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// blake3 hex digest of file content (the cache identifies data by content, not path).
pub fn digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn decode(path: &Path, bytes: &[u8]) -> Result<DynamicImage> {
    image::load_from_memory(bytes)
        .map_err(|e| DataError::bad(path, format!("cannot decode image: {e}")))
}

/// Decodes any colour image to 8-bit RGB.
pub fn decode_rgb(path: &Path, bytes: &[u8]) -> Result<RgbImage> {
    Ok(decode(path, bytes)?.into_rgb8())
}

/// Decodes a label or instance map without rescaling values: only single-channel 8- or
/// 16-bit images qualify (an RGB image here is almost always a colour map given by mistake).
pub fn decode_ids(path: &Path, bytes: &[u8]) -> Result<IdMap> {
    match decode(path, bytes)? {
        DynamicImage::ImageLuma8(im) => Ok(IdMap {
            width: im.width(),
            height: im.height(),
            data: im.into_raw().into_iter().map(u16::from).collect(),
        }),
        DynamicImage::ImageLuma16(im) => Ok(IdMap {
            width: im.width(),
            height: im.height(),
            data: im.into_raw(),
        }),
        other => Err(DataError::bad(
            path,
            format!(
                "expected a single-channel 8/16-bit id map, found {:?}",
                other.color()
            ),
        )),
    }
}

fn png_bytes(data: &[u8], w: u32, h: u32, ty: image::ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(data, w, h, ty)
        .expect("encoding into memory with matching buffer size cannot fail");
    out
}

/// PNG-encodes an RGB image (fast compression: synthetic data is written often).
pub fn png_rgb(im: &RgbImage) -> Vec<u8> {
    png_bytes(
        im.as_raw(),
        im.width(),
        im.height(),
        image::ExtendedColorType::Rgb8,
    )
}

/// PNG-encodes an id map as 8-bit (all ids < 256) or 16-bit grayscale.
pub fn png_ids(m: &IdMap, sixteen: bool) -> Vec<u8> {
    if sixteen {
        // image expects 16-bit samples in native byte order (it writes PNG big-endian itself).
        let raw: Vec<u8> = m.data.iter().flat_map(|v| v.to_ne_bytes()).collect();
        png_bytes(&raw, m.width, m.height, image::ExtendedColorType::L16)
    } else {
        let raw: Vec<u8> = m.data.iter().map(|&v| v.min(255) as u8).collect();
        png_bytes(&raw, m.width, m.height, image::ExtendedColorType::L8)
    }
}

/// JPEG-encodes an RGB image.
pub fn jpeg_rgb(im: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(im)
        .expect("encoding into memory cannot fail");
    out.into_inner()
}

/// Writes bytes, creating parent folders, naming the file on failure.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| DataError::io(p, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| DataError::io(path, e))
}

/// Image files directly in `dir` or below it, sorted (so every listing is deterministic).
pub fn list_images(dir: &Path, recursive: bool) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))? {
            let p = e.map_err(|e| DataError::io(&d, e))?.path();
            if p.is_dir() {
                if recursive {
                    stack.push(p);
                }
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_roundtrip_without_rescaling() {
        let mut m = IdMap::new(5, 3);
        m.data[4] = 26001;
        m.data[7] = 33;
        let back = decode_ids(Path::new("x.png"), &png_ids(&m, true)).unwrap();
        assert_eq!(back, m);
        m.data[4] = 200;
        let back = decode_ids(Path::new("x.png"), &png_ids(&m, false)).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn rgb_is_not_an_id_map_and_garbage_is_named() {
        let im = RgbImage::new(4, 4);
        let e = decode_ids(Path::new("color.png"), &png_rgb(&im)).unwrap_err();
        assert!(e.to_string().contains("color.png"), "{e}");
        let e = decode_rgb(Path::new("junk.jpg"), b"not an image").unwrap_err();
        assert!(e.to_string().contains("junk.jpg"), "{e}");
    }
}
