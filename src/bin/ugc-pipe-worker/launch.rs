//! The local launcher of a data-parallel stage: `exec` on a job of `devices: N > 1` with no
//! `WORLD_SIZE` in its environment starts N copies of itself (`exec` with the same
//! arguments), each one rank with torchrun's variables set (`RankEnv::to_vars`), and
//! supervises them:
//!
//! - rank 0's stdout (the progress events the head reads) is forwarded, except its final
//!   `done` event, which the launcher replaces with the stage's outcome; the other ranks'
//!   stdout is dropped (rank 0 alone reports);
//! - every rank's stderr goes to the stage log, each line prefixed `[rank r]`; the last
//!   error line of each rank is kept for the failure message;
//! - a rank that exits non-zero or dies by a signal fails the stage: the others get SIGTERM,
//!   then SIGKILL after the cancel grace, and the error names the rank and its last error
//!   line (`rank 1 died of signal 9 (SIGKILL)`);
//! - SIGTERM, SIGINT or SIGHUP is forwarded to the ranks (they checkpoint and stop), and the
//!   launcher waits for them.
//!
//! The ranks stay in the launcher's process group, which the head signals and kills as one,
//! and die with the launcher (parent-death signal), as the launcher dies with the head.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ugc_engine::events::StageEvent;
use ugc_engine::job::Job;
use ugc_engine::rank::RankEnv;
use ugc_pipe::cli::{CliError, CliResult, EXIT_FAILED, EXIT_INTERRUPTED};

/// How often the supervisor looks at its ranks and at the signal flags.
const POLL: Duration = Duration::from_millis(20);

/// How long the other ranks get to exit on their own once rank 0 has succeeded (they are
/// past the final barrier, or waiting for a rendezvous that rank 0, having found the key
/// committed, never joins) before they are killed: the stage's outcome is decided.
const AFTER_LEADER: Duration = Duration::from_secs(10);

/// The signals a launcher forwards to its ranks, each with the flag its handler sets.
pub struct Signals {
    flags: Vec<(libc::c_int, Arc<AtomicBool>)>,
}

impl Signals {
    /// Handlers for SIGTERM, SIGINT, SIGHUP and SIGUSR1 (the signals that cancel a stage;
    /// USR1 is Slurm's time-limit warning), each passed on to the ranks.
    pub fn register() -> std::io::Result<Signals> {
        let mut flags = Vec::new();
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(sig, flag.clone())?;
            flags.push((sig, flag));
        }
        Ok(Signals { flags })
    }

    /// Flags set by nothing but the caller: for tests.
    #[cfg(test)]
    fn manual() -> Signals {
        Signals {
            flags: [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1]
                .into_iter()
                .map(|s| (s, Arc::new(AtomicBool::new(false))))
                .collect(),
        }
    }

    /// The signals received since the last call.
    fn take(&self) -> Vec<libc::c_int> {
        self.flags
            .iter()
            .filter(|(_, f)| f.swap(false, Ordering::SeqCst))
            .map(|(s, _)| *s)
            .collect()
    }
}

/// How the ranks of a stage ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// Every rank exited 0; rank 0's own `done` event, if it sent one.
    Ok(Option<StageEvent>),
    /// A signal asked the stage to stop, and the ranks stopped (rank 0's `done`, if any).
    Cancelled(Option<StageEvent>),
    /// The first rank that failed, and why (its exit or signal, and its last error line).
    Failed { rank: usize, error: String },
}

/// What one rank's stderr reader keeps: its last error line (else its last line).
#[derive(Default)]
struct LastLines {
    error: Option<String>,
    any: Option<String>,
}

/// A line that reports an error: a `tracing` ERROR line, a panic, a C++ exception.
fn is_error_line(line: &str) -> bool {
    line.contains(" ERROR ")
        || line.contains("panicked at")
        || line.contains("terminate called")
        || line.to_ascii_lowercase().contains("error")
}

/// A signal's name as `kill -l` and the C headers write it.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    format!("signal {sig} ({name})")
}

/// Starts `cmds` (rank r is `cmds[r]`) and supervises them until all have ended.
/// `events` receives rank 0's stdout lines but its `done` event; `log` every rank's stderr,
/// prefixed. `grace`: how long a rank asked to stop (after a peer failed) gets before
/// SIGKILL.
pub fn run_ranks(
    cmds: Vec<Command>,
    grace: Duration,
    signals: &Signals,
    events: Arc<Mutex<dyn Write + Send>>,
    log: Arc<Mutex<dyn Write + Send>>,
) -> std::io::Result<Ended> {
    let mut children: Vec<Option<Child>> = Vec::new();
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut last: Vec<Arc<Mutex<LastLines>>> = Vec::new();
    let done: Arc<Mutex<Option<StageEvent>>> = Arc::new(Mutex::new(None));
    let launcher = std::process::id() as libc::pid_t;
    for (r, mut cmd) in cmds.into_iter().enumerate() {
        cmd.stdin(Stdio::null())
            .stdout(if r == 0 {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        // SAFETY: prctl and getppid are async-signal-safe; the error is built without
        // allocating. A rank dies with its launcher (which dies with the head).
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != launcher {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                // The ranks already started would wait for this one until the timeout.
                for c in children.iter_mut().flatten() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(std::io::Error::other(format!("cannot start rank {r}: {e}")));
            }
        };
        let lines = Arc::new(Mutex::new(LastLines::default()));
        if let Some(err) = child.stderr.take() {
            let (lines, log) = (lines.clone(), log.clone());
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut log) = log.lock() {
                        let _ = writeln!(log, "[rank {r}] {line}");
                        let _ = log.flush();
                    }
                    let mut l = lines.lock().expect("last lines");
                    if is_error_line(&line) {
                        l.error = Some(line.clone());
                    }
                    if !line.trim().is_empty() {
                        l.any = Some(line);
                    }
                }
            }));
        }
        if let Some(out) = child.stdout.take() {
            let (events, done) = (events.clone(), done.clone());
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Some(ev @ StageEvent::Done { .. }) = StageEvent::parse(&line) {
                        *done.lock().expect("done event") = Some(ev);
                        continue;
                    }
                    if let Ok(mut out) = events.lock() {
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                }
            }));
        }
        children.push(Some(child));
        last.push(lines);
    }

    let mut failure: Option<(usize, ExitStatus)> = None;
    let mut leader_ok = false;
    let mut cancelled = false;
    let mut kill_at: Option<Instant> = None;
    let signal_all = |children: &[Option<Child>], sig: libc::c_int| {
        for c in children.iter().flatten() {
            // SAFETY: kill(2) on our own unreaped child: its pid is still ours.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    };
    while children.iter().any(Option::is_some) {
        for sig in signals.take() {
            cancelled = true;
            signal_all(&children, sig);
        }
        for r in 0..children.len() {
            let Some(child) = children[r].as_mut() else {
                continue;
            };
            let Some(status) = child.try_wait()? else {
                continue;
            };
            children[r] = None;
            if failure.is_some() || leader_ok || cancelled {
                continue;
            }
            if !status.success() {
                failure = Some((r, status));
                // Its peers would wait for it in their next collective until the timeout.
                signal_all(&children, libc::SIGTERM);
                kill_at = Some(Instant::now() + grace);
            } else if r == 0 {
                // Rank 0 committed (after the final barrier) or found the key committed.
                leader_ok = true;
                kill_at = Some(Instant::now() + AFTER_LEADER.min(grace));
            }
        }
        if let Some(at) = kill_at
            && Instant::now() >= at
        {
            signal_all(&children, libc::SIGKILL);
            kill_at = None;
        }
        std::thread::sleep(POLL);
    }
    // The pipes close as the ranks end: the readers finish what they hold.
    for h in readers {
        let _ = h.join();
    }
    let done = done.lock().expect("done event").take();
    Ok(match failure {
        Some((r, status)) => {
            let how = match (status.code(), status.signal()) {
                (_, Some(sig)) => format!("rank {r} died of {}", signal_name(sig)),
                (Some(code), _) => format!("rank {r} failed (exit code {code})"),
                _ => format!("rank {r} ended without a status"),
            };
            let l = last[r].lock().expect("last lines");
            let error = match l.error.as_ref().or(l.any.as_ref()) {
                Some(line) => format!("{how}: {}", line.trim()),
                None => how,
            };
            Ended::Failed { rank: r, error }
        }
        None if cancelled => Ended::Cancelled(done),
        None => Ended::Ok(done),
    })
}

/// A free TCP port on 127.0.0.1 for rank 0's store: the kernel picks one, it is released,
/// and rank 0 binds it a moment later (another process taking it in between fails the
/// rendezvous, and the stage, with a clear error; it is not silently shared).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs `job` as `job.resources.devices` local ranks: this process's own arguments again,
/// once per rank, with the rank variables set. Writes the stage's `done` event and returns
/// the exit code the head reads.
pub fn launch(job: &Job, signals: &Signals) -> CliResult {
    let world = job.resources.devices;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot find this program to start ranks: {e}")))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let port = free_port().map_err(|e| CliError::failed(format!("no free port: {e}")))?;
    let mut cmds = Vec::new();
    for r in 0..world {
        if job.rank_device(r).is_none() {
            return Err(CliError::failed(format!(
                "stage `{}`: {world} devices but the job names only GPUs {:?}",
                job.node, job.gpus
            )));
        }
        let env = RankEnv {
            rank: r,
            world,
            local_rank: r,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            timeout: job.resources.dist_timeout,
        };
        let mut cmd = Command::new(&exe);
        cmd.args(&args);
        for (k, v) in env.to_vars() {
            cmd.env(k, v);
        }
        cmds.push(cmd);
    }
    tracing::info!(
        "stage {} as {world} ranks (rendezvous 127.0.0.1:{port}, timeout {:?})",
        job.node,
        job.resources.dist_timeout
    );
    let grace = Duration::from_secs(ugc_engine::executor::CANCEL_GRACE_SECS);
    let events: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(std::io::stdout()));
    let log: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(std::io::stderr()));
    let ended = run_ranks(cmds, grace, signals, events, log)
        .map_err(|e| CliError::failed(format!("stage `{}`: {e}", job.node)))?;
    let (done, code) = match ended {
        Ended::Ok(Some(done)) => (done, 0),
        Ended::Ok(None) => (
            StageEvent::Done {
                outcome: "failed".into(),
                error: Some("rank 0 exited 0 without reporting an outcome".into()),
            },
            EXIT_FAILED,
        ),
        Ended::Cancelled(done) => (
            done.unwrap_or(StageEvent::Done {
                outcome: "cancelled".into(),
                error: Some("cancelled".into()),
            }),
            EXIT_INTERRUPTED,
        ),
        Ended::Failed { error, .. } => {
            tracing::error!("stage `{}`: {error}", job.node);
            (
                StageEvent::Done {
                    outcome: "failed".into(),
                    error: Some(format!("stage `{}`: {error}", job.node)),
                },
                EXIT_FAILED,
            )
        }
    };
    // Every reader has finished: nothing else writes to stdout now.
    ugc_engine::events::EventProgress::new(std::io::stdout()).emit(&done);
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    /// An in-memory stdout or log the supervisor writes into.
    type Sink = Arc<Mutex<Vec<u8>>>;

    fn sinks() -> (Sink, Sink) {
        (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        )
    }

    fn text(b: &Sink) -> String {
        String::from_utf8(b.lock().unwrap().clone()).unwrap()
    }

    fn run(cmds: Vec<Command>, grace: Duration, signals: &Signals) -> (Ended, String, String) {
        let _one = crate::group::CHILD_PROCESS_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (events, log) = sinks();
        let ended = run_ranks(cmds, grace, signals, events.clone(), log.clone()).unwrap();
        (ended, text(&events), text(&log))
    }

    #[test]
    fn all_ranks_ok_is_ok_with_rank_0s_events_and_every_ranks_log() {
        let done = r#"{"ev":"done","outcome":"executed","error":null}"#;
        let cmds = vec![
            sh(&format!(
                "echo '{{\"ev\":\"step\",\"step\":1}}'; echo '{done}'; echo zero >&2"
            )),
            sh("echo 'not forwarded'; echo one >&2"),
        ];
        let (ended, events, log) = run(cmds, Duration::from_secs(5), &Signals::manual());
        assert_eq!(ended, Ended::Ok(StageEvent::parse(done)));
        assert!(matches!(&ended, Ended::Ok(Some(StageEvent::Done { .. }))));
        // The done event is held back for the launcher's own; other ranks' stdout dropped.
        assert_eq!(events, "{\"ev\":\"step\",\"step\":1}\n");
        assert!(
            log.contains("[rank 0] zero\n") && log.contains("[rank 1] one\n"),
            "{log}"
        );
    }

    #[test]
    fn a_rank_killed_by_a_signal_fails_the_stage_and_its_peers_are_stopped() {
        // Rank 0 waits "in a collective" and ignores SIGTERM, so only the grace's SIGKILL
        // ends it: the bound below is grace + generous slack, far under its 300 s sleep.
        // `exec`: a rank is one process (a shell's own `sleep` child would keep the
        // stderr pipe open after the shell is killed).
        let cmds = vec![
            sh("trap '' TERM; exec sleep 300"),
            sh("echo 'loading' >&2; kill -9 $$"),
            sh("exec sleep 300"),
        ];
        let start = Instant::now();
        let (ended, _, log) = run(cmds, Duration::from_secs(1), &Signals::manual());
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            ended,
            Ended::Failed {
                rank: 1,
                error: "rank 1 died of signal 9 (SIGKILL): loading".into()
            }
        );
        assert!(log.contains("[rank 1] loading"), "{log}");
    }

    #[test]
    fn a_failed_rank_is_named_with_its_last_error_line() {
        let cmds = vec![
            sh("exec sleep 300"),
            sh(
                "echo 'step 3' >&2; echo 'ERROR CUDA out of memory on cuda:1' >&2; echo bye >&2; exit 1",
            ),
        ];
        let (ended, _, _) = run(cmds, Duration::from_secs(5), &Signals::manual());
        assert_eq!(
            ended,
            Ended::Failed {
                rank: 1,
                error: "rank 1 failed (exit code 1): ERROR CUDA out of memory on cuda:1".into()
            }
        );
    }

    #[test]
    fn a_cancel_is_forwarded_and_the_ranks_are_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        // Each rank "checkpoints" (writes a file) on SIGTERM and exits 130.
        let rank = |r: usize| {
            sh(&format!(
                "trap 'echo saved > {d}/ckpt{r}; exit 130' TERM; while :; do sleep 0.05; done",
                d = dir.path().display()
            ))
        };
        let signals = Signals::manual();
        let flag = signals.flags[0].1.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            flag.store(true, Ordering::SeqCst);
        });
        let (ended, _, _) = run(vec![rank(0), rank(1)], Duration::from_secs(60), &signals);
        t.join().unwrap();
        assert_eq!(ended, Ended::Cancelled(None));
        for r in 0..2 {
            assert!(
                dir.path().join(format!("ckpt{r}")).exists(),
                "rank {r} saved nothing"
            );
        }
    }

    #[test]
    fn once_rank_0_succeeded_a_peer_that_hangs_is_killed_and_does_not_fail_the_stage() {
        let done = r#"{"ev":"done","outcome":"hit","error":null}"#;
        // Rank 1 "waits for a rendezvous" rank 0 never joins, deaf to SIGTERM.
        let cmds = vec![
            sh(&format!("echo '{done}'")),
            sh("trap '' TERM; exec sleep 300"),
        ];
        let start = Instant::now();
        let (ended, _, _) = run(cmds, Duration::from_secs(2), &Signals::manual());
        // Killed after min(AFTER_LEADER, grace) = 2 s; 30 s is slack for a loaded machine.
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(ended, Ended::Ok(StageEvent::parse(done)));
        assert!(matches!(&ended, Ended::Ok(Some(StageEvent::Done { .. }))));
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "signal 9 (SIGKILL)");
        assert_eq!(signal_name(15), "signal 15 (SIGTERM)");
        assert_eq!(signal_name(64), "signal 64");
    }
}
