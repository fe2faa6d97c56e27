//! The attempt file and heartbeat a stage's worker writes into the cache
//! (`attempts/<key>/<job id>.json`, `attempts/<key>/<job id>.beat`), and the head's reader.
//! The attempt file is the worker's own account (exit code, error, host, job id, peak
//! memory, start and end); Slurm's state is used only for liveness. Writes are atomic
//! (temporary file, fsync, rename), so a reader on another node sees the old file or the
//! whole new one.
//!
//! The heartbeat file holds a counter the worker bumps every interval (which also moves its
//! mtime). The head judges liveness by when *it* last saw the counter change, on its own
//! clock, so clock skew between nodes (or an NFS server's mtimes) cannot fake a dead job.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::queue::JobId;

/// How an attempt ended, in the worker's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The record is committed.
    Committed,
    /// The stage's own error: no retry.
    Failed,
    /// Out of (host or device) memory.
    OutOfMemory,
    /// Stopped on the time-limit warning or a cancel after writing a checkpoint; asks to
    /// be resubmitted.
    Checkpointed,
}

/// One attempt of one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub key: String,
    pub job_id: JobId,
    pub host: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// Peak resident memory of the worker, KiB (`getrusage`).
    pub peak_rss_kib: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an attempt file: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AttemptError + '_ {
    move |source| AttemptError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `cache/attempts/<key>`.
pub fn attempts_dir(cache_root: &Path, key: &str) -> PathBuf {
    cache_root.join("attempts").join(key)
}

pub fn attempt_path(cache_root: &Path, key: &str, job: JobId) -> PathBuf {
    attempts_dir(cache_root, key).join(format!("{job}.json"))
}

pub fn heartbeat_path(cache_root: &Path, key: &str, job: JobId) -> PathBuf {
    attempts_dir(cache_root, key).join(format!("{job}.beat"))
}

/// The registry rows the job's stage spooled for the head (`Registry::spool`): under
/// `--executor slurm` only the head writes the SQLite registry.
pub fn rows_path(cache_root: &Path, key: &str, job: JobId) -> PathBuf {
    attempts_dir(cache_root, key).join(format!("{job}.rows"))
}

/// Set to `head` by the job script: the worker then spools its registry rows to
/// [`rows_path`] instead of opening the registry (SQLite's WAL is unsafe on NFS).
pub const REGISTRY_WRITER_ENV: &str = "UGC_REGISTRY_WRITER";

fn now_ms() -> u64 {
    crate::cache::now_unix_ms()
}

/// Temporary file in the same folder, fsync, rename.
fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), AttemptError> {
    let dir = path.parent().expect("attempt paths have a parent");
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".attempt")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

/// Peak resident memory of this process, KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    // SAFETY: rc == 0 means the kernel wrote the struct.
    (rc == 0).then(|| unsafe { ru.assume_init() }.ru_maxrss.max(0) as u64)
}

/// The worker's side: written when the attempt starts and again when it ends.
pub struct AttemptWriter {
    path: PathBuf,
    attempt: Attempt,
}

impl AttemptWriter {
    /// Writes the started attempt of `key` as job `job`.
    pub fn begin(cache_root: &Path, key: &str, job: JobId) -> Result<AttemptWriter, AttemptError> {
        let attempt = Attempt {
            key: key.to_string(),
            job_id: job,
            host: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            started_ms: now_ms(),
            ended_ms: None,
            outcome: None,
            exit_code: None,
            error: None,
            peak_rss_kib: None,
        };
        let w = AttemptWriter {
            path: attempt_path(cache_root, key, job),
            attempt,
        };
        w.write()?;
        Ok(w)
    }

    fn write(&self) -> Result<(), AttemptError> {
        let json = serde_json::to_vec_pretty(&self.attempt).expect("an attempt serializes");
        atomic_write(&self.path, &json)
    }

    /// Records how the attempt ended (after the commit, for [`Outcome::Committed`]).
    pub fn finish(
        mut self,
        outcome: Outcome,
        exit_code: i32,
        error: Option<String>,
    ) -> Result<Attempt, AttemptError> {
        self.attempt.ended_ms = Some(now_ms());
        self.attempt.outcome = Some(outcome);
        self.attempt.exit_code = Some(exit_code);
        self.attempt.error = error;
        self.attempt.peak_rss_kib = peak_rss_kib();
        self.write()?;
        Ok(self.attempt)
    }
}

/// Reads the attempt file of `job`, `None` when it is not there (yet).
pub fn read_attempt(
    cache_root: &Path,
    key: &str,
    job: JobId,
) -> Result<Option<Attempt>, AttemptError> {
    let path = attempt_path(cache_root, key, job);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| AttemptError::Json { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// The heartbeat counter of `job`, `None` before the first beat.
pub fn read_heartbeat(cache_root: &Path, key: &str, job: JobId) -> Option<u64> {
    std::fs::read_to_string(heartbeat_path(cache_root, key, job))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Makes the head's view of the key's attempt folder and the record current: on NFS a
/// directory listing and an open revalidate the attribute cache that can hide a file
/// another node just wrote (the "lost" job that had finished).
pub fn refresh_view(cache_root: &Path, key: &str) {
    let dir = attempts_dir(cache_root, key);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let _ = std::fs::File::open(e.path());
        }
    }
    let records = cache_root.join("records");
    let _ = std::fs::read_dir(&records).map(|d| d.count());
    let _ = std::fs::File::open(records.join(format!("{key}.json")));
}

/// A thread that bumps the heartbeat every `interval` until dropped.
pub struct Heartbeat {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    /// Beats once at once (so the head sees the worker alive from its start), then every
    /// `interval`. A failed write is retried at the next beat: a passing filesystem hiccup
    /// must not kill a stage, and a lasting one shows as a stopped heartbeat.
    pub fn start(
        cache_root: &Path,
        key: &str,
        job: JobId,
        interval: Duration,
    ) -> Result<Heartbeat, AttemptError> {
        let path = heartbeat_path(cache_root, key, job);
        atomic_write(&path, b"0\n")?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (lock, cv) = &*s;
            let mut n: u64 = 0;
            let mut stopped = lock.lock().unwrap();
            loop {
                let (guard, timeout) = cv.wait_timeout(stopped, interval).unwrap();
                stopped = guard;
                if *stopped {
                    return;
                }
                if timeout.timed_out() {
                    n += 1;
                    let _ = atomic_write(&path, format!("{n}\n").as_bytes());
                }
            }
        });
        Ok(Heartbeat {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ab";

    #[test]
    fn begin_then_finish_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_attempt(dir.path(), KEY, 9).unwrap(), None);
        let w = AttemptWriter::begin(dir.path(), KEY, 9).unwrap();
        let started = read_attempt(dir.path(), KEY, 9).unwrap().unwrap();
        assert_eq!(started.job_id, 9);
        assert_eq!(started.outcome, None);
        assert!(!started.host.is_empty());
        let a = w.finish(Outcome::Failed, 1, Some("boom".into())).unwrap();
        let read = read_attempt(dir.path(), KEY, 9).unwrap().unwrap();
        assert_eq!(read, a);
        assert_eq!(read.error.as_deref(), Some("boom"));
        assert!(read.peak_rss_kib.unwrap() > 0);
        assert!(read.ended_ms.unwrap() >= read.started_ms);
        let names: Vec<_> = std::fs::read_dir(attempts_dir(dir.path(), KEY))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["9.json"], "no temporaries left");
    }

    #[test]
    fn a_damaged_attempt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = attempt_path(dir.path(), KEY, 3);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "{").unwrap();
        let e = read_attempt(dir.path(), KEY, 3).unwrap_err().to_string();
        assert!(
            e.contains("3.json") && e.contains("not an attempt file"),
            "{e}"
        );
    }

    #[test]
    fn heartbeat_counts_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_heartbeat(dir.path(), KEY, 1), None);
        let hb = Heartbeat::start(dir.path(), KEY, 1, Duration::from_millis(10)).unwrap();
        assert!(
            read_heartbeat(dir.path(), KEY, 1).is_some(),
            "beats at once"
        );
        let t0 = std::time::Instant::now();
        while read_heartbeat(dir.path(), KEY, 1).unwrap() < 3 {
            assert!(t0.elapsed() < Duration::from_secs(10), "no beats");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(hb);
        let n = read_heartbeat(dir.path(), KEY, 1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(read_heartbeat(dir.path(), KEY, 1).unwrap(), n, "stopped");
    }
}
