//! `labels2photo`: street-like scenes rendered from a semantic layout (the Cityscapes
//! analogue). Each class has its own colour, texture and shading (clouds, tarmac with lane
//! marks, grass texture, buildings with window grids and a shaded side face, sphere-lit
//! trees, cars with cabins and wheels, people), objects shrink with perspective, and cars
//! and people carry instance ids, so a generator must learn layout-conditioned appearance
//! and the label maps serve mIoU.

use crate::classes::{ClassInfo, ClassTable};
use crate::image_io::IdMap;
use crate::rng::Rng;

use super::paint::{Canvas, fbm, hsv, mix, noise, scale};

/// (name, colour-map colour, has instances), in id order. `classes: k` uses the first k.
pub const CLASSES: [(&str, [u8; 3], bool); 8] = [
    ("sky", [70, 130, 180], false),
    ("road", [128, 64, 128], false),
    ("grass", [152, 251, 152], false),
    ("building", [70, 70, 70], false),
    ("tree", [107, 142, 35], false),
    ("car", [0, 0, 142], true),
    ("water", [0, 80, 200], false),
    ("person", [220, 20, 60], true),
];

pub const MIN_CLASSES: usize = 3;

const SKY: u16 = 0;
const ROAD: u16 = 1;
const GRASS: u16 = 2;
const BUILDING: u16 = 3;
const TREE: u16 = 4;
const CAR: u16 = 5;
const WATER: u16 = 6;
const PERSON: u16 = 7;

/// The class table of a `labels2photo` dataset with `k` classes.
pub fn class_table(k: usize) -> ClassTable {
    ClassTable {
        name: format!("synth-labels2photo-{k}"),
        classes: CLASSES[..k]
            .iter()
            .enumerate()
            .map(|(i, &(name, color, inst))| ClassInfo {
                id: i as u16,
                name: name.into(),
                color,
                train_id: Some(i as u16),
                has_instances: inst,
            })
            .collect(),
        onehot_channels: k,
    }
}

/// One rendered scene.
pub struct Scene {
    pub photo: image::RgbImage,
    pub labels: IdMap,
    pub instances: IdMap,
}

struct Layers {
    s: f32,
    canvas: Canvas,
    labels: IdMap,
    instances: IdMap,
}

impl Layers {
    /// Calls `f(u, v)` for every pixel centre in the normalised box; `f` returns the colour
    /// of the pixel or `None` to leave it alone.
    fn paint(
        &mut self,
        (u0, v0, u1, v1): (f32, f32, f32, f32),
        label: u16,
        inst: u16,
        mut f: impl FnMut(f32, f32, u16) -> Option<[f32; 3]>,
    ) {
        let w = self.canvas.w;
        let h = self.canvas.h;
        let x0 = ((u0 * self.s).floor().max(0.0) as u32).min(w);
        let x1 = ((u1 * self.s).ceil().max(0.0) as u32).min(w);
        let y0 = ((v0 * self.s).floor().max(0.0) as u32).min(h);
        let y1 = ((v1 * self.s).ceil().max(0.0) as u32).min(h);
        for y in y0..y1 {
            for x in x0..x1 {
                let i = (y * w + x) as usize;
                let (u, v) = ((x as f32 + 0.5) / self.s, (y as f32 + 0.5) / self.s);
                if let Some(c) = f(u, v, self.labels.data[i]) {
                    self.canvas.px[i] = c;
                    self.labels.data[i] = label;
                    self.instances.data[i] = inst;
                }
            }
        }
    }
}

/// Renders one `size x size` scene using the first `classes` classes.
pub fn render(size: u32, classes: usize, rng: &mut Rng) -> Scene {
    let k = classes as u16;
    let s = size as f32;
    let seed = rng.next_u64() as u32;
    let b = rng.uniform(0.75, 1.1);
    let sun = if rng.coin(0.5) { 1.0 } else { -1.0 };
    let hor = rng.uniform(0.35, 0.55);
    let tilt = rng.uniform(-0.08, 0.08);
    let horizon = move |u: f32| hor + tilt * (u - 0.5);
    let sky_top = hsv(rng.uniform(0.55, 0.62), rng.uniform(0.4, 0.7), 0.8 * b);
    let haze = mix(sky_top, [1.0, 1.0, 1.0], 0.6);
    let xv = rng.uniform(0.35, 0.65);
    let roff = rng.uniform(-0.15, 0.15);
    let rw = rng.uniform(0.25, 0.45);
    let grass = hsv(
        rng.uniform(0.22, 0.33),
        rng.uniform(0.5, 0.75),
        rng.uniform(0.45, 0.65) * b,
    );
    let depth = move |u: f32, v: f32| ((v - horizon(u)) / (1.0 - horizon(u))).clamp(0.0, 1.0);
    let road_c = move |d: f32| xv + roff * d;
    let road_half = move |d: f32| 0.01 + rw * d;

    let mut l = Layers {
        s,
        canvas: Canvas::new(size, size, [0.0; 3]),
        labels: IdMap::new(size, size),
        instances: IdMap::new(size, size),
    };

    // Background: sky, road, grass.
    l.paint((0.0, 0.0, 1.0, 1.0), SKY, SKY, |u, v, _| {
        (v < horizon(u)).then(|| {
            let c = mix(sky_top, haze, v / horizon(u));
            let n = fbm(u * 5.0, v * 9.0, seed);
            if n > 0.6 {
                mix(c, [b; 3], ((n - 0.6) * 2.5).min(1.0))
            } else {
                c
            }
        })
    });
    l.paint((0.0, 0.0, 1.0, 1.0), ROAD, ROAD, |u, v, _| {
        let d = depth(u, v);
        let off = (u - road_c(d)).abs();
        (v >= horizon(u) && off < road_half(d)).then(|| {
            let g = 0.3 + 0.1 * noise(u * 60.0, v * 60.0, seed ^ 7);
            let mut c = [g, g, g * 1.05];
            if off < 0.004 + 0.01 * d && (3.0 / (d + 0.05)).fract() < 0.5 {
                c = [0.85, 0.85, 0.8];
            }
            mix(c, haze, 0.6 * (1.0 - d).powi(4))
        })
    });
    l.paint((0.0, 0.0, 1.0, 1.0), GRASS, GRASS, |u, v, lab| {
        (v >= horizon(u) && lab == SKY).then(|| {
            let d = depth(u, v);
            let t = 0.7 + 0.6 * fbm(u * 35.0, v * 90.0 / (d + 0.3), seed ^ 11);
            mix(scale(grass, t), haze, 0.6 * (1.0 - d).powi(4))
        })
    });

    // Water: a pond on the grass, with ripples reflecting the sky.
    if k > WATER && rng.coin(0.6) {
        let (cx, cy) = (rng.uniform(0.1, 0.9), rng.uniform(hor + 0.12, 0.9));
        let (rx, ry) = (rng.uniform(0.1, 0.2), rng.uniform(0.03, 0.07));
        let deep = hsv(rng.uniform(0.55, 0.62), 0.7, 0.45 * b);
        l.paint(
            (cx - rx, cy - ry, cx + rx, cy + ry),
            WATER,
            WATER,
            |u, v, lab| {
                let e = ((u - cx) / rx).powi(2) + ((v - cy) / ry).powi(2);
                (lab == GRASS && e < 1.0).then(|| {
                    let r = (v * s * 0.9 + 6.0 * noise(u * 20.0, v * 20.0, seed ^ 3)).sin();
                    mix(deep, haze, 0.3 + 0.25 * r + 0.2 * e)
                })
            },
        );
    }

    // Buildings standing on the horizon: front face with windows, darker side face.
    if k > BUILDING {
        for _ in 0..1 + rng.below(4) {
            let x0 = rng.uniform(0.0, 0.85);
            let bw = rng.uniform(0.1, 0.3);
            let top = hor - rng.uniform(0.1, 0.35);
            let split = x0 + bw * rng.uniform(0.6, 0.8);
            let (left_face, right_face) = if sun > 0.0 { (1.0, 0.6) } else { (0.6, 1.0) };
            let base = hsv(
                rng.uniform(0.05, 0.12),
                rng.uniform(0.05, 0.35),
                rng.uniform(0.35, 0.7) * b,
            );
            let (pu, pv) = (rng.uniform(0.035, 0.06), rng.uniform(0.04, 0.07));
            let wseed = rng.next_u64() as u32;
            l.paint(
                (x0, top, x0 + bw, hor + 0.1),
                BUILDING,
                BUILDING,
                |u, v, lab| {
                    (v < horizon(u) + 0.02 && lab != ROAD).then(|| {
                        let front = u < split;
                        let shade = if front { left_face } else { right_face };
                        let (lu, lv) = ((u - x0) / pu, (v - top) / pv);
                        let is_win = front && lu.fract() < 0.55 && lv.fract() < 0.5 && lv > 0.6;
                        if is_win {
                            if noise(lu.floor() * 7.3, lv.floor() * 3.1, wseed) > 0.65 {
                                [0.95 * b, 0.85 * b, 0.5 * b]
                            } else {
                                [0.12, 0.15, 0.22]
                            }
                        } else {
                            scale(base, shade * (0.9 + 0.2 * noise(u * 80.0, v * 80.0, wseed)))
                        }
                    })
                },
            );
        }
    }

    // Trees: sphere-lit bumpy canopies on trunks, bigger when nearer.
    if k > TREE {
        let mut trees: Vec<(f32, f32, f32)> = (0..rng.below(5))
            .map(|_| {
                let gy = hor + rng.uniform(0.03, 0.35) * (1.0 - hor);
                let d = (gy - hor) / (1.0 - hor);
                (
                    rng.uniform(0.0, 1.0),
                    gy,
                    rng.uniform(0.04, 0.07) * (0.6 + 1.4 * d),
                )
            })
            .collect();
        trees.sort_by(|a, b| a.1.total_cmp(&b.1));
        for (gx, gy, r) in trees {
            let green = hsv(rng.uniform(0.22, 0.36), 0.7, rng.uniform(0.3, 0.5) * b);
            let trunk_h = r * 1.2;
            let (cx, cy) = (gx, gy - trunk_h - r * 0.8);
            let tseed = rng.next_u64() as u32;
            l.paint(
                (cx - r * 1.2, cy - r * 1.2, cx + r * 1.2, gy),
                TREE,
                TREE,
                |u, v, _| {
                    let (dx, dy) = ((u - cx) / r, (v - cy) / r);
                    let dist = (dx * dx + dy * dy).sqrt();
                    if dist < 0.85 + 0.3 * noise(u * 30.0, v * 30.0, tseed) {
                        let nz = (1.0 - dist.min(1.0).powi(2)).sqrt();
                        let lam = 0.35 + 0.65 * (0.5 * sun * dx - 0.4 * dy + 0.7 * nz).max(0.0);
                        let tex = 0.7 + 0.6 * fbm(u * 45.0, v * 45.0, tseed);
                        Some(scale(green, lam * tex))
                    } else if (u - gx).abs() < r * 0.15 && v > cy && v < gy {
                        let side = if (u - gx) * sun > 0.0 { 1.0 } else { 0.6 };
                        Some(scale([0.35, 0.22, 0.12], side * b))
                    } else {
                        None
                    }
                },
            );
        }
    }

    // Cars on the road, far to near; instance ids `5000 + j`.
    if k > CAR {
        let mut cars: Vec<f32> = (0..rng.below(4)).map(|_| rng.uniform(0.3, 0.95)).collect();
        cars.sort_by(f32::total_cmp);
        for (j, d) in cars.into_iter().enumerate() {
            let v_bot = hor + d * (1.0 - hor);
            let half = road_half(d);
            let cx = road_c(d) + rng.uniform(-0.5, 0.5) * half;
            let cw = 1.2 * half * rng.uniform(0.6, 0.9);
            let ch = cw * 0.55;
            let body = hsv(
                rng.uniform(0.0, 1.0),
                rng.uniform(0.5, 0.9),
                rng.uniform(0.4, 0.9),
            );
            let (x0, y0) = (cx - cw / 2.0, v_bot - ch);
            let inst = CAR * 1000 + j as u16;
            l.paint((x0, y0, x0 + cw, v_bot), CAR, inst, |u, v, _| {
                let (lu, lv) = ((u - x0) / cw, (v - y0) / ch);
                let wheel_r = 0.2;
                for wx in [0.22, 0.78] {
                    let (dx, dy) = ((lu - wx) * cw / ch, lv - 0.82);
                    if dx * dx + dy * dy < wheel_r * wheel_r {
                        return Some([0.05, 0.05, 0.05]);
                    }
                }
                if lv < 0.4 {
                    let inset = 0.18 + 0.12 * (0.4 - lv) / 0.4;
                    if lu < inset || lu > 1.0 - inset {
                        return None;
                    }
                    let glass = 0.15 + 0.35 * (1.0 - lv / 0.4) * (0.5 + 0.5 * sun * (lu - 0.5));
                    return Some([glass * 0.8, glass * 0.9, glass]);
                }
                if lv > 0.85 {
                    return None;
                }
                let shade = 1.15 - 0.6 * (lv - 0.4) + 0.2 * sun * (lu - 0.5);
                let spec = if (lv - 0.5).abs() < 0.03 { 0.25 } else { 0.0 };
                Some(scale(body, shade).map(|c| c + spec))
            });
        }
    }

    // People on the ground, far to near; instance ids `7000 + j`.
    if k > PERSON {
        let mut people: Vec<f32> = (0..rng.below(3)).map(|_| rng.uniform(0.25, 0.95)).collect();
        people.sort_by(f32::total_cmp);
        for (j, d) in people.into_iter().enumerate() {
            let v_bot = hor + d * (1.0 - hor);
            let ph = 0.06 + 0.22 * d;
            let pw = ph * 0.32;
            let px = rng.uniform(0.05, 0.95);
            let shirt = hsv(rng.uniform(0.0, 1.0), 0.7, rng.uniform(0.4, 0.9));
            let skin = hsv(
                rng.uniform(0.04, 0.09),
                rng.uniform(0.3, 0.6),
                rng.uniform(0.4, 0.9),
            );
            let inst = PERSON * 1000 + j as u16;
            let top = v_bot - ph;
            l.paint(
                (px - pw / 2.0, top, px + pw / 2.0, v_bot),
                PERSON,
                inst,
                |u, v, _| {
                    let (lu, lv) = ((u - px) / pw, (v - top) / ph);
                    let hr = 0.11;
                    let (hx, hy) = (lu * pw / ph, lv - hr);
                    if hx * hx + hy * hy < hr * hr {
                        return Some(scale(skin, 0.8 + 0.3 * sun * lu));
                    }
                    if (0.22..0.6).contains(&lv) && lu.abs() < 0.5 - 0.1 * (lv - 0.22) {
                        return Some(scale(shirt, 0.75 + 0.4 * sun * lu));
                    }
                    if lv >= 0.6 && (lu.abs() - 0.2).abs() < 0.14 {
                        return Some([0.12, 0.12, 0.18]);
                    }
                    None
                },
            );
        }
    }

    Scene {
        photo: l.canvas.to_rgb8(),
        labels: l.labels,
        instances: l.instances,
    }
}

/// The colour map of a label map (pix2pix's Cityscapes input).
pub fn color_map(labels: &IdMap, table: &ClassTable) -> image::RgbImage {
    let mut lut = vec![[0u8; 3]; table.onehot_channels.max(1)];
    for c in &table.classes {
        lut[c.id as usize] = c.color;
    }
    let raw: Vec<u8> = labels
        .data
        .iter()
        .flat_map(|&v| lut.get(v as usize).copied().unwrap_or([0; 3]))
        .collect();
    image::RgbImage::from_raw(labels.width, labels.height, raw).expect("buffer matches size")
}
