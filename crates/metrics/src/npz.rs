//! pytorch-fid's statistics files: `np.savez_compressed(path, mu=mu, sigma=sigma)`, a zip
//! of `mu.npy` (float64, `D`) and `sigma.npy` (float64, `D x D`). Files written here are
//! read by `pytorch_fid` and NumPy as they are; files from them (stored or deflated, with
//! NumPy's forced zip64 headers) are read here.

use std::io::{Read, Write};
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{MetricsError, Result};
use crate::frechet::GaussianStats;
use crate::npy::{NpyArray, parse_npy};

fn npz_err(path: &Path, reason: impl std::fmt::Display) -> MetricsError {
    MetricsError::Npy {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads `mu` and `sigma` of a pytorch-fid `.npz` statistics file.
pub fn read_fid_stats(path: &Path) -> Result<GaussianStats> {
    let file = std::fs::File::open(path).map_err(|e| MetricsError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| npz_err(path, format!("not a .npz (zip) archive: {e}")))?;
    let mut entry = |name: &str| -> Result<NpyArray> {
        let mut f = zip.by_name(&format!("{name}.npy")).map_err(|_| {
            npz_err(
                path,
                format!("no `{name}` array (pytorch-fid statistics hold `mu` and `sigma`)"),
            )
        })?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(|e| npz_err(path, format!("{name}.npy: {e}")))?;
        parse_npy(&bytes).map_err(|r| npz_err(path, format!("{name}.npy: {r}")))
    };
    let mu = entry("mu")?;
    let sigma = entry("sigma")?;
    let d = match mu.shape.as_slice() {
        [d] => *d,
        s => return Err(npz_err(path, format!("mu has shape {s:?}, expected (D,)"))),
    };
    if sigma.shape != [d, d] {
        return Err(npz_err(
            path,
            format!(
                "sigma has shape {:?}, expected ({d}, {d}) to match mu",
                sigma.shape
            ),
        ));
    }
    if mu.data.iter().chain(&sigma.data).any(|v| !v.is_finite()) {
        return Err(npz_err(path, "mu or sigma holds NaN or infinite values"));
    }
    let mu_t = Tensor::from_slice(&mu.data);
    let sigma_t = Tensor::from_slice(&sigma.data).view([d as i64, d as i64]);
    // The sample count is not stored; it does not enter the distance.
    GaussianStats::new(mu_t, sigma_t, 0)
}

/// The bytes of a float64 `.npy` (format 1.0, C order) as NumPy writes it: the header padded
/// with spaces to a multiple of 64 bytes and ended by a newline.
pub fn npy_f64_bytes(shape: &[usize], data: &[f64]) -> Vec<u8> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {dims}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes `stats` as pytorch-fid's `--save-stats` does (float64 `mu` and `sigma`,
/// deflated). An existing file is refused, as pytorch-fid refuses it.
pub fn write_fid_stats(path: &Path, stats: &GaussianStats) -> Result<()> {
    if path.exists() {
        return Err(MetricsError::InvalidParam(format!(
            "{}: the statistics file exists already (pytorch-fid refuses to overwrite it too)",
            path.display()
        )));
    }
    let d = stats.dim() as usize;
    let mu: Vec<f64> = Vec::try_from(&stats.mu.to_kind(Kind::Double).contiguous())?;
    let sigma: Vec<f64> =
        Vec::try_from(&stats.sigma.to_kind(Kind::Double).contiguous().view([-1]))?;
    let tmp = path.with_extension("npz.partial");
    let write = || -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut zip = zip::ZipWriter::new(file);
        let opts =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("mu.npy", opts)?;
        zip.write_all(&npy_f64_bytes(&[d], &mu))?;
        zip.start_file("sigma.npy", opts)?;
        zip.write_all(&npy_f64_bytes(&[d, d], &sigma))?;
        zip.finish()?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        MetricsError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        let b = npy_f64_bytes(&[3], &[1.0, 2.0, 3.0]);
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(parse_npy(&b).unwrap().data, vec![1.0, 2.0, 3.0]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npz");
        let mu = Tensor::from_slice(&[0.5f64, -1.0]);
        let sigma = Tensor::from_slice(&[2.0f64, 0.25, 0.25, 1.0]).view([2, 2]);
        let s = GaussianStats::new(mu, sigma, 0).unwrap();
        write_fid_stats(&p, &s).unwrap();
        let r = read_fid_stats(&p).unwrap();
        assert_eq!(Vec::<f64>::try_from(&r.mu).unwrap(), vec![0.5, -1.0]);
        assert!(
            write_fid_stats(&p, &s)
                .unwrap_err()
                .to_string()
                .contains("exists")
        );
    }
}
