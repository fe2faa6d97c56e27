//! Test support for data-parallel stages: a test body run as `W` rank processes.
//!
//! libtorch's random generator, its thread pool and the c10d group are per process, so a
//! rank is a process: the test binary re-runs itself (`current_exe() --exact <test>`) with
//! torchrun's variables set ([`ugc_engine::rank::RankEnv::to_vars`]) and the folder the
//! ranks share in [`DIR_VAR`]. A test starts with `if let Some(dir) = rank_dir() { ... return }`
//! (the rank's body) and, in the parent, calls [`spawn_ranks`] and reads what the ranks
//! wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ugc_engine::rank::RankEnv;

/// The folder shared by the rank processes of one [`spawn_ranks`] call (set only in them).
pub const DIR_VAR: &str = "UGC_TEST_RANKS_DIR";

/// In a rank process: the shared folder. `None` in the test's own (parent) process.
pub fn rank_dir() -> Option<PathBuf> {
    std::env::var_os(DIR_VAR).map(PathBuf::from)
}

/// A free TCP port on the loopback interface for rank 0's store (the OS picks one; it is
/// released before the ranks bind it, a window small enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port for the rank store")
}

/// What one rank process did.
#[derive(Debug)]
pub struct RankRun {
    pub rank: usize,
    pub success: bool,
    /// Its exit status (`None`: ended by a signal).
    pub code: Option<i32>,
    /// Its stdout and stderr, for the failure message.
    pub output: String,
}

/// Runs the test `test` (its full libtest name, e.g. `dist::two_ranks_match_one`) of this
/// test binary as `world` rank processes sharing `dir`, with `env` set in each, and waits
/// for all of them. `world == 1` runs one process without rank variables (the one-process
/// path). Every rank gets `timeout` as its c10d timeout, so a rank left alone fails rather
/// than hangs.
pub fn spawn_ranks(
    test: &str,
    world: usize,
    dir: &Path,
    env: &[(&str, String)],
    timeout: Duration,
) -> Vec<RankRun> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let port = free_port();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            let mut cmd = Command::new(&exe);
            cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(DIR_VAR, dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for v in [
                "RANK",
                "WORLD_SIZE",
                "LOCAL_RANK",
                "MASTER_ADDR",
                "MASTER_PORT",
            ] {
                cmd.env_remove(v);
            }
            if world > 1 {
                let r = RankEnv {
                    rank,
                    world,
                    local_rank: rank,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                    timeout,
                };
                cmd.envs(r.to_vars());
            }
            cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
            (rank, cmd.spawn().expect("starting a rank process"))
        })
        .collect();
    children
        .into_iter()
        .map(|(rank, child)| {
            let out = child
                .wait_with_output()
                .expect("waiting for a rank process");
            RankRun {
                rank,
                success: out.status.success(),
                code: out.status.code(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        })
        .collect()
}

/// [`spawn_ranks`], panicking with every failed rank's output unless all succeeded.
pub fn run_ranks(test: &str, world: usize, dir: &Path, env: &[(&str, String)]) {
    let runs = spawn_ranks(test, world, dir, env, Duration::from_secs(60));
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| !r.success)
        .map(|r| format!("--- rank {} of {world} failed:\n{}", r.rank, r.output))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
