//! Content-addressed cache of stage outputs, with one record per key as the commit point.
//!
//! Layout under the cache root:
//!
//! ```text
//! objects/ab/<rest of blake3 hex>   file contents, read-only, shared by every record
//! records/<key>.json                the commit point: written last, atomically
//! views/<key>/...                   output tree as hard links to objects (copies across devices)
//! tmp/<name>/ + tmp/<name>.lock     staging and scratch work of a live process
//! scratch/<key>/                    resumable checkpoints of a running stage, never committed
//! quarantine/                       corrupt objects moved aside by `lookup`, `check_input`,
//!                                   `commit` and `verify`
//! locks/<key>.lock, locks/gc.lock   per-key locks; gc vs. commit exclusion
//! logs/, registry.sqlite            per-stage logs and the run registry (other modules)
//! statcache.sqlite                  stat cache of digests (a compute node keeps its own
//!                                   elsewhere: [`Cache::open_on_compute_node`])
//! ```
//!
//! Crash safety: a stage writes only under a staging directory; [`Cache::commit`] fsyncs
//! each file, moves it into `objects/`, builds the view, and only then writes the record.
//! Anything without a record (tmp dirs, views, objects) is garbage for [`Cache::gc`] and
//! is never served: [`Cache::lookup`] goes through the record and checks its objects.
//!
//! Damage is never used: before a stage runs, [`Cache::check_input`] re-hashes every byte
//! it is about to read; [`Cache::commit`] reuses an existing object only after re-hashing
//! it. Wherever damage is found, the records that may have been computed from it go too
//! (see [`derived_records`] for the rule).

mod digest;
mod fsutil;
mod key;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use digest::{RACY_WINDOW_MS, StatSig, tree_digest};
pub(crate) use key::write_canonical;
pub use key::{CacheKey, InvalidKey, KEY_SCHEMA_VERSION, KeyChange, KeyMaterial};

use crate::lock::{KeyLock, LockError};
use digest::{Hasher, StatCache};
use fsutil::{TmpDir, atomic_write, fsync_dir, remove_path};

/// Why a cache operation failed; every variant names the path or value concerned.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no such file or directory")]
    Missing { path: PathBuf },
    #[error("{path}: path is not valid UTF-8; cached outputs must have UTF-8 names")]
    NonUtf8Path { path: PathBuf },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("staging was created for key {staged} but the material gives key {material}")]
    KeyMismatch {
        staged: CacheKey,
        material: CacheKey,
    },
    #[error("database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A stage's input no longer holds the bytes its record names ([`Cache::check_input`]).
    #[error(
        "committed output {key}: `{file}` {problem}; its record and {derived} record(s) derived from it were dropped, so a re-run recomputes them"
    )]
    DamagedInput {
        key: CacheKey,
        file: String,
        problem: String,
        derived: usize,
    },
    #[error(
        "{path}: not a committed output of the cache at {root} (a stage's inputs are its `views/<key>` directories)"
    )]
    NotAView { path: PathBuf, root: PathBuf },
    #[error(
        "{path}: committed output {key} has no record any more (dropped by `verify`, `gc` or a damage check); a re-run recomputes it"
    )]
    InputGone { key: CacheKey, path: PathBuf },
}

impl CacheError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
        move |source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CacheError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                CacheError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// One committed output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the output root, `/`-separated.
    pub path: String,
    /// blake3 of the contents, hex; names the object.
    pub digest: String,
    pub size: u64,
    /// `stat` of the object when committed: an unchanged stat lets `lookup` skip re-hashing.
    pub object_mtime_ns: i64,
    pub object_ino: u64,
}

/// Who produced a record, for `runs`/`show`; not part of the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMeta {
    pub node: String,
    pub pipeline: String,
    pub created_unix_ms: u64,
    pub duration_ms: u64,
    pub host: String,
    pub device: String,
    /// The registry run whose stage process committed this record: lets the registry's
    /// rows be recovered from the record (the commit point) if the process died before
    /// writing them. Absent in records of runs without a registry and in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<i64>,
    /// Whether the stage checked every byte of its inputs against their digests before it
    /// ran ([`Cache::check_input`]). Records written before that check existed read as
    /// `false`; [`derived_records`] distrusts only those.
    #[serde(default)]
    pub inputs_verified: bool,
}

/// A committed stage output. Its existence on disk is what "cached" means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub key: CacheKey,
    pub material: KeyMaterial,
    pub files: Vec<FileEntry>,
    /// [`tree_digest`] of `files`: what downstream keys use as this output's digest.
    pub tree_digest: String,
    pub meta: RecordMeta,
}

impl Record {
    /// Total size of the output files in bytes.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    fn consistent(&self, key: &CacheKey) -> bool {
        self.key == *key
            && self.material.key() == *key
            && self.tree_digest
                == tree_digest(
                    self.files
                        .iter()
                        .map(|f| (f.path.as_str(), f.digest.as_str())),
                )
            && self
                .files
                .iter()
                .all(|f| CacheKey::is_valid(&f.digest) && safe_rel_path(&f.path))
    }
}

/// A relative path that stays inside its root (no `..`, no absolute parts).
fn safe_rel_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A fresh directory a stage writes its outputs into; removed on drop unless committed
/// (in which case its files now live in `objects/`).
#[derive(Debug)]
pub struct Staging {
    key: CacheKey,
    out: PathBuf,
    tmp: TmpDir,
}

impl Staging {
    /// Where the stage writes everything it produces.
    pub fn out_dir(&self) -> &Path {
        &self.out
    }
    pub fn key(&self) -> &CacheKey {
        &self.key
    }
    /// The private directory holding `out_dir` (for logs that must not be committed).
    pub fn work_dir(&self) -> &Path {
        self.tmp.path()
    }
}

/// What [`Cache::verify`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub objects_checked: u64,
    pub bytes_checked: u64,
    /// Digests of objects whose contents no longer match (moved to `quarantine/`).
    pub corrupt: Vec<String>,
    /// Digests referenced by records but absent from `objects/`.
    pub missing: Vec<String>,
    /// Records deleted because they referenced corrupt or missing objects.
    pub removed_records: Vec<CacheKey>,
    /// Records deleted because they may have been computed from damaged bytes
    /// ([`derived_records`]).
    pub derived_records: Vec<CacheKey>,
    /// Record files that could not be parsed or were inconsistent (deleted).
    pub bad_records: Vec<PathBuf>,
}

/// What [`Cache::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub removed_tmp: Vec<PathBuf>,
    pub removed_views: Vec<String>,
    pub removed_records: Vec<CacheKey>,
    pub removed_scratch: Vec<String>,
    pub removed_objects: u64,
    pub freed_bytes: u64,
    /// Keys left alone because a process holds their lock.
    pub skipped_locked: Vec<CacheKey>,
}

enum ObjectState {
    Ok,
    Missing,
    Corrupt,
}

/// The content-addressed cache rooted at one directory. `Sync`: share it between threads.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    stat: StatCache,
    hasher: Hasher,
}

const SUBDIRS: [&str; 9] = [
    "objects",
    "records",
    "views",
    "tmp",
    "scratch",
    "locks",
    "logs",
    "quarantine",
    "objects/.incoming",
];

/// Permanent lock file (never unlinked) that commits take shared and gc/verify exclusive.
const GC_LOCK: &str = "locks/gc.lock";

struct GcGuard(File);

impl Drop for GcGuard {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// The file name of a compute node's own stat cache for the cache at `root`: per host
/// (a temp dir may itself be shared) and per cache root (one node may serve several).
fn node_local_stat_cache_name(root: &Path, host: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let root_hash = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
    format!("statcache-{host}-{}.sqlite", &root_hash[..16])
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`.
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        Self::open_with_stat_cache(root, |root| Ok(root.join("statcache.sqlite")))
    }

    /// Opens the cache at `root` the way a compute node of a cluster must, when the cache
    /// is on a shared (network) filesystem: SQLite's WAL mode needs shared memory between
    /// its users, which NFS and Lustre do not give, so the stat cache of digests lives in a
    /// node-local file, `<temp dir>/ugc-pipe/statcache-<host>-<root hash>.sqlite`, and
    /// nothing on the shared filesystem is opened as a database. It is only a cache: a
    /// node without one re-hashes what it reads.
    pub fn open_on_compute_node(root: &Path) -> Result<Cache, CacheError> {
        Self::open_with_stat_cache(root, |root| {
            let dir = std::env::temp_dir().join("ugc-pipe");
            std::fs::create_dir_all(&dir).map_err(CacheError::io(&dir))?;
            Ok(dir.join(node_local_stat_cache_name(root, &crate::exec::host_name())))
        })
    }

    fn open_with_stat_cache(
        root: &Path,
        stat_cache_at: impl FnOnce(&Path) -> Result<PathBuf, CacheError>,
    ) -> Result<Cache, CacheError> {
        for sub in SUBDIRS {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(CacheError::io(&dir))?;
        }
        let root = root.canonicalize().map_err(CacheError::io(root))?;
        let stat = StatCache::open(&stat_cache_at(&root)?)?;
        Ok(Cache {
            root,
            stat,
            hasher: Hasher::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many files this `Cache` has read to hash (stat-cache hits do not count).
    pub fn hash_count(&self) -> u64 {
        self.hasher.count()
    }

    /// How many bytes this `Cache` has hashed.
    pub fn hashed_bytes(&self) -> u64 {
        self.hasher.bytes()
    }

    /// `logs/`, for per-stage log files.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Where the run registry lives.
    pub fn registry_path(&self) -> PathBuf {
        self.root.join("registry.sqlite")
    }

    fn object_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("objects")
            .join(&digest[..2])
            .join(&digest[2..])
    }

    fn record_path(&self, key: &CacheKey) -> PathBuf {
        self.root.join("records").join(format!("{key}.json"))
    }

    fn view_path(&self, key: &CacheKey) -> PathBuf {
        self.root.join("views").join(key.as_str())
    }

    fn tmp_root(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn gc_lock(&self, exclusive: bool) -> Result<GcGuard, CacheError> {
        let path = self.root.join(GC_LOCK);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(CacheError::io(&path))?;
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
        .map_err(CacheError::io(&path))?;
        Ok(GcGuard(file))
    }

    // ---- digests -------------------------------------------------------------------

    /// Digest of a file (blake3 of its contents) or a directory ([`tree_digest`] of its
    /// files, following symlinks). Unchanged files are answered from the stat cache.
    pub fn digest_path(&self, path: &Path) -> Result<String, CacheError> {
        let meta = std::fs::metadata(path).map_err(CacheError::io(path))?;
        let started = now_unix_ns();
        let mut fresh = Vec::new();
        let digest = if meta.is_file() {
            let abs = path.canonicalize().map_err(CacheError::io(path))?;
            self.digest_file(&abs, &meta, &mut fresh)?
        } else if meta.is_dir() {
            let mut files = Vec::new();
            for entry in walkdir::WalkDir::new(path)
                .follow_links(true)
                .sort_by_file_name()
            {
                let entry = entry.map_err(|e| walk_error(path, e))?;
                let ft = entry.file_type();
                if ft.is_dir() {
                    continue;
                }
                if !ft.is_file() {
                    return Err(CacheError::Unsupported {
                        path: entry.path().to_path_buf(),
                        reason: "not a regular file or directory".into(),
                    });
                }
                let rel = rel_string(path, entry.path())?;
                let meta = entry.metadata().map_err(|e| walk_error(path, e))?;
                let abs = entry
                    .path()
                    .canonicalize()
                    .map_err(CacheError::io(entry.path()))?;
                files.push((rel, self.digest_file(&abs, &meta, &mut fresh)?));
            }
            tree_digest(files.iter().map(|(p, d)| (p.as_str(), d.as_str())))
        } else {
            return Err(CacheError::Unsupported {
                path: path.to_path_buf(),
                reason: "not a regular file or directory".into(),
            });
        };
        self.stat.put_many(&fresh, started)?;
        Ok(digest)
    }

    /// Digest of one file at canonical path `abs`, via the stat cache; newly hashed files
    /// are appended to `fresh` for a batched stat-cache write.
    fn digest_file(
        &self,
        abs: &Path,
        meta: &std::fs::Metadata,
        fresh: &mut Vec<(String, StatSig, String)>,
    ) -> Result<String, CacheError> {
        let key = abs
            .to_str()
            .ok_or_else(|| CacheError::NonUtf8Path {
                path: abs.to_path_buf(),
            })?
            .to_string();
        let sig = StatSig::of(meta);
        if let Some(d) = self.stat.get(&key, &sig)? {
            return Ok(d);
        }
        let (digest, _, file) = self.hasher.hash_file(abs)?;
        // Only cache if the file did not change while we read it.
        let after = file.metadata().map_err(CacheError::io(abs))?;
        if StatSig::of(&after) == sig {
            fresh.push((key, sig, digest.clone()));
        }
        Ok(digest)
    }

    // ---- lookup --------------------------------------------------------------------

    /// The record of `key` if it is committed and its objects look intact (same stat as
    /// at commit, else re-hashed). A record whose objects are missing or altered is
    /// deleted (with a warning), together with the records derived from it
    /// ([`derived_records`]), and `None` returned, so the stage re-runs instead of serving
    /// damaged data. A stat check cannot see damage that keeps size and mtime: the
    /// stage that reads the output re-hashes it ([`Cache::check_input`]).
    pub fn lookup(&self, key: &CacheKey) -> Result<Option<Record>, CacheError> {
        let Some(record) = self.read_record(key)? else {
            return Ok(None);
        };
        for f in &record.files {
            let problem = match self.object_state(f)? {
                ObjectState::Ok => continue,
                state => self.damage_found(&f.digest, state)?,
            };
            let dropped = self.contain_damage(&BTreeSet::from([f.digest.clone()]), true)?;
            tracing::warn!(
                "cache record {key}: object {} of `{}` {problem}; dropped the record and {} derived from it so they re-run",
                f.digest,
                f.path,
                dropped.derived.len()
            );
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// Checks, before a stage reads it, that the committed output at `dir` (a
    /// `views/<key>/` of this cache, as the head hands inputs to a stage) holds exactly the
    /// bytes its record names, and returns that record.
    ///
    /// Every file is re-hashed in full. No cheaper rule is as safe: a stat signature is
    /// unchanged by bit rot or by a write that restores size and mtime (the hostile trial
    /// of issue 19 did both), and a sampled hash misses a single flipped bit. It costs
    /// little: this check runs at 6.6-7.8 GB/s on a 2-core AVX-512 machine, about the
    /// blake3 rate (3-4.7 GB/s on the older AVX2 machines; `cargo bench --bench
    /// store_hash`, docs/engine.md), so a stage reading 1 GB of checkpoints pays 0.15-0.3 s,
    /// small beside any stage that reads that much. Hard-linked views share the object's
    /// inode, so this hashes the object itself; a copied view (other file system) is
    /// hashed as the copy the stage will read.
    ///
    /// On damage the object is quarantined, the record and the records derived from it
    /// ([`derived_records`]) are dropped, and [`CacheError::DamagedInput`] names the key
    /// and the file: the next run recomputes them. A copied view that differs from an
    /// intact object is rebuilt instead.
    pub fn check_input(&self, dir: &Path) -> Result<Record, CacheError> {
        let key = self.view_key(dir)?;
        let record = self
            .read_record(&key)?
            .ok_or_else(|| CacheError::InputGone {
                key: key.clone(),
                path: dir.to_path_buf(),
            })?;
        let mut rebuilt = false;
        loop {
            let view = self.output_dir(&record)?;
            let Some(f) = self.first_mismatch(&record, &view)? else {
                return Ok(record);
            };
            let state = self.object_content(&f.digest)?;
            if matches!(state, ObjectState::Ok) {
                if rebuilt {
                    return Err(CacheError::Unsupported {
                        path: view.join(&f.path),
                        reason: "differs from its intact object even in a freshly built view \
                                 (is something writing into the cache?)"
                            .into(),
                    });
                }
                // Only the view's copy is wrong: build it again from the intact object.
                self.materialize_view(&record)?;
                rebuilt = true;
                continue;
            }
            let problem = self.damage_found(&f.digest, state)?.to_string();
            let dropped = self.contain_damage(&BTreeSet::from([f.digest.clone()]), true)?;
            if !dropped.users.contains(&key) {
                self.delete_record(&key)?;
            }
            return Err(CacheError::DamagedInput {
                key,
                file: f.path.clone(),
                problem,
                derived: dropped.derived.len(),
            });
        }
    }

    /// The key of a `views/<key>` directory of this cache.
    fn view_key(&self, dir: &Path) -> Result<CacheKey, CacheError> {
        let not_a_view = || CacheError::NotAView {
            path: dir.to_path_buf(),
            root: self.root.clone(),
        };
        let key = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<CacheKey>().ok())
            .ok_or_else(not_a_view)?;
        let parent = dir.parent().and_then(|p| p.canonicalize().ok());
        if parent.as_deref() != Some(self.root.join("views").as_path()) {
            return Err(not_a_view());
        }
        Ok(key)
    }

    /// The first file of `record` whose bytes under `view` do not hash to its digest
    /// (hashed on a few threads: a split's many small files are syscall-bound).
    fn first_mismatch<'r>(
        &self,
        record: &'r Record,
        view: &Path,
    ) -> Result<Option<&'r FileEntry>, CacheError> {
        let ok = par_map(&record.files, |f| {
            match self.hasher.hash_file(&view.join(&f.path)) {
                Ok((d, _, _)) => Ok(d == f.digest),
                // Vanished from under us: as wrong as altered.
                Err(CacheError::Missing { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })?;
        Ok(record
            .files
            .iter()
            .zip(ok)
            .find(|(_, ok)| !ok)
            .map(|(f, _)| f))
    }

    /// Reads and checks a record file; an unreadable or inconsistent one is deleted.
    fn read_record(&self, key: &CacheKey) -> Result<Option<Record>, CacheError> {
        let path = self.record_path(key);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::io(&path)(e)),
        };
        match serde_json::from_slice::<Record>(&text) {
            Ok(r) if r.consistent(key) => Ok(Some(r)),
            Ok(_) => {
                tracing::warn!(
                    "{}: record does not match its key; deleting it",
                    path.display()
                );
                self.delete_record(key)?;
                Ok(None)
            }
            Err(e) => {
                tracing::warn!("{}: unreadable record ({e}); deleting it", path.display());
                self.delete_record(key)?;
                Ok(None)
            }
        }
    }

    /// Whether the object `digest` holds its content, by hashing all of it (no stat cache).
    fn object_content(&self, digest: &str) -> Result<ObjectState, CacheError> {
        let obj = self.object_path(digest);
        match std::fs::symlink_metadata(&obj) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Ok(ObjectState::Corrupt),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ObjectState::Missing),
            Err(e) => return Err(CacheError::io(&obj)(e)),
        }
        Ok(match self.hasher.hash_file(&obj) {
            Ok((d, _, _)) if d == digest => ObjectState::Ok,
            Ok(_) => ObjectState::Corrupt,
            Err(CacheError::Missing { .. }) => ObjectState::Missing,
            Err(e) => return Err(e),
        })
    }

    /// Quarantines a corrupt object; says what was wrong, for messages.
    fn damage_found(&self, digest: &str, state: ObjectState) -> Result<&'static str, CacheError> {
        Ok(match state {
            ObjectState::Ok => "is intact",
            ObjectState::Missing => "is missing",
            ObjectState::Corrupt => {
                self.quarantine(digest)?;
                "no longer matches its digest (moved to quarantine/)"
            }
        })
    }

    /// Contains damage to the objects `digests` (corrupt, already quarantined, or
    /// missing): deletes the records that may have been computed from the damaged bytes
    /// ([`derived_records`]) and, with `drop_users`, the records that reference the
    /// objects themselves. Without `drop_users` (a commit that is about to repair the
    /// object with fresh bytes) the users stay: their content is right again.
    fn contain_damage(
        &self,
        digests: &BTreeSet<String>,
        drop_users: bool,
    ) -> Result<Dropped, CacheError> {
        let records = self.records()?;
        let users: Vec<&Record> = records
            .iter()
            .filter(|r| r.files.iter().any(|f| digests.contains(&f.digest)))
            .collect();
        let derived = derived_records(&users, &records);
        let users: Vec<CacheKey> = users.into_iter().map(|r| r.key.clone()).collect();
        if drop_users {
            for key in &users {
                self.delete_record(key)?;
            }
        }
        for key in &derived {
            tracing::warn!(
                "record {key} may have been computed from a damaged output (its stage did not check its inputs); deleting it"
            );
            self.delete_record(key)?;
        }
        Ok(Dropped { users, derived })
    }

    fn object_state(&self, f: &FileEntry) -> Result<ObjectState, CacheError> {
        let obj = self.object_path(&f.digest);
        let meta = match std::fs::symlink_metadata(&obj) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(ObjectState::Corrupt),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ObjectState::Missing),
            Err(e) => return Err(CacheError::io(&obj)(e)),
        };
        let sig = StatSig::of(&meta);
        if sig.size == f.size && sig.mtime_ns == f.object_mtime_ns && sig.ino == f.object_ino {
            return Ok(ObjectState::Ok);
        }
        let mut fresh = Vec::new();
        let started = now_unix_ns();
        let digest = self.digest_file(&obj, &meta, &mut fresh)?;
        self.stat.put_many(&fresh, started)?;
        Ok(if digest == f.digest {
            ObjectState::Ok
        } else {
            ObjectState::Corrupt
        })
    }

    /// Moves an object aside so no record can use it again.
    fn quarantine(&self, digest: &str) -> Result<(), CacheError> {
        let obj = self.object_path(digest);
        let dest = self
            .root
            .join("quarantine")
            .join(fsutil::unique_name(digest));
        match std::fs::rename(&obj, &dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::io(&obj)(e)),
        }
    }

    /// Removes a record (first: it is the commit point), then its view.
    fn delete_record(&self, key: &CacheKey) -> Result<(), CacheError> {
        let path = self.record_path(key);
        remove_path(&path)?;
        fsync_dir(&self.root.join("records"))?;
        remove_path(&self.view_path(key))
    }

    // ---- staging and commit ------------------------------------------------------------

    /// A fresh, empty directory for the outputs of the stage with `key`.
    pub fn stage(&self, key: &CacheKey) -> Result<Staging, CacheError> {
        let tmp = TmpDir::new(&self.tmp_root(), &format!("stage-{}", &key.as_str()[..16]))?;
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).map_err(CacheError::io(&out))?;
        Ok(Staging {
            key: key.clone(),
            out,
            tmp,
        })
    }

    /// Commits what a stage wrote under `staging.out_dir()`: hashes and fsyncs every file,
    /// moves it into `objects/` (read-only, deduplicated), builds `views/<key>/`, and
    /// writes the record last. Symlinks are stored as the file they point to if that file
    /// is inside the output; symlinks leaving it, to directories, or dangling are refused.
    /// The caller should hold the key's [`KeyLock`].
    pub fn commit(
        &self,
        staging: Staging,
        material: &KeyMaterial,
        meta: RecordMeta,
    ) -> Result<Record, CacheError> {
        let key = material.key();
        if key != staging.key {
            return Err(CacheError::KeyMismatch {
                staged: staging.key.clone(),
                material: key,
            });
        }
        let staged = self.scan_output(staging.out_dir())?;
        let _gc = self.gc_lock(false)?;

        let mut files = Vec::with_capacity(staged.len());
        let mut touched_dirs = BTreeSet::new();
        // Real files first, so symlinks to them find their object in place.
        let (real, links): (Vec<_>, Vec<_>) = staged.into_iter().partition(|s| !s.via_link);
        for s in real.iter().chain(links.iter()) {
            let obj = self.object_path(&s.digest);
            let existing = match std::fs::symlink_metadata(&obj) {
                // Reused only once its bytes are proven to be the ones named: a size (or
                // stat) match says nothing about flipped bits.
                Ok(m)
                    if m.is_file()
                        && m.len() == s.size
                        && matches!(self.object_content(&s.digest)?, ObjectState::Ok) =>
                {
                    Some(m)
                }
                Ok(_) => {
                    // A damaged object must not absorb this output: the fresh bytes replace
                    // it (the repair path), and what may have read the damage goes.
                    self.quarantine(&s.digest)?;
                    self.contain_damage(&BTreeSet::from([s.digest.clone()]), false)?;
                    None
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(CacheError::io(&obj)(e)),
            };
            let meta = match existing {
                Some(m) => m,
                None => {
                    let parent = obj.parent().expect("object has a parent");
                    std::fs::create_dir_all(parent).map_err(CacheError::io(parent))?;
                    if s.via_link {
                        let incoming = self
                            .root
                            .join("objects/.incoming")
                            .join(fsutil::unique_name("link"));
                        std::fs::copy(&s.source, &incoming).map_err(CacheError::io(&s.source))?;
                        File::open(&incoming)
                            .and_then(|f| f.sync_all())
                            .map_err(CacheError::io(&incoming))?;
                        self.place_object(&incoming, &obj)?;
                    } else {
                        self.place_object(&s.source, &obj)?;
                    }
                    touched_dirs.insert(parent.to_path_buf());
                    std::fs::metadata(&obj).map_err(CacheError::io(&obj))?
                }
            };
            files.push(FileEntry {
                path: s.rel.clone(),
                digest: s.digest.clone(),
                size: s.size,
                object_mtime_ns: StatSig::of(&meta).mtime_ns,
                object_ino: meta.ino(),
            });
        }
        for dir in &touched_dirs {
            fsync_dir(dir)?;
        }
        files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        let record = Record {
            key: key.clone(),
            material: material.clone(),
            tree_digest: tree_digest(files.iter().map(|f| (f.path.as_str(), f.digest.as_str()))),
            files,
            meta,
        };
        self.materialize_view(&record)?;
        let json = serde_json::to_vec_pretty(&record).expect("record serializes");
        atomic_write(&self.record_path(&key), &json)?;
        Ok(record)
    }

    fn place_object(&self, src: &Path, obj: &Path) -> Result<(), CacheError> {
        std::fs::set_permissions(src, Permissions::from_mode(0o444))
            .map_err(CacheError::io(src))?;
        std::fs::rename(src, obj).map_err(CacheError::io(obj))
    }

    /// Lists, hashes and fsyncs every file a stage produced.
    fn scan_output(&self, out: &Path) -> Result<Vec<StagedFile>, CacheError> {
        let out_real = out.canonicalize().map_err(CacheError::io(out))?;
        let mut found = Vec::new();
        for entry in walkdir::WalkDir::new(out)
            .follow_links(false)
            .sort_by_file_name()
        {
            let entry = entry.map_err(|e| walk_error(out, e))?;
            let ft = entry.file_type();
            if ft.is_dir() {
                continue;
            }
            let rel = rel_string(out, entry.path())?;
            let (source, via_link) = if ft.is_file() {
                (entry.path().to_path_buf(), false)
            } else if ft.is_symlink() {
                let target = entry
                    .path()
                    .canonicalize()
                    .map_err(|_| CacheError::Unsupported {
                        path: entry.path().to_path_buf(),
                        reason: "dangling symlink in stage output".into(),
                    })?;
                if !target.starts_with(&out_real) {
                    return Err(CacheError::Unsupported {
                        path: entry.path().to_path_buf(),
                        reason: format!(
                            "symlink points outside the stage output (to {}); copy the file instead",
                            target.display()
                        ),
                    });
                }
                if !std::fs::metadata(&target).is_ok_and(|m| m.is_file()) {
                    return Err(CacheError::Unsupported {
                        path: entry.path().to_path_buf(),
                        reason: "symlink to something other than a regular file".into(),
                    });
                }
                (target, true)
            } else {
                return Err(CacheError::Unsupported {
                    path: entry.path().to_path_buf(),
                    reason: "not a regular file, directory or symlink".into(),
                });
            };
            found.push((rel, source, via_link));
        }
        self.hash_and_sync(found)
    }

    /// Hashes and fsyncs files on a few threads: fsync latency, not hashing, dominates
    /// commits of many small files, and concurrent fsyncs share journal commits.
    fn hash_and_sync(
        &self,
        found: Vec<(String, PathBuf, bool)>,
    ) -> Result<Vec<StagedFile>, CacheError> {
        par_map(&found, |(rel, source, via_link)| {
            let (digest, size, file) = self.hasher.hash_file(source)?;
            file.sync_all().map_err(CacheError::io(source))?;
            Ok(StagedFile {
                rel: rel.clone(),
                source: source.clone(),
                via_link: *via_link,
                digest,
                size,
            })
        })
    }

    // ---- views -------------------------------------------------------------------------

    /// `views/<key>/`: the committed output tree, rebuilt if missing or damaged.
    /// Downstream stages read from here; never write into it.
    pub fn output_dir(&self, record: &Record) -> Result<PathBuf, CacheError> {
        let view = self.view_path(&record.key);
        if !self.view_intact(record, &view)? {
            self.materialize_view(record)?;
        }
        Ok(view)
    }

    fn view_intact(&self, record: &Record, view: &Path) -> Result<bool, CacheError> {
        if !view.is_dir() {
            return Ok(false);
        }
        let mut count = 0usize;
        for entry in walkdir::WalkDir::new(view).follow_links(false) {
            let Ok(entry) = entry else { return Ok(false) };
            if !entry.file_type().is_dir() {
                count += 1;
            }
        }
        if count != record.files.len() {
            return Ok(false);
        }
        for f in &record.files {
            let (Ok(v), Ok(o)) = (
                std::fs::symlink_metadata(view.join(&f.path)),
                std::fs::metadata(self.object_path(&f.digest)),
            ) else {
                return Ok(false);
            };
            let linked = v.ino() == o.ino() && v.dev() == o.dev();
            let copied =
                v.len() == o.len() && v.mtime() == o.mtime() && v.mtime_nsec() == o.mtime_nsec();
            if !v.is_file() || !(linked || copied) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Builds the view in a private tmp dir, then swaps it into `views/<key>`.
    fn materialize_view(&self, record: &Record) -> Result<(), CacheError> {
        let tmp = TmpDir::new(&self.tmp_root(), "view")?;
        let fresh = tmp.path().join("view");
        std::fs::create_dir(&fresh).map_err(CacheError::io(&fresh))?;
        for f in &record.files {
            let dest = fresh.join(&f.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(CacheError::io(parent))?;
            }
            let obj = self.object_path(&f.digest);
            if let Err(e) = std::fs::hard_link(&obj, &dest) {
                if e.kind() == std::io::ErrorKind::NotFound {
                    return Err(CacheError::Missing { path: obj });
                }
                // Different device or no hard links on this file system: copy instead,
                // keeping the object's mtime so the copy can be recognised as intact.
                std::fs::copy(&obj, &dest).map_err(CacheError::io(&dest))?;
                let mtime = std::fs::metadata(&obj)
                    .and_then(|m| m.modified())
                    .map_err(CacheError::io(&obj))?;
                let file = File::options()
                    .write(true)
                    .open(&dest)
                    .map_err(CacheError::io(&dest))?;
                file.set_modified(mtime).map_err(CacheError::io(&dest))?;
                std::fs::set_permissions(&dest, Permissions::from_mode(0o444))
                    .map_err(CacheError::io(&dest))?;
            }
        }
        let view = self.view_path(&record.key);
        let old = tmp.path().join("old");
        match std::fs::rename(&view, &old) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CacheError::io(&view)(e)),
        }
        if let Err(e) = std::fs::rename(&fresh, &view) {
            // Another process installed the view between our two renames: use theirs.
            if !self.view_intact(record, &view)? {
                return Err(CacheError::io(&view)(e));
            }
        }
        Ok(())
    }

    // ---- scratch -----------------------------------------------------------------------

    /// `scratch/<key>/` (created): resumable checkpoints of a running stage.
    pub fn scratch_dir(&self, key: &CacheKey) -> Result<PathBuf, CacheError> {
        let dir = self.root.join("scratch").join(key.as_str());
        std::fs::create_dir_all(&dir).map_err(CacheError::io(&dir))?;
        Ok(dir)
    }

    /// Deletes the scratch area of `key`, after its output is committed.
    pub fn clear_scratch(&self, key: &CacheKey) -> Result<(), CacheError> {
        remove_path(&self.root.join("scratch").join(key.as_str()))
    }

    /// Removes the scratch area of a committed `key` left by a stage process killed between
    /// its commit and its own clean-up; only if the key's lock is free, so a `--force`
    /// re-run that is using the scratch right now keeps it. Nothing to do (one `stat`) in
    /// the usual case. Returns whether a leftover was removed.
    pub fn clear_leftover_scratch(&self, key: &CacheKey) -> Result<bool, CacheError> {
        let dir = self.root.join("scratch").join(key.as_str());
        if std::fs::symlink_metadata(&dir).is_err() {
            return Ok(false);
        }
        let Some(_lock) = KeyLock::try_acquire(&self.root, key)? else {
            return Ok(false);
        };
        self.clear_scratch(key)?;
        Ok(true)
    }

    // ---- records, verify, gc ------------------------------------------------------------

    /// Every readable record, sorted by key (without checking objects; see `lookup`).
    pub fn records(&self) -> Result<Vec<Record>, CacheError> {
        let mut out = Vec::new();
        for key in self.record_keys()? {
            if let Some(r) = self.read_record(&key)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn record_keys(&self) -> Result<Vec<CacheKey>, CacheError> {
        let dir = self.root.join("records");
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(CacheError::io(&dir))? {
            let entry = entry.map_err(CacheError::io(&dir))?;
            if let Some(key) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|k| k.parse::<CacheKey>().ok())
            {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Every object as `(digest, path, size)`.
    fn objects(&self) -> Result<Vec<(String, PathBuf, u64)>, CacheError> {
        let dir = self.root.join("objects");
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&dir).min_depth(2).max_depth(2) {
            let entry = entry.map_err(|e| walk_error(&dir, e))?;
            let (Some(prefix), Some(rest)) = (
                entry
                    .path()
                    .parent()
                    .and_then(|p| p.file_name())
                    .and_then(|n| n.to_str()),
                entry.file_name().to_str(),
            ) else {
                continue;
            };
            if prefix == ".incoming" {
                continue;
            }
            let digest = format!("{prefix}{rest}");
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((digest, entry.path().to_path_buf(), size));
        }
        Ok(out)
    }

    /// Re-hashes every object. Corrupt ones go to `quarantine/`; every record that uses a
    /// corrupt or missing object is deleted, and so is every record derived from those
    /// ([`derived_records`]), so those stages re-run.
    pub fn verify(&self) -> Result<VerifyReport, CacheError> {
        let _gc = self.gc_lock(true)?;
        let mut report = VerifyReport::default();
        for key in self.record_keys()? {
            if self.read_record(&key)?.is_none() {
                report.bad_records.push(self.record_path(&key));
            }
        }
        let records = self.records()?;
        let mut bad: BTreeSet<String> = BTreeSet::new();
        for (digest, path, size) in self.objects()? {
            let state = if CacheKey::is_valid(&digest) {
                self.object_content(&digest)?
            } else {
                ObjectState::Corrupt
            };
            match state {
                ObjectState::Missing => continue,
                ObjectState::Ok => {}
                ObjectState::Corrupt => {
                    tracing::warn!(
                        "object {} is corrupt; moving it to quarantine/",
                        path.display()
                    );
                    if CacheKey::is_valid(&digest) {
                        self.quarantine(&digest)?;
                    } else {
                        let dest = self
                            .root
                            .join("quarantine")
                            .join(fsutil::unique_name("stray"));
                        std::fs::rename(&path, &dest).map_err(CacheError::io(&path))?;
                    }
                    report.corrupt.push(digest.clone());
                    bad.insert(digest);
                }
            }
            report.objects_checked += 1;
            report.bytes_checked += size;
        }
        for r in &records {
            for f in &r.files {
                if !bad.contains(&f.digest) && !self.object_path(&f.digest).exists() {
                    report.missing.push(f.digest.clone());
                    bad.insert(f.digest.clone());
                }
            }
        }
        report.missing.sort();
        report.missing.dedup();
        if !bad.is_empty() {
            let dropped = self.contain_damage(&bad, true)?;
            for key in &dropped.users {
                tracing::warn!("record {key} uses a corrupt or missing object; deleted it");
            }
            report.removed_records = dropped.users;
            report.derived_records = dropped.derived;
        }
        Ok(report)
    }

    /// Removes what no record needs: tmp dirs of dead processes, views without a record,
    /// unreferenced objects, and scratch of committed keys. With `keep`, records (and
    /// scratch) of keys not in it are removed too. Keys whose lock is held are untouched.
    pub fn gc(&self, keep: Option<&BTreeSet<CacheKey>>) -> Result<GcReport, CacheError> {
        let _gc = self.gc_lock(true)?;
        let mut report = GcReport::default();
        self.gc_tmp(&mut report)?;

        // Records: decide which survive.
        let mut live: BTreeMap<CacheKey, Record> = BTreeMap::new();
        for key in self.record_keys()? {
            let Some(record) = self.read_record(&key)? else {
                continue;
            };
            if keep.is_some_and(|k| !k.contains(&key)) {
                match KeyLock::try_acquire(&self.root, &key)? {
                    Some(_lock) => {
                        self.delete_record(&key)?;
                        report.removed_records.push(key);
                        continue;
                    }
                    None => report.skipped_locked.push(key.clone()),
                }
            }
            live.insert(key, record);
        }

        // Views without a record.
        let views = self.root.join("views");
        for entry in std::fs::read_dir(&views).map_err(CacheError::io(&views))? {
            let entry = entry.map_err(CacheError::io(&views))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = name.parse::<CacheKey>().ok();
            if key.as_ref().is_some_and(|k| live.contains_key(k)) {
                continue;
            }
            let _lock = match &key {
                Some(k) => match KeyLock::try_acquire(&self.root, k)? {
                    Some(l) => Some(l),
                    None => {
                        report.skipped_locked.push(k.clone());
                        continue;
                    }
                },
                None => None,
            };
            remove_path(&entry.path())?;
            report.removed_views.push(name);
        }

        // Scratch: of committed keys (leftover), or of keys not kept.
        let scratch = self.root.join("scratch");
        for entry in std::fs::read_dir(&scratch).map_err(CacheError::io(&scratch))? {
            let entry = entry.map_err(CacheError::io(&scratch))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(key) = name.parse::<CacheKey>() else {
                continue;
            };
            let unwanted = live.contains_key(&key) || keep.is_some_and(|k| !k.contains(&key));
            if !unwanted {
                continue;
            }
            match KeyLock::try_acquire(&self.root, &key)? {
                Some(_lock) => {
                    remove_path(&entry.path())?;
                    report.removed_scratch.push(name);
                }
                None => report.skipped_locked.push(key),
            }
        }

        // Objects no surviving record references. Commits are excluded by the gc lock, so
        // no object can be on its way to a record right now.
        let referenced: BTreeSet<&str> = live
            .values()
            .flat_map(|r| r.files.iter().map(|f| f.digest.as_str()))
            .collect();
        for (digest, path, size) in self.objects()? {
            if !referenced.contains(digest.as_str()) {
                remove_path(&path)?;
                report.removed_objects += 1;
                report.freed_bytes += size;
            }
        }
        // Leftovers of interrupted commits: incoming copies and record temp files.
        for dir in ["objects/.incoming", "records"] {
            let dir = self.root.join(dir);
            for entry in std::fs::read_dir(&dir).map_err(CacheError::io(&dir))? {
                let entry = entry.map_err(CacheError::io(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if dir.ends_with(".incoming") || (name.starts_with('.') && name.ends_with(".tmp")) {
                    remove_path(&entry.path())?;
                }
            }
        }
        report.skipped_locked.sort();
        report.skipped_locked.dedup();
        self.stat.prune_missing()?;
        Ok(report)
    }

    /// Removes tmp dirs (and their owner lock files) whose owner is gone.
    fn gc_tmp(&self, report: &mut GcReport) -> Result<(), CacheError> {
        let tmp = self.tmp_root();
        let mut names = BTreeSet::new();
        for entry in std::fs::read_dir(&tmp).map_err(CacheError::io(&tmp))? {
            let entry = entry.map_err(CacheError::io(&tmp))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            names.insert(name.strip_suffix(".lock").unwrap_or(&name).to_string());
        }
        for name in names {
            let lock_path = tmp.join(format!("{name}.lock"));
            // Taking the owner lock proves the owner is gone; dropping it unlinks it.
            let Some(_owner) = crate::lock::ExclusiveFile::lock(&lock_path, false)? else {
                continue;
            };
            let dir = tmp.join(&name);
            if dir.exists() {
                remove_path(&dir)?;
                report.removed_tmp.push(dir);
            }
        }
        Ok(())
    }
}

/// Maps `f` over `items` on up to 8 threads, keeping the order; the first error wins.
/// Hashing many small files is bound by syscalls and fsync latency, not by one core.
fn par_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, CacheError> + Sync,
) -> Result<Vec<R>, CacheError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(items.len().max(1));
    let chunk = items.len().div_ceil(workers).max(1);
    let f = &f;
    let results: Vec<Result<Vec<R>, CacheError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hashing thread does not panic"))
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in results {
        out.extend(part?);
    }
    Ok(out)
}

/// What [`Cache::contain_damage`] deleted.
struct Dropped {
    /// Records referencing a damaged object (deleted only with `drop_users`).
    users: Vec<CacheKey>,
    /// Records that may have been computed from the damaged bytes (always deleted).
    derived: Vec<CacheKey>,
}

/// The rule by which damage to a committed output spoils other records, in words (for
/// `verify`'s output and docs/engine.md).
pub const DERIVED_RULE: &str = "a record is dropped as derived when it read a damaged output \
without checking its digests (a record written before stages checked their inputs), or read \
the output of a record dropped as derived; records whose stage checked its inputs were \
computed from intact bytes and are kept";

/// The records, other than `damaged`, that may have been computed from damaged bytes,
/// sorted. `damaged` are the records whose objects are corrupt or missing now.
///
/// A record R read the output of U when R's key names U's tree digest. R is suspect when
///   * it read a damaged record's output and did not check its inputs
///     (`inputs_verified` false: it may have read the damage, if the damage is older than
///     R), or
///   * it read the output of a suspect record (whose content then came from damage,
///     whether or not R checked that those bytes are the ones committed).
///
/// A damaged record's own *content* was right when it was computed (only its stored copy
/// rotted), so a stage that checked its inputs before running read the right bytes: it is
/// kept, and hours of GPU work are not thrown away for nothing. A damaged record is
/// itself suspect, for its dependants, when it too read damage unchecked. Since every
/// stage checks its inputs, only records older than that check are ever dropped here.
pub fn derived_records(damaged: &[&Record], all: &[Record]) -> Vec<CacheKey> {
    let damaged_trees: BTreeSet<&str> = damaged.iter().map(|r| r.tree_digest.as_str()).collect();
    let damaged_keys: BTreeSet<&CacheKey> = damaged.iter().map(|r| &r.key).collect();
    let mut suspect: BTreeSet<&CacheKey> = BTreeSet::new();
    let mut suspect_trees: BTreeSet<&str> = BTreeSet::new();
    loop {
        let mut grew = false;
        for r in all {
            if suspect.contains(&r.key) {
                continue;
            }
            let spoiled = r.material.upstream.values().any(|u| {
                suspect_trees.contains(u.as_str())
                    || (!r.meta.inputs_verified && damaged_trees.contains(u.as_str()))
            });
            if spoiled {
                suspect.insert(&r.key);
                suspect_trees.insert(&r.tree_digest);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    suspect
        .into_iter()
        .filter(|k| !damaged_keys.contains(k))
        .cloned()
        .collect()
}

struct StagedFile {
    rel: String,
    /// The file holding the bytes (the symlink's target for `via_link`).
    source: PathBuf,
    via_link: bool,
    digest: String,
    size: u64,
}

fn rel_string(root: &Path, path: &Path) -> Result<String, CacheError> {
    let rel = path
        .strip_prefix(root)
        .expect("walkdir yields paths under its root");
    let mut parts = Vec::new();
    for c in rel.components() {
        parts.push(
            c.as_os_str()
                .to_str()
                .ok_or_else(|| CacheError::NonUtf8Path {
                    path: path.to_path_buf(),
                })?,
        );
    }
    Ok(parts.join("/"))
}

fn walk_error(root: &Path, e: walkdir::Error) -> CacheError {
    let path = e.path().unwrap_or(root).to_path_buf();
    match e.into_io_error() {
        Some(source) => CacheError::io(&path)(source),
        None => CacheError::Unsupported {
            path,
            reason: "symlink loop".into(),
        },
    }
}

#[cfg(test)]
mod tests;
