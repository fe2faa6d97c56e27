//! Decides, per stage, what its Slurm job's state means, from the cache first and Slurm
//! second: a committed record is done whatever Slurm says; the attempt file is the
//! worker's own account; Slurm's state is liveness only, and an unknown state is "not
//! yet". A job that vanished or ended without a trace in the cache is lost only after
//! `lost_grace`, with the head's view of the shared filesystem refreshed meanwhile. One
//! batched status call per poll for all jobs; accounting only for the ids the queue
//! dropped; an unreachable controller backs the poll off and changes nothing.
//!
//! A job decided before Slurm itself ended it (its record committed while the worker was
//! still exiting, say) stays in the batched call, *settling*, until Slurm lists its end
//! state (or forgets it, or `lost_grace` passes): the registry records Slurm's final state
//! of every job, not a guess.
//!
//! Pure logic over an injected [`Clock`], [`SlurmClient`] and [`CacheView`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::attempt::{Attempt, Outcome};
use super::queue::{JobId, JobState, JobStatus, SlurmClient, by_id};
use super::settings::SlurmSettings;

/// Monotonic time since an arbitrary start.
pub trait Clock {
    fn now(&self) -> Duration;
}

/// What the head can see of a stage in the shared cache.
pub trait CacheView {
    fn committed(&self, key: &str) -> bool;
    fn attempt(&self, key: &str, job: JobId) -> Option<Attempt>;
    fn heartbeat(&self, key: &str, job: JobId) -> Option<u64>;
    /// Whether the stage left a checkpoint to resume from (its scratch folder).
    fn has_checkpoint(&self, key: &str) -> bool;
    /// Revalidate the view of the key's files (NFS attribute cache).
    fn refresh(&self, key: &str);
}

/// Why a job is resubmitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryReason {
    /// NODE_FAIL, PREEMPTED, BOOT_FAIL.
    Slurm(String),
    /// Time limit reached (or warned) with a checkpoint to resume from.
    TimeLimit,
    /// Vanished, or stopped beating, without a trace in the cache.
    Lost(String),
}

/// What a stage is, after a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Queued; Slurm's reason, when it gives one.
    Pending {
        reason: Option<String>,
    },
    Running {
        nodes: Option<String>,
    },
    /// Not decided yet (ended or vanished, waiting for its files to show).
    Waiting {
        why: String,
    },
    Done,
    /// The stage's own error, or an end with no retry: dependents are skipped.
    Failed {
        error: String,
    },
    OutOfMemory {
        detail: String,
    },
    /// Pending on a request Slurm will never grant; the head cancels it.
    Unsatisfiable {
        reason: String,
    },
    /// Resubmit (the head does, counting it).
    Retry {
        why: RetryReason,
    },
    /// Ended by our own cancel.
    Cancelled,
}

impl Verdict {
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            Verdict::Pending { .. } | Verdict::Running { .. } | Verdict::Waiting { .. }
        )
    }
}

/// Pending reasons that never clear by themselves: the request exceeds the partition or
/// the account's limits.
const HOPELESS: &[&str] = &[
    "PartitionTimeLimit",
    "PartitionNodeLimit",
    "PartitionConfig",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "QOSMaxWallDurationPerJobLimit",
    "QOSMaxGRESPerJob",
    "QOSMaxCpuPerJobLimit",
    "QOSMaxNodePerJobLimit",
    "AssocMaxWallDurationPerJobLimit",
    "AssocMaxCpuPerJobLimit",
    "AssocMaxNodePerJobLimit",
    "AssocMaxGRESPerJob",
    "MaxMemPerLimit",
];

/// One submitted job of one stage, and what the monitor has seen of it.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub key: String,
    pub job: JobId,
    /// 1 for the first submission.
    pub attempt_no: u32,
    /// Cancelled by us (Ctrl-C): its end is [`Verdict::Cancelled`], not a failure.
    pub cancelled: bool,
    /// When it was first seen gone from the queue or ended without a trace.
    unexplained_since: Option<Duration>,
    last_beat: Option<(u64, Duration)>,
    last: Option<Verdict>,
}

impl Tracked {
    pub fn new(key: &str, job: JobId, attempt_no: u32, now: Duration) -> Tracked {
        Tracked {
            key: key.to_string(),
            job,
            attempt_no,
            cancelled: false,
            unexplained_since: None,
            last_beat: Some((u64::MAX, now)),
            last: None,
        }
    }
}

/// What Slurm told this poll about one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlurmView {
    Listed(JobStatus),
    /// Neither the queue nor accounting knows it.
    Gone,
    /// No answer this time.
    Unreachable,
}

/// What the cache shows of one job this poll.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub committed: bool,
    pub attempt: Option<Attempt>,
    pub beat: Option<u64>,
    pub has_checkpoint: bool,
}

/// The decision for one job: pure, every input given.
pub fn decide(
    t: &mut Tracked,
    seen: &Seen,
    slurm: &SlurmView,
    now: Duration,
    s: &SlurmSettings,
    cache: &dyn CacheView,
) -> Verdict {
    if seen.committed {
        return Verdict::Done;
    }
    let (attempt, beat, has_checkpoint) = (seen.attempt.as_ref(), seen.beat, seen.has_checkpoint);
    // Liveness by the heartbeat's change, on the head's clock.
    match (beat, t.last_beat) {
        (Some(b), Some((old, _))) if b != old => t.last_beat = Some((b, now)),
        (Some(b), None) => t.last_beat = Some((b, now)),
        _ => {}
    }
    if let Some(a) = attempt.filter(|a| a.outcome.is_some()) {
        let err = a.error.clone().unwrap_or_else(|| {
            format!(
                "exit code {}",
                a.exit_code.map_or("?".into(), |c| c.to_string())
            )
        });
        return match a.outcome.expect("filtered") {
            Outcome::Failed => Verdict::Failed {
                error: format!("{err} (job {} on {})", a.job_id, a.host),
            },
            Outcome::OutOfMemory => Verdict::OutOfMemory {
                detail: format!("{err} (job {} on {})", a.job_id, a.host),
            },
            Outcome::Checkpointed if t.cancelled => Verdict::Cancelled,
            Outcome::Checkpointed => Verdict::Retry {
                why: RetryReason::TimeLimit,
            },
            // said committed, record not visible yet: the filesystem's latency
            Outcome::Committed => {
                let job = t.job;
                unexplained(t, now, s, cache, "the record is not visible yet", || {
                    RetryReason::Lost(format!(
                        "job {} reported a commit, but no record appeared within {:?}",
                        job, s.lost_grace
                    ))
                })
            }
        };
    }
    let status = match slurm {
        SlurmView::Unreachable => {
            return t.last.clone().unwrap_or(Verdict::Pending { reason: None });
        }
        SlurmView::Gone => {
            let job = t.job;
            return unexplained(t, now, s, cache, "gone from Slurm's queue", || {
                RetryReason::Lost(format!(
                    "job {job} left the queue with no record or attempt file"
                ))
            });
        }
        SlurmView::Listed(st) => st,
    };
    use JobState::*;
    let st = &status.state;
    if st.is_waiting() {
        if let Some(r) = &status.reason
            && HOPELESS.iter().any(|h| r.starts_with(h))
        {
            return Verdict::Unsatisfiable { reason: r.clone() };
        }
        t.unexplained_since = None;
        return Verdict::Pending {
            reason: status.reason.clone(),
        };
    }
    if !st.is_ended() {
        // running (or an odd or unknown state: not yet); a stopped heartbeat is a hang
        t.unexplained_since = None;
        let stale = s.heartbeat * 4 + s.lost_grace;
        if matches!(st, Running)
            && attempt.is_some()
            && let Some((_, seen_at)) = t.last_beat
            && now.saturating_sub(seen_at) > stale
        {
            return Verdict::Retry {
                why: RetryReason::Lost(format!(
                    "job {} is RUNNING but its heartbeat stopped {:?} ago",
                    t.job,
                    now.saturating_sub(seen_at)
                )),
            };
        }
        return Verdict::Running {
            nodes: status.nodes.clone(),
        };
    }
    // Ended with no outcome in the cache: give the files `lost_grace` to show, then
    // classify by Slurm's end state.
    let state = format!("{st:?}");
    let ended: Verdict = match st {
        NodeFail | Preempted | BootFail => Verdict::Retry {
            why: RetryReason::Slurm(slurm_name(st).into()),
        },
        Timeout if has_checkpoint => Verdict::Retry {
            why: RetryReason::TimeLimit,
        },
        Timeout => Verdict::Failed {
            error: format!(
                "job {} reached its time limit with no checkpoint to resume from (raise `time`)",
                t.job
            ),
        },
        OutOfMemory => Verdict::OutOfMemory {
            detail: format!(
                "job {} exceeded its memory request (Slurm: OUT_OF_MEMORY)",
                t.job
            ),
        },
        Cancelled if t.cancelled => Verdict::Cancelled,
        Cancelled => Verdict::Failed {
            error: format!("job {} was cancelled outside ugc-pipe", t.job),
        },
        Completed => Verdict::Retry {
            why: RetryReason::Lost(format!(
                "job {} completed but left no record or attempt file",
                t.job
            )),
        },
        _ => Verdict::Failed {
            error: format!(
                "job {} ended {} (exit {}) without an attempt file; see the stage log",
                t.job,
                slurm_name(st),
                status.exit_code.as_deref().unwrap_or("?")
            ),
        },
    };
    // Slurm's own verdicts on the node or the limits need no file to confirm them
    if matches!(st, NodeFail | Preempted | BootFail | OutOfMemory) || t.cancelled {
        return ended;
    }
    let e = ended.clone();
    match unexplained(
        t,
        now,
        s,
        cache,
        &format!("ended {state}, its files not visible yet"),
        || RetryReason::Lost(String::new()),
    ) {
        Verdict::Waiting { why } => Verdict::Waiting { why },
        _ => e,
    }
}

/// `Waiting` until `lost_grace` has passed since first seen (refreshing the view each
/// time), then `Retry(lost)`.
fn unexplained(
    t: &mut Tracked,
    now: Duration,
    s: &SlurmSettings,
    cache: &dyn CacheView,
    why: &str,
    lost: impl FnOnce() -> RetryReason,
) -> Verdict {
    let since = *t.unexplained_since.get_or_insert(now);
    cache.refresh(&t.key);
    if now.saturating_sub(since) < s.lost_grace {
        Verdict::Waiting {
            why: why.to_string(),
        }
    } else {
        Verdict::Retry { why: lost() }
    }
}

/// A retry past the limit is a failure naming the last reason (attempt `n` is the
/// `n - 1`th resubmission).
pub fn limit_retries(v: Verdict, attempt_no: u32, resubmit_limit: u32) -> Verdict {
    match v {
        Verdict::Retry { why } if attempt_no > resubmit_limit => Verdict::Failed {
            error: format!("gave up after {attempt_no} attempts; the last: {why:?}"),
        },
        v => v,
    }
}

fn slurm_name(s: &JobState) -> &'static str {
    use JobState::*;
    match s {
        NodeFail => "NODE_FAIL",
        Preempted => "PREEMPTED",
        BootFail => "BOOT_FAIL",
        Failed => "FAILED",
        Deadline => "DEADLINE",
        Revoked => "REVOKED",
        SpecialExit => "SPECIAL_EXIT",
        Timeout => "TIMEOUT",
        Completed => "COMPLETED",
        Cancelled => "CANCELLED",
        OutOfMemory => "OUT_OF_MEMORY",
        _ => "an unexpected state",
    }
}

/// Polls all tracked jobs together and keeps the adaptive interval.
pub struct Monitor<'a> {
    pub settings: &'a SlurmSettings,
    client: &'a dyn SlurmClient,
    cache: &'a dyn CacheView,
    clock: &'a dyn Clock,
    jobs: BTreeMap<JobId, Tracked>,
    interval: Duration,
    /// The last status Slurm listed for each job, kept after its verdict.
    statuses: HashMap<JobId, JobStatus>,
    /// Decided jobs whose end Slurm has not listed yet: key, and since when.
    settling: BTreeMap<JobId, (String, Duration)>,
    settled: Vec<(JobId, String, Option<JobStatus>)>,
}

impl<'a> Monitor<'a> {
    pub fn new(
        settings: &'a SlurmSettings,
        client: &'a dyn SlurmClient,
        cache: &'a dyn CacheView,
        clock: &'a dyn Clock,
    ) -> Monitor<'a> {
        Monitor {
            settings,
            client,
            cache,
            clock,
            jobs: BTreeMap::new(),
            interval: settings.poll_min,
            statuses: HashMap::new(),
            settling: BTreeMap::new(),
            settled: Vec::new(),
        }
    }

    /// The last status Slurm listed for `job` (state, node, submit and start times), also
    /// after its verdict.
    pub fn last_status(&self, job: JobId) -> Option<&JobStatus> {
        self.statuses.get(&job)
    }

    /// Decided jobs still waiting for Slurm to list their end.
    pub fn settling(&self) -> usize {
        self.settling.len()
    }

    /// Gives up waiting for the settling jobs' ends (the run is over): each is settled with
    /// the last status Slurm gave.
    pub fn settle_now(&mut self) {
        for (id, (key, _)) in std::mem::take(&mut self.settling) {
            self.settled
                .push((id, key, self.statuses.get(&id).cloned()));
        }
    }

    /// Jobs whose end Slurm listed (or that it forgot, or that waited `lost_grace`), each
    /// once, with the last status Slurm gave: what the registry records as final. A job
    /// whose verdict came with Slurm's end state is here at once.
    pub fn take_settled(&mut self) -> Vec<(JobId, String, Option<JobStatus>)> {
        std::mem::take(&mut self.settled)
    }

    /// Starts watching a submitted job; the next poll comes soon.
    pub fn track(&mut self, key: &str, job: JobId, attempt_no: u32) {
        self.jobs
            .insert(job, Tracked::new(key, job, attempt_no, self.clock.now()));
        self.interval = self.settings.poll_min;
    }

    /// Marks jobs we cancel, so their end is not reported as a failure.
    pub fn mark_cancelled(&mut self, job: JobId) {
        if let Some(t) = self.jobs.get_mut(&job) {
            t.cancelled = true;
        }
    }

    pub fn active(&self) -> Vec<JobId> {
        self.jobs.keys().copied().collect()
    }

    /// How long to wait before the next poll.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// One poll: a single batched queue call for every tracked job, accounting only for
    /// the ids it dropped. Returns each job's verdict when it changed; final verdicts
    /// stop the job's tracking.
    pub fn poll(&mut self) -> Vec<(JobId, String, Verdict)> {
        let ids = self.active();
        let settling: Vec<JobId> = self.settling.keys().copied().collect();
        if ids.is_empty() && settling.is_empty() {
            return Vec::new();
        }
        let asked: Vec<JobId> = ids.iter().chain(&settling).copied().collect();
        let mut unreachable = false;
        let mut listed: HashMap<JobId, JobStatus> = match self.client.status(&asked) {
            Ok(v) => by_id(v),
            Err(_) => {
                unreachable = true;
                HashMap::new()
            }
        };
        // Accounting only for the deciding jobs: a settling one squeue forgot is settled.
        let dropped: Vec<JobId> = ids
            .iter()
            .copied()
            .filter(|i| !listed.contains_key(i))
            .collect();
        if !unreachable && !dropped.is_empty() {
            match self.client.accounting(&dropped) {
                Ok(Some(v)) => listed.extend(by_id(v)),
                Ok(None) => {}
                Err(_) => unreachable = true,
            }
        }
        let now = self.clock.now();
        for (id, st) in &listed {
            self.statuses.insert(*id, st.clone());
        }
        for id in settling {
            let (key, since) = self.settling[&id].clone();
            let ended = match listed.get(&id) {
                Some(st) => st.state.is_ended(),
                None => !unreachable,
            };
            if ended || now.saturating_sub(since) >= self.settings.lost_grace {
                self.settling.remove(&id);
                self.settled
                    .push((id, key, self.statuses.get(&id).cloned()));
            }
        }
        let mut changed = Vec::new();
        for id in ids {
            let t = self.jobs.get_mut(&id).expect("tracked");
            let view = match listed.remove(&id) {
                Some(st) => SlurmView::Listed(st),
                None if unreachable => SlurmView::Unreachable,
                None => SlurmView::Gone,
            };
            let key = t.key.clone();
            let seen = Seen {
                committed: self.cache.committed(&key),
                attempt: self.cache.attempt(&key, id),
                beat: self.cache.heartbeat(&key, id),
                has_checkpoint: self.cache.has_checkpoint(&key),
            };
            let v = decide(t, &seen, &view, now, self.settings, self.cache);
            let v = limit_retries(v, t.attempt_no, self.settings.resubmit_limit);
            if t.last.as_ref() != Some(&v) {
                t.last = Some(v.clone());
                changed.push((id, key.clone(), v.clone()));
            }
            if v.is_final() {
                self.jobs.remove(&id);
                // Settled now if Slurm already listed its end or never listed it at all.
                match self.statuses.get(&id) {
                    Some(st) if !st.state.is_ended() => {
                        self.settling.insert(id, (key, now));
                    }
                    st => self.settled.push((id, key, st.cloned())),
                }
            }
        }
        self.interval = if unreachable {
            (self.interval * 2).min(self.settings.poll_max)
        } else if changed.is_empty() {
            self.interval.mul_f64(1.5).min(self.settings.poll_max)
        } else {
            self.settings.poll_min
        };
        changed
    }
}

/// The monotonic clock of this process.
pub struct SystemClock(std::time::Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(std::time::Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// The cache as files: `records/<key>.json`, the attempt files, `scratch/<key>`.
pub struct FsCacheView {
    pub root: std::path::PathBuf,
}

impl CacheView for FsCacheView {
    fn committed(&self, key: &str) -> bool {
        self.root
            .join("records")
            .join(format!("{key}.json"))
            .is_file()
    }
    fn attempt(&self, key: &str, job: JobId) -> Option<Attempt> {
        // a damaged file is no account: the job is judged as if it had none
        super::attempt::read_attempt(&self.root, key, job)
            .ok()
            .flatten()
    }
    fn heartbeat(&self, key: &str, job: JobId) -> Option<u64> {
        super::attempt::read_heartbeat(&self.root, key, job)
    }
    fn has_checkpoint(&self, key: &str) -> bool {
        std::fs::read_dir(self.root.join("scratch").join(key))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }
    fn refresh(&self, key: &str) {
        super::attempt::refresh_view(&self.root, key)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashSet;

    use super::*;
    use crate::slurm::queue::QueueError;

    struct FakeClock(Cell<Duration>);
    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            self.0.get()
        }
    }
    impl FakeClock {
        fn advance(&self, secs: u64) {
            self.0.set(self.0.get() + Duration::from_secs(secs));
        }
    }

    #[derive(Default)]
    struct FakeCache {
        committed: RefCell<HashSet<String>>,
        attempts: RefCell<HashMap<JobId, Attempt>>,
        beats: RefCell<HashMap<JobId, u64>>,
        checkpoints: RefCell<HashSet<String>>,
        refreshes: Cell<u32>,
    }
    impl CacheView for FakeCache {
        fn committed(&self, key: &str) -> bool {
            self.committed.borrow().contains(key)
        }
        fn attempt(&self, _key: &str, job: JobId) -> Option<Attempt> {
            self.attempts.borrow().get(&job).cloned()
        }
        fn heartbeat(&self, _key: &str, job: JobId) -> Option<u64> {
            self.beats.borrow().get(&job).copied()
        }
        fn has_checkpoint(&self, key: &str) -> bool {
            self.checkpoints.borrow().contains(key)
        }
        fn refresh(&self, _key: &str) {
            self.refreshes.set(self.refreshes.get() + 1);
        }
    }

    /// squeue/sacct answers set by the test; counts calls.
    #[derive(Default)]
    struct FakeSlurm {
        queue: RefCell<HashMap<JobId, (JobState, Option<String>)>>,
        acct: RefCell<Option<HashMap<JobId, JobState>>>,
        down: Cell<bool>,
        status_calls: Cell<u32>,
        acct_calls: RefCell<Vec<Vec<JobId>>>,
    }
    fn st(id: JobId, state: JobState, reason: Option<String>) -> JobStatus {
        JobStatus {
            id,
            state,
            reason,
            nodes: Some("n1".into()),
            submitted: None,
            started: None,
            exit_code: None,
        }
    }
    impl SlurmClient for FakeSlurm {
        fn submit(&self, _: &std::path::Path) -> Result<JobId, QueueError> {
            unreachable!("the monitor never submits")
        }
        fn status(&self, ids: &[JobId]) -> Result<Vec<JobStatus>, QueueError> {
            self.status_calls.set(self.status_calls.get() + 1);
            if self.down.get() {
                return Err(QueueError::Transient {
                    cmd: "squeue".into(),
                    message: "Unable to contact slurm controller".into(),
                });
            }
            let q = self.queue.borrow();
            Ok(ids
                .iter()
                .filter_map(|i| q.get(i).map(|(s, r)| st(*i, s.clone(), r.clone())))
                .collect())
        }
        fn accounting(&self, ids: &[JobId]) -> Result<Option<Vec<JobStatus>>, QueueError> {
            self.acct_calls.borrow_mut().push(ids.to_vec());
            Ok(self.acct.borrow().as_ref().map(|a| {
                ids.iter()
                    .filter_map(|i| a.get(i).map(|s| st(*i, s.clone(), None)))
                    .collect()
            }))
        }
        fn cancel(&self, _: &[JobId], _: Option<&str>) -> Result<(), QueueError> {
            Ok(())
        }
        fn find_by_name(&self, _: &str) -> Result<Vec<JobId>, QueueError> {
            Ok(Vec::new())
        }
        fn ours(&self) -> Result<Vec<crate::slurm::queue::OurJob>, QueueError> {
            unreachable!("the monitor never lists the queue")
        }
    }

    struct World {
        clock: FakeClock,
        cache: FakeCache,
        slurm: FakeSlurm,
        settings: SlurmSettings,
    }
    fn world() -> World {
        World {
            clock: FakeClock(Cell::new(Duration::from_secs(1000))),
            cache: FakeCache::default(),
            slurm: FakeSlurm::default(),
            settings: SlurmSettings {
                lost_grace: Duration::from_secs(60),
                heartbeat: Duration::from_secs(10),
                ..SlurmSettings::default()
            },
        }
    }
    fn attempt(job: JobId, outcome: Option<Outcome>, error: Option<&str>) -> Attempt {
        Attempt {
            key: "k".into(),
            job_id: job,
            host: "n1".into(),
            started_ms: 0,
            ended_ms: outcome.map(|_| 1),
            outcome,
            exit_code: outcome.map(|o| if o == Outcome::Committed { 0 } else { 1 }),
            error: error.map(String::from),
            peak_rss_kib: Some(1),
        }
    }
    fn set(w: &World, id: JobId, s: JobState) {
        w.slurm.queue.borrow_mut().insert(id, (s, None));
    }
    /// Polls once and returns job 1's verdict if it changed.
    fn poll1(m: &mut Monitor) -> Option<Verdict> {
        m.poll()
            .into_iter()
            .find(|(id, _, _)| *id == 1)
            .map(|x| x.2)
    }

    #[test]
    fn pending_running_done_with_the_record_as_truth() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        w.slurm
            .queue
            .borrow_mut()
            .insert(1, (JobState::Pending, Some("Resources".into())));
        assert_eq!(
            poll1(&mut m),
            Some(Verdict::Pending {
                reason: Some("Resources".into())
            })
        );
        set(&w, 1, JobState::Running);
        assert_eq!(
            poll1(&mut m),
            Some(Verdict::Running {
                nodes: Some("n1".into())
            })
        );
        assert_eq!(poll1(&mut m), None, "no change, nothing reported");
        // still RUNNING in squeue (worker exiting) but the record is committed: done
        w.cache.committed.borrow_mut().insert("k".into());
        assert_eq!(poll1(&mut m), Some(Verdict::Done));
        assert!(m.active().is_empty());
    }

    #[test]
    fn a_decided_job_settles_when_slurm_lists_its_end() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        m.track("k2", 2, 1);
        set(&w, 1, JobState::Running);
        set(&w, 2, JobState::NodeFail);
        m.poll();
        // job 2's verdict came with Slurm's end: settled at once, with that state
        let settled = m.take_settled();
        assert_eq!(settled.len(), 1);
        assert_eq!((settled[0].0, settled[0].1.as_str()), (2, "k2"));
        assert_eq!(settled[0].2.as_ref().unwrap().state, JobState::NodeFail);
        // job 1 committed while Slurm still says RUNNING: done, then settling
        w.cache.committed.borrow_mut().insert("k".into());
        assert_eq!(poll1(&mut m), Some(Verdict::Done));
        assert!(m.active().is_empty());
        assert_eq!(m.settling(), 1);
        assert!(m.take_settled().is_empty());
        let calls = w.slurm.status_calls.get();
        m.poll();
        assert_eq!(
            w.slurm.status_calls.get(),
            calls + 1,
            "still asked, in the batch"
        );
        assert_eq!(m.settling(), 1, "RUNNING is not an end");
        set(&w, 1, JobState::Completed);
        assert_eq!(poll1(&mut m), None, "no second verdict");
        let settled = m.take_settled();
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].2.as_ref().unwrap().state, JobState::Completed);
        assert_eq!(m.last_status(1).unwrap().nodes.as_deref(), Some("n1"));
        assert_eq!(m.settling(), 0);
        assert!(m.poll().is_empty());
        // a job Slurm keeps listing as running after its verdict settles after the grace,
        // and an unreachable controller settles nothing
        m.track("k3", 3, 1);
        set(&w, 3, JobState::Running);
        m.poll();
        w.cache.committed.borrow_mut().insert("k3".into());
        m.poll();
        assert_eq!(m.settling(), 1);
        w.slurm.down.set(true);
        m.poll();
        assert_eq!(m.settling(), 1);
        w.slurm.down.set(false);
        w.clock.advance(61);
        m.poll();
        let settled = m.take_settled();
        assert_eq!(settled[0].2.as_ref().unwrap().state, JobState::Running);
        // The run is over: whatever still settles is settled with what Slurm last said.
        m.track("k4", 4, 1);
        set(&w, 4, JobState::Running);
        m.poll();
        w.cache.committed.borrow_mut().insert("k4".into());
        m.poll();
        assert_eq!(m.settling(), 1);
        m.settle_now();
        assert_eq!(m.settling(), 0);
        assert_eq!(m.take_settled()[0].0, 4);
    }

    #[test]
    fn completed_in_slurm_is_not_done_without_the_record() {
        // snakemake#1227: a finished job's status taken as success
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::Completed);
        assert!(matches!(poll1(&mut m), Some(Verdict::Waiting { .. })));
        w.clock.advance(30);
        assert_eq!(poll1(&mut m), None);
        assert!(
            w.cache.refreshes.get() >= 2,
            "the view is refreshed while waiting"
        );
        // the record shows up late (NFS attribute cache): done, no false failure
        w.cache.committed.borrow_mut().insert("k".into());
        assert_eq!(poll1(&mut m), Some(Verdict::Done));
    }

    #[test]
    fn completed_without_any_trace_is_lost_after_the_grace() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::Completed);
        assert!(matches!(poll1(&mut m), Some(Verdict::Waiting { .. })));
        w.clock.advance(61);
        assert!(matches!(
            poll1(&mut m),
            Some(Verdict::Retry {
                why: RetryReason::Lost(_)
            })
        ));
    }

    #[test]
    fn the_stage_s_own_error_is_a_failure_from_the_attempt_file() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::Failed);
        w.cache
            .attempts
            .borrow_mut()
            .insert(1, attempt(1, Some(Outcome::Failed), Some("bad data")));
        let v = poll1(&mut m).unwrap();
        assert_eq!(
            v,
            Verdict::Failed {
                error: "bad data (job 1 on n1)".into()
            }
        );
    }

    #[test]
    fn failed_without_an_attempt_waits_then_fails_with_slurms_word() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::Failed);
        assert!(matches!(poll1(&mut m), Some(Verdict::Waiting { .. })));
        w.clock.advance(61);
        match poll1(&mut m) {
            Some(Verdict::Failed { error }) => assert!(error.contains("ended FAILED"), "{error}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn node_failure_preemption_boot_failure_are_retried_at_once() {
        for (s, name) in [
            (JobState::NodeFail, "NODE_FAIL"),
            (JobState::Preempted, "PREEMPTED"),
            (JobState::BootFail, "BOOT_FAIL"),
        ] {
            let w = world();
            let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
            m.track("k", 1, 1);
            set(&w, 1, s);
            assert_eq!(
                poll1(&mut m),
                Some(Verdict::Retry {
                    why: RetryReason::Slurm(name.into())
                })
            );
        }
    }

    #[test]
    fn timeout_retries_only_with_a_checkpoint() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::Timeout);
        poll1(&mut m);
        w.clock.advance(61);
        match poll1(&mut m) {
            Some(Verdict::Failed { error }) => assert!(error.contains("time limit"), "{error}"),
            v => panic!("{v:?}"),
        }
        let w = world();
        w.cache.checkpoints.borrow_mut().insert("k".into());
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::Timeout);
        poll1(&mut m);
        w.clock.advance(61);
        assert_eq!(
            poll1(&mut m),
            Some(Verdict::Retry {
                why: RetryReason::TimeLimit
            })
        );
        // the worker's own word (checkpointed on USR1) needs no grace
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::Running);
        w.cache
            .attempts
            .borrow_mut()
            .insert(1, attempt(1, Some(Outcome::Checkpointed), None));
        assert_eq!(
            poll1(&mut m),
            Some(Verdict::Retry {
                why: RetryReason::TimeLimit
            })
        );
    }

    #[test]
    fn out_of_memory_from_slurm_or_the_worker() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::OutOfMemory);
        assert!(matches!(poll1(&mut m), Some(Verdict::OutOfMemory { .. })));
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        w.cache.attempts.borrow_mut().insert(
            1,
            attempt(1, Some(Outcome::OutOfMemory), Some("CUDA out of memory")),
        );
        match poll1(&mut m) {
            Some(Verdict::OutOfMemory { detail }) => assert!(detail.contains("CUDA"), "{detail}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn hopeless_pending_reasons_are_reported_others_wait() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        w.slurm
            .queue
            .borrow_mut()
            .insert(1, (JobState::Pending, Some("PartitionTimeLimit".into())));
        assert_eq!(
            poll1(&mut m),
            Some(Verdict::Unsatisfiable {
                reason: "PartitionTimeLimit".into()
            })
        );
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        w.slurm.queue.borrow_mut().insert(
            1,
            (
                JobState::Pending,
                Some("ReqNodeNotAvail, UnavailableNodes:n3".into()),
            ),
        );
        assert!(matches!(poll1(&mut m), Some(Verdict::Pending { .. })));
    }

    #[test]
    fn odd_states_mean_not_yet() {
        for s in [
            JobState::Requeued,
            JobState::Resizing,
            JobState::Suspended,
            JobState::Completing,
            JobState::Configuring,
            JobState::Signaling,
            JobState::StageOut,
            JobState::Unknown("UNKNOWN".into()),
        ] {
            let w = world();
            let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
            m.track("k", 1, 1);
            set(&w, 1, s.clone());
            let v = poll1(&mut m).unwrap();
            assert!(!v.is_final(), "{s:?} -> {v:?}");
            w.clock.advance(3600);
            // an hour later still not decided by Slurm's odd word alone
            assert!(m.active().contains(&1), "{s:?}");
        }
    }

    #[test]
    fn an_unreachable_controller_changes_nothing_and_backs_off() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::Running);
        poll1(&mut m);
        w.slurm.down.set(true);
        let mut last = m.interval();
        for _ in 0..10 {
            w.clock.advance(300);
            assert_eq!(poll1(&mut m), None, "no verdict from silence");
            assert!(m.interval() >= last);
            last = m.interval();
        }
        assert_eq!(m.interval(), w.settings.poll_max);
        assert!(
            w.slurm.acct_calls.borrow().is_empty(),
            "no sacct while the controller is down"
        );
        assert!(m.active().contains(&1));
        w.slurm.down.set(false);
        w.cache.committed.borrow_mut().insert("k".into());
        assert_eq!(poll1(&mut m), Some(Verdict::Done));
    }

    #[test]
    fn a_purged_job_asks_accounting_once_and_only_for_it() {
        let w = world();
        *w.slurm.acct.borrow_mut() = Some(HashMap::from([(2, JobState::NodeFail)]));
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        m.track("k2", 2, 1);
        set(&w, 1, JobState::Running);
        let out = m.poll();
        assert_eq!(w.slurm.status_calls.get(), 1, "one batched squeue for both");
        assert_eq!(*w.slurm.acct_calls.borrow(), [vec![2]]);
        assert!(out.iter().any(|(id, _, v)| *id == 2
            && *v
                == Verdict::Retry {
                    why: RetryReason::Slurm("NODE_FAIL".into())
                }));
    }

    #[test]
    fn a_vanished_job_is_lost_only_after_the_grace() {
        // nextflow#5813 / snakemake#39: shared filesystem latency is not a failure
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        assert!(matches!(poll1(&mut m), Some(Verdict::Waiting { .. })));
        w.clock.advance(59);
        assert_eq!(poll1(&mut m), None);
        w.clock.advance(2);
        assert!(matches!(
            poll1(&mut m),
            Some(Verdict::Retry {
                why: RetryReason::Lost(_)
            })
        ));
        // the same, but the attempt file shows up within the grace: its word wins
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        poll1(&mut m);
        w.clock.advance(30);
        w.cache
            .attempts
            .borrow_mut()
            .insert(1, attempt(1, Some(Outcome::Failed), Some("own error")));
        assert!(matches!(poll1(&mut m), Some(Verdict::Failed { .. })));
    }

    #[test]
    fn a_running_job_whose_heartbeat_stops_is_lost() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::Running);
        w.cache
            .attempts
            .borrow_mut()
            .insert(1, attempt(1, None, None));
        for n in 0..5 {
            w.cache.beats.borrow_mut().insert(1, n);
            w.clock.advance(10);
            m.poll();
            assert!(m.active().contains(&1));
        }
        // beat stuck at 4: stale after 4 x 10 s + 60 s
        w.clock.advance(99);
        m.poll();
        assert!(m.active().contains(&1), "not yet stale");
        w.clock.advance(2);
        assert!(matches!(
            poll1(&mut m),
            Some(Verdict::Retry {
                why: RetryReason::Lost(_)
            })
        ));
    }

    #[test]
    fn retries_stop_at_the_limit() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, w.settings.resubmit_limit + 1);
        set(&w, 1, JobState::NodeFail);
        match poll1(&mut m) {
            Some(Verdict::Failed { error }) => {
                assert!(error.contains("gave up after 4 attempts"), "{error}")
            }
            v => panic!("{v:?}"),
        }
        let again = Verdict::Retry {
            why: RetryReason::TimeLimit,
        };
        assert_eq!(
            limit_retries(again.clone(), 4, 3),
            Verdict::Failed {
                error: "gave up after 4 attempts; the last: TimeLimit".into()
            }
        );
        assert_eq!(limit_retries(again.clone(), 3, 3), again);
    }

    #[test]
    fn our_cancel_is_cancelled_not_failed() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        m.mark_cancelled(1);
        set(&w, 1, JobState::Cancelled);
        assert_eq!(poll1(&mut m), Some(Verdict::Cancelled));
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::Cancelled);
        poll1(&mut m);
        w.clock.advance(61);
        match poll1(&mut m) {
            Some(Verdict::Failed { error }) => {
                assert!(error.contains("outside ugc-pipe"), "{error}")
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn the_interval_adapts_from_min_to_max_and_resets_on_change() {
        let w = world();
        let mut m = Monitor::new(&w.settings, &w.slurm, &w.cache, &w.clock);
        m.track("k", 1, 1);
        set(&w, 1, JobState::Running);
        m.poll();
        assert_eq!(m.interval(), Duration::from_secs(2));
        let mut seen = vec![];
        for _ in 0..12 {
            m.poll();
            seen.push(m.interval());
        }
        assert!(seen.windows(2).all(|p| p[0] <= p[1]), "{seen:?}");
        assert_eq!(*seen.last().unwrap(), Duration::from_secs(30));
        set(&w, 1, JobState::Requeued);
        m.poll();
        assert_eq!(
            m.interval(),
            Duration::from_secs(2),
            "a change polls soon again"
        );
        // the polling load: one status call per poll, whatever the number of jobs
        let calls = w.slurm.status_calls.get();
        for i in 10..60 {
            m.track("x", i, 1);
            set(&w, i, JobState::Running);
        }
        m.poll();
        assert_eq!(w.slurm.status_calls.get(), calls + 1);
    }
}
