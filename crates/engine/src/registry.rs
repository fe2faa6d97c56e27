//! The run registry: an SQLite database in the cache root recording runs, stage
//! executions and their metrics, read by `ugc-pipe runs`, `show` and `explain`.
//!
//! Several `ugc-pipe` processes (and cluster jobs) may write at once, so the database
//! runs in WAL mode with a generous busy timeout, and multi-statement writes use
//! `BEGIN IMMEDIATE` transactions. The schema is versioned in `schema_version` and
//! migrated forward on open.
//!
//! The cache record is the commit point, not this database: a stage process writes its
//! execution row right after committing, and whoever later finds a record without its
//! row (the process died in between, or the disk was full) writes it from the record
//! ([`Registry::record_committed`]), so no committed stage goes missing from `runs`/`show`.
//!
//! SQLite's WAL mode is unsafe on network filesystems, so a stage run as a Slurm job does
//! not open this database: it gets a [`Registry::spool`] handle, which keeps its rows in
//! memory and writes them to a file in the cache, and the head ingests that file
//! ([`Registry::ingest`]) once the job has ended. The head alone writes the database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheKey, KeyMaterial, now_unix_ms};
use crate::lock::{pid_alive, this_host};

/// The schema this code writes. Older databases are migrated on open; newer ones refused.
pub const REGISTRY_SCHEMA_VERSION: i64 = 6;

/// Statuses a run can end with.
pub const RUN_STATUSES: [&str; 3] = ["ok", "failed", "interrupted"];
/// What [`Registry::runs`] shows for a `running` run whose head process is gone (killed
/// with -9, crashed, machine rebooted): it never recorded an end and never will.
pub const DEAD_RUN_STATUS: &str = "dead";
/// Statuses of one stage execution.
pub const EXECUTION_STATUSES: [&str; 5] = ["executed", "cached", "failed", "cancelled", "skipped"];

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("run registry {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "run registry {path}: schema version {found} is newer than this ugc-pipe understands ({supported})"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("invalid {field} `{value}`: expected one of {allowed}")]
    InvalidStatus {
        field: &'static str,
        value: String,
        allowed: String,
    },
    #[error("{field} = {value} does not fit the registry's 63-bit integers")]
    Overflow { field: &'static str, value: u64 },
    #[error("run registry {path}: stored {what} is unreadable: {reason}")]
    Corrupt {
        path: PathBuf,
        what: String,
        reason: String,
    },
    #[error("no run with id {0} in the registry")]
    NoSuchRun(i64),
    /// A spool handle (a stage on a compute node) only records executions; the rest is
    /// the head's.
    #[error("{0}: only the head writes the run registry (this stage spools its rows to a file)")]
    SpoolOnly(&'static str),
    #[error("{path}: not a registry spool file: {source}")]
    SpoolFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One `ugc-pipe run` invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRow {
    pub id: i64,
    pub pipeline: String,
    /// The command line, as a JSON array of strings.
    pub argv: String,
    pub started_unix_ms: u64,
    pub ended_unix_ms: Option<u64>,
    /// `running` until [`Registry::end_run`], then `ok`, `failed` or `interrupted`;
    /// [`DEAD_RUN_STATUS`] when read while `running` though its head is gone.
    pub status: String,
    pub host: String,
    /// How the run was asked for: its `--set` overrides and executor.
    #[serde(flatten)]
    pub settings: RunSettings,
}

/// One `K=V` flag of a run, split at its first `=`: the key trimmed (as `--set` applies
/// it), the value as written (YAML text: `3`, `true`, `[1, 2]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub key: String,
    pub value: String,
}

impl Override {
    /// Splits `K=V`; a flag without `=` (refused by `run` before a run is recorded) is a
    /// key with an empty value.
    pub fn parse(flag: &str) -> Override {
        let (key, value) = flag.split_once('=').unwrap_or((flag, ""));
        Override {
            key: key.trim().to_string(),
            value: value.to_string(),
        }
    }
}

/// Where a run's [`RunSettings`] were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingsSource {
    /// Recorded structured by the head at [`Registry::begin_run_with`] (schema 6 on).
    #[default]
    Recorded,
    /// Parsed back from the run's `argv` ([`RunSettings::from_argv`]): runs recorded
    /// before schema 6.
    Argv,
}

/// What a run was asked to change: the `--set` overrides in command-line order (the last
/// of a repeated key wins, as when they were applied), the executor and its settings.
/// `ugc-pipe exp show` and `runs` show these.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunSettings {
    /// `--set K=V`, in order.
    pub overrides: Vec<Override>,
    /// `local` or `slurm`.
    pub executor: String,
    /// `--profile FILE`, as given.
    pub profile: Option<String>,
    /// `--executor-set K=V`, in order.
    pub executor_overrides: Vec<Override>,
    pub settings_source: SettingsSource,
}

impl RunSettings {
    /// The settings of a `ugc-pipe run` command line, read back the way clap parses it
    /// (`--set K=V` or `--set=K=V`, likewise `--executor-set`, `--executor`, `--profile`;
    /// nothing after `--`). For runs recorded before the registry stored them (schema 5
    /// and older), and for callers of [`Registry::begin_run`] that give argv alone.
    pub fn from_argv(argv: &[String]) -> RunSettings {
        let mut s = RunSettings {
            executor: "local".into(),
            settings_source: SettingsSource::Argv,
            ..RunSettings::default()
        };
        let mut args = argv.iter().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--" {
                break;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            if !matches!(
                name,
                "--set" | "--executor-set" | "--executor" | "--profile"
            ) {
                continue;
            }
            let Some(value) = inline.or_else(|| args.next().cloned()) else {
                break;
            };
            match name {
                "--set" => s.overrides.push(Override::parse(&value)),
                "--executor-set" => s.executor_overrides.push(Override::parse(&value)),
                "--executor" => s.executor = value,
                _ => s.profile = Some(value),
            }
        }
        s
    }

    /// The overrides as one map, the last of a repeated key winning.
    pub fn override_map(&self) -> BTreeMap<String, String> {
        self.overrides
            .iter()
            .map(|o| (o.key.clone(), o.value.clone()))
            .collect()
    }
}

/// One stage execution (or cache hit) inside a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRow {
    /// Assigned by [`Registry::record_execution`]; ignored when inserting.
    pub id: Option<i64>,
    pub run_id: Option<i64>,
    pub pipeline: String,
    pub node: String,
    pub kind: String,
    pub key: String,
    /// `executed`, `cached`, `failed`, `cancelled` or `skipped`.
    pub status: String,
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
    pub duration_ms: u64,
    pub host: String,
    pub device: String,
    pub peak_rss_bytes: Option<u64>,
    pub peak_gpu_bytes: Option<u64>,
    pub error: Option<String>,
    /// The stage's `resources:` for this execution (devices, c10d timeout); `None` when
    /// unknown: rows recorded before schema 3, and rows rebuilt from a record.
    #[serde(default)]
    pub resources: Option<crate::spec::Resources>,
    /// The Slurm job id when the execution ran as a Slurm job (`SLURM_JOB_ID`).
    #[serde(default)]
    pub slurm_job: Option<u64>,
}

/// One row a stage spooled for the head, with what [`Registry::record_committed`] needs
/// when it was the commit's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpoolEntry {
    pub row: ExecutionRow,
    /// The record's `created_unix_ms` when `row` is the execution that committed it.
    pub committed_unix_ms: Option<u64>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// The row's id in the spool's in-memory database (for [`Registry::record_metrics`]).
    #[serde(skip)]
    local_id: i64,
}

impl SpoolEntry {
    /// A row to [`Registry::ingest`] that no spool file held (the head's own account of a
    /// stage whose job left none).
    pub fn new(row: ExecutionRow, committed_unix_ms: Option<u64>) -> SpoolEntry {
        SpoolEntry {
            row,
            committed_unix_ms,
            metrics: BTreeMap::new(),
            local_id: 0,
        }
    }
}

/// The spool file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SpoolFile {
    executions: Vec<SpoolEntry>,
}

/// Where a spool handle writes its rows, and what it wrote so far.
#[derive(Debug)]
struct Spool {
    path: PathBuf,
    entries: Mutex<Vec<SpoolEntry>>,
}

/// One Slurm job of a stage, as the head saw it: `ugc-pipe runs` and `status` show these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmJobRow {
    pub job: u64,
    /// The run that submitted it.
    pub run_id: Option<i64>,
    pub pipeline: String,
    pub node: String,
    pub key: String,
    /// 1 for the first submission of the stage, 2 for its first resubmission...
    pub attempt: u32,
    /// Slurm's state as last seen (`PENDING`, `RUNNING`, `COMPLETED`, `OUT_OF_MEMORY`...).
    pub state: String,
    /// The node(s) it ran on.
    pub nodes: Option<String>,
    /// Slurm's pending reason, or the head's verdict when it ended (resubmitted, lost...).
    pub reason: Option<String>,
    /// On the head's clock.
    pub submitted_unix_ms: u64,
    /// When its worker started and ended (the attempt file, the compute node's clock).
    pub started_unix_ms: Option<u64>,
    pub ended_unix_ms: Option<u64>,
    /// Submission to start: Slurm's own start minus submit time where it gives both
    /// (one clock), else the worker's start minus the head's submission.
    pub queue_wait_ms: Option<u64>,
    /// The worker's run, start to end.
    pub run_ms: Option<u64>,
}

/// Handle on the registry database. `Sync`: one connection behind a mutex.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Set for a stage's spool handle: `conn` is then an in-memory database.
    spool: Option<Spool>,
}

fn int(field: &'static str, value: u64) -> Result<i64, RegistryError> {
    i64::try_from(value).map_err(|_| RegistryError::Overflow { field, value })
}

fn opt_int(field: &'static str, value: Option<u64>) -> Result<Option<i64>, RegistryError> {
    value.map(|v| int(field, v)).transpose()
}

fn check_status(field: &'static str, value: &str, allowed: &[&str]) -> Result<(), RegistryError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(RegistryError::InvalidStatus {
            field,
            value: value.to_string(),
            allowed: allowed.join(", "),
        })
    }
}

/// Migrations, in order; entry `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 6] = [
    "
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        pipeline TEXT NOT NULL,
        argv TEXT NOT NULL,
        started_unix_ms INTEGER NOT NULL,
        ended_unix_ms INTEGER,
        status TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL
    );
    CREATE TABLE executions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER REFERENCES runs(id),
        pipeline TEXT NOT NULL,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        status TEXT NOT NULL,
        started_unix_ms INTEGER NOT NULL,
        ended_unix_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        host TEXT NOT NULL,
        device TEXT NOT NULL,
        peak_rss_bytes INTEGER,
        peak_gpu_bytes INTEGER,
        error TEXT
    );
    CREATE INDEX executions_run ON executions(run_id);
    CREATE INDEX executions_key ON executions(key);
    CREATE TABLE metrics (
        execution_id INTEGER NOT NULL REFERENCES executions(id),
        name TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (execution_id, name)
    );
    CREATE TABLE node_keys (
        pipeline TEXT NOT NULL,
        node TEXT NOT NULL,
        key TEXT NOT NULL,
        material TEXT NOT NULL,
        updated_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (pipeline, node)
    );
",
    "
    -- JSON of the head's ProcessIdentity; NULL in runs recorded before version 2.
    ALTER TABLE runs ADD COLUMN head TEXT;
",
    "
    -- JSON of the execution's Resources (devices, dist_timeout_s); NULL before version 3.
    ALTER TABLE executions ADD COLUMN resources TEXT;
",
    "
    -- The Slurm job that ran the execution; NULL when it ran locally, or before version 4.
    ALTER TABLE executions ADD COLUMN slurm_job INTEGER;
",
    "
    -- Every Slurm job of a stage (resubmissions included), as the head saw it.
    CREATE TABLE slurm_jobs (
        job INTEGER NOT NULL,
        key TEXT NOT NULL,
        run_id INTEGER,
        pipeline TEXT NOT NULL,
        node TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL,
        nodes TEXT,
        reason TEXT,
        submitted_unix_ms INTEGER NOT NULL,
        started_unix_ms INTEGER,
        ended_unix_ms INTEGER,
        queue_wait_ms INTEGER,
        run_ms INTEGER,
        PRIMARY KEY (job, key)
    );
    CREATE INDEX slurm_jobs_run ON slurm_jobs(run_id);
    CREATE INDEX slurm_jobs_node ON slurm_jobs(pipeline, node);
",
    "
    -- How each run was asked for, structured (RunSettings). `executor` NULL: the run was
    -- recorded before version 6, and its settings are read back from `argv`.
    ALTER TABLE runs ADD COLUMN executor TEXT;
    ALTER TABLE runs ADD COLUMN profile TEXT;
    -- Its `--set` (flag 'set') and `--executor-set` (flag 'executor-set') flags, in order.
    CREATE TABLE run_overrides (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        seq INTEGER NOT NULL,
        flag TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE INDEX run_overrides_key ON run_overrides(key);
",
];

/// Who a head process is, precisely enough to tell later whether it still runs: a reused
/// pid, a reboot, a container or another machine sharing the cache must not make a live
/// run look dead (or a dead one alive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// `/etc/machine-id`: one installation, the same across its reboots.
    pub machine_id: Option<String>,
    /// `/proc/sys/kernel/random/boot_id`: one running kernel, new on every boot.
    pub boot_id: Option<String>,
    /// `/proc/self/ns/pid`: a pid only names a process inside its pid namespace.
    pub pid_ns: Option<String>,
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22): tells a
    /// reused pid from the original process.
    pub start_ticks: Option<u64>,
}

/// Whether a recorded process still runs, as far as this machine can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Gone,
    /// Another machine, container or pid namespace: nothing can be said from here.
    Unknown,
}

fn read_trimmed(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself hold spaces and `)`, so fields are counted after the last `)`.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

impl ProcessIdentity {
    /// This process.
    pub fn current() -> ProcessIdentity {
        let pid = std::process::id();
        ProcessIdentity {
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(|p| p.display().to_string()),
            pid,
            start_ticks: start_ticks(pid),
        }
    }

    /// Whether the process `self` names still runs, judged by `here` (the reader's own
    /// identity, [`ProcessIdentity::current`]).
    pub fn liveness(&self, here: &ProcessIdentity) -> Liveness {
        match (&self.boot_id, &here.boot_id) {
            (Some(then), Some(now)) if then == now => {
                // The same running kernel; pids compare only within one pid namespace.
                if self.pid_ns.is_none() || self.pid_ns != here.pid_ns {
                    return Liveness::Unknown;
                }
                let alive = match self.start_ticks {
                    Some(t) => start_ticks(self.pid) == Some(t),
                    None => pid_alive(self.pid),
                };
                if alive {
                    Liveness::Alive
                } else {
                    Liveness::Gone
                }
            }
            // Another boot of this installation: every process of that boot is gone.
            (Some(_), Some(_))
                if self.machine_id.is_some() && self.machine_id == here.machine_id =>
            {
                Liveness::Gone
            }
            _ => Liveness::Unknown,
        }
    }
}

/// Whether the head of a `running` run is provably gone: by its recorded identity, or, for
/// runs recorded before identities were (schema 1), by host name and pid alone.
fn head_gone(identity: Option<&str>, host: &str, pid: i64, here: &ProcessIdentity) -> bool {
    match identity.and_then(|t| serde_json::from_str::<ProcessIdentity>(t).ok()) {
        Some(id) => id.liveness(here) == Liveness::Gone,
        None => host == this_host() && !u32::try_from(pid).is_ok_and(pid_alive),
    }
}

/// `?1` key, `?2` commit time: see [`Registry::commit_recorded`].
const COMMIT_RECORDED: &str = "SELECT EXISTS (SELECT 1 FROM executions WHERE key = ?1
     AND status = 'executed' AND started_unix_ms <= ?2 AND ended_unix_ms >= ?2)";

const EXECUTION_COLUMNS: &str = "id, run_id, pipeline, node, kind, key, status, started_unix_ms, \
     ended_unix_ms, duration_ms, host, device, peak_rss_bytes, peak_gpu_bytes, error, resources, slurm_job";

fn u(v: i64) -> u64 {
    // Every integer column is written from a u64 checked to fit, so it is non-negative.
    v.max(0) as u64
}

fn execution_from_row(r: &Row<'_>) -> rusqlite::Result<ExecutionRow> {
    Ok(ExecutionRow {
        id: Some(r.get(0)?),
        run_id: r.get(1)?,
        pipeline: r.get(2)?,
        node: r.get(3)?,
        kind: r.get(4)?,
        key: r.get(5)?,
        status: r.get(6)?,
        started_unix_ms: u(r.get(7)?),
        ended_unix_ms: u(r.get(8)?),
        duration_ms: u(r.get(9)?),
        host: r.get(10)?,
        device: r.get(11)?,
        peak_rss_bytes: r.get::<_, Option<i64>>(12)?.map(u),
        peak_gpu_bytes: r.get::<_, Option<i64>>(13)?.map(u),
        error: r.get(14)?,
        // Written by this code as JSON; anything else (a hand edit) reads as unknown.
        resources: r
            .get::<_, Option<String>>(15)?
            .and_then(|t| serde_json::from_str(&t).ok()),
        slurm_job: r.get::<_, Option<i64>>(16)?.map(u),
    })
}

/// Creates or migrates the schema on `conn` (a file's or an in-memory database).
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), RegistryError> {
    let db = |source| RegistryError::Db {
        path: path.to_path_buf(),
        source,
    };
    conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")
        .map_err(db)?;
    let found: Option<i64> = tx
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
        .map_err(db)?;
    let found = found.unwrap_or(0);
    if found > REGISTRY_SCHEMA_VERSION {
        return Err(RegistryError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: REGISTRY_SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql).map_err(db)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            params![i as i64 + 1],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)
}

/// Temporary file in the same folder, fsync, rename: a reader on another node sees the
/// old spool or the whole new one.
fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    use std::io::Write;
    let io = |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".spool")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// The rows a stage spooled into `path` ([`Registry::spool`]); none when the file is not
/// there (the stage recorded nothing yet, or died first).
pub fn read_spool(path: &Path) -> Result<Vec<SpoolEntry>, RegistryError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<SpoolFile>(&bytes)
            .map(|f| f.executions)
            .map_err(|source| RegistryError::SpoolFile {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(RegistryError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `?1` key, `?2` status, `?3` start, `?4` Slurm job: whether an execution that did not
/// commit (a failure, a cancel, a hit) was ingested before.
const ROW_RECORDED: &str = "SELECT EXISTS (SELECT 1 FROM executions WHERE key = ?1
     AND status = ?2 AND started_unix_ms = ?3 AND slurm_job IS ?4)";

const SLURM_JOB_COLUMNS: &str = "job, key, run_id, pipeline, node, attempt, state, nodes, reason, \
     submitted_unix_ms, started_unix_ms, ended_unix_ms, queue_wait_ms, run_ms";

fn slurm_job_from_row(r: &Row<'_>) -> rusqlite::Result<SlurmJobRow> {
    Ok(SlurmJobRow {
        job: u(r.get(0)?),
        key: r.get(1)?,
        run_id: r.get(2)?,
        pipeline: r.get(3)?,
        node: r.get(4)?,
        attempt: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        state: r.get(6)?,
        nodes: r.get(7)?,
        reason: r.get(8)?,
        submitted_unix_ms: u(r.get(9)?),
        started_unix_ms: r.get::<_, Option<i64>>(10)?.map(u),
        ended_unix_ms: r.get::<_, Option<i64>>(11)?.map(u),
        queue_wait_ms: r.get::<_, Option<i64>>(12)?.map(u),
        run_ms: r.get::<_, Option<i64>>(13)?.map(u),
    })
}

impl Registry {
    /// Opens (creating and migrating) the registry database at `path`.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let db = |source| RegistryError::Db {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| RegistryError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let mut conn = crate::sqlite::open_wal(path).map_err(db)?;
        migrate(&mut conn, path)?;
        Ok(Registry {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            spool: None,
        })
    }

    /// A handle for a stage that must not open the database (a Slurm job on a compute
    /// node, the database on a network filesystem): executions it records go to an
    /// in-memory database, so the stage's own logic (one row per commit) is unchanged, and
    /// each is also written to the file `spool_path` (atomically, the whole list), which
    /// the head reads with [`read_spool`] and ingests with [`Registry::ingest`]. Runs and
    /// node keys are the head's: those writes are refused.
    pub fn spool(spool_path: &Path) -> Result<Registry, RegistryError> {
        let db = |source| RegistryError::Db {
            path: spool_path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open_in_memory().map_err(db)?;
        migrate(&mut conn, spool_path)?;
        // The runs the rows name are in the head's database, not in this one.
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(db)?;
        Ok(Registry {
            path: spool_path.to_path_buf(),
            conn: Mutex::new(conn),
            spool: Some(Spool {
                path: spool_path.to_path_buf(),
                entries: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Whether this is a [`Registry::spool`] handle.
    pub fn is_spool(&self) -> bool {
        self.spool.is_some()
    }

    fn head_only(&self, what: &'static str) -> Result<(), RegistryError> {
        match self.spool {
            Some(_) => Err(RegistryError::SpoolOnly(what)),
            None => Ok(()),
        }
    }

    /// Adds (or, with `update`, changes) a spooled row and rewrites the spool file.
    fn spool_write(&self, update: impl FnOnce(&mut Vec<SpoolEntry>)) -> Result<(), RegistryError> {
        let Some(spool) = &self.spool else {
            return Ok(());
        };
        let mut entries = spool.entries.lock().unwrap_or_else(|e| e.into_inner());
        update(&mut entries);
        let file = SpoolFile {
            executions: entries.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).expect("a spool serializes");
        atomic_write(&spool.path, &json)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn db(&self, source: rusqlite::Error) -> RegistryError {
        RegistryError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Records the start of a run by this process (its head); returns its id. Its
    /// settings are read from `argv` ([`RunSettings::from_argv`]); the head, which has
    /// them parsed, calls [`Self::begin_run_with`].
    pub fn begin_run(&self, pipeline: &str, argv: &[String]) -> Result<i64, RegistryError> {
        let settings = RunSettings {
            settings_source: SettingsSource::Recorded,
            ..RunSettings::from_argv(argv)
        };
        self.begin_run_with(pipeline, argv, &settings)
    }

    /// Records the start of a run by this process (its head) with its settings, in one
    /// transaction; returns its id.
    pub fn begin_run_with(
        &self,
        pipeline: &str,
        argv: &[String],
        settings: &RunSettings,
    ) -> Result<i64, RegistryError> {
        self.head_only("begin_run")?;
        let argv = serde_json::to_string(argv).expect("strings serialize");
        let head = ProcessIdentity::current();
        let identity = serde_json::to_string(&head).expect("identity serializes");
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        tx.execute(
            "INSERT INTO runs (pipeline, argv, started_unix_ms, status, host, pid, head,
                 executor, profile)
             VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, ?8)",
            params![
                pipeline,
                argv,
                int("started_unix_ms", now_unix_ms())?,
                this_host(),
                head.pid,
                identity,
                settings.executor,
                settings.profile,
            ],
        )
        .map_err(|e| self.db(e))?;
        let id = tx.last_insert_rowid();
        let flags = (settings.overrides.iter().map(|o| ("set", o))).chain(
            settings
                .executor_overrides
                .iter()
                .map(|o| ("executor-set", o)),
        );
        for (seq, (flag, o)) in flags.enumerate() {
            tx.execute(
                "INSERT INTO run_overrides (run_id, seq, flag, key, value)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, seq as i64, flag, o.key, o.value],
            )
            .map_err(|e| self.db(e))?;
        }
        tx.commit().map_err(|e| self.db(e))?;
        Ok(id)
    }

    /// The settings of run `run_id` as recorded; for a run recorded before schema 6 (no
    /// `executor`), parsed from its argv. `None` when there is no such run.
    pub fn run_settings(&self, run_id: i64) -> Result<Option<RunSettings>, RegistryError> {
        let conn = self.conn();
        let row: Option<(String, Option<String>, Option<String>)> = conn
            .query_row(
                "SELECT argv, executor, profile FROM runs WHERE id = ?1",
                params![run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        let Some((argv, executor, profile)) = row else {
            return Ok(None);
        };
        let Some(executor) = executor else {
            // Written by this code as a JSON array; a hand-edited argv reads as no flags.
            let argv: Vec<String> = serde_json::from_str(&argv).unwrap_or_default();
            return Ok(Some(RunSettings::from_argv(&argv)));
        };
        let mut settings = RunSettings {
            executor,
            profile,
            ..RunSettings::default()
        };
        let mut stmt = conn
            .prepare("SELECT flag, key, value FROM run_overrides WHERE run_id = ?1 ORDER BY seq")
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(params![run_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| self.db(e))?;
        for row in rows {
            let (flag, key, value) = row.map_err(|e| self.db(e))?;
            let o = Override { key, value };
            if flag == "executor-set" {
                settings.executor_overrides.push(o);
            } else {
                settings.overrides.push(o);
            }
        }
        Ok(Some(settings))
    }

    /// Records how a run ended: `ok`, `failed` or `interrupted`.
    pub fn end_run(&self, run_id: i64, status: &str) -> Result<(), RegistryError> {
        self.head_only("end_run")?;
        check_status("run status", status, &RUN_STATUSES)?;
        let n = self
            .conn()
            .execute(
                "UPDATE runs SET status = ?1, ended_unix_ms = ?2 WHERE id = ?3",
                params![status, int("ended_unix_ms", now_unix_ms())?, run_id],
            )
            .map_err(|e| self.db(e))?;
        if n == 0 {
            return Err(RegistryError::NoSuchRun(run_id));
        }
        Ok(())
    }

    /// Records one stage execution; returns its id (`e.id` is ignored).
    pub fn record_execution(&self, e: &ExecutionRow) -> Result<i64, RegistryError> {
        check_status("execution status", &e.status, &EXECUTION_STATUSES)?;
        let id = self.insert_execution(&self.conn(), e)?;
        self.spool_write(|entries| {
            entries.push(SpoolEntry {
                row: ExecutionRow {
                    id: None,
                    ..e.clone()
                },
                committed_unix_ms: None,
                metrics: BTreeMap::new(),
                local_id: id,
            })
        })?;
        Ok(id)
    }

    /// Whether the commit of `key` at `committed_unix_ms` has its execution row: an
    /// `executed` row of that key whose span covers the commit time, whatever its run. An
    /// execution commits and ends its row under the key's lock, so the only other span that
    /// can cover that moment is one that waited for the lock meanwhile and then executed:
    /// it committed later and replaced that record, which is then no longer asked about.
    pub fn commit_recorded(
        &self,
        key: &str,
        committed_unix_ms: u64,
    ) -> Result<bool, RegistryError> {
        let at = int("committed_unix_ms", committed_unix_ms)?;
        self.conn()
            .query_row(COMMIT_RECORDED, params![key, at], |r| r.get(0))
            .map_err(|e| self.db(e))
    }

    /// Records the execution that committed a record at `committed_unix_ms` (its
    /// `created_unix_ms`), with its metrics, unless that commit has its row already
    /// ([`Self::commit_recorded`]). The stage process calls this right after committing;
    /// whoever later finds the record without its row calls it again with a row rebuilt
    /// from the record. Returns whether it added the row.
    pub fn record_committed(
        &self,
        e: &ExecutionRow,
        committed_unix_ms: u64,
        metrics: &BTreeMap<String, f64>,
    ) -> Result<bool, RegistryError> {
        check_status("committed execution status", &e.status, &["executed"])?;
        let at = int("committed_unix_ms", committed_unix_ms)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        let present: bool = tx
            .query_row(COMMIT_RECORDED, params![e.key, at], |r| r.get(0))
            .map_err(|e| self.db(e))?;
        if present {
            return Ok(false);
        }
        let id = self.insert_execution(&tx, e)?;
        self.insert_metrics(&tx, id, metrics)?;
        tx.commit().map_err(|e| self.db(e))?;
        drop(conn);
        self.spool_write(|entries| {
            entries.push(SpoolEntry {
                row: ExecutionRow {
                    id: None,
                    ..e.clone()
                },
                committed_unix_ms: Some(committed_unix_ms),
                metrics: metrics.clone(),
                local_id: id,
            })
        })?;
        Ok(true)
    }

    /// Writes the rows a stage spooled ([`read_spool`]) into this database, each once
    /// however often it is ingested (a restarted head, `runs --run`): the row of a commit
    /// as [`Self::record_committed`] does, any other when no row of the same key, status,
    /// start and Slurm job is there. A row naming a run this registry does not have (it
    /// was recreated since) goes under no run. Returns how many rows were added.
    pub fn ingest(&self, entries: &[SpoolEntry]) -> Result<usize, RegistryError> {
        self.head_only("ingest")?;
        let mut added = 0;
        for entry in entries {
            let mut row = ExecutionRow {
                id: None,
                ..entry.row.clone()
            };
            if let Some(run) = row.run_id
                && !self.has_run(run)?
            {
                row.run_id = None;
            }
            match entry.committed_unix_ms {
                Some(at) => {
                    if self.record_committed(&row, at, &entry.metrics)? {
                        added += 1;
                    }
                }
                None => {
                    check_status("execution status", &row.status, &EXECUTION_STATUSES)?;
                    let mut conn = self.conn();
                    let tx = conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(|e| self.db(e))?;
                    let present: bool = tx
                        .query_row(
                            ROW_RECORDED,
                            params![
                                row.key,
                                row.status,
                                int("started_unix_ms", row.started_unix_ms)?,
                                opt_int("slurm_job", row.slurm_job)?
                            ],
                            |r| r.get(0),
                        )
                        .map_err(|e| self.db(e))?;
                    if !present {
                        let id = self.insert_execution(&tx, &row)?;
                        self.insert_metrics(&tx, id, &entry.metrics)?;
                        added += 1;
                    }
                    tx.commit().map_err(|e| self.db(e))?;
                }
            }
        }
        Ok(added)
    }

    /// Records (or updates) what the head saw of one Slurm job of a stage. The earliest
    /// submission time wins: a head that re-attached to the job knows only when it saw it.
    pub fn upsert_slurm_job(&self, j: &SlurmJobRow) -> Result<(), RegistryError> {
        self.head_only("upsert_slurm_job")?;
        self.conn()
            .execute(
                &format!(
                    "INSERT INTO slurm_jobs ({SLURM_JOB_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (job, key) DO UPDATE SET run_id = ?3, pipeline = ?4,
                         node = ?5, attempt = ?6, state = ?7, nodes = ?8, reason = ?9,
                         submitted_unix_ms = MIN(submitted_unix_ms, ?10),
                         started_unix_ms = ?11, ended_unix_ms = ?12,
                         queue_wait_ms = ?13, run_ms = ?14"
                ),
                params![
                    int("job", j.job)?,
                    j.key,
                    j.run_id,
                    j.pipeline,
                    j.node,
                    j.attempt,
                    j.state,
                    j.nodes,
                    j.reason,
                    int("submitted_unix_ms", j.submitted_unix_ms)?,
                    opt_int("started_unix_ms", j.started_unix_ms)?,
                    opt_int("ended_unix_ms", j.ended_unix_ms)?,
                    opt_int("queue_wait_ms", j.queue_wait_ms)?,
                    opt_int("run_ms", j.run_ms)?,
                ],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The Slurm jobs run `run_id` submitted, in submission order.
    pub fn slurm_jobs(&self, run_id: i64) -> Result<Vec<SlurmJobRow>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {SLURM_JOB_COLUMNS} FROM slurm_jobs WHERE run_id = ?1
                 ORDER BY submitted_unix_ms, job"
            ))
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(params![run_id], slurm_job_from_row)
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }

    /// The latest Slurm job of a node of a pipeline (what `status` shows), if it ever ran
    /// as one.
    pub fn last_slurm_job(
        &self,
        pipeline: &str,
        node: &str,
    ) -> Result<Option<SlurmJobRow>, RegistryError> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {SLURM_JOB_COLUMNS} FROM slurm_jobs WHERE pipeline = ?1 AND node = ?2
                     ORDER BY submitted_unix_ms DESC, job DESC LIMIT 1"
                ),
                params![pipeline, node],
                slurm_job_from_row,
            )
            .optional()
            .map_err(|e| self.db(e))
    }

    /// Whether run `run_id` is in the registry and `at_unix_ms` falls between its start
    /// and its end (if it ended): a run id read from a record names this run, not one of a
    /// registry deleted and recreated since.
    pub fn run_covers(&self, run_id: i64, at_unix_ms: u64) -> Result<bool, RegistryError> {
        let at = int("at_unix_ms", at_unix_ms)?;
        self.conn()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE id = ?1 AND started_unix_ms <= ?2
                     AND (ended_unix_ms IS NULL OR ended_unix_ms >= ?2))",
                params![run_id, at],
                |r| r.get(0),
            )
            .map_err(|e| self.db(e))
    }

    /// The one INSERT of an execution row, on a connection or transaction already held.
    fn insert_execution(&self, conn: &Connection, e: &ExecutionRow) -> Result<i64, RegistryError> {
        conn.execute(
            "INSERT INTO executions (run_id, pipeline, node, kind, key, status, started_unix_ms,
                 ended_unix_ms, duration_ms, host, device, peak_rss_bytes, peak_gpu_bytes, error,
                 resources, slurm_job)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                e.run_id,
                e.pipeline,
                e.node,
                e.kind,
                e.key,
                e.status,
                int("started_unix_ms", e.started_unix_ms)?,
                int("ended_unix_ms", e.ended_unix_ms)?,
                int("duration_ms", e.duration_ms)?,
                e.host,
                e.device,
                opt_int("peak_rss_bytes", e.peak_rss_bytes)?,
                opt_int("peak_gpu_bytes", e.peak_gpu_bytes)?,
                e.error,
                e.resources
                    .as_ref()
                    .map(|r| serde_json::to_string(r).expect("resources serialise")),
                opt_int("slurm_job", e.slurm_job)?,
            ],
        )
        .map_err(|e| self.db(e))?;
        Ok(conn.last_insert_rowid())
    }

    fn insert_metrics(
        &self,
        conn: &Connection,
        execution_id: i64,
        metrics: &BTreeMap<String, f64>,
    ) -> Result<(), RegistryError> {
        for (name, value) in metrics {
            conn.execute(
                "INSERT OR REPLACE INTO metrics (execution_id, name, value) VALUES (?1, ?2, ?3)",
                params![execution_id, name, value],
            )
            .map_err(|e| self.db(e))?;
        }
        Ok(())
    }

    /// Records the metrics of an execution (replacing same-named ones), atomically.
    pub fn record_metrics(
        &self,
        execution_id: i64,
        metrics: &BTreeMap<String, f64>,
    ) -> Result<(), RegistryError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        self.insert_metrics(&tx, execution_id, metrics)?;
        tx.commit().map_err(|e| self.db(e))?;
        drop(conn);
        self.spool_write(|entries| {
            if let Some(e) = entries.iter_mut().find(|e| e.local_id == execution_id) {
                e.metrics
                    .extend(metrics.iter().map(|(k, v)| (k.clone(), *v)));
            }
        })
    }

    /// The latest `limit` runs, newest first. A `running` run whose head is provably gone
    /// reads as [`DEAD_RUN_STATUS`].
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRow>, RegistryError> {
        self.select_runs(
            "ORDER BY id DESC LIMIT ?1",
            params![i64::try_from(limit).unwrap_or(i64::MAX)],
        )
    }

    /// Every run of `pipeline` (as the head names it: its absolute path), oldest first.
    pub fn runs_of(&self, pipeline: &str) -> Result<Vec<RunRow>, RegistryError> {
        self.select_runs("WHERE pipeline = ?1 ORDER BY id", params![pipeline])
    }

    /// Runs by `tail` (a WHERE/ORDER clause) with their settings.
    fn select_runs(
        &self,
        tail: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<RunRow>, RegistryError> {
        let rows: Vec<RunRow> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT id, pipeline, argv, started_unix_ms, ended_unix_ms, status, host, pid, head
                     FROM runs {tail}"
                ))
                .map_err(|e| self.db(e))?;
            let here = ProcessIdentity::current();
            let rows = stmt
                .query_map(args, |r| {
                    let mut row = RunRow {
                        id: r.get(0)?,
                        pipeline: r.get(1)?,
                        argv: r.get(2)?,
                        started_unix_ms: u(r.get(3)?),
                        ended_unix_ms: r.get::<_, Option<i64>>(4)?.map(u),
                        status: r.get(5)?,
                        host: r.get(6)?,
                        settings: RunSettings::default(),
                    };
                    let (pid, head): (i64, Option<String>) = (r.get(7)?, r.get(8)?);
                    if row.status == "running" && head_gone(head.as_deref(), &row.host, pid, &here)
                    {
                        row.status = DEAD_RUN_STATUS.into();
                    }
                    Ok(row)
                })
                .map_err(|e| self.db(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.db(e))?
        };
        rows.into_iter()
            .map(|mut row| {
                row.settings = self.run_settings(row.id)?.unwrap_or_default();
                Ok(row)
            })
            .collect()
    }

    /// Whether run `run_id` was ever recorded (`runs --run N` names a missing one).
    pub fn has_run(&self, run_id: i64) -> Result<bool, RegistryError> {
        self.conn()
            .query_row("SELECT 1 FROM runs WHERE id = ?1", params![run_id], |_| {
                Ok(())
            })
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.db(e))
    }

    /// The executions of a run, in the order they were recorded.
    pub fn executions(&self, run_id: i64) -> Result<Vec<ExecutionRow>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions WHERE run_id = ?1 ORDER BY id"
            ))
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(params![run_id], execution_from_row)
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }

    /// Number of executions, all or with one status.
    pub fn count_executions(&self, status: Option<&str>) -> Result<u64, RegistryError> {
        let conn = self.conn();
        let n: i64 = match status {
            Some(s) => conn.query_row(
                "SELECT COUNT(*) FROM executions WHERE status = ?1",
                params![s],
                |r| r.get(0),
            ),
            None => conn.query_row("SELECT COUNT(*) FROM executions", [], |r| r.get(0)),
        }
        .map_err(|e| self.db(e))?;
        Ok(u(n))
    }

    /// Remembers the key (and its material) a node of a pipeline last ran with, so
    /// `explain`/`status` can say what changed since.
    pub fn set_node_key(
        &self,
        pipeline: &str,
        node: &str,
        key: &CacheKey,
        material: &KeyMaterial,
    ) -> Result<(), RegistryError> {
        self.head_only("set_node_key")?;
        let material = serde_json::to_string(material).expect("material serializes");
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO node_keys (pipeline, node, key, material, updated_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    pipeline,
                    node,
                    key.as_str(),
                    material,
                    int("updated_unix_ms", now_unix_ms())?
                ],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The key and material a node last ran with, if any.
    pub fn last_node_key(
        &self,
        pipeline: &str,
        node: &str,
    ) -> Result<Option<(CacheKey, KeyMaterial)>, RegistryError> {
        let row: Option<(String, String)> = self
            .conn()
            .query_row(
                "SELECT key, material FROM node_keys WHERE pipeline = ?1 AND node = ?2",
                params![pipeline, node],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        let Some((key, material)) = row else {
            return Ok(None);
        };
        let corrupt = |reason: String| RegistryError::Corrupt {
            path: self.path.clone(),
            what: format!("key of node `{node}` in pipeline `{pipeline}`"),
            reason,
        };
        let key = key
            .parse::<CacheKey>()
            .map_err(|e| corrupt(e.to_string()))?;
        let material = serde_json::from_str(&material).map_err(|e| corrupt(e.to_string()))?;
        Ok(Some((key, material)))
    }

    /// For each key, the metrics of its most recent execution that recorded metrics.
    /// Keys without metrics are absent from the result.
    pub fn metrics_for_keys(
        &self,
        keys: &[CacheKey],
    ) -> Result<BTreeMap<String, BTreeMap<String, f64>>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT m.name, m.value FROM metrics m
                 WHERE m.execution_id = (
                     SELECT e.id FROM executions e
                     WHERE e.key = ?1 AND EXISTS (SELECT 1 FROM metrics x WHERE x.execution_id = e.id)
                     ORDER BY e.id DESC LIMIT 1)",
            )
            .map_err(|e| self.db(e))?;
        let mut out = BTreeMap::new();
        for key in keys {
            let rows = stmt
                .query_map(params![key.as_str()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?))
                })
                .map_err(|e| self.db(e))?;
            let metrics: BTreeMap<String, f64> =
                rows.collect::<Result<_, _>>().map_err(|e| self.db(e))?;
            if !metrics.is_empty() {
                out.insert(key.as_str().to_string(), metrics);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(c: char) -> CacheKey {
        c.to_string().repeat(64).parse().unwrap()
    }

    fn execution(run_id: Option<i64>, node: &str, k: &CacheKey, status: &str) -> ExecutionRow {
        ExecutionRow {
            id: None,
            run_id,
            pipeline: "p.yaml".into(),
            node: node.into(),
            kind: "train".into(),
            key: k.as_str().into(),
            status: status.into(),
            started_unix_ms: 1_000,
            ended_unix_ms: 3_500,
            duration_ms: 2_500,
            host: "h".into(),
            device: "cpu".into(),
            peak_rss_bytes: Some(123 << 20),
            peak_gpu_bytes: None,
            error: None,
            resources: Some(crate::spec::Resources::default()),
            slurm_job: None,
        }
    }

    #[test]
    fn runs_and_executions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("registry.sqlite")).unwrap();
        let run = reg
            .begin_run(
                "p.yaml",
                &["ugc-pipe".into(), "run".into(), "p.yaml".into()],
            )
            .unwrap();
        let runs = reg.runs(10).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, "running");
        assert_eq!(runs[0].ended_unix_ms, None);
        assert_eq!(runs[0].argv, r#"["ugc-pipe","run","p.yaml"]"#);

        let mut e = execution(Some(run), "train", &key('a'), "failed");
        e.error = Some("boom".into());
        let id = reg.record_execution(&e).unwrap();
        let cached = reg
            .record_execution(&execution(Some(run), "eval", &key('b'), "cached"))
            .unwrap();
        assert!(cached > id);
        reg.end_run(run, "failed").unwrap();

        let got = reg.executions(run).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], ExecutionRow { id: Some(id), ..e });
        let runs = reg.runs(10).unwrap();
        assert_eq!(runs[0].status, "failed");
        assert!(runs[0].ended_unix_ms.is_some());
        assert_eq!(reg.count_executions(None).unwrap(), 2);
        assert_eq!(reg.count_executions(Some("cached")).unwrap(), 1);
        assert_eq!(reg.count_executions(Some("executed")).unwrap(), 0);
        // Reopening keeps everything (and does not re-run migrations).
        drop(reg);
        let reg = Registry::open(&dir.path().join("registry.sqlite")).unwrap();
        assert_eq!(reg.count_executions(None).unwrap(), 2);
    }

    #[test]
    fn bad_statuses_and_ids_are_rejected_with_their_value() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        let run = reg.begin_run("p", &[]).unwrap();
        let err = reg.end_run(run, "done").unwrap_err().to_string();
        assert!(err.contains("`done`"), "{err}");
        let err = reg
            .record_execution(&execution(None, "n", &key('a'), "ran"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`ran`"), "{err}");
        assert!(matches!(
            reg.end_run(run + 99, "ok"),
            Err(RegistryError::NoSuchRun(_))
        ));
        let mut e = execution(None, "n", &key('a'), "executed");
        e.duration_ms = u64::MAX;
        assert!(matches!(
            reg.record_execution(&e),
            Err(RegistryError::Overflow {
                field: "duration_ms",
                ..
            })
        ));
    }

    #[test]
    fn metrics_come_from_the_latest_execution_that_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        let first = reg
            .record_execution(&execution(None, "eval", &key('a'), "executed"))
            .unwrap();
        reg.record_metrics(
            first,
            &BTreeMap::from([("fid".into(), 30.5), ("miou".into(), 0.4)]),
        )
        .unwrap();
        let second = reg
            .record_execution(&execution(None, "eval", &key('a'), "executed"))
            .unwrap();
        reg.record_metrics(second, &BTreeMap::from([("fid".into(), 25.0)]))
            .unwrap();
        // A later cache hit without metrics does not hide them.
        reg.record_execution(&execution(None, "eval", &key('a'), "cached"))
            .unwrap();
        let m = reg.metrics_for_keys(&[key('a'), key('b')]).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[key('a').as_str()], BTreeMap::from([("fid".into(), 25.0)]));
    }

    /// A pid above the kernel's pid_max (at most 2^22) cannot belong to a live process.
    const NO_SUCH_PID: u32 = 2_147_483_646;

    #[test]
    fn a_process_is_judged_by_its_identity_not_its_pid_alone() {
        let here = ProcessIdentity::current();
        assert!(
            here.boot_id.is_some() && here.start_ticks.is_some(),
            "{here:?}"
        );
        assert_eq!(here.liveness(&here), Liveness::Alive);
        // Same pid, other start time: the pid was reused by another process.
        let reused = ProcessIdentity {
            start_ticks: here.start_ticks.map(|t| t + 1),
            ..here.clone()
        };
        assert_eq!(reused.liveness(&here), Liveness::Gone);
        let exited = ProcessIdentity {
            pid: NO_SUCH_PID,
            ..here.clone()
        };
        assert_eq!(exited.liveness(&here), Liveness::Gone);
        // Another pid namespace (a container): its pids mean nothing here.
        let contained = ProcessIdentity {
            pid: NO_SUCH_PID,
            pid_ns: Some("pid:[1]".into()),
            ..here.clone()
        };
        assert_eq!(contained.liveness(&here), Liveness::Unknown);
        // An earlier boot of this installation, or a boot of another machine.
        let rebooted = ProcessIdentity {
            boot_id: Some("earlier-boot".into()),
            machine_id: Some("m".into()),
            ..here.clone()
        };
        let reader = ProcessIdentity {
            machine_id: Some("m".into()),
            ..here.clone()
        };
        assert_eq!(rebooted.liveness(&reader), Liveness::Gone);
        let elsewhere = ProcessIdentity {
            machine_id: Some("other".into()),
            ..rebooted.clone()
        };
        assert_eq!(elsewhere.liveness(&reader), Liveness::Unknown);
        let unknown_boot = ProcessIdentity {
            boot_id: None,
            pid: NO_SUCH_PID,
            ..here.clone()
        };
        assert_eq!(unknown_boot.liveness(&here), Liveness::Unknown);
    }

    #[test]
    fn runs_whose_head_is_gone_read_as_dead_and_other_hosts_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        let live = reg.begin_run("p", &[]).unwrap();
        let dead = reg.begin_run("p", &[]).unwrap();
        let reused = reg.begin_run("p", &[]).unwrap();
        let old_here = reg.begin_run("p", &[]).unwrap();
        let old_elsewhere = reg.begin_run("p", &[]).unwrap();
        let ended = reg.begin_run("p", &[]).unwrap();
        reg.end_run(ended, "ok").unwrap();
        let here = ProcessIdentity::current();
        let set_head = |id: i64, head: Option<ProcessIdentity>, host: &str, pid: u32| {
            let head = head.map(|h| serde_json::to_string(&h).unwrap());
            reg.conn()
                .execute(
                    "UPDATE runs SET head = ?1, host = ?2, pid = ?3 WHERE id = ?4",
                    params![head, host, pid, id],
                )
                .unwrap();
        };
        let host = this_host();
        let gone = ProcessIdentity {
            pid: NO_SUCH_PID,
            ..here.clone()
        };
        set_head(dead, Some(gone), &host, NO_SUCH_PID);
        let other_start = ProcessIdentity {
            start_ticks: here.start_ticks.map(|t| t + 1),
            ..here.clone()
        };
        set_head(reused, Some(other_start), &host, here.pid);
        // Runs recorded before identities: judged by host and pid.
        set_head(old_here, None, &host, NO_SUCH_PID);
        set_head(old_elsewhere, None, "another-host", NO_SUCH_PID);
        let runs = reg.runs(10).unwrap();
        let status = |id| runs.iter().find(|r| r.id == id).unwrap().status.clone();
        assert_eq!(status(live), "running");
        assert_eq!(status(dead), DEAD_RUN_STATUS);
        assert_eq!(status(reused), DEAD_RUN_STATUS);
        assert_eq!(status(old_here), DEAD_RUN_STATUS);
        assert_eq!(status(old_elsewhere), "running");
        assert_eq!(status(ended), "ok");
    }

    #[test]
    fn a_schema_1_registry_is_migrated_and_keeps_its_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (1);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO runs (pipeline, argv, started_unix_ms, status, host, pid)
                 VALUES ('p', '[]', 1, 'running', ?1, ?2)",
                params![this_host(), NO_SUCH_PID],
            )
            .unwrap();
        }
        let reg = Registry::open(&path).unwrap();
        let runs = reg.runs(10).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, DEAD_RUN_STATUS);
        let new = reg.begin_run("p", &[]).unwrap();
        assert_eq!(reg.runs(10).unwrap()[0].id, new);
        assert_eq!(reg.runs(10).unwrap()[0].status, "running");
    }

    #[test]
    fn executions_record_their_resources_and_a_schema_2_registry_migrates_to_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (1), (2);
                 INSERT INTO runs (pipeline, argv, started_unix_ms, status, host, pid)
                     VALUES ('p', '[]', 1, 'ok', 'h', 1);
                 INSERT INTO executions (run_id, pipeline, node, kind, key, status,
                     started_unix_ms, ended_unix_ms, duration_ms, host, device)
                     VALUES (1, 'p', 'old', 'train', 'k', 'executed', 1, 2, 1, 'h', 'cpu');",
            )
            .unwrap();
        }
        let reg = Registry::open(&path).unwrap();
        let mut dp = execution(Some(1), "new", &key('a'), "executed");
        dp.resources = Some(crate::spec::Resources {
            devices: 2,
            dist_timeout: std::time::Duration::from_secs_f64(12.5),
            ..crate::spec::Resources::default()
        });
        reg.record_execution(&dp).unwrap();
        let rows = reg.executions(1).unwrap();
        assert_eq!(
            rows[0].resources, None,
            "a row from before schema 3 is unknown"
        );
        assert_eq!(rows[1].resources, dp.resources);
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(
            json["resources"],
            json!({"devices": 2, "dist_timeout_s": 12.5})
        );
    }

    #[test]
    fn a_commit_is_recorded_once_whoever_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        let run = reg.begin_run("p", &[]).unwrap();
        let row = execution(Some(run), "eval", &key('a'), "executed");
        let metrics = BTreeMap::from([("fid".into(), 30.5)]);
        // Committed at 3000, inside the row's span 1000..3500.
        assert!(reg.record_committed(&row, 3_000, &metrics).unwrap());
        // A second recorder (a head recovering rows) finds it and adds nothing.
        let rebuilt = ExecutionRow {
            started_unix_ms: 500,
            ended_unix_ms: 3_000,
            peak_rss_bytes: None,
            ..row.clone()
        };
        assert!(!reg.record_committed(&rebuilt, 3_000, &metrics).unwrap());
        assert_eq!(reg.executions(run).unwrap().len(), 1);
        assert_eq!(
            reg.metrics_for_keys(&[key('a')]).unwrap()[key('a').as_str()],
            metrics
        );
        // A later commit of the same key (a forced re-run) is another execution.
        let later = ExecutionRow {
            started_unix_ms: 9_000,
            ended_unix_ms: 9_500,
            ..row.clone()
        };
        assert!(!reg.commit_recorded(key('a').as_str(), 9_400).unwrap());
        assert!(
            reg.record_committed(&later, 9_400, &BTreeMap::new())
                .unwrap()
        );
        assert!(reg.commit_recorded(key('a').as_str(), 9_400).unwrap());
        // A row rebuilt without its run (the record named a run this registry lacks) is
        // still the same commit.
        let runless = ExecutionRow {
            run_id: None,
            ..rebuilt
        };
        assert!(
            !reg.record_committed(&runless, 3_000, &BTreeMap::new())
                .unwrap()
        );
        // Another key committed at the same moment is its own execution.
        let other = execution(Some(run), "eval", &key('b'), "executed");
        assert!(
            reg.record_committed(&other, 3_000, &BTreeMap::new())
                .unwrap()
        );
        assert_eq!(reg.count_executions(Some("executed")).unwrap(), 3);
        // Only an execution that committed is recorded this way.
        let failed = execution(Some(run), "eval", &key('a'), "failed");
        assert!(matches!(
            reg.record_committed(&failed, 3_000, &metrics),
            Err(RegistryError::InvalidStatus { .. })
        ));
    }

    #[test]
    fn a_spool_handle_writes_no_database_and_the_head_ingests_its_rows_once() {
        let dir = tempfile::tempdir().unwrap();
        let spool_path = dir.path().join("attempts/k/7.rows");
        let spool = Registry::spool(&spool_path).unwrap();
        assert!(spool.is_spool());
        // What a stage records: a hit, a failure, a commit with metrics, added metrics.
        let mut hit = execution(Some(1), "eval", &key('a'), "cached");
        hit.slurm_job = Some(7);
        spool.record_execution(&hit).unwrap();
        let mut failed = execution(Some(1), "eval", &key('b'), "failed");
        failed.slurm_job = Some(7);
        failed.error = Some("boom".into());
        spool.record_execution(&failed).unwrap();
        let mut done = execution(Some(1), "eval", &key('c'), "executed");
        done.slurm_job = Some(7);
        let metrics = BTreeMap::from([("fid".into(), 30.5)]);
        assert!(spool.record_committed(&done, 3_000, &metrics).unwrap());
        // The in-memory database keeps the stage's own logic: the commit is recorded once.
        assert!(!spool.record_committed(&done, 3_000, &metrics).unwrap());
        let last = spool
            .record_execution(&execution(Some(1), "x", &key('d'), "cancelled"))
            .unwrap();
        spool
            .record_metrics(last, &BTreeMap::from([("step".into(), 4.0)]))
            .unwrap();
        // Runs and node keys are the head's.
        assert!(matches!(
            spool.begin_run("p", &[]),
            Err(RegistryError::SpoolOnly("begin_run"))
        ));
        let m = KeyMaterial::new("train", 1, json!({}));
        assert!(spool.set_node_key("p", "n", &m.key(), &m).is_err());
        let files: Vec<String> = std::fs::read_dir(spool_path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, ["7.rows"], "no database, no temporaries: {files:?}");

        let entries = read_spool(&spool_path).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[2].committed_unix_ms, Some(3_000));
        assert_eq!(entries[2].metrics, metrics);
        assert_eq!(entries[3].metrics["step"], 4.0);
        let reg = Registry::open(&dir.path().join("registry.sqlite")).unwrap();
        let run = reg.begin_run("p.yaml", &[]).unwrap();
        assert_eq!(run, 1);
        assert_eq!(reg.ingest(&entries).unwrap(), 4);
        assert_eq!(reg.ingest(&entries).unwrap(), 0, "ingested once");
        let rows = reg.executions(run).unwrap();
        let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(statuses, ["cached", "failed", "executed", "cancelled"]);
        assert_eq!(rows[1].error.as_deref(), Some("boom"));
        assert!(rows[..3].iter().all(|r| r.slurm_job == Some(7)));
        assert_eq!(
            reg.metrics_for_keys(&[key('c')]).unwrap()[key('c').as_str()],
            metrics
        );
        // A row the stage itself could not have recorded before is not hidden either: a
        // second attempt (another job) of the same failure is its own row.
        let again = SpoolEntry {
            row: ExecutionRow {
                slurm_job: Some(8),
                ..failed.clone()
            },
            ..entries[1].clone()
        };
        assert_eq!(reg.ingest(&[again]).unwrap(), 1);
        // A missing spool is no rows; a damaged one names its file.
        assert!(
            read_spool(&dir.path().join("none.rows"))
                .unwrap()
                .is_empty()
        );
        std::fs::write(&spool_path, "{").unwrap();
        let e = read_spool(&spool_path).unwrap_err().to_string();
        assert!(e.contains("7.rows") && e.contains("spool"), "{e}");
    }

    #[test]
    fn rows_naming_a_run_the_registry_lacks_are_ingested_under_no_run() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        let entry = SpoolEntry {
            row: execution(Some(42), "eval", &key('a'), "failed"),
            committed_unix_ms: None,
            metrics: BTreeMap::new(),
            local_id: 0,
        };
        assert_eq!(reg.ingest(&[entry]).unwrap(), 1);
        assert_eq!(reg.count_executions(Some("failed")).unwrap(), 1);
    }

    fn slurm_job(job: u64, run: i64, node: &str, submitted: u64) -> SlurmJobRow {
        SlurmJobRow {
            job,
            run_id: Some(run),
            pipeline: "p.yaml".into(),
            node: node.into(),
            key: key('a').as_str().into(),
            attempt: 1,
            state: "PENDING".into(),
            nodes: None,
            reason: Some("Resources".into()),
            submitted_unix_ms: submitted,
            started_unix_ms: None,
            ended_unix_ms: None,
            queue_wait_ms: None,
            run_ms: None,
        }
    }

    #[test]
    fn slurm_jobs_are_upserted_and_listed_by_run_and_node() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        assert_eq!(reg.last_slurm_job("p.yaml", "a").unwrap(), None);
        let first = slurm_job(10, 1, "a", 1_000);
        reg.upsert_slurm_job(&first).unwrap();
        let ended = SlurmJobRow {
            state: "NODE_FAIL".into(),
            nodes: Some("n1".into()),
            reason: Some("resubmitted as job 11".into()),
            started_unix_ms: Some(1_500),
            ended_unix_ms: Some(2_000),
            queue_wait_ms: Some(500),
            run_ms: Some(500),
            ..first.clone()
        };
        reg.upsert_slurm_job(&ended).unwrap();
        let second = SlurmJobRow {
            attempt: 2,
            ..slurm_job(11, 1, "a", 2_100)
        };
        reg.upsert_slurm_job(&second).unwrap();
        reg.upsert_slurm_job(&slurm_job(12, 2, "b", 3_000)).unwrap();
        assert_eq!(reg.slurm_jobs(1).unwrap(), [ended, second.clone()]);
        assert_eq!(reg.last_slurm_job("p.yaml", "a").unwrap(), Some(second));
        assert_eq!(reg.slurm_jobs(3).unwrap(), []);
    }

    #[test]
    fn a_schema_4_registry_migrates_to_5_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..4] {
                conn.execute_batch(m).unwrap();
            }
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (1), (2), (3), (4);
                 INSERT INTO runs (pipeline, argv, started_unix_ms, status, host, pid)
                     VALUES ('p', '[]', 1, 'ok', 'h', 1);
                 INSERT INTO executions (run_id, pipeline, node, kind, key, status,
                     started_unix_ms, ended_unix_ms, duration_ms, host, device, slurm_job)
                     VALUES (1, 'p', 'a', 'command', 'k', 'executed', 1, 2, 1, 'h', 'cpu', 99);",
            )
            .unwrap();
        }
        let reg = Registry::open(&path).unwrap();
        let rows = reg.executions(1).unwrap();
        assert_eq!(rows[0].slurm_job, Some(99));
        assert!(reg.slurm_jobs(1).unwrap().is_empty(), "nothing invented");
        reg.upsert_slurm_job(&slurm_job(99, 1, "a", 1)).unwrap();
        let version: i64 = reg
            .conn()
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, REGISTRY_SCHEMA_VERSION);
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    fn o(key: &str, value: &str) -> Override {
        Override {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn settings_are_read_back_from_argv_as_clap_parses_them() {
        let argv = strings(&[
            "/bin/ugc-pipe",
            "run",
            "p.yaml",
            "--set",
            "train.lr=0.1",
            "--set=model.ngf=[8, 16]",
            "--executor=slurm",
            "--executor-set",
            "partition=gpu",
            "--profile",
            "site.yaml",
            "--set",
            " flag_only",
            "-j",
            "2",
            "--",
            "--set",
            "after=dashes",
        ]);
        let s = RunSettings::from_argv(&argv);
        assert_eq!(
            s.overrides,
            [
                o("train.lr", "0.1"),
                o("model.ngf", "[8, 16]"),
                o("flag_only", "")
            ]
        );
        assert_eq!(s.executor, "slurm");
        assert_eq!(s.profile.as_deref(), Some("site.yaml"));
        assert_eq!(s.executor_overrides, [o("partition", "gpu")]);
        assert_eq!(s.settings_source, SettingsSource::Argv);
        // A value with `=` keeps it; a trailing flag without its value is dropped.
        let s = RunSettings::from_argv(&strings(&["x", "run", "--set", "a=b=c", "--set"]));
        assert_eq!(s.overrides, [o("a", "b=c")]);
        assert_eq!(s.executor, "local");
        assert_eq!(
            RunSettings {
                overrides: vec![o("a", "1"), o("b", "2"), o("a", "3")],
                ..RunSettings::default()
            }
            .override_map(),
            BTreeMap::from([("a".into(), "3".into()), ("b".into(), "2".into())]),
            "the last of a repeated key wins, as when applied"
        );
    }

    #[test]
    fn run_settings_are_recorded_structured_and_listed_with_their_runs() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        let settings = RunSettings {
            overrides: vec![o("train.lr", "0.1"), o("steps", "400")],
            executor: "slurm".into(),
            profile: Some("site.yaml".into()),
            executor_overrides: vec![o("partition", "gpu")],
            settings_source: SettingsSource::Recorded,
        };
        // The argv says something else: what the head parsed is what is recorded.
        let a = reg
            .begin_run_with(
                "p.yaml",
                &strings(&["ugc-pipe", "run", "p.yaml"]),
                &settings,
            )
            .unwrap();
        let b = reg
            .begin_run(
                "q.yaml",
                &strings(&["ugc-pipe", "run", "q.yaml", "--set", "x=1"]),
            )
            .unwrap();
        let c = reg.begin_run("p.yaml", &[]).unwrap();
        assert_eq!(reg.run_settings(a).unwrap().as_ref(), Some(&settings));
        let sb = reg.run_settings(b).unwrap().unwrap();
        assert_eq!(
            (
                sb.overrides.as_slice(),
                sb.executor.as_str(),
                sb.settings_source
            ),
            (&[o("x", "1")][..], "local", SettingsSource::Recorded)
        );
        assert_eq!(reg.run_settings(c + 1).unwrap(), None);
        // Stored as rows one can query, not as text to parse.
        let lr: String = reg
            .conn()
            .query_row(
                "SELECT value FROM run_overrides WHERE run_id = ?1 AND key = 'train.lr'",
                params![a],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(lr, "0.1");
        let runs = reg.runs(10).unwrap();
        assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [c, b, a]);
        assert_eq!(runs[2].settings, settings);
        let of_p = reg.runs_of("p.yaml").unwrap();
        assert_eq!(of_p.iter().map(|r| r.id).collect::<Vec<_>>(), [a, c]);
        assert_eq!(of_p[1].settings.executor, "local");
        assert!(of_p[1].settings.overrides.is_empty());
        let json = serde_json::to_value(&runs[2]).unwrap();
        assert_eq!(
            json["overrides"],
            json!([{"key": "train.lr", "value": "0.1"}, {"key": "steps", "value": "400"}])
        );
        assert_eq!(json["executor"], "slurm");
        assert_eq!(json["settings_source"], "recorded");
    }

    #[test]
    fn a_schema_5_registry_migrates_to_6_and_reads_old_overrides_from_argv() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..5] {
                conn.execute_batch(m).unwrap();
            }
            conn.execute_batch(
                r#"CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (1), (2), (3), (4), (5);
                 INSERT INTO runs (pipeline, argv, started_unix_ms, ended_unix_ms, status,
                     host, pid)
                     VALUES ('p', '["ugc-pipe","run","p","--set","a.b=2","--executor","slurm"]',
                         1, 2, 'ok', 'h', 1),
                         ('p', 'not json', 3, 4, 'ok', 'h', 1);
                 INSERT INTO executions (run_id, pipeline, node, kind, key, status,
                     started_unix_ms, ended_unix_ms, duration_ms, host, device)
                     VALUES (1, 'p', 'a', 'command', 'k', 'executed', 1, 2, 1, 'h', 'cpu');"#,
            )
            .unwrap();
        }
        let reg = Registry::open(&path).unwrap();
        let version: i64 = reg
            .conn()
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, REGISTRY_SCHEMA_VERSION);
        assert_eq!(reg.executions(1).unwrap().len(), 1, "rows kept");
        let old = reg.run_settings(1).unwrap().unwrap();
        assert_eq!(old.overrides, [o("a.b", "2")]);
        assert_eq!(old.executor, "slurm");
        assert_eq!(old.settings_source, SettingsSource::Argv);
        let unreadable = reg.run_settings(2).unwrap().unwrap();
        assert!(unreadable.overrides.is_empty(), "{unreadable:?}");
        // New runs beside the old ones are recorded structured.
        let new = reg
            .begin_run_with(
                "p",
                &[],
                &RunSettings {
                    overrides: vec![o("a.b", "3")],
                    executor: "local".into(),
                    ..RunSettings::default()
                },
            )
            .unwrap();
        let runs = reg.runs_of("p").unwrap();
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[2].id, new);
        assert_eq!(runs[2].settings.overrides, [o("a.b", "3")]);
        assert_eq!(runs[2].settings.settings_source, SettingsSource::Recorded);
        assert_eq!(runs[0].settings, old);
    }

    #[test]
    fn a_run_covers_the_times_between_its_start_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        let run = reg.begin_run("p", &[]).unwrap();
        reg.conn()
            .execute(
                "UPDATE runs SET started_unix_ms = 1000 WHERE id = ?1",
                params![run],
            )
            .unwrap();
        assert!(reg.run_covers(run, 1_000).unwrap());
        assert!(
            reg.run_covers(run, now_unix_ms()).unwrap(),
            "running: no end yet"
        );
        assert!(!reg.run_covers(run, 999).unwrap());
        assert!(!reg.run_covers(run + 1, 1_000).unwrap());
        reg.end_run(run, "ok").unwrap();
        assert!(!reg.run_covers(run, now_unix_ms() + 60_000).unwrap());
    }

    #[test]
    fn node_keys_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        assert!(reg.last_node_key("p", "train").unwrap().is_none());
        let m1 = KeyMaterial::new("train", 1, json!({"lr": 0.1}));
        reg.set_node_key("p", "train", &m1.key(), &m1).unwrap();
        let m2 = KeyMaterial::new("train", 1, json!({"lr": 0.2}));
        reg.set_node_key("p", "train", &m2.key(), &m2).unwrap();
        let (k, m) = reg.last_node_key("p", "train").unwrap().unwrap();
        assert_eq!(k, m2.key());
        assert_eq!(m, m2);
        assert!(reg.last_node_key("other", "train").unwrap().is_none());
    }

    #[test]
    fn concurrent_writers_with_own_connections_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite");
        Registry::open(&path).unwrap();
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let reg = Registry::open(&path).unwrap();
                    let run = reg.begin_run(&format!("p{t}"), &[]).unwrap();
                    for i in 0..40 {
                        let k = if t == 0 { key('a') } else { key('b') };
                        let id = reg
                            .record_execution(&execution(
                                Some(run),
                                &format!("n{i}"),
                                &k,
                                "executed",
                            ))
                            .unwrap();
                        reg.record_metrics(id, &BTreeMap::from([("step".into(), i as f64)]))
                            .unwrap();
                    }
                    reg.end_run(run, "ok").unwrap();
                    run
                })
            })
            .collect();
        let runs: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.count_executions(Some("executed")).unwrap(), 80);
        for run in runs {
            assert_eq!(reg.executions(run).unwrap().len(), 40);
        }
        let m = reg.metrics_for_keys(&[key('a'), key('b')]).unwrap();
        assert_eq!(m[key('a').as_str()]["step"], 39.0);
        assert_eq!(m[key('b').as_str()]["step"], 39.0);
        assert!(reg.runs(10).unwrap().iter().all(|r| r.status == "ok"));
    }
}
