//! Issue #7 item 3 (second half): store hashing throughput of `Cache::digest_path`.
//!
//!     cargo bench --bench store_hash -- [--mib N] [--repeats R] [--dir DIR]
//!
//! Writes one file of N MiB of pseudo-random bytes (incompressible, page-cache warm after
//! the write), then digests it R times, each time through a freshly opened cache so the
//! stat cache cannot answer and every byte is hashed (single-threaded blake3 over 1 MiB
//! reads, as the store does). Prints one JSON line with the median GB/s (10^9 bytes/s).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use ugc_engine::cache::Cache;

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
    Ok(())
}
