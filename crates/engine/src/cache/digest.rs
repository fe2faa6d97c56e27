//! Content digests of files and trees, and the stat cache that avoids re-hashing.
//!
//! A file's digest is the blake3 of its bytes. A tree's digest is the blake3 of its sorted
//! `(relative path, file digest)` list, so two directories with the same files in the same
//! places have the same digest wherever they live. Empty directories and file modes are not
//! part of a tree (the cache stores files only).
//!
//! The stat cache remembers `(size, mtime_ns, inode, device) -> digest` per absolute path in
//! a small SQLite file, so unchanged multi-gigabyte datasets are hashed once. Like git's
//! "racy" rule, a file modified less than [`RACY_WINDOW_MS`] before it was hashed is not
//! cached, because a second write within the same timestamp tick would go unnoticed.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, params};

use super::CacheError;

/// Files modified this recently before hashing are not entered in the stat cache.
pub const RACY_WINDOW_MS: i64 = 2_000;

/// The identity of a file version as seen by `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatSig {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub dev: u64,
}

impl StatSig {
    pub fn of(m: &Metadata) -> StatSig {
        StatSig {
            size: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// Bytes read (and hashed) at a time.
const READ_CHUNK: usize = 8 << 20;
/// Chunks at least this large are hashed on all cores; below it threads cost more than
/// they save (blake3 recommends parallelism from about 128 KiB).
const PARALLEL_FROM: usize = 1 << 20;

/// Fills `buf` as far as the file allows (a short read only at end of file).
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Hashes file contents and counts how many files it read (exposed as
/// [`super::Cache::hash_count`], e.g. to show that the stat cache works).
#[derive(Debug, Default)]
pub(crate) struct Hasher {
    count: AtomicU64,
    bytes: AtomicU64,
}

impl Hasher {
    /// blake3 of the file's bytes, hex. Also returns the file so the caller can fsync it.
    pub(crate) fn hash_file(&self, path: &Path) -> Result<(String, u64, File), CacheError> {
        let mut file = File::open(path).map_err(CacheError::io(path))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut total = 0u64;
        loop {
            let n = read_full(&mut file, &mut buf).map_err(CacheError::io(path))?;
            if n == 0 {
                break;
            }
            if n >= PARALLEL_FROM {
                // Multi-GB checkpoints: hash each chunk on every core (blake3's tree
                // structure makes the result identical to the serial hash).
                hasher.update_rayon(&buf[..n]);
            } else {
                hasher.update(&buf[..n]);
            }
            total += n as u64;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(total, Ordering::Relaxed);
        Ok((hasher.finalize().to_hex().to_string(), total, file))
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Digest of a tree given its files as `(relative path with '/', file digest)`.
pub fn tree_digest<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut list: Vec<(&str, &str)> = entries.into_iter().collect();
    list.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut h = blake3::Hasher::new();
    h.update(b"ugc-tree-v1\0");
    for (path, digest) in list {
        h.update(&(path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(&(digest.len() as u64).to_le_bytes());
        h.update(digest.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// Persistent `path -> (stat, digest)` map, shared by concurrent processes (SQLite WAL).
#[derive(Debug)]
pub(crate) struct StatCache {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn to_i64(v: u64) -> i64 {
    // Sizes, inodes and devices above i64::MAX are stored by their bit pattern.
    v as i64
}

impl StatCache {
    pub(crate) fn open(path: &Path) -> Result<StatCache, CacheError> {
        let db = |source| CacheError::Db {
            path: path.to_path_buf(),
            source,
        };
        let conn = crate::sqlite::open_wal(path).map_err(db)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS stat_cache (
                path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                ino INTEGER NOT NULL, dev INTEGER NOT NULL, digest TEXT NOT NULL
            );",
        )
        .map_err(db)?;
        Ok(StatCache {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn db_err(&self, source: rusqlite::Error) -> CacheError {
        CacheError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the connection leaves it usable; ignore the poison.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached digest of `path` if its stat is unchanged.
    pub(crate) fn get(&self, path: &str, sig: &StatSig) -> Result<Option<String>, CacheError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT size, mtime_ns, ino, dev, digest FROM stat_cache WHERE path = ?1",
            )
            .map_err(|e| self.db_err(e))?;
        let row: Option<(i64, i64, i64, i64, String)> = stmt
            .query_row(params![path], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()
            .map_err(|e| self.db_err(e))?;
        Ok(row.and_then(|(size, mtime_ns, ino, dev, digest)| {
            (size == to_i64(sig.size)
                && mtime_ns == sig.mtime_ns
                && ino == to_i64(sig.ino)
                && dev == to_i64(sig.dev))
            .then_some(digest)
        }))
    }

    /// Stores digests of files hashed at `hashed_at_ns`, skipping racily-clean ones.
    pub(crate) fn put_many(
        &self,
        entries: &[(String, StatSig, String)],
        hashed_at_ns: i64,
    ) -> Result<(), CacheError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.db_err(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO stat_cache (path, size, mtime_ns, ino, dev, digest)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| self.db_err(e))?;
            for (path, sig, digest) in entries {
                if hashed_at_ns - sig.mtime_ns < RACY_WINDOW_MS * 1_000_000 {
                    continue;
                }
                stmt.execute(params![
                    path,
                    to_i64(sig.size),
                    sig.mtime_ns,
                    to_i64(sig.ino),
                    to_i64(sig.dev),
                    digest
                ])
                .map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Drops entries whose path no longer exists; returns how many.
    pub(crate) fn prune_missing(&self) -> Result<usize, CacheError> {
        let paths: Vec<String> = {
            let conn = self.lock();
            let mut stmt = conn
                .prepare("SELECT path FROM stat_cache")
                .map_err(|e| self.db_err(e))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| self.db_err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.db_err(e))?
        };
        let gone: Vec<&String> = paths
            .iter()
            .filter(|p| std::fs::symlink_metadata(p).is_err())
            .collect();
        if !gone.is_empty() {
            let mut conn = self.lock();
            let tx = conn.transaction().map_err(|e| self.db_err(e))?;
            for p in &gone {
                tx.execute("DELETE FROM stat_cache WHERE path = ?1", params![p])
                    .map_err(|e| self.db_err(e))?;
            }
            tx.commit().map_err(|e| self.db_err(e))?;
        }
        Ok(gone.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_digest_depends_on_paths_and_contents_not_order() {
        let a = tree_digest([("x/a.txt", "1"), ("b.txt", "2")]);
        assert_eq!(a, tree_digest([("b.txt", "2"), ("x/a.txt", "1")]));
        assert_ne!(a, tree_digest([("x/a.txt", "1"), ("c.txt", "2")]));
        assert_ne!(a, tree_digest([("x/a.txt", "3"), ("b.txt", "2")]));
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(tree_digest([("ab", "c")]), tree_digest([("a", "bc")]));
    }

    #[test]
    fn parallel_chunks_hash_like_the_serial_blake3() {
        let dir = tempfile::tempdir().unwrap();
        // Two full chunks and a partial one, each hashed in parallel; then a small file.
        let len = 2 * READ_CHUNK + PARALLEL_FROM + 12_345;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let path = dir.path().join("f");
        std::fs::write(&path, &bytes).unwrap();
        let h = Hasher::default();
        let (digest, size, _) = h.hash_file(&path).unwrap();
        assert_eq!(size, len as u64);
        assert_eq!(digest, blake3::hash(&bytes).to_hex().to_string());
        let small = dir.path().join("s");
        std::fs::write(&small, b"abc").unwrap();
        let (digest, _, _) = h.hash_file(&small).unwrap();
        assert_eq!(digest, blake3::hash(b"abc").to_hex().to_string());
    }
}
