//! The sbatch script of one stage: a file (re-submittable by hand with `sbatch FILE` when
//! debugging), not `--wrap`. Its directives carry the run and key (job name and comment,
//! so a restarted head finds its jobs), the resources, the time-limit warning
//! (`--signal=B:USR1@grace`: the worker checkpoints and asks to be resubmitted) and the
//! stage log (appended, so a resubmitted attempt keeps the earlier one's lines). Its body
//! `exec`s the worker, so the worker is the batch process and gets the signal itself.
//!
//! A stage whose ranks do not fit on one node (more GPUs than `gpus_per_node`, or several
//! CPU ranks, which Slurm may spread) runs them as `srun` tasks, each mapping Slurm's
//! task variables to torchrun's (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`): the seam `crate::rank::RankEnv::from_process_env` reads.

use std::path::{Path, PathBuf};

use super::settings::{SlurmSettings, StageRequest};

/// One stage to submit.
#[derive(Debug, Clone)]
pub struct StageJob<'a> {
    pub run_id: i64,
    /// The stage's cache key (64 hex digits).
    pub key: &'a str,
    /// The node's name in the pipeline, for people reading `squeue`.
    pub node: &'a str,
    /// Whether the kind runs on the accelerator (GPUs requested as gres).
    pub gpu: bool,
    pub request: &'a StageRequest,
    /// `ugc-pipe-worker` as the compute nodes see it (shared filesystem).
    pub worker: &'a Path,
    pub cache_dir: &'a Path,
    /// The stage log (`cache/logs/<run>/<node>.log`).
    pub log: &'a Path,
}

/// A script that cannot be written: names the value.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("{what} {value:?} cannot go into an sbatch directive (it holds a quote or a newline)")]
    Unquotable { what: &'static str, value: String },
    #[error("key {0:?} is not a cache key")]
    BadKey(String),
    #[error("cannot write the job script {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The job name: short and unique per run and key (`squeue -n` finds a job whose
/// submission timed out before its id came back).
pub fn job_name(run_id: i64, key: &str) -> String {
    format!("ugc-r{run_id}-{}", &key[..key.len().min(16)])
}

/// The job comment: run, full key and node (`squeue -o %k`).
pub fn comment(run_id: i64, key: &str, node: &str) -> String {
    let node: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("ugc-pipe:run={run_id}:key={key}:node={node}")
}

/// POSIX shell quoting: single quotes, with `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A path in a `#SBATCH --output=` directive: sbatch reads double quotes there, and `%`
/// starts a filename pattern (`%j`), so a literal one is `%%`.
fn directive_path(what: &'static str, p: &Path) -> Result<String, ScriptError> {
    let s = p.to_string_lossy();
    if s.contains(['"', '\n', '\r']) {
        return Err(ScriptError::Unquotable {
            what,
            value: s.into_owned(),
        });
    }
    Ok(format!("\"{}\"", s.replace('%', "%%")))
}

/// How the ranks of a stage are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One task on one node; the worker starts its own ranks there (if more than one).
    OneTask { gpus: u32 },
    /// One `srun` task per rank.
    Tasks {
        ranks: u32,
        nodes: Option<u32>,
        gpus_per_node: u32,
    },
}

/// Where the ranks of `job` go: GPU ranks on one node when they fit, else `srun` over
/// `ceil(devices / gpus_per_node)` nodes; several CPU ranks as tasks Slurm places.
pub fn layout(job: &StageJob, settings: &SlurmSettings) -> Layout {
    let n = job.request.devices.max(1);
    if job.gpu {
        match settings.gpus_per_node {
            Some(g) if n > g => Layout::Tasks {
                ranks: n,
                nodes: Some(n.div_ceil(g)),
                gpus_per_node: g,
            },
            _ => Layout::OneTask { gpus: n },
        }
    } else if n > 1 {
        Layout::Tasks {
            ranks: n,
            nodes: None,
            gpus_per_node: 0,
        }
    } else {
        Layout::OneTask { gpus: 0 }
    }
}

/// The script's text.
pub fn render(job: &StageJob, settings: &SlurmSettings) -> Result<String, ScriptError> {
    if !crate::cache::CacheKey::is_valid(job.key) {
        return Err(ScriptError::BadKey(job.key.to_string()));
    }
    let mut d: Vec<String> = vec![
        format!("--job-name={}", job_name(job.run_id, job.key)),
        format!("--comment={}", comment(job.run_id, job.key, job.node)),
        format!("--output={}", directive_path("the stage log", job.log)?),
        "--open-mode=append".into(),
        format!(
            "--chdir={}",
            directive_path("the cache directory", job.cache_dir)?
        ),
        // Resubmission is the head's (counted, resuming from the checkpoint): Slurm's own
        // requeue would run an attempt the head did not ask for.
        "--no-requeue".into(),
        format!("--signal=B:USR1@{}", settings.grace.as_secs().max(1)),
    ];
    let partition = job
        .request
        .partition
        .as_ref()
        .or(settings.partition.as_ref());
    if let Some(p) = partition {
        d.push(format!("--partition={p}"));
    }
    if let Some(a) = &settings.account {
        d.push(format!("--account={a}"));
    }
    if let Some(q) = &settings.qos {
        d.push(format!("--qos={q}"));
    }
    if let Some(t) = job.request.time.or(settings.time) {
        d.push(format!("--time={}", t.to_slurm()));
    }
    let lay = layout(job, settings);
    match lay {
        Layout::OneTask { gpus } => {
            d.push("--ntasks=1".into());
            if gpus > 0 {
                d.push(format!("--gres=gpu:{gpus}"));
            }
        }
        Layout::Tasks {
            ranks,
            nodes,
            gpus_per_node,
        } => {
            d.push(format!("--ntasks={ranks}"));
            if let Some(n) = nodes {
                d.push(format!("--nodes={n}"));
                d.push(format!("--ntasks-per-node={gpus_per_node}"));
            }
            if gpus_per_node > 0 {
                d.push(format!("--gres=gpu:{gpus_per_node}"));
            }
        }
    }
    if let Some(c) = job.request.cpus {
        d.push(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = job.request.mem {
        d.push(format!("--mem={}M", m.0));
    }
    if job.request.exclusive {
        d.push("--exclusive".into());
    }
    d.extend(settings.sbatch_args.iter().cloned());

    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!(
        "# ugc-pipe: stage `{}` of run {}, key {}\n",
        job.node.replace('\n', " "),
        job.run_id,
        job.key
    ));
    for x in &d {
        s.push_str("#SBATCH ");
        s.push_str(x);
        s.push('\n');
    }
    let worker_cmd = [
        shell_quote(&job.worker.to_string_lossy()),
        "exec".into(),
        "--key".into(),
        job.key.into(),
        "--cache-dir".into(),
        shell_quote(&job.cache_dir.to_string_lossy()),
        "--run".into(),
        job.run_id.to_string(),
    ]
    .join(" ");
    s.push_str(&format!(
        "export UGC_HEARTBEAT_S={}\n",
        settings.heartbeat.as_secs_f64()
    ));
    // Only the head writes the registry: the worker spools its rows into the cache.
    s.push_str(&format!(
        "export {}=head\n",
        super::attempt::REGISTRY_WRITER_ENV
    ));
    s.push_str("echo \"ugc-pipe: job $SLURM_JOB_ID on $(hostname) at $(date -u +%FT%TZ)\" >&2\n");
    match lay {
        Layout::OneTask { .. } => {
            s.push_str(&format!("exec {worker_cmd}\n"));
        }
        Layout::Tasks { .. } => {
            s.push_str(concat!(
                "# rank 0's host holds the TCP store; the port is the job's own\n",
                "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n",
                "MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))\n",
                "export MASTER_ADDR MASTER_PORT\n",
                "# one task per rank; Slurm's task variables become torchrun's\n",
                "srun --kill-on-bad-exit=1 bash -c ",
                "'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID; exec \"$@\"' ",
                "ugc-rank "
            ));
            s.push_str(&worker_cmd);
            s.push_str(concat!(
                " &\n",
                "pid=$!\n",
                "# the time-limit warning and a cancel reach the batch shell: pass them on\n",
                "trap 'kill -USR1 \"$pid\" 2>/dev/null' USR1\n",
                "trap 'kill -TERM \"$pid\" 2>/dev/null' TERM\n",
                "while kill -0 \"$pid\" 2>/dev/null; do wait \"$pid\"; done\n",
                "wait \"$pid\"\n"
            ));
        }
    }
    Ok(s)
}

/// Writes the script of `job` to `dir/<key>.sbatch` (atomically: a resubmission never
/// reads half a file) and returns its path.
pub fn write(dir: &Path, job: &StageJob, settings: &SlurmSettings) -> Result<PathBuf, ScriptError> {
    let text = render(job, settings)?;
    let path = dir.join(format!("{}.sbatch", job.key));
    let io = |source| ScriptError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slurm::settings::{MemMiB, TimeLimit};

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn job<'a>(req: &'a StageRequest, gpu: bool) -> StageJob<'a> {
        StageJob {
            run_id: 7,
            key: KEY,
            node: "supernet[lr=0.1]",
            gpu,
            request: req,
            worker: Path::new("/opt/ugc pipe/bin/ugc-pipe-worker"),
            cache_dir: Path::new("/shared/it's/cache"),
            log: Path::new("/shared/cache/logs/7/super%net.log"),
        }
    }

    fn directives(s: &str) -> Vec<&str> {
        s.lines()
            .filter_map(|l| l.strip_prefix("#SBATCH "))
            .collect()
    }

    #[test]
    fn one_gpu_stage() {
        let req = StageRequest {
            cpus: Some(4),
            mem: Some(MemMiB(16384)),
            ..StageRequest::default()
        };
        let settings = SlurmSettings {
            partition: Some("gpu".into()),
            account: Some("lab".into()),
            time: Some(TimeLimit(3600)),
            sbatch_args: vec!["--exclusive".into()],
            ..SlurmSettings::default()
        };
        let s = render(&job(&req, true), &settings).unwrap();
        assert!(s.starts_with("#!/bin/bash\n"));
        assert_eq!(
            directives(&s),
            [
                "--job-name=ugc-r7-0123456789abcdef",
                &format!("--comment=ugc-pipe:run=7:key={KEY}:node=supernet_lr_0.1_"),
                "--output=\"/shared/cache/logs/7/super%%net.log\"",
                "--open-mode=append",
                "--chdir=\"/shared/it's/cache\"",
                "--no-requeue",
                "--signal=B:USR1@120",
                "--partition=gpu",
                "--account=lab",
                "--time=0-01:00:00",
                "--ntasks=1",
                "--gres=gpu:1",
                "--cpus-per-task=4",
                "--mem=16384M",
                "--exclusive",
            ]
        );
        assert!(s.contains(&format!(
            "\nexec '/opt/ugc pipe/bin/ugc-pipe-worker' exec --key {KEY} --cache-dir '/shared/it'\\''s/cache' --run 7\n"
        )));
        assert!(!s.contains("srun"));
        // The worker on the compute node leaves the registry to the head.
        assert!(s.contains("\nexport UGC_REGISTRY_WRITER=head\n"), "{s}");
    }

    #[test]
    fn the_stage_request_beats_the_executor_defaults() {
        let req = StageRequest {
            time: Some(TimeLimit(60)),
            partition: Some("short".into()),
            ..StageRequest::default()
        };
        let settings = SlurmSettings {
            partition: Some("gpu".into()),
            time: Some(TimeLimit(3600)),
            ..SlurmSettings::default()
        };
        let s = render(&job(&req, false), &settings).unwrap();
        let d = directives(&s);
        assert!(
            d.contains(&"--partition=short") && d.contains(&"--time=0-00:01:00"),
            "{d:?}"
        );
        assert!(
            !d.iter().any(|x| x.starts_with("--gres")),
            "a CPU stage asks no GPU"
        );
    }

    #[test]
    fn gpu_ranks_beyond_one_node_run_as_srun_tasks() {
        let req = StageRequest {
            devices: 6,
            ..StageRequest::default()
        };
        let settings = SlurmSettings {
            gpus_per_node: Some(4),
            ..SlurmSettings::default()
        };
        let j = job(&req, true);
        assert_eq!(
            layout(&j, &settings),
            Layout::Tasks {
                ranks: 6,
                nodes: Some(2),
                gpus_per_node: 4
            }
        );
        let s = render(&j, &settings).unwrap();
        let d = directives(&s);
        for want in [
            "--ntasks=6",
            "--nodes=2",
            "--ntasks-per-node=4",
            "--gres=gpu:4",
        ] {
            assert!(d.contains(&want), "{want} in {d:?}");
        }
        assert!(s.contains("srun --kill-on-bad-exit=1 bash -c 'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID; exec \"$@\"' ugc-rank '/opt/ugc pipe/bin/ugc-pipe-worker' exec --key"));
        assert!(s.contains(
            "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)"
        ));
        assert!(s.contains("trap 'kill -USR1 \"$pid\" 2>/dev/null' USR1"));
        // fits on one node: one task, the worker starts its ranks itself
        let req4 = StageRequest {
            devices: 4,
            ..StageRequest::default()
        };
        assert_eq!(
            layout(&job(&req4, true), &settings),
            Layout::OneTask { gpus: 4 }
        );
        // no gpus_per_node: assumed to fit
        assert_eq!(
            layout(&job(&req, true), &SlurmSettings::default()),
            Layout::OneTask { gpus: 6 }
        );
    }

    #[test]
    fn cpu_ranks_are_tasks_slurm_places() {
        let req = StageRequest {
            devices: 2,
            ..StageRequest::default()
        };
        let s = render(&job(&req, false), &SlurmSettings::default()).unwrap();
        let d = directives(&s);
        assert!(
            d.contains(&"--ntasks=2") && !d.iter().any(|x| x.starts_with("--nodes")),
            "{d:?}"
        );
        assert!(s.contains("srun "));
    }

    #[test]
    fn unquotable_paths_and_bad_keys_are_refused() {
        let req = StageRequest::default();
        let mut j = job(&req, false);
        let bad = Path::new("/tmp/a\"b.log");
        j.log = bad;
        let e = render(&j, &SlurmSettings::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the stage log") && e.contains("a\\\"b.log"),
            "{e}"
        );
        let mut j = job(&req, false);
        j.key = "nothex";
        assert!(matches!(
            render(&j, &SlurmSettings::default()),
            Err(ScriptError::BadKey(_))
        ));
    }

    #[test]
    fn an_exclusive_stage_asks_for_its_node_alone() {
        let plain = StageRequest::default();
        let alone = StageRequest {
            exclusive: true,
            ..StageRequest::default()
        };
        let has = |req: &StageRequest| {
            let text = render(&job(req, false), &SlurmSettings::default()).unwrap();
            directives(&text).contains(&"--exclusive")
        };
        assert!(has(&alone));
        assert!(!has(&plain));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/a/b-c_d.e"), "/a/b-c_d.e");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME;rm -rf /"), "'$HOME;rm -rf /'");
    }

    #[test]
    fn written_atomically_under_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let req = StageRequest::default();
        let p = write(dir.path(), &job(&req, false), &SlurmSettings::default()).unwrap();
        assert_eq!(p, dir.path().join(format!("{KEY}.sbatch")));
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text,
            render(&job(&req, false), &SlurmSettings::default()).unwrap()
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
