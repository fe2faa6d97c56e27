//! Loader throughput on 256x256 JPEG pairs (pix2pix aligned files of 512x256), with the
//! pix2pix training augmentation (resize to 286, random crop 256, flip).
//!
//!     cargo run -p ugc-data --release --example loader_bench -- [N] [BATCH] [THREADS...]
//!
//! Prints examples/s (one example = input + target, both 3x256x256) per thread count, and
//! the synthetic-data generation rate at 64x64 for both tasks on one thread.

use std::time::Instant;

use ugc_data::augment::AugmentConfig;
use ugc_data::image_io::{decode_rgb, jpeg_rgb, list_images, read, write};
use ugc_data::{
    Loader, LoaderConfig, SplitParams, Subset, SynthConfig, SynthTask, read_dataset, split_dataset,
    synth_with,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(Ok(200), |s| s.parse())?;
    let batch: usize = args.get(1).map_or(Ok(4), |s| s.parse())?;
    let threads: Vec<usize> = if args.len() > 2 {
        args[2..]
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?
    } else {
        vec![1, 2]
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} logical cores; {n} examples, batch {batch}");

    for task in [SynthTask::Labels2photo, SynthTask::Edges2photo] {
        let d = tempfile::tempdir()?;
        let cfg = SynthConfig {
            n_test: 1,
            ..SynthConfig::new(task, 500, 64, 0)
        };
        let r = synth_with(&cfg, d.path(), 1)?;
        println!(
            "synth {task}: {:.0} images/s at 64x64 on 1 thread",
            r.images_per_sec
        );
    }

    // 256x256 JPEG pairs: render edges2photo at 256 (PNG), re-encode each as JPEG q90.
    let src = tempfile::tempdir()?;
    let cfg = SynthConfig {
        n_test: 1,
        ..SynthConfig::new(SynthTask::Edges2photo, n, 256, 1)
    };
    synth_with(&cfg, src.path(), cores)?;
    for p in list_images(src.path(), true)? {
        let im = decode_rgb(&p, &read(&p)?)?;
        write(&p.with_extension("jpg"), &jpeg_rgb(&im, 90))?;
        std::fs::remove_file(&p)?;
    }
    let spec = ugc_data::DatasetSpec {
        format: ugc_data::Format::Aligned,
        root: src.path().to_path_buf(),
        direction: ugc_data::Direction::AtoB,
        train_split: "train".into(),
        test_split: "val".into(),
        extra_unlabeled: None,
    };
    let out = tempfile::tempdir()?;
    let params = SplitParams {
        label_ratio: 1.0,
        holdout: 0.0,
        seed: 0,
        skip_bad: false,
        threads: cores,
    };
    let t = Instant::now();
    let m = split_dataset(
        &read_dataset(&spec)?,
        &params,
        out.path(),
        &ugc_engine::NullProgress,
    )?;
    println!(
        "split (validate + copy) of {} JPEG pairs: {:.2}s",
        m.counts.train_total + m.counts.test,
        t.elapsed().as_secs_f64()
    );

    for th in threads {
        let cfg = LoaderConfig {
            threads: th,
            prefetch: 4,
            augment: AugmentConfig {
                load_size: Some((286, 286)),
                crop_size: Some((256, 256)),
                random: true,
                flip: true,
            },
            ..LoaderConfig::train(batch, 0)
        };
        let l = Loader::new(&m, out.path(), Subset::Labeled, cfg)?;
        // Warm-up epoch (page cache, allocator), then a timed one.
        for b in l.epoch(0) {
            b?;
        }
        let t = Instant::now();
        let mut seen = 0;
        for b in l.epoch(1) {
            seen += b?.input.size()[0];
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "loader: {th} thread(s): {seen} examples in {s:.2}s = {:.1} examples/s",
            seen as f64 / s
        );
    }
    Ok(())
}
