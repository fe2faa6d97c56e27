//! The process group of one `command` stage's user command, and why none of its processes
//! outlives the stage.
//!
//! A user command may start background processes (`cmd &`, daemons, tools that fork). A
//! parent-death signal reaches only a direct child, so on its own it leaves grandchildren
//! running, reparented to pid 1, writing into the key's scratch next to the resumed run.
//! Four mechanisms, each for the cases the others miss:
//!
//! 1. **A guardian leads the command's process group G.** It is `sh` ignoring HUP/INT/TERM,
//!    blocked reading a pipe whose only writer is the stage process. The kernel closes that
//!    pipe when the stage process ends for any reason, `kill -9` included, and the guardian
//!    then SIGKILLs all of G (itself too). This covers `kill -9` of the stage process, and
//!    `kill -9` of the head as well, since the head's parent-death signal SIGKILLs the stage
//!    process (`crates/engine/src/executor.rs`), and both at once. G's number cannot name
//!    another group meanwhile: a pid stays reserved while its process lives or is an
//!    unreaped zombie, and the guardian is the stage process's child, reaped last.
//! 2. **The stage process is a child subreaper** (`PR_SET_CHILD_SUBREAPER`): a process that
//!    leaves G (`setsid`, `setpgid`) and loses its parent while the stage process lives
//!    becomes the stage process's child instead of pid 1's, so the sweep below finds it.
//! 3. **A sweep when the command ends**, whether it succeeded, failed or was cancelled:
//!    [`CommandGroup::end`] SIGKILLs G and every child of the stage process and reaps them
//!    before the stage returns, so nothing of the command writes into the output while it
//!    is hashed and committed, or into scratch after the stage ended.
//! 4. **The key lock's descriptor is inherited** by every process of the command (the
//!    engine shares it before the stage runs: `KeyLock::share_with_child_processes`). A
//!    process that escaped G and was orphaned after the stage process died keeps the key
//!    locked until it is gone: a later attempt waits for it instead of sharing scratch.
//!    So: no process of an earlier attempt that still holds the lock's descriptor can
//!    write the scratch of a later attempt.
//!
//! Not covered: a process that leaves G, closes the inherited descriptor and is orphaned
//! after the stage process died (a full daemon started by a process the stage killed);
//! only a cgroup or a PID namespace could hold it, and neither is available unprivileged.

use std::io::PipeWriter;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The guardian: ignores the signals that cancel the command, waits for its stdin to reach
/// end of file, then kills its process group (which it leads).
const GUARDIAN: &str = "trap '' HUP INT TERM; read x; kill -9 0";

/// How long [`CommandGroup::end`] waits for SIGKILLed processes to be gone (a process in
/// uninterruptible sleep dies only when its system call returns).
const SWEEP_LIMIT: Duration = Duration::from_secs(10);

/// The process group a user command runs in; [`CommandGroup::end`] (or drop) kills it.
pub struct CommandGroup {
    guardian: Child,
    pgid: libc::pid_t,
    /// The guardian's stdin: closing it, or this process dying, kills the group.
    line: Option<PipeWriter>,
}

impl CommandGroup {
    /// Makes this process a subreaper and starts the guardian of a new process group.
    pub fn start() -> std::io::Result<CommandGroup> {
        // SAFETY: prctl with an integer argument; it only sets a flag of this process.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Close-on-exec on both ends: only the guardian gets the reading end (as its stdin),
        // and no process but this one ever holds the writing end.
        let (reader, writer) = std::io::pipe()?;
        let guardian = Command::new("sh")
            .arg("-c")
            .arg(GUARDIAN)
            .stdin(reader)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pgid = libc::pid_t::try_from(guardian.id())
            .map_err(|_| std::io::Error::other("guardian pid out of range"))?;
        Ok(CommandGroup {
            guardian,
            pgid,
            line: Some(writer),
        })
    }

    /// The group the command joins (`Command::process_group`).
    pub fn pgid(&self) -> libc::pid_t {
        self.pgid
    }

    /// Sends `sig` to every process in the group (the guardian ignores TERM).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our group: its leader is our unreaped child, so the number
        // names no other group.
        unsafe { libc::kill(-self.pgid, sig) };
    }

    /// Kills the group and every child of this process (the command's own, and orphans
    /// adopted as subreaper) and reaps them. Returns once none is left, or after
    /// [`SWEEP_LIMIT`] with a warning naming what is still dying.
    pub fn end(&mut self) {
        if self.line.is_none() {
            return;
        }
        self.signal(libc::SIGKILL);
        self.line = None;
        let me = std::process::id() as libc::pid_t;
        let guardian = self.pgid;
        let started = Instant::now();
        loop {
            let procs = processes();
            let members: Vec<&Proc> = procs
                .iter()
                .filter(|p| p.pgrp == self.pgid && p.pid != guardian && !p.dead())
                .collect();
            let children: Vec<&Proc> = procs
                .iter()
                .filter(|p| p.ppid == me && p.pid != guardian)
                .collect();
            if members.is_empty() && children.is_empty() {
                break;
            }
            if started.elapsed() > SWEEP_LIMIT {
                let left: Vec<_> = members.iter().chain(&children).map(|p| p.pid).collect();
                tracing::warn!("processes of the command still dying after SIGKILL: {left:?}");
                break;
            }
            self.signal(libc::SIGKILL);
            for child in children {
                // SAFETY: kill and waitpid on our own child: its pid stays ours until the
                // waitpid below reaps it.
                unsafe {
                    libc::kill(child.pid, libc::SIGKILL);
                    libc::waitpid(child.pid, std::ptr::null_mut(), libc::WNOHANG);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Reaped last: until now the zombie guardian kept the group's number reserved.
        let _ = self.guardian.wait();
    }
}

impl Drop for CommandGroup {
    fn drop(&mut self) {
        self.end();
    }
}

/// One line of `/proc/<pid>/stat`, the fields the sweep needs.
#[derive(Debug, PartialEq)]
struct Proc {
    pid: libc::pid_t,
    state: char,
    ppid: libc::pid_t,
    pgrp: libc::pid_t,
}

impl Proc {
    /// Exited (a zombie waiting for its parent) or exiting: it runs no more code.
    fn dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// Parses `pid (comm) state ppid pgrp ...`; `comm` may hold spaces and parentheses,
    /// so the fields are read after its last `)`.
    fn parse(stat: &str) -> Option<Proc> {
        let (head, tail) = stat.rsplit_once(')')?;
        let pid = head.split_once(" (")?.0.trim().parse().ok()?;
        let mut f = tail.split_ascii_whitespace();
        let state = f.next()?.chars().next()?;
        let ppid = f.next()?.parse().ok()?;
        let pgrp = f.next()?.parse().ok()?;
        Some(Proc {
            pid,
            state,
            ppid,
            pgrp,
        })
    }
}

/// Every process visible in `/proc` (one that exits while it is read is skipped).
fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| Proc::parse(&s))
        .collect()
}

/// Held by every test that starts child processes: [`CommandGroup::end`] kills every
/// child of this process, which in a test binary includes other tests' children.
#[cfg(test)]
pub(crate) static CHILD_PROCESS_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let p = Proc::parse("4242 (a (b) c) S 17 4240 4240 0 -1 4194560 ...").unwrap();
        assert_eq!(
            p,
            Proc {
                pid: 4242,
                state: 'S',
                ppid: 17,
                pgrp: 4240
            }
        );
        assert!(!p.dead());
        assert!(Proc::parse("1 (init) Z 0 1 1").unwrap().dead());
        assert!(Proc::parse("garbage").is_none());
    }

    fn alive(pid: libc::pid_t) -> bool {
        processes().iter().any(|p| p.pid == pid && !p.dead())
    }

    /// The sweep reaches a grandchild in the group and one that left it with `setsid`.
    #[test]
    fn end_kills_grandchildren_inside_and_outside_the_group() {
        let _one = CHILD_PROCESS_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let mut group = CommandGroup::start().unwrap();
        let script = format!(
            "sleep 300 & echo $! > {d}/in; setsid sleep 300 & echo $! > {d}/out; wait",
            d = dir.path().display()
        );
        let mut sh = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .process_group(group.pgid())
            .spawn()
            .unwrap();
        let read = |name: &str| -> libc::pid_t {
            let path = dir.path().join(name);
            let start = Instant::now();
            loop {
                if let Ok(t) = std::fs::read_to_string(&path)
                    && let Ok(pid) = t.trim().parse()
                {
                    return pid;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "no {name}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let (inside, outside) = (read("in"), read("out"));
        assert!(alive(inside) && alive(outside));
        // The command's shell exits first: its children are adopted by us (subreaper).
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(sh.id() as libc::pid_t, libc::SIGKILL) };
        sh.wait().unwrap();
        group.end();
        assert!(!alive(inside), "grandchild in the group survived");
        assert!(!alive(outside), "grandchild that left the group survived");
    }
}
