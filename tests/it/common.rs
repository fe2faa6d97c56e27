//! Helpers for the CLI integration tests: a scratch project with a pipeline file and a
//! cache, and a way to run the built `ugc-pipe` binary against them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
    pub fn cache(&self) -> PathBuf {
        self.path("cache")
    }
    /// `ugc-pipe ARGS --cache-dir <cache>` for verbs that take a pipeline.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ugc-pipe"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("UGC_PIPE_CACHE", self.cache())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run ugc-pipe")
    }
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ugc-pipe")
    }
    /// Number of lines in a counter file that commands append to (0 if absent).
    pub fn count(&self, rel: &str) -> usize {
        std::fs::read_to_string(self.path(rel))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
    pub fn records(&self) -> usize {
        std::fs::read_dir(self.cache().join("records"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `summary` line of `run --json`.
pub fn summary(o: &Output) -> serde_json::Value {
    stdout(o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary in output:\n{}\n{}", stdout(o), stderr(o)))
}

pub fn wait_for(path: &Path, secs: u64) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < secs {
        if path.exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// Whether `pid` is a process that still runs (a zombie waiting to be reaped runs nothing;
/// pid 1 of a container may never reap it).
pub fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, t)| t.trim_start().to_string()))
        .is_some_and(|t| !t.starts_with(['Z', 'X', 'x']))
}

/// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`; `None` once it is gone.
pub fn stat_field(pid: i32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, tail) = stat.rsplit_once(')')?;
    tail.split_ascii_whitespace().nth(n - 3)?.parse().ok()
}

/// Every pid in `/proc` that still runs.
pub fn running_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&pid| runs(pid))
                .collect()
        })
        .unwrap_or_default()
}

/// The running children of `parent` whose command name (`/proc/<pid>/comm`) is `name`.
pub fn children_named(parent: i32, name: &str) -> Vec<i32> {
    running_pids()
        .into_iter()
        .filter(|&pid| stat_field(pid, 4) == Some(parent as u64))
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// The running processes whose environment holds `entry` (`NAME=value`), with their
/// command lines: everything descended from a process started with that variable, since a
/// child inherits its parent's environment.
pub fn running_with_env(entry: &str) -> Vec<(i32, String)> {
    running_pids()
        .into_iter()
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == entry.as_bytes()))
        })
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (pid, cmdline.trim_end().to_string())
        })
        .filter(|&(pid, _)| runs(pid))
        .collect()
}
