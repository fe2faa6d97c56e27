use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ugc_data::image_io::{decode_ids, decode_rgb, list_images, read};
use ugc_data::{SynthConfig, SynthTask, synth_with};

use crate::common::*;

fn tree_bytes(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn both_tasks_are_byte_identical_for_a_seed_and_differ_across_seeds() {
    for task in [SynthTask::Labels2photo, SynthTask::Edges2photo] {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let cfg = SynthConfig::new(task, 6, 32, 42);
        synth_with(&cfg, a.path(), 1).unwrap();
        synth_with(&cfg, b.path(), 2).unwrap();
        synth_with(
            &SynthConfig {
                seed: 43,
                ..cfg.clone()
            },
            c.path(),
            2,
        )
        .unwrap();
        let (ta, tb, tc) = (
            tree_bytes(a.path()),
            tree_bytes(b.path()),
            tree_bytes(c.path()),
        );
        assert_eq!(ta, tb, "{task}: same seed, different bytes");
        assert_eq!(ta.keys().collect::<Vec<_>>(), tc.keys().collect::<Vec<_>>());
        let differing = ta.iter().filter(|(k, v)| tc[*k] != **v).count();
        assert!(differing > ta.len() / 2, "{task}: seed barely matters");
    }
}

#[test]
fn growing_n_keeps_earlier_images() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let small = SynthConfig {
        n_test: 2,
        ..SynthConfig::new(SynthTask::Edges2photo, 3, 32, 1)
    };
    synth_with(&small, a.path(), 2).unwrap();
    synth_with(&SynthConfig { n: 5, ..small }, b.path(), 2).unwrap();
    let (ta, tb) = (tree_bytes(a.path()), tree_bytes(b.path()));
    for (k, v) in &ta {
        assert_eq!(&tb[k], v, "{k} changed when n grew");
    }
}

#[test]
fn labels2photo_has_every_class_with_distinct_textured_appearance() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Labels2photo, 24, 1, 48);
    let photos = list_images(&d.path().join("leftImg8bit/train"), true).unwrap();
    // Per class: pixel count, mean colour, mean squared colour.
    let mut stats = [[0f64; 7]; 8];
    let mut instances = BTreeSet::new();
    for p in &photos {
        let lab = p
            .to_string_lossy()
            .replace("leftImg8bit/", "gtFine/")
            .replace("_leftImg8bit.png", "_gtFine_labelIds.png");
        let inst = lab.replace("labelIds", "instanceIds");
        let im = decode_rgb(p, &read(p).unwrap()).unwrap();
        let l = decode_ids(Path::new(&lab), &read(Path::new(&lab)).unwrap()).unwrap();
        let ins = decode_ids(Path::new(&inst), &read(Path::new(&inst)).unwrap()).unwrap();
        for (i, px) in im.pixels().enumerate() {
            let s = &mut stats[l.data[i] as usize];
            s[0] += 1.0;
            for c in 0..3 {
                let v = px[c] as f64;
                s[1 + c] += v;
                s[4 + c] += v * v;
            }
            if ins.data[i] >= 1000 {
                instances.insert(ins.data[i]);
                assert!(
                    matches!(ins.data[i] / 1000, 5 | 7),
                    "only cars and people have instances"
                );
                assert_eq!(
                    ins.data[i] / 1000,
                    l.data[i],
                    "instance class matches label"
                );
            }
        }
    }
    let mean = |s: &[f64; 7]| [s[1] / s[0], s[2] / s[0], s[3] / s[0]];
    for (k, s) in stats.iter().enumerate() {
        assert!(s[0] > 0.0, "class {k} never appears in 24 scenes");
        let var: f64 = (0..3)
            .map(|c| s[4 + c] / s[0] - (s[1 + c] / s[0]).powi(2))
            .sum();
        assert!(
            var > 20.0,
            "class {k} is flat (variance {var:.1}): no texture/shading"
        );
    }
    for a in 0..8 {
        for b in a + 1..8 {
            let (ma, mb) = (mean(&stats[a]), mean(&stats[b]));
            let dist: f64 = (0..3).map(|c| (ma[c] - mb[c]).powi(2)).sum::<f64>().sqrt();
            assert!(
                dist > 12.0,
                "classes {a} and {b} look alike (mean colour distance {dist:.1})"
            );
        }
    }
    assert!(instances.len() >= 2, "several object instances expected");
}

#[test]
fn edges2photo_edges_are_thin_lines_on_the_object_boundary() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Edges2photo, 8, 1, 64);
    for p in list_images(&d.path().join("train"), false).unwrap() {
        let ab = decode_rgb(&p, &read(&p).unwrap()).unwrap();
        assert_eq!(ab.dimensions(), (128, 64));
        let mut edge = 0usize;
        let mut edge_on_object_or_border = 0usize;
        let mut object_colours = BTreeSet::new();
        for y in 0..64 {
            for x in 0..64 {
                let e = ab.get_pixel(x, y)[0] == 0;
                let ph = ab.get_pixel(x + 64, y).0;
                let non_white = ph != [255, 255, 255];
                if non_white {
                    object_colours.insert(ph);
                }
                if e {
                    edge += 1;
                    // An edge pixel is on the object or right next to it.
                    let near = (x.saturating_sub(1)..=(x + 1).min(63)).any(|xx| {
                        (y.saturating_sub(1)..=(y + 1).min(63))
                            .any(|yy| ab.get_pixel(xx + 64, yy).0 != [255, 255, 255])
                    });
                    edge_on_object_or_border += usize::from(near);
                }
            }
        }
        let frac = edge as f64 / 4096.0;
        assert!(
            (0.02..0.35).contains(&frac),
            "{}: edge fraction {frac}",
            p.display()
        );
        assert_eq!(edge, edge_on_object_or_border, "edges away from the object");
        assert!(
            object_colours.len() > 100,
            "object is not shaded: {} colours",
            object_colours.len()
        );
    }
}

#[test]
fn bad_synth_parameters_are_named() {
    let d = tempfile::tempdir().unwrap();
    let base = SynthConfig::new(SynthTask::Labels2photo, 4, 32, 0);
    for (cfg, param) in [
        (
            SynthConfig {
                n: 0,
                ..base.clone()
            },
            "`n`",
        ),
        (
            SynthConfig {
                n_test: 0,
                ..base.clone()
            },
            "`n_test`",
        ),
        (
            SynthConfig {
                size: 8,
                ..base.clone()
            },
            "`size`",
        ),
        (
            SynthConfig {
                classes: 9,
                ..base.clone()
            },
            "`classes`",
        ),
    ] {
        let msg = synth_with(&cfg, d.path(), 1).unwrap_err().to_string();
        assert!(msg.contains(param), "{msg}");
    }
    let msg = "pix2pix".parse::<SynthTask>().unwrap_err().to_string();
    assert!(msg.contains("`task`") && msg.contains("pix2pix"), "{msg}");
}

#[test]
fn generation_rate_at_64px() {
    let d = tempfile::tempdir().unwrap();
    for task in [SynthTask::Labels2photo, SynthTask::Edges2photo] {
        let cfg = SynthConfig {
            n_test: 1,
            ..SynthConfig::new(task, 100, 64, 0)
        };
        let r = synth_with(&cfg, &d.path().join(task.to_string()), 1).unwrap();
        println!(
            "{task}: {:.0} images/s (64x64, 1 thread, test profile)",
            r.images_per_sec
        );
        assert!(
            r.images_per_sec > 20.0,
            "{task} far too slow: {:.1}/s",
            r.images_per_sec
        );
    }
}
