//! Minimal `.npy` reader for feature arrays and label fixtures.
//!
//! Hand-written rather than a dependency because the format subset we need is tiny
//! (format versions 1-3, little-endian `f4`/`f8`/`u1`/`i4`/`i8`, C order) and the errors
//! must name the file and the offending header field.

use std::path::Path;

use crate::error::{MetricsError, Result};

/// An array read from a `.npy` file, widened to `f64` (exact for every supported dtype
/// except `i8` values beyond 2^53, which feature and label files never hold).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    /// Row-major (C order) values.
    pub data: Vec<f64>,
    /// The `descr` field of the header, e.g. `<f4`.
    pub dtype: String,
}

impl NpyArray {
    /// `(rows, cols)` of a 2-D array, or an error naming `path`.
    pub fn dims2(&self, path: &Path) -> Result<(usize, usize)> {
        match self.shape.as_slice() {
            [r, c] => Ok((*r, *c)),
            s => Err(MetricsError::Npy {
                path: path.to_path_buf(),
                reason: format!("expected a 2-D N x D array, found shape {s:?}"),
            }),
        }
    }
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| MetricsError::io(path, e))?;
    parse_npy(&bytes).map_err(|reason| MetricsError::Npy {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses the bytes of a `.npy` file; the error is a reason without the path.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("missing the \\x93NUMPY magic (not a .npy file)".into());
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let end = start + header_len;
    if bytes.len() < end {
        return Err("truncated header".into());
    }
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| "header is not valid text".to_string())?;
    let descr = header_value(header, "descr")?;
    let descr = descr
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string();
    let fortran = header_value(header, "fortran_order")?;
    if fortran.trim() != "False" {
        return Err(
            "Fortran-order arrays are not supported; save with np.ascontiguousarray".into(),
        );
    }
    let shape_text = header_value(header, "shape")?;
    let shape = parse_shape(&shape_text)?;
    let count: usize = shape.iter().product();
    let payload = &bytes[end..];
    let elt = match descr.as_str() {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        "|u1" | "<u1" => 1,
        d => {
            return Err(format!(
                "dtype {d} is not supported (use little-endian float32, float64, uint8, int32 or int64)"
            ));
        }
    };
    if payload.len() != count * elt {
        return Err(format!(
            "payload has {} bytes, shape {shape:?} of {descr} needs {}",
            payload.len(),
            count * elt
        ));
    }
    let data: Vec<f64> = match descr.as_str() {
        "<f4" => payload
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        "<f8" => payload
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")))
            .collect(),
        "<i4" => payload
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        "<i8" => payload
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("chunk of 8")) as f64)
            .collect(),
        _ => payload.iter().map(|&b| b as f64).collect(),
    };
    Ok(NpyArray {
        shape,
        data,
        dtype: descr,
    })
}

/// The text of `'key': value` in the header dict, up to the next top-level comma.
fn header_value(header: &str, key: &str) -> std::result::Result<String, String> {
    let pat_a = format!("'{key}'");
    let pat_b = format!("\"{key}\"");
    let pos = header
        .find(&pat_a)
        .or_else(|| header.find(&pat_b))
        .ok_or_else(|| format!("header has no `{key}` field"))?;
    let rest = &header[pos + pat_a.len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')
        .ok_or_else(|| format!("header field `{key}` has no value"))?;
    let mut depth = 0i32;
    let mut out = String::new();
    for ch in rest.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => break,
            _ => {}
        }
        out.push(ch);
    }
    Ok(out)
}

fn parse_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("shape `{}` is not a tuple", text.trim()))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("shape entry `{s}` is not a number"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
        npy_order(descr, "False", shape, payload)
    }

    fn npy_order(descr: &str, fortran: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn parses_f4_and_f8() {
        let vals = [1.5f32, -2.0, 3.25, 0.0, 7.0, 8.5];
        let payload: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(&npy("<f4", "(2, 3)", &payload)).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data[2], 3.25);
        let payload: Vec<u8> = [0.1f64, 0.2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b = parse_npy(&npy("<f8", "(2,)", &payload)).unwrap();
        assert_eq!(b.shape, vec![2]);
        assert_eq!(b.data, vec![0.1, 0.2]);
    }

    #[test]
    fn rejects_bad_inputs() {
        assert!(parse_npy(b"hello world!").unwrap_err().contains("magic"));
        let err = parse_npy(&npy(">f4", "(1,)", &[0; 4])).unwrap_err();
        assert!(err.contains(">f4"), "{err}");
        let err = parse_npy(&npy("<f4", "(2, 3)", &[0; 8])).unwrap_err();
        assert!(err.contains("payload"), "{err}");
        let fortran = npy_order("<f4", "True", "(1,)", &[0; 4]);
        assert!(parse_npy(&fortran).unwrap_err().contains("Fortran"));
    }
}
