//! The client of Slurm's commands: `sbatch --parsable`, one batched `squeue` per poll for
//! all of a run's jobs, `sacct` only for the ids squeue no longer lists and only where
//! accounting answers, `scancel`. Every command has a timeout (a hung controller blocks
//! `squeue` for ~18 s); a controller that does not answer is [`QueueError::Transient`],
//! which the monitor backs off from and never turns into a failed run. The commands are
//! paths, so tests put fakes in their place; every call is counted (the controller load).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A Slurm job id (we submit no arrays or heterogeneous jobs).
pub type JobId = u64;

/// A job's state as squeue or sacct names it, long or short form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Configuring,
    Running,
    Completing,
    Suspended,
    Stopped,
    Signaling,
    StageOut,
    Resizing,
    Requeued,
    RequeueHold,
    RequeueFed,
    ResvDelHold,
    Completed,
    Failed,
    Cancelled,
    Timeout,
    OutOfMemory,
    NodeFail,
    Preempted,
    BootFail,
    Deadline,
    Revoked,
    SpecialExit,
    /// A state this code does not know (a newer Slurm): "not yet", never an outcome.
    Unknown(String),
}

impl JobState {
    /// Parses `RUNNING`, `R`, `CANCELLED by 1000`, `CANCELLED+`.
    pub fn parse(s: &str) -> JobState {
        let word = s
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches('+');
        use JobState::*;
        match word.to_ascii_uppercase().as_str() {
            "PENDING" | "PD" => Pending,
            "CONFIGURING" | "CF" => Configuring,
            "RUNNING" | "R" => Running,
            "COMPLETING" | "CG" => Completing,
            "SUSPENDED" | "S" => Suspended,
            "STOPPED" | "ST" => Stopped,
            "SIGNALING" | "SI" => Signaling,
            "STAGE_OUT" | "SO" => StageOut,
            "RESIZING" | "RS" => Resizing,
            "REQUEUED" | "RQ" => Requeued,
            "REQUEUE_HOLD" | "RH" => RequeueHold,
            "REQUEUE_FED" | "RF" => RequeueFed,
            "RESV_DEL_HOLD" | "RD" => ResvDelHold,
            "COMPLETED" | "CD" => Completed,
            "FAILED" | "F" => Failed,
            "CANCELLED" | "CA" => Cancelled,
            "TIMEOUT" | "TO" => Timeout,
            "OUT_OF_MEMORY" | "OOM" => OutOfMemory,
            "NODE_FAIL" | "NF" => NodeFail,
            "PREEMPTED" | "PR" => Preempted,
            "BOOT_FAIL" | "BF" => BootFail,
            "DEADLINE" | "DL" => Deadline,
            "REVOKED" | "RV" => Revoked,
            "SPECIAL_EXIT" | "SE" => SpecialExit,
            _ => Unknown(s.trim().to_string()),
        }
    }

    /// The job will not run again by itself. Everything else, unknown states included, is
    /// "not yet" (Snakemake's plugin once read UNKNOWN as success).
    pub fn is_ended(&self) -> bool {
        use JobState::*;
        matches!(
            self,
            Completed
                | Failed
                | Cancelled
                | Timeout
                | OutOfMemory
                | NodeFail
                | Preempted
                | BootFail
                | Deadline
                | Revoked
                | SpecialExit
        )
    }

    /// Slurm's long name of the state (`OUT_OF_MEMORY`), or the word it gave for one this
    /// code does not know: what the registry records and `status` shows.
    pub fn name(&self) -> String {
        use JobState::*;
        let n = match self {
            Pending => "PENDING",
            Configuring => "CONFIGURING",
            Running => "RUNNING",
            Completing => "COMPLETING",
            Suspended => "SUSPENDED",
            Stopped => "STOPPED",
            Signaling => "SIGNALING",
            StageOut => "STAGE_OUT",
            Resizing => "RESIZING",
            Requeued => "REQUEUED",
            RequeueHold => "REQUEUE_HOLD",
            RequeueFed => "REQUEUE_FED",
            ResvDelHold => "RESV_DEL_HOLD",
            Completed => "COMPLETED",
            Failed => "FAILED",
            Cancelled => "CANCELLED",
            Timeout => "TIMEOUT",
            OutOfMemory => "OUT_OF_MEMORY",
            NodeFail => "NODE_FAIL",
            Preempted => "PREEMPTED",
            BootFail => "BOOT_FAIL",
            Deadline => "DEADLINE",
            Revoked => "REVOKED",
            SpecialExit => "SPECIAL_EXIT",
            Unknown(s) => return s.clone(),
        };
        n.to_string()
    }

    /// Waiting to start (or to start again).
    pub fn is_waiting(&self) -> bool {
        use JobState::*;
        matches!(
            self,
            Pending | Requeued | RequeueHold | RequeueFed | ResvDelHold
        )
    }
}

/// What Slurm says about one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub id: JobId,
    pub state: JobState,
    /// Why it is pending (`Resources`, `PartitionTimeLimit`, ...), `None` for `None`.
    pub reason: Option<String>,
    /// Node list once it runs.
    pub nodes: Option<String>,
    pub submitted: Option<String>,
    pub started: Option<String>,
    /// `exit:signal` where the source gives it (sacct).
    pub exit_code: Option<String>,
}

impl JobStatus {
    /// Submission to start, from Slurm's own times (`%V`, `%S`: one clock, the
    /// controller's, so no skew between machines), to the second; `None` before it starts.
    pub fn queue_wait(&self) -> Option<Duration> {
        let submitted = slurm_time_s(self.submitted.as_deref()?)?;
        let started = slurm_time_s(self.started.as_deref()?)?;
        u64::try_from(started - submitted)
            .ok()
            .map(Duration::from_secs)
    }
}

/// Seconds of a Slurm time stamp `YYYY-MM-DDTHH:MM:SS` counted as if it were UTC (its
/// zone is the controller's; only differences of two stamps mean anything).
fn slurm_time_s(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec)
}

/// Why a Slurm command gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The controller did not answer (timeout, connection refused, busy): retry later.
    #[error("{cmd}: Slurm did not answer ({message}); retrying")]
    Transient { cmd: String, message: String },
    /// sbatch refused the job (bad partition, impossible request): the stage fails.
    #[error("sbatch refused the job: {message}")]
    Rejected { message: String },
    /// The command is not installed or not runnable.
    #[error("cannot run {cmd}: {message}")]
    Missing { cmd: String, message: String },
    /// Output we cannot read: a Slurm we do not know.
    #[error("{cmd}: unexpected output {output:?}")]
    Parse { cmd: String, output: String },
}

impl QueueError {
    pub fn is_transient(&self) -> bool {
        matches!(self, QueueError::Transient { .. })
    }
}

/// The Slurm operations the executor needs; [`SlurmCli`] runs the real commands.
pub trait SlurmClient {
    fn submit(&self, script: &Path) -> Result<JobId, QueueError>;
    /// Jobs the controller still knows, in one call; ids it dropped are absent.
    fn status(&self, ids: &[JobId]) -> Result<Vec<JobStatus>, QueueError>;
    /// Ended jobs from accounting; `Ok(None)` when the cluster keeps no accounting.
    fn accounting(&self, ids: &[JobId]) -> Result<Option<Vec<JobStatus>>, QueueError>;
    /// `signal` = `Some("USR1")`: ask the batch process to checkpoint and stop;
    /// `None`: cancel. Ids that already ended are not an error.
    fn cancel(&self, ids: &[JobId], signal: Option<&str>) -> Result<(), QueueError>;
    /// Jobs of ours with this name (a submission whose answer was lost).
    fn find_by_name(&self, name: &str) -> Result<Vec<JobId>, QueueError>;
    /// Every job of this user still in the queue (pending, running, completing), with its
    /// comment: one call, from which a restarted head finds the jobs of earlier runs by key.
    fn ours(&self) -> Result<Vec<OurJob>, QueueError>;
}

/// A job of this user in the queue, as [`SlurmClient::ours`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurJob {
    pub id: JobId,
    pub state: JobState,
    /// `--comment`: `ugc-pipe:run=R:key=K:node=N` for our jobs.
    pub comment: String,
}

impl OurJob {
    /// The run and key of a job that ugc-pipe submitted (its comment), `None` for others.
    pub fn run_and_key(&self) -> Option<(i64, &str)> {
        let rest = self.comment.strip_prefix("ugc-pipe:run=")?;
        let (run, rest) = rest.split_once(":key=")?;
        let key = rest.split(':').next()?;
        Some((run.parse().ok()?, key))
    }
}

/// The commands to run; names on PATH by default.
#[derive(Debug, Clone)]
pub struct Commands {
    pub sbatch: PathBuf,
    pub squeue: PathBuf,
    pub sacct: PathBuf,
    pub scancel: PathBuf,
    /// Per command; `sbatch` against a stopped controller fails after ~9 s, `squeue` ~18 s.
    pub timeout: Duration,
}

impl Default for Commands {
    fn default() -> Self {
        Commands {
            sbatch: "sbatch".into(),
            squeue: "squeue".into(),
            sacct: "sacct".into(),
            scancel: "scancel".into(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl Commands {
    /// The four commands in one folder (a test's fakes).
    pub fn in_dir(dir: &Path) -> Commands {
        Commands {
            sbatch: dir.join("sbatch"),
            squeue: dir.join("squeue"),
            sacct: dir.join("sacct"),
            scancel: dir.join("scancel"),
            ..Commands::default()
        }
    }
}

/// Which accounting source answers, found on first need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accounting {
    Database,
    /// `sacct -c`: jobcomp/filetxt, no slurmdbd.
    JobComp,
    None,
}

/// The client over the real commands.
pub struct SlurmCli {
    cmds: Commands,
    accounting: Mutex<Option<Accounting>>,
    calls: AtomicU64,
}

const SQUEUE_FORMAT: &str = "%i|%T|%r|%N|%V|%S";
const SACCT_FIELDS: &str = "JobID,State,ExitCode,NodeList,Submit,Start";

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Messages of a controller that is down, busy or unreachable.
fn looks_transient(msg: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "unable to contact slurm controller",
        "socket timed out",
        "timed out",
        "connection refused",
        "temporarily unavailable",
        "try again",
        "zero bytes were transmitted",
        "slurm_receive_msg",
        "communication connection failure",
        "slurmctld is not responding",
        "maxsubmitjob", // the account's queue is full: wait
        "job violates accounting/qos policy (job submit limit",
    ];
    let m = msg.to_ascii_lowercase();
    PATTERNS.iter().any(|p| m.contains(p))
}

impl SlurmCli {
    pub fn new(cmds: Commands) -> SlurmCli {
        SlurmCli {
            cmds,
            accounting: Mutex::new(None),
            calls: AtomicU64::new(0),
        }
    }

    /// Commands run so far (every call reaches the controller).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn run(&self, program: &Path, args: &[String]) -> Result<Output, QueueError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let cmd = program.display().to_string();
        run_with_timeout(program, args, self.cmds.timeout).map_err(|e| match e {
            RunError::Spawn(message) => QueueError::Missing {
                cmd: cmd.clone(),
                message,
            },
            RunError::Timeout => QueueError::Transient {
                cmd: cmd.clone(),
                message: format!("no answer in {:?}", self.cmds.timeout),
            },
        })
    }

    fn sacct(&self, mode: Accounting, ids: &[JobId]) -> Result<Output, QueueError> {
        let mut args: Vec<String> = vec!["-n".into(), "-P".into()];
        if mode == Accounting::JobComp {
            args.push("-c".into());
        }
        args.extend(["-j".into(), join_ids(ids), "-o".into(), SACCT_FIELDS.into()]);
        self.run(&self.cmds.sacct, &args)
    }
}

fn join_ids(ids: &[JobId]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    match s {
        "" | "None" | "(null)" | "N/A" | "Unknown" | "None assigned" => None,
        _ => Some(s.to_string()),
    }
}

/// Parses `squeue -h -o '%i|%T|%r|%N|%V|%S'`.
pub fn parse_squeue(out: &str) -> Result<Vec<JobStatus>, String> {
    let mut jobs = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('|').collect();
        let [id, state, reason, nodes, submitted, started] = f[..] else {
            return Err(line.to_string());
        };
        let id = id.trim().parse().map_err(|_| line.to_string())?;
        jobs.push(JobStatus {
            id,
            state: JobState::parse(state),
            reason: opt(reason),
            nodes: opt(nodes),
            submitted: opt(submitted),
            started: opt(started),
            exit_code: None,
        });
    }
    Ok(jobs)
}

/// Parses `sacct -n -P -o JobID,State,ExitCode,NodeList,Submit,Start`: the job's own line
/// only (its steps, `123.batch`, are skipped).
pub fn parse_sacct(out: &str) -> Result<Vec<JobStatus>, String> {
    let mut jobs = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('|').collect();
        let [id, state, exit, nodes, submitted, started] = f[..] else {
            return Err(line.to_string());
        };
        let Ok(id) = id.trim().parse() else {
            if id.contains(['.', '_', '+']) {
                continue;
            }
            return Err(line.to_string());
        };
        jobs.push(JobStatus {
            id,
            state: JobState::parse(state),
            reason: None,
            nodes: opt(nodes),
            submitted: opt(submitted),
            started: opt(started),
            exit_code: opt(exit),
        });
    }
    Ok(jobs)
}

impl SlurmClient for SlurmCli {
    fn submit(&self, script: &Path) -> Result<JobId, QueueError> {
        let out = self.run(
            &self.cmds.sbatch,
            &["--parsable".into(), script.to_string_lossy().into_owned()],
        )?;
        if out.code != Some(0) {
            let message = out.stderr.trim().to_string();
            return Err(if looks_transient(&message) || out.code.is_none() {
                QueueError::Transient {
                    cmd: "sbatch".into(),
                    message,
                }
            } else {
                QueueError::Rejected { message }
            });
        }
        // "123" or "123;cluster"
        let first = out.stdout.lines().next().unwrap_or("").trim();
        first
            .split(';')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| QueueError::Parse {
                cmd: "sbatch".into(),
                output: out.stdout.clone(),
            })
    }

    fn status(&self, ids: &[JobId]) -> Result<Vec<JobStatus>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // -t all: ended jobs stay listed (with their end state) until MinJobAge
        let args: Vec<String> = ["-h", "-t", "all", "-j", &join_ids(ids), "-o", SQUEUE_FORMAT]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = self.run(&self.cmds.squeue, &args)?;
        if out.code != Some(0) {
            // every id purged (squeue fails only when none of them is known)
            if out.stderr.contains("Invalid job id") {
                return Ok(Vec::new());
            }
            return Err(QueueError::Transient {
                cmd: "squeue".into(),
                message: out.stderr.trim().to_string(),
            });
        }
        parse_squeue(&out.stdout).map_err(|line| QueueError::Parse {
            cmd: "squeue".into(),
            output: line,
        })
    }

    fn accounting(&self, ids: &[JobId]) -> Result<Option<Vec<JobStatus>>, QueueError> {
        if ids.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let known = *self.accounting.lock().unwrap();
        let modes: Vec<Accounting> = match known {
            Some(Accounting::None) => return Ok(None),
            Some(m) => vec![m],
            None => vec![Accounting::Database, Accounting::JobComp],
        };
        for mode in modes {
            let out = self.sacct(mode, ids)?;
            if out.code == Some(0) {
                *self.accounting.lock().unwrap() = Some(mode);
                return parse_sacct(&out.stdout)
                    .map(Some)
                    .map_err(|line| QueueError::Parse {
                        cmd: "sacct".into(),
                        output: line,
                    });
            }
            if looks_transient(&out.stderr) {
                return Err(QueueError::Transient {
                    cmd: "sacct".into(),
                    message: out.stderr.trim().to_string(),
                });
            }
            if known.is_some() {
                // it worked before: a passing problem
                return Err(QueueError::Transient {
                    cmd: "sacct".into(),
                    message: out.stderr.trim().to_string(),
                });
            }
        }
        *self.accounting.lock().unwrap() = Some(Accounting::None);
        Ok(None)
    }

    fn cancel(&self, ids: &[JobId], signal: Option<&str>) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args: Vec<String> = Vec::new();
        if let Some(s) = signal {
            args.push(format!("--signal={s}"));
            args.push("--batch".into());
        }
        args.extend(ids.iter().map(|i| i.to_string()));
        let out = self.run(&self.cmds.scancel, &args)?;
        if out.code == Some(0) {
            return Ok(());
        }
        // ended or purged jobs: nothing left to cancel
        let benign = out.stderr.lines().all(|l| {
            l.trim().is_empty()
                || l.contains("already completing or completed")
                || l.contains("Invalid job id")
                || l.contains("Job has already finished")
        });
        if benign {
            Ok(())
        } else {
            Err(QueueError::Transient {
                cmd: "scancel".into(),
                message: out.stderr.trim().to_string(),
            })
        }
    }

    fn ours(&self) -> Result<Vec<OurJob>, QueueError> {
        let args: Vec<String> = ["-h", "--me", "-o", OURS_FORMAT]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = self.run(&self.cmds.squeue, &args)?;
        if out.code != Some(0) {
            return Err(QueueError::Transient {
                cmd: "squeue".into(),
                message: out.stderr.trim().to_string(),
            });
        }
        parse_ours(&out.stdout).map_err(|line| QueueError::Parse {
            cmd: "squeue".into(),
            output: line,
        })
    }

    fn find_by_name(&self, name: &str) -> Result<Vec<JobId>, QueueError> {
        let args: Vec<String> = ["-h", "--me", "-n", name, "-o", "%i"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = self.run(&self.cmds.squeue, &args)?;
        if out.code != Some(0) {
            return Err(QueueError::Transient {
                cmd: "squeue".into(),
                message: out.stderr.trim().to_string(),
            });
        }
        out.stdout
            .split_whitespace()
            .map(|s| {
                s.parse().map_err(|_| QueueError::Parse {
                    cmd: "squeue".into(),
                    output: s.to_string(),
                })
            })
            .collect()
    }
}

/// `ugc-pipe unlock` asks Slurm about the jobs holding locks with the poll's own batched
/// `squeue -j` (ended jobs listed until `MinJobAge`, purged ones absent).
impl crate::lock::JobProbe for SlurmCli {
    fn jobs(&self, ids: &[u64]) -> Result<Vec<crate::lock::JobSeen>, String> {
        let listed = self.status(ids).map_err(|e| e.to_string())?;
        Ok(listed
            .into_iter()
            .map(|j| crate::lock::JobSeen {
                id: j.id,
                state: j.state.name(),
                ended: j.state.is_ended(),
            })
            .collect())
    }
}

/// `squeue -o` of [`SlurmClient::ours`]: the comment last, since it may hold `|`.
const OURS_FORMAT: &str = "%i|%T|%k";

/// Parses `id|state|comment` lines.
pub fn parse_ours(out: &str) -> Result<Vec<OurJob>, String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(3, '|');
            let (Some(id), Some(state), Some(comment)) = (f.next(), f.next(), f.next()) else {
                return Err(l.to_string());
            };
            Ok(OurJob {
                id: id.trim().parse().map_err(|_| l.to_string())?,
                state: JobState::parse(state.trim()),
                comment: comment.trim().to_string(),
            })
        })
        .collect()
}

/// Polls of one run's jobs in a map, as the monitor needs them.
pub fn by_id(jobs: Vec<JobStatus>) -> HashMap<JobId, JobStatus> {
    jobs.into_iter().map(|j| (j.id, j)).collect()
}

enum RunError {
    Spawn(String),
    Timeout,
}

/// Runs `program args`, collecting stdout and stderr, killing it after `timeout`.
fn run_with_timeout(
    program: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<Output, RunError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RunError::Spawn(e.to_string()))?;
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped")));
    let err = reader(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(RunError::Spawn(e.to_string())),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        None => Err(RunError::Timeout),
        Some(s) => Ok(Output {
            code: s.code(),
            stdout,
            stderr,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn our_jobs_are_found_by_the_run_and_key_in_their_comment() {
        let key = "ab".repeat(32);
        let out = format!(
            "12|RUNNING|ugc-pipe:run=7:key={key}:node=train_a|b_\n13|PENDING|(null)\n14|COMPLETING|someone else's\n"
        );
        let jobs = parse_ours(&out).unwrap();
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0].state, JobState::Running);
        assert_eq!(jobs[0].run_and_key(), Some((7, key.as_str())));
        assert_eq!(jobs[1].run_and_key(), None);
        assert_eq!(jobs[2].run_and_key(), None);
        assert!(parse_ours("garbage\n").is_err());
    }

    use super::*;

    /// Writes fake Slurm commands (shell scripts) into a folder; each logs its argv.
    struct Fakes {
        dir: tempfile::TempDir,
    }

    impl Fakes {
        fn new() -> Fakes {
            Fakes {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn put(&self, name: &str, body: &str) {
            let p = self.dir.path().join(name);
            let log = self.dir.path().join("calls.log");
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho \"{name} $*\" >> '{}'\n{body}\n",
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("calls.log"))
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect()
        }
        fn cli(&self) -> SlurmCli {
            let mut c = Commands::in_dir(self.dir.path());
            c.timeout = Duration::from_millis(500);
            SlurmCli::new(c)
        }
    }

    #[test]
    fn every_state_parses_long_and_short_and_unknown_is_not_an_end() {
        use JobState::*;
        let table = [
            ("PENDING", "PD", Pending),
            ("CONFIGURING", "CF", Configuring),
            ("RUNNING", "R", Running),
            ("COMPLETING", "CG", Completing),
            ("SUSPENDED", "S", Suspended),
            ("STOPPED", "ST", Stopped),
            ("SIGNALING", "SI", Signaling),
            ("STAGE_OUT", "SO", StageOut),
            ("RESIZING", "RS", Resizing),
            ("REQUEUED", "RQ", Requeued),
            ("REQUEUE_HOLD", "RH", RequeueHold),
            ("REQUEUE_FED", "RF", RequeueFed),
            ("RESV_DEL_HOLD", "RD", ResvDelHold),
            ("COMPLETED", "CD", Completed),
            ("FAILED", "F", Failed),
            ("CANCELLED", "CA", Cancelled),
            ("TIMEOUT", "TO", Timeout),
            ("OUT_OF_MEMORY", "OOM", OutOfMemory),
            ("NODE_FAIL", "NF", NodeFail),
            ("PREEMPTED", "PR", Preempted),
            ("BOOT_FAIL", "BF", BootFail),
            ("DEADLINE", "DL", Deadline),
            ("REVOKED", "RV", Revoked),
            ("SPECIAL_EXIT", "SE", SpecialExit),
        ];
        let ended = [
            Completed,
            Failed,
            Cancelled,
            Timeout,
            OutOfMemory,
            NodeFail,
            Preempted,
            BootFail,
            Deadline,
            Revoked,
            SpecialExit,
        ];
        for (long, short, want) in table {
            assert_eq!(JobState::parse(long), want);
            assert_eq!(JobState::parse(short), want);
            assert_eq!(want.is_ended(), ended.contains(&want), "{long}");
            assert_eq!(want.name(), long, "the name round-trips");
        }
        assert_eq!(JobState::parse("CANCELLED by 1000"), Cancelled);
        assert_eq!(JobState::parse("CANCELLED+"), Cancelled);
        let odd = JobState::parse("UNKNOWN");
        assert_eq!(odd, Unknown("UNKNOWN".into()));
        assert!(!odd.is_ended() && !odd.is_waiting());
        assert!(!JobState::parse("").is_ended());
        assert!(Requeued.is_waiting() && !Requeued.is_ended());
    }

    #[test]
    fn queue_wait_from_slurms_own_times() {
        let st = |v: &str, s: &str| JobStatus {
            id: 1,
            state: JobState::Running,
            reason: None,
            nodes: None,
            submitted: Some(v.into()),
            started: Some(s.into()),
            exit_code: None,
        };
        // across a day and a leap-year February end
        let w = st("2024-02-28T23:59:58", "2024-03-01T00:00:01").queue_wait();
        assert_eq!(w, Some(Duration::from_secs(86_400 + 3)));
        assert_eq!(slurm_time_s("1970-01-01T00:00:00"), Some(0));
        assert_eq!(slurm_time_s("2023-11-14T22:13:20"), Some(1_700_000_000));
        // not started yet, or a start before the submission: unknown
        assert_eq!(st("2026-01-01T00:00:00", "N/A").queue_wait(), None);
        assert_eq!(
            st("2026-01-01T00:00:05", "2026-01-01T00:00:00").queue_wait(),
            None
        );
        assert_eq!(slurm_time_s("2026-13-01T00:00:00"), None);
    }

    #[test]
    fn squeue_and_sacct_lines() {
        let q = parse_squeue(
            "12|PENDING|PartitionTimeLimit|||N/A\n13|RUNNING|None|node[1-2]|2026-01-01T00:00:00|2026-01-01T00:00:01\n",
        )
        .unwrap();
        assert_eq!(q[0].reason.as_deref(), Some("PartitionTimeLimit"));
        assert_eq!(q[0].started, None);
        assert_eq!(q[1].nodes.as_deref(), Some("node[1-2]"));
        assert!(parse_squeue("12|PENDING\n").is_err());
        let a = parse_sacct(
            "5|FAILED|3:0|n1|x|y\n5.batch|FAILED|3:0|n1|x|y\n6|CANCELLED by 0|0:15|n1|x|y\n",
        )
        .unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].exit_code.as_deref(), Some("3:0"));
        assert_eq!(a[1].state, JobState::Cancelled);
    }

    #[test]
    fn submit_reads_parsable_output_and_classifies_refusals() {
        let f = Fakes::new();
        f.put("sbatch", "echo '4242;cluster'");
        assert_eq!(f.cli().submit(Path::new("/x/s.sbatch")).unwrap(), 4242);
        assert_eq!(f.calls(), ["sbatch --parsable /x/s.sbatch"]);
        f.put(
            "sbatch",
            "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2; exit 1",
        );
        let e = f.cli().submit(Path::new("s")).unwrap_err();
        assert!(matches!(e, QueueError::Rejected { .. }), "{e}");
        f.put(
            "sbatch",
            "echo 'sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)' >&2; exit 1",
        );
        assert!(f.cli().submit(Path::new("s")).unwrap_err().is_transient());
        f.put("sbatch", "echo 'Submitted batch job 5'");
        assert!(matches!(
            f.cli().submit(Path::new("s")),
            Err(QueueError::Parse { .. })
        ));
    }

    #[test]
    fn a_hung_controller_is_transient_after_the_timeout() {
        let f = Fakes::new();
        f.put("squeue", "exec sleep 5");
        let t = Instant::now();
        let e = f.cli().status(&[1]).unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "killed at the 0.5 s timeout"
        );
    }

    #[test]
    fn a_missing_command_is_not_transient() {
        let f = Fakes::new();
        let e = f.cli().status(&[1]).unwrap_err();
        assert!(matches!(e, QueueError::Missing { .. }), "{e}");
    }

    #[test]
    fn one_batched_squeue_per_poll() {
        let f = Fakes::new();
        f.put(
            "squeue",
            "echo '1|RUNNING|None|n1|a|b'; echo '3|COMPLETED|None|n1|a|b'",
        );
        let cli = f.cli();
        let got = cli.status(&[1, 2, 3]).unwrap();
        assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(
            f.calls(),
            [format!("squeue -h -t all -j 1,2,3 -o {SQUEUE_FORMAT}")]
        );
        assert_eq!(cli.calls(), 1);
        assert!(cli.status(&[]).unwrap().is_empty());
        assert_eq!(cli.calls(), 1, "no call for no jobs");
        f.put(
            "squeue",
            "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
        );
        assert!(f.cli().status(&[9]).unwrap().is_empty(), "all purged");
        f.put(
            "squeue",
            "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2; exit 1",
        );
        assert!(f.cli().status(&[9]).unwrap_err().is_transient());
    }

    #[test]
    fn the_lock_probe_is_one_batched_squeue() {
        use crate::lock::{JobProbe, JobSeen};
        let f = Fakes::new();
        f.put(
            "squeue",
            "echo '4|RUNNING|None|n1|a|b'; echo '6|COMPLETED|None|n1|a|b'",
        );
        let seen = f.cli().jobs(&[4, 5, 6]).unwrap();
        assert_eq!(
            seen,
            [
                JobSeen {
                    id: 4,
                    state: "RUNNING".into(),
                    ended: false
                },
                JobSeen {
                    id: 6,
                    state: "COMPLETED".into(),
                    ended: true
                }
            ]
        );
        assert_eq!(f.calls().len(), 1);
        f.put(
            "squeue",
            "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2; exit 1",
        );
        let e = f.cli().jobs(&[4]).unwrap_err();
        assert!(e.contains("did not answer"), "{e}");
    }

    #[test]
    fn accounting_is_found_once_and_skipped_when_absent() {
        let f = Fakes::new();
        f.put(
            "sacct",
            "case \"$*\" in *' -c '*) echo '7|TIMEOUT|0:0|n1|a|b';; *) echo 'Slurm accounting storage is disabled' >&2; exit 1;; esac",
        );
        let cli = f.cli();
        let got = cli.accounting(&[7]).unwrap().unwrap();
        assert_eq!(got[0].state, JobState::Timeout);
        cli.accounting(&[7]).unwrap().unwrap();
        // the database is tried once; later calls go straight to `sacct -c`
        assert_eq!(f.calls().len(), 3, "{:?}", f.calls());
        assert!(f.calls()[2].contains(" -c "), "{:?}", f.calls());

        let f = Fakes::new();
        f.put(
            "sacct",
            "echo 'Slurm accounting storage is disabled' >&2; exit 1",
        );
        let cli = f.cli();
        assert_eq!(cli.accounting(&[7]).unwrap(), None);
        assert_eq!(cli.accounting(&[8]).unwrap(), None);
        assert_eq!(cli.calls(), 2, "never asked again once known absent");
    }

    #[test]
    fn cancel_ignores_ended_jobs_and_signals_the_batch_process() {
        let f = Fakes::new();
        f.put("scancel", "echo 'scancel: error: Kill job error on job id 5: Job/step already completing or completed' >&2; exit 1");
        f.cli().cancel(&[5, 6], Some("USR1")).unwrap();
        assert_eq!(f.calls(), ["scancel --signal=USR1 --batch 5 6"]);
        f.put(
            "scancel",
            "echo 'scancel: error: Unable to contact slurm controller' >&2; exit 1",
        );
        assert!(f.cli().cancel(&[5], None).unwrap_err().is_transient());
    }

    #[test]
    fn find_by_name_lists_ids() {
        let f = Fakes::new();
        f.put("squeue", "echo 11; echo 12");
        assert_eq!(f.cli().find_by_name("ugc-r1-abc").unwrap(), [11, 12]);
        assert_eq!(f.calls(), ["squeue -h --me -n ugc-r1-abc -o %i"]);
    }
}
