//! Issue #7 item 3 (second half): store hashing throughput of `Cache::digest_path`.
//!
//!     cargo bench --bench store_hash -- [--mib N] [--repeats R] [--dir DIR]
//!
//! Writes one file of N MiB of pseudo-random bytes (incompressible, page-cache warm after
//! the write), then digests it R times, each time through a freshly opened cache so the
//! stat cache cannot answer and every byte is hashed (single-threaded blake3 over 1 MiB
//! reads, as the store does). Prints one JSON line with the median GB/s (10^9 bytes/s).
//!
//! Then commits the file as a stage output and times `Cache::check_input` on it R times:
//! the full re-hash every stage pays for each input before it runs (issue 19). A second
//! JSON line (`"bench": "input_check"`) gives its median GB/s.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use ugc_engine::cache::{Cache, KeyMaterial, RecordMeta, now_unix_ms};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut mib: u64 = 1024;
    let mut repeats = 5usize;
    let mut dir = PathBuf::from("target/bench/store_hash");
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue;
        }
        let v = it
            .next()
            .ok_or_else(|| format!("flag `{flag}` needs a value"))?;
        match flag.as_str() {
            "--mib" => mib = v.parse().map_err(|e| format!("bad --mib `{v}`: {e}"))?,
            "--repeats" => repeats = v.parse().map_err(|e| format!("bad --repeats `{v}`: {e}"))?,
            "--dir" => dir = PathBuf::from(v),
            _ => return Err(format!("unknown flag `{flag}`").into()),
        }
    }
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("blob.bin");
    {
        // xorshift64* stream: incompressible and fast to produce.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for chunk in buf.chunks_exact_mut(8) {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                chunk.copy_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
            }
            f.write_all(&buf)?;
        }
        f.flush()?;
    }
    let bytes = std::fs::metadata(&file)?.len();
    let mut gbps = Vec::with_capacity(repeats);
    let mut digest = String::new();
    for r in 0..repeats {
        let root = dir.join(format!("cache{r}"));
        let _ = std::fs::remove_dir_all(&root);
        let cache = Cache::open(&root)?;
        let t = Instant::now();
        digest = cache.digest_path(&file)?;
        let secs = t.elapsed().as_secs_f64();
        if cache.hashed_bytes() != bytes {
            return Err(format!(
                "expected {bytes} bytes hashed, the cache hashed {}",
                cache.hashed_bytes()
            )
            .into());
        }
        gbps.push(bytes as f64 / secs / 1e9);
        std::fs::remove_dir_all(&root)?;
    }
    let check = input_check(&dir, &file, bytes, repeats)?;
    std::fs::remove_file(&file)?;
    gbps.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "bench": "store_hash",
            "bytes": bytes,
            "repeats": repeats,
            "median_gb_per_s": gbps[gbps.len() / 2],
            "min_gb_per_s": gbps[0],
            "max_gb_per_s": gbps[gbps.len() - 1],
            "digest": digest,
        })
    );
    println!("{check}");
    Ok(())
}

/// Commits `file` as the only output of a stage and times `check_input` on its view.
fn input_check(
    dir: &std::path::Path,
    file: &std::path::Path,
    bytes: u64,
    repeats: usize,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let root = dir.join("cache-check");
    let _ = std::fs::remove_dir_all(&root);
    let cache = Cache::open(&root)?;
    let material = KeyMaterial::new("bench", 1, json!({}));
    let staging = cache.stage(&material.key())?;
    std::fs::copy(file, staging.out_dir().join("blob.bin"))?;
    let meta = RecordMeta {
        node: "bench".into(),
        pipeline: "store_hash".into(),
        created_unix_ms: now_unix_ms(),
        duration_ms: 0,
        host: String::new(),
        device: "cpu".into(),
        run_id: None,
        inputs_verified: true,
    };
    let record = cache.commit(staging, &material, meta)?;
    let view = cache.output_dir(&record)?;
    let mut gbps = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let before = cache.hashed_bytes();
        let t = Instant::now();
        cache.check_input(&view)?;
        let secs = t.elapsed().as_secs_f64();
        if cache.hashed_bytes() - before != bytes {
            return Err("check_input did not hash every byte".into());
        }
        gbps.push(bytes as f64 / secs / 1e9);
    }
    std::fs::remove_dir_all(&root)?;
    gbps.sort_by(f64::total_cmp);
    Ok(json!({
        "bench": "input_check",
        "bytes": bytes,
        "repeats": repeats,
        "median_gb_per_s": gbps[gbps.len() / 2],
        "min_gb_per_s": gbps[0],
        "max_gb_per_s": gbps[gbps.len() - 1],
    }))
}
