//! pix2pix-style augmentation: resize to `load_size`, crop to `crop_size` (random when
//! training, centred otherwise), horizontal flip with probability 1/2 when training. One
//! [`Transform`] is drawn per example and applied to input, target and label maps alike,
//! so pairs stay aligned; label and instance maps use nearest-neighbour resizing so ids are
//! never blended.

use image::RgbImage;
use image::imageops::{self, FilterType};

use crate::image_io::IdMap;
use crate::rng::Rng;

/// Augmentation settings; sizes are `(width, height)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AugmentConfig {
    pub load_size: Option<(u32, u32)>,
    pub crop_size: Option<(u32, u32)>,
    /// Random crop position and random flips (training) vs centred crop, no flip (eval).
    pub random: bool,
    pub flip: bool,
}

/// The geometric transform of one example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transform {
    resize: Option<(u32, u32)>,
    crop: Option<(u32, u32, u32, u32)>,
    flip: bool,
}

impl Transform {
    /// Draws the transform of an example whose images are `w x h`. Returns the output size
    /// as well. A crop larger than the (resized) image is clamped to it.
    pub fn sample(w: u32, h: u32, cfg: &AugmentConfig, rng: &mut Rng) -> (Self, (u32, u32)) {
        let resize = cfg.load_size.filter(|&s| s != (w, h));
        let (rw, rh) = cfg.load_size.unwrap_or((w, h));
        let crop = cfg.crop_size.and_then(|(cw, ch)| {
            let (cw, ch) = (cw.min(rw), ch.min(rh));
            if (cw, ch) == (rw, rh) {
                return None;
            }
            let (x, y) = if cfg.random {
                (
                    rng.below((rw - cw + 1) as usize) as u32,
                    rng.below((rh - ch + 1) as usize) as u32,
                )
            } else {
                ((rw - cw) / 2, (rh - ch) / 2)
            };
            Some((x, y, cw, ch))
        });
        let flip = cfg.random && cfg.flip && rng.coin(0.5);
        let out = crop.map_or((rw, rh), |c| (c.2, c.3));
        (Transform { resize, crop, flip }, out)
    }

    pub fn apply_rgb(&self, im: &RgbImage) -> RgbImage {
        let mut im = match self.resize {
            Some((w, h)) => imageops::resize(im, w, h, FilterType::CatmullRom),
            None => im.clone(),
        };
        if let Some((x, y, w, h)) = self.crop {
            im = imageops::crop_imm(&im, x, y, w, h).to_image();
        }
        if self.flip {
            imageops::flip_horizontal_in_place(&mut im);
        }
        im
    }

    pub fn apply_ids(&self, m: &IdMap) -> IdMap {
        let (rw, rh) = self.resize.unwrap_or((m.width, m.height));
        let (x0, y0, w, h) = self.crop.unwrap_or((0, 0, rw, rh));
        let mut out = IdMap::new(w, h);
        for y in 0..h {
            let sy = (((y + y0) as u64 * m.height as u64) / rh as u64) as u32;
            for x in 0..w {
                let xx = if self.flip { w - 1 - x } else { x };
                let sx = (((xx + x0) as u64 * m.width as u64) / rw as u64) as u32;
                out.data[(y * w + x) as usize] = m.get(sx, sy);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_rgb_stay_aligned_under_crop_and_flip() {
        // A map whose id is its x coordinate, and an image whose red channel is too.
        let mut m = IdMap::new(8, 4);
        let mut im = RgbImage::new(8, 4);
        for y in 0..4 {
            for x in 0..8 {
                m.data[(y * 8 + x) as usize] = x as u16;
                im.put_pixel(x, y, image::Rgb([x as u8 * 10, 0, 0]));
            }
        }
        let cfg = AugmentConfig {
            load_size: None,
            crop_size: Some((4, 4)),
            random: true,
            flip: true,
        };
        let mut flipped = 0;
        for seed in 0..20 {
            let (t, size) = Transform::sample(8, 4, &cfg, &mut Rng::new(seed));
            assert_eq!(size, (4, 4));
            let (a, b) = (t.apply_ids(&m), t.apply_rgb(&im));
            for x in 0..4 {
                assert_eq!(a.get(x, 0) as u8 * 10, b.get_pixel(x, 0)[0]);
            }
            flipped += usize::from(a.get(0, 0) > a.get(3, 0));
        }
        assert!(
            flipped > 0 && flipped < 20,
            "flip should be random: {flipped}"
        );
    }

    #[test]
    fn nearest_resize_keeps_ids() {
        let mut m = IdMap::new(4, 2);
        m.data = vec![1, 1, 2, 2, 3, 3, 4, 4];
        let cfg = AugmentConfig {
            load_size: Some((8, 4)),
            crop_size: None,
            random: false,
            flip: false,
        };
        let (t, _) = Transform::sample(4, 2, &cfg, &mut Rng::new(0));
        let r = t.apply_ids(&m);
        assert_eq!((r.width, r.height), (8, 4));
        assert!(r.data.iter().all(|v| (1..=4).contains(v)));
        assert_eq!(r.get(7, 3), 4);
    }
}
