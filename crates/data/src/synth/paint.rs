//! Small rendering helpers for the synthetic tasks: a float canvas, value noise, colours.

/// Linear RGB-ish float image in [0, 1], row-major.
pub struct Canvas {
    pub w: u32,
    pub h: u32,
    pub px: Vec<[f32; 3]>,
}

impl Canvas {
    pub fn new(w: u32, h: u32, fill: [f32; 3]) -> Self {
        Canvas {
            w,
            h,
            px: vec![fill; (w * h) as usize],
        }
    }
    #[inline]
    pub fn set(&mut self, x: u32, y: u32, c: [f32; 3]) {
        self.px[(y * self.w + x) as usize] = c;
    }
    pub fn to_rgb8(&self) -> image::RgbImage {
        let raw: Vec<u8> = self
            .px
            .iter()
            .flat_map(|c| c.map(|v| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8))
            .collect();
        image::RgbImage::from_raw(self.w, self.h, raw).expect("buffer matches size")
    }
    pub fn luma(&self) -> Vec<f32> {
        self.px
            .iter()
            .map(|c| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])
            .collect()
    }
}

#[inline]
fn hash2(x: i32, y: i32, seed: u32) -> f32 {
    let mut h = (x as u32).wrapping_mul(0x8DA6_B343)
        ^ (y as u32).wrapping_mul(0xD816_3841)
        ^ seed.wrapping_mul(0xCB1A_B31F);
    h ^= h >> 13;
    h = h.wrapping_mul(0x5BD1_E995);
    h ^= h >> 15;
    (h & 0xFFFF) as f32 / 65535.0
}

/// Smooth value noise in [0, 1] with unit lattice spacing.
#[inline]
pub fn noise(x: f32, y: f32, seed: u32) -> f32 {
    let (xi, yi) = (x.floor() as i32, y.floor() as i32);
    let (fx, fy) = (x - xi as f32, y - yi as f32);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let a = hash2(xi, yi, seed);
    let b = hash2(xi + 1, yi, seed);
    let c = hash2(xi, yi + 1, seed);
    let d = hash2(xi + 1, yi + 1, seed);
    let top = a + (b - a) * sx;
    let bot = c + (d - c) * sx;
    top + (bot - top) * sy
}

/// Three octaves of value noise, in [0, 1].
#[inline]
pub fn fbm(x: f32, y: f32, seed: u32) -> f32 {
    (noise(x, y, seed) * 0.57
        + noise(x * 2.03, y * 2.03, seed ^ 0x51) * 0.29
        + noise(x * 4.11, y * 4.11, seed ^ 0xA3) * 0.14)
        .clamp(0.0, 1.0)
}

#[inline]
pub fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

#[inline]
pub fn scale(a: [f32; 3], s: f32) -> [f32; 3] {
    [a[0] * s, a[1] * s, a[2] * s]
}

/// HSV (all in [0, 1]) to RGB.
pub fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = (h.rem_euclid(1.0)) * 6.0;
    let i = h6.floor() as i32;
    let f = h6 - i as f32;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}
