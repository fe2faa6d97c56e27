//! File-system steps the cache's crash safety rests on: durable atomic writes, directory
//! fsyncs, and private temporary directories whose owner can be told alive or dead.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::CacheError;
use crate::lock::ExclusiveFile;

/// A name no other process or thread uses at the same time: pid, time, counter.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Flushes a directory's entries (renames, creations) to disk.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CacheError::io(dir))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the complete
/// new one: temp file in the same directory, fsync, rename, fsync the directory.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let dir = path.parent().expect("atomic_write target has a parent");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{}.tmp", unique_name(&name)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(CacheError::io(&tmp))?;
        f.write_all(bytes).map_err(CacheError::io(&tmp))?;
        f.sync_all().map_err(CacheError::io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(CacheError::io(path))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes a file or directory tree; absent is fine. Directories a stage left read-only
/// are made writable first, so they cannot block cleanup.
pub(crate) fn remove_path(path: &Path) -> Result<(), CacheError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).or_else(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                make_dirs_writable(path);
                std::fs::remove_dir_all(path)
            } else {
                Err(e)
            }
        }),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CacheError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn make_dirs_writable(dir: &Path) {
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if entry.file_type().is_dir()
            && let Ok(m) = entry.metadata()
        {
            let mode = m.permissions().mode();
            if mode & 0o700 != 0o700 {
                let _ =
                    std::fs::set_permissions(entry.path(), Permissions::from_mode(mode | 0o700));
            }
        }
    }
}

/// A fresh directory under `tmp/`, owned by this process through an exclusive lock on
/// `tmp/<name>.lock` taken *before* the directory exists. `gc` removes a tmp directory only
/// after taking that lock itself, i.e. only when its owner is gone. Removed on drop.
#[derive(Debug)]
pub(crate) struct TmpDir {
    path: PathBuf,
    // Dropped after `path` is removed (fields drop after `Drop::drop`).
    _owner: ExclusiveFile,
}

impl TmpDir {
    pub(crate) fn new(tmp_root: &Path, prefix: &str) -> Result<TmpDir, CacheError> {
        let name = unique_name(prefix);
        let lock = tmp_root.join(format!("{name}.lock"));
        let owner = ExclusiveFile::lock(&lock, true)?.expect("blocking lock returns a holder");
        let path = tmp_root.join(name);
        std::fs::create_dir(&path).map_err(CacheError::io(&path))?;
        Ok(TmpDir {
            path,
            _owner: owner,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Err(e) = remove_path(&self.path) {
            tracing::warn!("could not remove temporary directory: {e}");
        }
    }
}
