//! Per-key locks: only one process executes and commits a given cache key at a time.
//!
//! A lock is an OS advisory lock (`flock`) on `locks/<key>.lock`, whose content names the
//! holder (pid, host, start time, and the Slurm job id when it runs in one). The kernel
//! drops the lock when the holder dies (even by `kill -9`), so a lock file nobody holds is
//! stale: [`list_locks`] reports it and [`remove_stale`] (`ugc-pipe unlock`) deletes it.
//!
//! A lock held by a Slurm job is judged by Slurm, not by a pid or by `flock` alone: on a
//! network filesystem the head may not see a compute node's `flock` (an NFS mount with
//! `nolock` keeps locks local to each client), and a pid names a process on another
//! machine. Such a lock is live while the head's own `flock` test says so, or Slurm
//! (`squeue -j`, through a [`JobProbe`]) lists the job as not ended, or its heartbeat in
//! the cache is fresh; stale only when none of them holds; kept when Slurm cannot be asked.
//!
//! Lock files are removed when released. To make that safe, a holder unlinks the file
//! *while* holding the lock, and an acquirer checks after locking that the path still
//! names the inode it locked (otherwise it locked a file that was just removed, and retries).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cache::CacheKey;

/// Sub-directory of the cache root that holds the lock files.
pub const LOCKS_DIR: &str = "locks";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a holder writes into its lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub pid: u32,
    pub host: String,
    pub since_unix_ms: u64,
    /// The Slurm job the holder runs in (`SLURM_JOB_ID`); absent outside Slurm, so lock
    /// files written before (and outside Slurm) read the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<u64>,
}

impl LockOwner {
    fn current() -> LockOwner {
        LockOwner {
            pid: std::process::id(),
            host: this_host(),
            since_unix_ms: crate::cache::now_unix_ms(),
            slurm_job: crate::exec::slurm_job_id(),
        }
    }
}

/// What Slurm says of a job holding a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSeen {
    pub id: u64,
    /// Slurm's state name (`RUNNING`, `COMPLETED`...).
    pub state: String,
    /// The job will not run again by itself.
    pub ended: bool,
}

/// Asks Slurm about the jobs that hold locks (`squeue -j`, the Slurm client in
/// `slurm::queue`; a fake in tests).
pub trait JobProbe {
    /// The jobs among `ids` that Slurm still lists, one batched call; `Err` (its message)
    /// when Slurm cannot be asked.
    fn jobs(&self, ids: &[u64]) -> Result<Vec<JobSeen>, String>;
}

/// A heartbeat (`attempts/<key>/<job>.beat`, bumped every 30 s by default) older than
/// this is no sign of life: 4 beats plus a minute, the monitor's rule for a running job,
/// judged here by the file's mtime against this machine's clock.
pub const HEARTBEAT_FRESH: Duration = Duration::from_secs(180);

/// The name of this machine, as recorded in locks, records and the registry.
pub fn this_host() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown-host".to_string())
}

/// Whether process `pid` exists on this machine.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence/permission; no signal is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// An exclusive lock on a file that is unlinked on release (see the module doc).
#[derive(Debug)]
pub(crate) struct ExclusiveFile {
    file: File,
    path: PathBuf,
}

impl ExclusiveFile {
    /// Locks `path` (creating it), blocking when `wait`, writing `owner` into it.
    /// `Ok(None)` if `wait` is false and someone else holds it.
    pub(crate) fn lock(path: &Path, wait: bool) -> Result<Option<ExclusiveFile>, LockError> {
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io_err(path))?;
            if wait {
                file.lock().map_err(io_err(path))?;
            } else {
                match file.try_lock() {
                    Ok(()) => {}
                    Err(TryLockError::WouldBlock) => return Ok(None),
                    Err(TryLockError::Error(e)) => return Err(io_err(path)(e)),
                }
            }
            // The previous holder may have unlinked the file between our open and lock.
            let ours = file.metadata().map_err(io_err(path))?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(path)(e)),
            }
            let mut held = ExclusiveFile {
                file,
                path: path.to_path_buf(),
            };
            held.write_owner()?;
            return Ok(Some(held));
        }
    }

    /// Clears close-on-exec on the lock's descriptor: every process started from now on
    /// shares the open file description, so the `flock` stays held while any of them lives.
    fn share_with_child_processes(&self) -> Result<(), LockError> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this struct owns; F_GETFD/F_SETFD touch only its flags.
        let rc = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC)
            }
        };
        if rc < 0 {
            return Err(io_err(&self.path)(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn write_owner(&mut self) -> Result<(), LockError> {
        let text = serde_json::to_string(&LockOwner::current()).expect("owner serializes");
        self.file.set_len(0).map_err(io_err(&self.path))?;
        (&self.file)
            .write_all(text.as_bytes())
            .map_err(io_err(&self.path))
    }
}

impl Drop for ExclusiveFile {
    fn drop(&mut self) {
        // Unlink while still holding the lock; closing the file then releases it.
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove lock file {}: {e}", self.path.display());
        }
    }
}

/// Exclusive right to execute and commit one cache key; released on drop.
#[derive(Debug)]
pub struct KeyLock {
    key: CacheKey,
    _file: ExclusiveFile,
}

/// Path of the lock file of `key`.
pub fn lock_path(cache_root: &Path, key: &CacheKey) -> PathBuf {
    cache_root.join(LOCKS_DIR).join(format!("{key}.lock"))
}

fn ensure_dir(cache_root: &Path) -> Result<(), LockError> {
    let dir = cache_root.join(LOCKS_DIR);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))
}

impl KeyLock {
    /// Takes the lock of `key`, waiting as long as another process or thread holds it.
    pub fn acquire(cache_root: &Path, key: &CacheKey) -> Result<KeyLock, LockError> {
        ensure_dir(cache_root)?;
        let file = ExclusiveFile::lock(&lock_path(cache_root, key), true)?
            .expect("a blocking lock always returns a holder");
        Ok(KeyLock {
            key: key.clone(),
            _file: file,
        })
    }

    /// Takes the lock of `key` if it is free; `None` if someone holds it.
    pub fn try_acquire(cache_root: &Path, key: &CacheKey) -> Result<Option<KeyLock>, LockError> {
        ensure_dir(cache_root)?;
        Ok(
            ExclusiveFile::lock(&lock_path(cache_root, key), false)?.map(|file| KeyLock {
                key: key.clone(),
                _file: file,
            }),
        )
    }

    /// Like [`Self::acquire`] but gives up after `timeout`, polling every 50 ms.
    pub fn acquire_timeout(
        cache_root: &Path,
        key: &CacheKey,
        timeout: Duration,
    ) -> Result<Option<KeyLock>, LockError> {
        let start = std::time::Instant::now();
        loop {
            if let Some(lock) = KeyLock::try_acquire(cache_root, key)? {
                return Ok(Some(lock));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Makes every process this one starts from now on (and their descendants) hold the
    /// lock too. A stage process calls it before running the stage: if it is killed with
    /// `-9` while a process its stage started still lives, the key stays locked until that
    /// process is gone too, so a later attempt can never run (and write the key's scratch)
    /// alongside a survivor of an earlier one. The release on drop is unchanged: the file
    /// is unlinked, so a survivor of a stage that ended normally locks nothing.
    pub fn share_with_child_processes(&self) -> Result<(), LockError> {
        self._file.share_with_child_processes()
    }
}

/// A lock file found under `locks/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockInfo {
    pub key: CacheKey,
    pub path: PathBuf,
    /// Holder as written in the file; `None` while a new holder has not written it yet,
    /// or when the content is unreadable.
    pub owner: Option<LockOwner>,
    /// Whether some process holds the lock now. `false` = stale (holder died).
    pub alive: bool,
    /// Whether the recorded pid exists, when the holder is on this host.
    pub pid_alive: Option<bool>,
    /// For a lock held by a Slurm job, Slurm's state of it as listed; `None` when the lock
    /// is not a job's, Slurm was not asked or did not answer, or no longer lists the job.
    pub job_state: Option<String>,
    /// For a job's lock: whether Slurm still lists the job as not ended (`None`: not asked
    /// or no answer).
    pub job_alive: Option<bool>,
    /// Age of the job's heartbeat file, seconds, when there is one.
    pub heartbeat_age_s: Option<u64>,
    /// Why the lock is judged live or stale, for people (`unlock` prints it).
    pub judged: String,
}

impl LockInfo {
    pub fn pid(&self) -> Option<u32> {
        self.owner.as_ref().map(|o| o.pid)
    }
    pub fn host(&self) -> Option<&str> {
        self.owner.as_ref().map(|o| o.host.as_str())
    }
    pub fn since_unix_ms(&self) -> Option<u64> {
        self.owner.as_ref().map(|o| o.since_unix_ms)
    }
    pub fn slurm_job(&self) -> Option<u64> {
        self.owner.as_ref().and_then(|o| o.slurm_job)
    }
}

/// Age of the job's heartbeat file, if it has one.
fn heartbeat_age(cache_root: &Path, key: &CacheKey, job: u64) -> Option<Duration> {
    let beat = crate::slurm::attempt::heartbeat_path(cache_root, key.as_str(), job);
    let mtime = std::fs::metadata(beat).ok()?.modified().ok()?;
    // A beat stamped in the future (clock skew) is as fresh as one stamped now.
    Some(
        SystemTime::now()
            .duration_since(mtime)
            .unwrap_or(Duration::ZERO),
    )
}

fn read_owner(path: &Path) -> Option<LockOwner> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether someone holds the flock on `path`, tested without keeping it.
fn held(path: &Path) -> Result<Option<bool>, LockError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(false)),
        Err(TryLockError::WouldBlock) => Ok(Some(true)),
        Err(TryLockError::Error(e)) => Err(io_err(path)(e)),
    }
}

/// Every key lock file under `<cache_root>/locks`, live or stale, sorted by key. Locks
/// held by Slurm jobs are judged by `probe` (one batched question for all of them; see the
/// module doc); without one, a job's lock that no `flock` here holds is kept (Slurm
/// cannot be asked).
pub fn list_locks(
    cache_root: &Path,
    probe: Option<&dyn JobProbe>,
) -> Result<Vec<LockInfo>, LockError> {
    let dir = cache_root.join(LOCKS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let host = this_host();
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name();
        let Some(key) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".lock"))
            .and_then(|k| k.parse::<CacheKey>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let Some(alive) = held(&path)? else { continue };
        let owner = read_owner(&path);
        let pid_alive = owner
            .as_ref()
            .filter(|o| o.host == host)
            .map(|o| pid_alive(o.pid));
        let judged = if alive {
            "held (flock)".to_string()
        } else {
            "nobody holds it (flock)".to_string()
        };
        out.push(LockInfo {
            key,
            path,
            owner,
            alive,
            pid_alive,
            job_state: None,
            job_alive: None,
            heartbeat_age_s: None,
            judged,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    judge_jobs(cache_root, &mut out, probe);
    Ok(out)
}

/// The Slurm side of [`list_locks`]: a lock of a job that the `flock` test found free is
/// still live while Slurm lists the job as not ended or its heartbeat is fresh, and when
/// Slurm cannot be asked.
fn judge_jobs(cache_root: &Path, locks: &mut [LockInfo], probe: Option<&dyn JobProbe>) {
    let ids: Vec<u64> = locks
        .iter()
        .filter(|l| !l.alive)
        .filter_map(LockInfo::slurm_job)
        .collect();
    if ids.is_empty() {
        return;
    }
    let answer = match probe {
        Some(p) => p.jobs(&ids),
        None => Err("no Slurm client given".to_string()),
    };
    for l in locks.iter_mut().filter(|l| !l.alive) {
        let Some(job) = l.slurm_job() else { continue };
        let age = heartbeat_age(cache_root, &l.key, job);
        l.heartbeat_age_s = age.map(|a| a.as_secs());
        let fresh = age.is_some_and(|a| a < HEARTBEAT_FRESH);
        match &answer {
            Err(e) => {
                l.alive = true;
                l.judged = format!(
                    "held by Slurm job {job}, which Slurm cannot be asked about ({e}): kept"
                );
            }
            Ok(seen) => {
                let s = seen.iter().find(|s| s.id == job);
                l.job_state = s.map(|s| s.state.clone());
                l.job_alive = Some(s.is_some_and(|s| !s.ended));
                let slurm = match s {
                    Some(s) => format!("Slurm job {job} is {}", s.state),
                    None => format!("Slurm no longer knows job {job}"),
                };
                let beat = match age {
                    Some(a) => format!("its heartbeat is {:.0} s old", a.as_secs_f64()),
                    None => "it has no heartbeat".to_string(),
                };
                if l.job_alive == Some(true) {
                    l.alive = true;
                    l.judged = slurm;
                } else if fresh {
                    l.alive = true;
                    l.judged = format!("{slurm}, but {beat}: kept");
                } else {
                    l.judged = format!("{slurm} and {beat}");
                }
            }
        }
    }
}

/// Removes stale lock files (no live holder, judged as [`list_locks`] does) and returns
/// what was removed.
pub fn remove_stale(
    cache_root: &Path,
    probe: Option<&dyn JobProbe>,
) -> Result<Vec<LockInfo>, LockError> {
    let mut removed = Vec::new();
    for info in list_locks(cache_root, probe)? {
        if info.alive {
            continue;
        }
        // Taking the lock proves nobody here holds it; dropping it unlinks the file safely.
        if let Some(lock) = ExclusiveFile::lock(&info.path, false)? {
            drop(lock);
            removed.push(info);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn key(c: char) -> CacheKey {
        c.to_string().repeat(64).parse().unwrap()
    }

    /// Helper process for the cross-process tests: takes the lock named by the
    /// environment, writes a marker file, then holds the lock until stdin closes.
    #[test]
    #[ignore = "helper process started by the cross-process lock tests"]
    fn helper_hold_lock() {
        let root = PathBuf::from(std::env::var("UGC_LOCK_TEST_ROOT").unwrap());
        let key: CacheKey = std::env::var("UGC_LOCK_TEST_KEY").unwrap().parse().unwrap();
        let marker = PathBuf::from(std::env::var("UGC_LOCK_TEST_MARKER").unwrap());
        let lock = KeyLock::acquire(&root, &key).unwrap();
        // With SHARE: a child that outlives this process if it is killed, as a stage's
        // command may.
        let mut child = None;
        if std::env::var_os("UGC_LOCK_TEST_SHARE").is_some() {
            lock.share_with_child_processes().unwrap();
            let c = Command::new("sleep").arg("120").spawn().unwrap();
            std::fs::write(&marker, c.id().to_string()).unwrap();
            child = Some(c);
        } else {
            std::fs::write(&marker, b"locked").unwrap();
        }
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(lock);
    }

    fn spawn_holder(root: &Path, key: &CacheKey, marker: &Path) -> std::process::Child {
        holder_command(root, key, marker).spawn().unwrap()
    }

    fn holder_command(root: &Path, key: &CacheKey, marker: &Path) -> Command {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "lock::tests::helper_hold_lock",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("UGC_LOCK_TEST_ROOT", root)
        .env("UGC_LOCK_TEST_KEY", key.as_str())
        .env("UGC_LOCK_TEST_MARKER", marker)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
        cmd
    }

    fn wait_for(path: &Path, secs: u64) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            if path.exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn second_process_waits_then_gets_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let k = key('a');
        let marker = dir.path().join("marker");
        let mine = KeyLock::acquire(dir.path(), &k).unwrap();
        let mut child = spawn_holder(dir.path(), &k, &marker);
        std::thread::sleep(Duration::from_millis(700));
        assert!(!marker.exists(), "child took a lock the parent holds");
        drop(mine);
        assert!(wait_for(&marker, 30), "child never got the released lock");
        // Now the child holds it: we cannot take it.
        assert!(KeyLock::try_acquire(dir.path(), &k).unwrap().is_none());
        let live = list_locks(dir.path(), None).unwrap();
        assert_eq!(live.len(), 1);
        assert!(live[0].alive);
        assert_eq!(live[0].pid(), Some(child.id()));
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        assert!(KeyLock::try_acquire(dir.path(), &k).unwrap().is_some());
        assert!(
            list_locks(dir.path(), None).unwrap().is_empty(),
            "released lock file left behind"
        );
    }

    #[test]
    fn killed_holder_leaves_a_stale_lock() {
        let dir = tempfile::tempdir().unwrap();
        let k = key('b');
        let marker = dir.path().join("marker");
        let mut child = spawn_holder(dir.path(), &k, &marker);
        assert!(wait_for(&marker, 30));
        let pid = child.id();
        child.kill().unwrap(); // SIGKILL: no destructor runs, the file stays.
        child.wait().unwrap();
        let locks = list_locks(dir.path(), None).unwrap();
        assert_eq!(locks.len(), 1);
        assert!(!locks[0].alive);
        assert_eq!(locks[0].pid(), Some(pid));
        assert_eq!(locks[0].pid_alive, Some(false));
        // The flock died with the process, so the key is usable right away...
        drop(KeyLock::try_acquire(dir.path(), &k).unwrap().unwrap());
        // ...and a stale file left by a dead pid is removed by `unlock`.
        let path = lock_path(dir.path(), &k);
        let stale = LockOwner {
            pid,
            host: this_host(),
            since_unix_ms: 1,
            slurm_job: None,
        };
        std::fs::write(&path, serde_json::to_string(&stale).unwrap()).unwrap();
        let removed = remove_stale(dir.path(), None).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].owner, Some(stale));
        assert!(!path.exists());
    }

    #[test]
    fn shared_lock_stays_held_while_a_child_of_a_killed_holder_lives() {
        let dir = tempfile::tempdir().unwrap();
        let k = key('e');
        let marker = dir.path().join("marker");
        let mut holder = holder_command(dir.path(), &k, &marker)
            .env("UGC_LOCK_TEST_SHARE", "1")
            .spawn()
            .unwrap();
        assert!(wait_for(&marker, 30));
        let text = std::fs::read_to_string(&marker).unwrap();
        let survivor: libc::pid_t = text.trim().parse().unwrap();
        holder.kill().unwrap(); // SIGKILL: the holder's own descriptor is gone...
        holder.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // ...but its child still shares it, so the key is not free.
        assert!(
            KeyLock::try_acquire(dir.path(), &k).unwrap().is_none(),
            "the lock was free while a child of the killed holder lived"
        );
        // SAFETY: kill(2) on the pid the helper reported; it is alive (it holds the lock).
        unsafe { libc::kill(survivor, libc::SIGKILL) };
        let freed = KeyLock::acquire_timeout(dir.path(), &k, Duration::from_secs(10)).unwrap();
        assert!(
            freed.is_some(),
            "the lock stayed held after its last holder died"
        );
    }

    #[test]
    fn threads_with_own_fds_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let k = key('c');
        let first = KeyLock::acquire(dir.path(), &k).unwrap();
        let got = Arc::new(AtomicBool::new(false));
        let (root, k2, got2) = (dir.path().to_path_buf(), k.clone(), got.clone());
        let t = std::thread::spawn(move || {
            let lock = KeyLock::acquire(&root, &k2).unwrap();
            got2.store(true, Ordering::SeqCst);
            drop(lock);
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!got.load(Ordering::SeqCst), "second holder did not wait");
        assert!(
            KeyLock::acquire_timeout(dir.path(), &k, Duration::from_millis(100))
                .unwrap()
                .is_none()
        );
        drop(first);
        t.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
    }

    /// Slurm as a test sets it; counts the questions.
    struct FakeProbe {
        answer: Result<Vec<JobSeen>, String>,
        calls: std::cell::RefCell<Vec<Vec<u64>>>,
    }
    impl JobProbe for FakeProbe {
        fn jobs(&self, ids: &[u64]) -> Result<Vec<JobSeen>, String> {
            self.calls.borrow_mut().push(ids.to_vec());
            self.answer.clone()
        }
    }
    fn probe(answer: Result<Vec<JobSeen>, String>) -> FakeProbe {
        FakeProbe {
            answer,
            calls: Default::default(),
        }
    }
    fn seen(id: u64, state: &str, ended: bool) -> JobSeen {
        JobSeen {
            id,
            state: state.into(),
            ended,
        }
    }

    /// A lock file left by job `job` on another machine: nobody here holds its flock.
    fn job_lock(root: &Path, k: &CacheKey, job: u64) {
        ensure_dir(root).unwrap();
        let owner = LockOwner {
            pid: 1,
            host: "compute-7".into(),
            since_unix_ms: 1,
            slurm_job: Some(job),
        };
        std::fs::write(lock_path(root, k), serde_json::to_string(&owner).unwrap()).unwrap();
    }

    fn beat(root: &Path, k: &CacheKey, job: u64, age: Duration) {
        let p = crate::slurm::attempt::heartbeat_path(root, k.as_str(), job);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "3\n").unwrap();
        let f = File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn a_job_s_lock_is_judged_by_slurm_and_its_heartbeat_not_by_a_pid() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (running, done, purged, beating, old_beat) =
            (key('1'), key('2'), key('3'), key('4'), key('5'));
        job_lock(root, &running, 11);
        job_lock(root, &done, 12);
        job_lock(root, &purged, 13);
        job_lock(root, &beating, 14);
        job_lock(root, &old_beat, 15);
        beat(root, &beating, 14, Duration::from_secs(5));
        beat(
            root,
            &old_beat,
            15,
            HEARTBEAT_FRESH + Duration::from_secs(60),
        );
        let slurm = probe(Ok(vec![
            seen(11, "RUNNING", false),
            seen(12, "COMPLETED", true),
        ]));
        let locks = list_locks(root, Some(&slurm)).unwrap();
        assert_eq!(
            slurm.calls.borrow().len(),
            1,
            "one question for all the jobs"
        );
        assert_eq!(slurm.calls.borrow()[0].len(), 5);
        let by = |k: &CacheKey| locks.iter().find(|l| &l.key == k).unwrap().clone();
        assert!(by(&running).alive, "{}", by(&running).judged);
        assert_eq!(by(&running).job_state.as_deref(), Some("RUNNING"));
        assert!(by(&running).judged.contains("job 11 is RUNNING"));
        assert!(!by(&done).alive);
        assert!(
            by(&done).judged.contains("no heartbeat"),
            "{}",
            by(&done).judged
        );
        assert!(!by(&purged).alive);
        assert_eq!(by(&purged).job_alive, Some(false));
        assert!(by(&purged).judged.contains("no longer knows job 13"));
        assert!(by(&beating).alive, "a fresh heartbeat keeps it");
        assert!(
            by(&beating).judged.contains("kept"),
            "{}",
            by(&beating).judged
        );
        assert!(!by(&old_beat).alive, "an old heartbeat is no sign of life");
        let removed: Vec<CacheKey> = remove_stale(root, Some(&slurm))
            .unwrap()
            .into_iter()
            .map(|l| l.key)
            .collect();
        assert_eq!(removed, [done.clone(), purged.clone(), old_beat.clone()]);
        assert!(lock_path(root, &running).exists() && lock_path(root, &beating).exists());
    }

    #[test]
    fn a_job_s_lock_is_kept_when_slurm_cannot_be_asked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        job_lock(root, &key('6'), 21);
        // A lock of a local process (no job) is judged by flock alone, as before.
        ensure_dir(root).unwrap();
        std::fs::write(lock_path(root, &key('7')), "{}").unwrap();
        let down = probe(Err("squeue: Slurm did not answer".into()));
        let locks = list_locks(root, Some(&down)).unwrap();
        assert!(
            locks[0].alive && locks[0].judged.contains("cannot be asked"),
            "{:?}",
            locks[0]
        );
        assert!(!locks[1].alive);
        let removed = remove_stale(root, Some(&down)).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].key, key('7'));
        assert!(
            remove_stale(root, None).unwrap().is_empty(),
            "no probe: kept"
        );
        assert!(lock_path(root, &key('6')).exists());
    }

    #[test]
    fn the_holder_s_slurm_job_is_in_its_lock_file_and_old_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let k = key('8');
        let lock = KeyLock::acquire(dir.path(), &k).unwrap();
        let text = std::fs::read_to_string(lock_path(dir.path(), &k)).unwrap();
        let owner: LockOwner = serde_json::from_str(&text).unwrap();
        assert_eq!(owner.slurm_job, crate::exec::slurm_job_id());
        if owner.slurm_job.is_none() {
            assert!(
                !text.contains("slurm_job"),
                "outside Slurm the file is as before: {text}"
            );
        }
        drop(lock);
        let old: LockOwner =
            serde_json::from_str(r#"{"pid":1,"host":"h","since_unix_ms":2}"#).unwrap();
        assert_eq!(old.slurm_job, None);
    }

    #[test]
    fn live_locks_are_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let _held = KeyLock::acquire(dir.path(), &key('d')).unwrap();
        assert!(remove_stale(dir.path(), None).unwrap().is_empty());
        let locks = list_locks(dir.path(), None).unwrap();
        assert_eq!(locks.len(), 1);
        assert!(locks[0].alive);
        assert_eq!(locks[0].pid_alive, Some(true));
    }
}
