//! TensorBoard event files, written by hand.
//!
//! An event file is a TFRecord stream (per record: the length as a little-endian `u64`, its
//! masked CRC-32C, the bytes, their masked CRC-32C) of protobuf `Event` messages
//! (`tensorflow/core/util/event.proto`, `summary.proto`, and the hparams plugin's
//! `plugin_data.proto`). Why not a crate: the ones on crates.io are unmaintained (`tboard`
//! 0.1.1, last commit 2024, needs `protoc` at build time through prost-build and has no
//! hparams; `tensorboard-rs` 0.5.9, 2021, on protobuf 2, which has a RUSTSEC advisory, and
//! image 0.23; `tfrecord` 0.15, 2023, no licence stated, a dozen dependencies), and the
//! four messages used here are a few dozen lines of protobuf encoding. The tests read the
//! files back with the `tensorboard` Python package.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::TrainError;

/// CRC-32C (Castagnoli), the checksum of TFRecord.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: a CRC of data that holds CRCs is not itself a CRC.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// A protobuf message being encoded (proto3: default values may be left out).
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    fn tag(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.tag(field, 0);
        self.varint(v as u64);
        self
    }
    fn double(&mut self, field: u32, v: f64) -> &mut Self {
        self.tag(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.tag(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.tag(field, 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
    fn str(&mut self, field: u32, v: &str) -> &mut Self {
        self.bytes(field, v.as_bytes())
    }
    fn msg(&mut self, field: u32, m: &Msg) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

/// `Summary.Value` fields.
const VALUE_TAG: u32 = 1;
const VALUE_SIMPLE: u32 = 2;
const VALUE_IMAGE: u32 = 4;
const VALUE_TENSOR: u32 = 8;
const VALUE_METADATA: u32 = 9;
/// `Event` fields.
const EVENT_WALL_TIME: u32 = 1;
const EVENT_STEP: u32 = 2;
const EVENT_FILE_VERSION: u32 = 3;
const EVENT_SUMMARY: u32 = 5;
const EVENT_SESSION_LOG: u32 = 7;
/// `SessionLog.status` START.
const SESSION_START: i64 = 1;

/// Width, height and TensorBoard colorspace (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) of a PNG,
/// from its IHDR chunk.
pub fn png_size(png: &[u8]) -> Option<(u32, u32, i64)> {
    if png.len() < 26 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes([png[i], png[i + 1], png[i + 2], png[i + 3]]);
    let colorspace = match png[25] {
        0 => 1,
        4 => 2,
        6 => 4,
        _ => 3,
    };
    Some((be(16), be(20), colorspace))
}

/// One event file of one process (`events.out.tfevents.<secs>.<host>.<pid>.<n>`, the name
/// TensorBoard looks for; a resumed stage adds a second file after the first).
pub struct EventWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl EventWriter {
    /// Creates `dir` and a new event file in it, starting with the file version event.
    pub fn create(dir: &Path) -> Result<Self, TrainError> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['/', '.'], "_"))
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(
            "events.out.tfevents.{secs:010}.{host}.{}.{n}",
            std::process::id()
        ));
        let f = std::fs::File::create(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut w = EventWriter {
            path,
            file: std::io::BufWriter::new(f),
        };
        w.event(0, |e| {
            e.str(EVENT_FILE_VERSION, "brain.Event:2");
        })?;
        Ok(w)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn event(&mut self, step: u64, what: impl FnOnce(&mut Msg)) -> Result<(), TrainError> {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut e = Msg::default();
        e.double(EVENT_WALL_TIME, wall).int(EVENT_STEP, step as i64);
        what(&mut e);
        let len = (e.0.len() as u64).to_le_bytes();
        let io = |err| TrainError::io(&self.path, err);
        self.file.write_all(&len).map_err(io)?;
        self.file
            .write_all(&masked_crc(&len).to_le_bytes())
            .map_err(io)?;
        self.file.write_all(&e.0).map_err(io)?;
        self.file
            .write_all(&masked_crc(&e.0).to_le_bytes())
            .map_err(io)?;
        Ok(())
    }

    fn summary(&mut self, step: u64, values: &[Msg]) -> Result<(), TrainError> {
        let mut s = Msg::default();
        for v in values {
            s.msg(1, v);
        }
        self.event(step, |e| {
            e.msg(EVENT_SUMMARY, &s);
        })
    }

    /// Scalars of one step, tag `prefix/name` (stored as `f32`, as TensorBoard does).
    pub fn scalars(
        &mut self,
        step: u64,
        prefix: &str,
        values: &[(String, f64)],
    ) -> Result<(), TrainError> {
        let vals: Vec<Msg> = values
            .iter()
            .map(|(n, v)| {
                let mut m = Msg::default();
                m.str(VALUE_TAG, &format!("{prefix}/{n}"))
                    .float(VALUE_SIMPLE, *v as f32);
                m
            })
            .collect();
        self.summary(step, &vals)
    }

    /// A PNG image as written (an image summary stores the encoded bytes).
    pub fn png(&mut self, step: u64, tag: &str, png: &[u8]) -> Result<(), TrainError> {
        let (w, h, colorspace) = png_size(png).ok_or_else(|| {
            TrainError::Numeric(format!("sample `{tag}` at step {step} is not a PNG"))
        })?;
        let mut img = Msg::default();
        img.int(1, h as i64)
            .int(2, w as i64)
            .int(3, colorspace)
            .bytes(4, png);
        let mut v = Msg::default();
        v.str(VALUE_TAG, tag).msg(VALUE_IMAGE, &img);
        self.summary(step, &[v])
    }

    /// The hyper-parameters for TensorBoard's HParams tab (the hparams plugin's
    /// `session_start_info`): `params` flattened to `a.b` names; numbers, strings and
    /// booleans as they are, lists as JSON text, nulls left out.
    pub fn hparams(&mut self, params: &serde_json::Value, group: &str) -> Result<(), TrainError> {
        let flat = ugc_engine::dotted::dotted_leaves(params);
        let mut start = Msg::default();
        for (k, v) in flat.iter().filter(|(_, v)| !v.is_null() && !v.is_object()) {
            let mut value = Msg::default();
            match v {
                serde_json::Value::Number(n) => {
                    value.double(2, n.as_f64().unwrap_or(f64::NAN));
                }
                serde_json::Value::String(s) => {
                    value.str(3, s);
                }
                serde_json::Value::Bool(b) => {
                    value.int(4, i64::from(*b));
                }
                other => {
                    value.str(3, &other.to_string());
                }
            }
            let mut entry = Msg::default();
            entry.str(1, k).msg(2, &value);
            start.msg(1, &entry);
        }
        start.str(4, group);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        start.double(5, secs);
        let mut plugin = Msg::default();
        // HParamsPluginData: version 0, session_start_info.
        plugin.int(1, 0).msg(3, &start);
        let mut pdata = Msg::default();
        pdata.str(1, "hparams").bytes(2, &plugin.0);
        let mut meta = Msg::default();
        meta.msg(1, &pdata);
        // A scalar 0.0 float tensor, the placeholder value TensorBoard's own writer uses.
        let mut tensor = Msg::default();
        tensor
            .int(1, 1)
            .msg(2, &Msg::default())
            .bytes(5, &0f32.to_le_bytes());
        let mut v = Msg::default();
        v.str(VALUE_TAG, "_hparams_/session_start_info")
            .msg(VALUE_METADATA, &meta)
            .msg(VALUE_TENSOR, &tensor);
        self.summary(0, &[v])
    }

    /// Marks a restart at `step`: TensorBoard drops what an earlier file logged from `step`
    /// on (the steps a crashed run did after its last checkpoint are logged again).
    pub fn restart(&mut self, step: u64) -> Result<(), TrainError> {
        let mut log = Msg::default();
        log.int(1, SESSION_START);
        self.event(step, |e| {
            e.msg(EVENT_SESSION_LOG, &log);
        })
    }

    /// Makes what was written visible to a TensorBoard reading the file now.
    pub fn flush(&mut self) -> Result<(), TrainError> {
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC catalogue's check value of CRC-32C over "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn varints_and_fields_encode_as_protobuf_does() {
        let mut m = Msg::default();
        // Field 2 varint 300: 0x10 0xac 0x02 (the protobuf encoding guide's example).
        m.int(2, 300);
        assert_eq!(m.0, [0x10, 0xac, 0x02]);
        let mut m = Msg::default();
        m.str(1, "testing");
        assert_eq!(m.0[..2], [0x0a, 0x07]);
        let mut m = Msg::default();
        m.int(1, -1);
        assert_eq!(m.0.len(), 11, "negative int64 is ten varint bytes");
    }

    #[test]
    fn png_size_reads_the_header_and_refuses_other_bytes() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&[0, 0, 0, 96, 0, 0, 0, 32, 8, 2]);
        assert_eq!(png_size(&png), Some((96, 32, 3)));
        assert_eq!(png_size(b"GIF89a"), None);
    }
}
