//! `edges2photo`: shaded objects on a white background whose edge maps are the input (the
//! edges2shoes analogue). Each object is a union of parts (a body, a sole band, a heel or
//! cap, an optional stripe), lit as a height field (Lambert + specular) so the photo has
//! smooth shading the generator must invent from lines. Edges are computed from the
//! rendered photo (Sobel + non-maximum suppression + threshold), as HED/Canny edges are
//! computed from real photos.

use crate::rng::Rng;

use super::paint::{Canvas, hsv, mix, scale};

/// One rendered example: input edges (black on white) and the photo.
pub struct Pair {
    pub edges: image::RgbImage,
    pub photo: image::RgbImage,
}

struct Blob {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    cos: f32,
    sin: f32,
    /// Superellipse exponent: 2 = ellipse, larger = boxier.
    p: f32,
}

impl Blob {
    fn random([cx, cy, rx, ry]: [f32; 4], rng: &mut Rng) -> Self {
        let a = rng.uniform(-0.5, 0.5);
        Blob {
            cx,
            cy,
            rx,
            ry,
            cos: a.cos(),
            sin: a.sin(),
            p: rng.uniform(2.0, 4.0),
        }
    }
    /// Normalised radius (< 1 inside) and local coordinates.
    #[inline]
    fn at(&self, u: f32, v: f32) -> (f32, f32, f32) {
        let (dx, dy) = (u - self.cx, v - self.cy);
        let lx = (dx * self.cos + dy * self.sin) / self.rx;
        let ly = (-dx * self.sin + dy * self.cos) / self.ry;
        let r = (lx.abs().powf(self.p) + ly.abs().powf(self.p)).powf(1.0 / self.p);
        (r, lx, ly)
    }
}

/// Renders one `size x size` pair.
pub fn render(size: u32, rng: &mut Rng) -> Pair {
    let s = size as f32;
    let geom = [
        rng.uniform(0.42, 0.58),
        rng.uniform(0.42, 0.55),
        rng.uniform(0.25, 0.38),
        rng.uniform(0.14, 0.24),
    ];
    let body = Blob::random(geom, rng);
    let geom = [
        body.cx + rng.uniform(-0.2, 0.2),
        body.cy - body.ry * rng.uniform(0.5, 0.9),
        body.rx * rng.uniform(0.3, 0.55),
        body.ry * rng.uniform(0.5, 0.9),
    ];
    let cap = Blob::random(geom, rng);
    let sole_h = rng.uniform(0.12, 0.25);
    let color = hsv(
        rng.uniform(0.0, 1.0),
        rng.uniform(0.3, 0.9),
        rng.uniform(0.35, 0.95),
    );
    let sole = if rng.coin(0.5) {
        [0.92, 0.92, 0.9]
    } else {
        [0.15, 0.12, 0.1]
    };
    let accent = hsv(rng.uniform(0.0, 1.0), 0.8, rng.uniform(0.5, 1.0));
    let stripe = rng
        .coin(0.7)
        .then(|| (rng.uniform(-0.5, 0.4), rng.uniform(0.08, 0.18)));
    let light = {
        let (x, y) = (rng.uniform(-0.7, 0.7), rng.uniform(-0.8, -0.2));
        let z = (1.0 - x * x - y * y).max(0.1).sqrt();
        [x, y, z]
    };

    let mut c = Canvas::new(size, size, [1.0, 1.0, 1.0]);
    for y in 0..size {
        for x in 0..size {
            let (u, v) = ((x as f32 + 0.5) / s, (y as f32 + 0.5) / s);
            let (rb, lx, ly) = body.at(u, v);
            let (rc, cx, cy) = cap.at(u, v);
            let (r, nx, ny, part_color) = if rb < 1.0 {
                let mut pc = color;
                if ly > 1.0 - 2.0 * sole_h {
                    pc = sole;
                } else if let Some((sx, sw)) = stripe
                    && (lx - sx - 0.3 * ly).abs() < sw
                {
                    pc = accent;
                }
                (rb, lx, ly, pc)
            } else if rc < 1.0 {
                (rc, cx, cy, scale(color, 0.85))
            } else {
                continue;
            };
            // Height field h = sqrt(1 - r^2): its normal points away from the part's centre.
            let h = (1.0 - r * r).max(0.0).sqrt();
            let inv = 1.0 / (nx * nx + ny * ny + h * h + 1e-6).sqrt();
            let n = [nx * inv, ny * inv, h * inv];
            let ndl = (n[0] * light[0] + n[1] * light[1] + n[2] * light[2]).max(0.0);
            let spec = (2.0 * ndl * n[2] - light[2]).max(0.0).powi(12) * 0.5;
            let shaded = scale(part_color, 0.3 + 0.7 * ndl);
            c.set(x, y, mix(shaded, [1.0, 1.0, 1.0], spec.min(1.0)));
        }
    }
    Pair {
        edges: edges_of(&c),
        photo: c.to_rgb8(),
    }
}

/// Thin edges of a rendered image: Sobel magnitude, non-maximum suppression across the
/// gradient direction, a fixed threshold. Black lines on white, like edges2shoes.
pub fn edges_of(c: &Canvas) -> image::RgbImage {
    let (w, h) = (c.w as i32, c.h as i32);
    let l = c.luma();
    let at = |x: i32, y: i32| l[(y.clamp(0, h - 1) * w + x.clamp(0, w - 1)) as usize];
    let mut gx = vec![0f32; l.len()];
    let mut gy = vec![0f32; l.len()];
    let mut mag = vec![0f32; l.len()];
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) as usize;
            gx[i] = (at(x + 1, y - 1) + 2.0 * at(x + 1, y) + at(x + 1, y + 1))
                - (at(x - 1, y - 1) + 2.0 * at(x - 1, y) + at(x - 1, y + 1));
            gy[i] = (at(x - 1, y + 1) + 2.0 * at(x, y + 1) + at(x + 1, y + 1))
                - (at(x - 1, y - 1) + 2.0 * at(x, y - 1) + at(x + 1, y - 1));
            mag[i] = (gx[i] * gx[i] + gy[i] * gy[i]).sqrt();
        }
    }
    let m = |x: i32, y: i32| mag[(y.clamp(0, h - 1) * w + x.clamp(0, w - 1)) as usize];
    const THRESHOLD: f32 = 0.35;
    let mut out = image::RgbImage::from_pixel(c.w, c.h, image::Rgb([255, 255, 255]));
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) as usize;
            if mag[i] < THRESHOLD {
                continue;
            }
            // Quantise the gradient direction to one of four neighbour pairs.
            let (ax, ay) = (gx[i].abs(), gy[i].abs());
            let (dx, dy) = if ax > 2.4 * ay {
                (1, 0)
            } else if ay > 2.4 * ax {
                (0, 1)
            } else if gx[i] * gy[i] > 0.0 {
                (1, 1)
            } else {
                (1, -1)
            };
            if mag[i] >= m(x + dx, y + dy) && mag[i] >= m(x - dx, y - dy) {
                out.put_pixel(x as u32, y as u32, image::Rgb([0, 0, 0]));
            }
        }
    }
    out
}
