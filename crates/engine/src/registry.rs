//! The run registry: an SQLite database in the cache root recording runs, stage
//! executions and their metrics, read by `ugc-pipe runs`, `show` and `explain`.
//!
//! Several `ugc-pipe` processes (and cluster jobs) may write at once, so the database
//! runs in WAL mode with a generous busy timeout, and multi-statement writes use
//! `BEGIN IMMEDIATE` transactions. The schema is versioned in `schema_version` and
//! migrated forward on open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheKey, KeyMaterial, now_unix_ms};
use crate::lock::this_host;

/// The schema this code writes. Older databases are migrated on open; newer ones refused.
pub const REGISTRY_SCHEMA_VERSION: i64 = 1;

/// Statuses a run can end with.
pub const RUN_STATUSES: [&str; 3] = ["ok", "failed", "interrupted"];
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
    /// `running` until [`Registry::end_run`], then `ok`, `failed` or `interrupted`.
    pub status: String,
    pub host: String,
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
}

/// Handle on the registry database. `Sync`: one connection behind a mutex.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    conn: Mutex<Connection>,
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
const MIGRATIONS: [&str; 1] = ["
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
"];

const EXECUTION_COLUMNS: &str = "id, run_id, pipeline, node, kind, key, status, started_unix_ms, \
     ended_unix_ms, duration_ms, host, device, peak_rss_bytes, peak_gpu_bytes, error";

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
        let mut conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
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
        tx.commit().map_err(db)?;
        Ok(Registry {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
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

    /// Records the start of a run; returns its id.
    pub fn begin_run(&self, pipeline: &str, argv: &[String]) -> Result<i64, RegistryError> {
        let argv = serde_json::to_string(argv).expect("strings serialize");
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (pipeline, argv, started_unix_ms, status, host, pid)
             VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
            params![
                pipeline,
                argv,
                int("started_unix_ms", now_unix_ms())?,
                this_host(),
                std::process::id()
            ],
        )
        .map_err(|e| self.db(e))?;
        Ok(conn.last_insert_rowid())
    }

    /// Records how a run ended: `ok`, `failed` or `interrupted`.
    pub fn end_run(&self, run_id: i64, status: &str) -> Result<(), RegistryError> {
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

    /// Marks runs of this host still `running` whose process is gone as `interrupted`
    /// (a run killed with -9 never calls [`Self::end_run`]); returns their ids.
    pub fn mark_abandoned_runs(&self) -> Result<Vec<i64>, RegistryError> {
        let host = this_host();
        let candidates: Vec<(i64, i64)> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare("SELECT id, pid FROM runs WHERE status = 'running' AND host = ?1")
                .map_err(|e| self.db(e))?;
            let rows = stmt
                .query_map(params![host], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.db(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.db(e))?
        };
        let mut marked = Vec::new();
        for (id, pid) in candidates {
            let alive = u32::try_from(pid).is_ok_and(crate::lock::pid_alive);
            if !alive {
                self.conn()
                    .execute(
                        "UPDATE runs SET status = 'interrupted' WHERE id = ?1 AND status = 'running'",
                        params![id],
                    )
                    .map_err(|e| self.db(e))?;
                marked.push(id);
            }
        }
        Ok(marked)
    }

    /// Records one stage execution; returns its id (`e.id` is ignored).
    pub fn record_execution(&self, e: &ExecutionRow) -> Result<i64, RegistryError> {
        check_status("execution status", &e.status, &EXECUTION_STATUSES)?;
        let conn = self.conn();
        conn.execute(
            "INSERT INTO executions (run_id, pipeline, node, kind, key, status, started_unix_ms,
                 ended_unix_ms, duration_ms, host, device, peak_rss_bytes, peak_gpu_bytes, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
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
            ],
        )
        .map_err(|e| self.db(e))?;
        Ok(conn.last_insert_rowid())
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
        for (name, value) in metrics {
            tx.execute(
                "INSERT OR REPLACE INTO metrics (execution_id, name, value) VALUES (?1, ?2, ?3)",
                params![execution_id, name, value],
            )
            .map_err(|e| self.db(e))?;
        }
        tx.commit().map_err(|e| self.db(e))
    }

    /// The latest `limit` runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRow>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, pipeline, argv, started_unix_ms, ended_unix_ms, status, host
                 FROM runs ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(RunRow {
                    id: r.get(0)?,
                    pipeline: r.get(1)?,
                    argv: r.get(2)?,
                    started_unix_ms: u(r.get(3)?),
                    ended_unix_ms: r.get::<_, Option<i64>>(4)?.map(u),
                    status: r.get(5)?,
                    host: r.get(6)?,
                })
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
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

    #[test]
    fn runs_of_dead_processes_are_marked_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        let live = reg.begin_run("p", &[]).unwrap();
        let dead = reg.begin_run("p", &[]).unwrap();
        // A pid above the kernel's pid_max cannot belong to a live process.
        reg.conn()
            .execute(
                "UPDATE runs SET pid = 2147483646 WHERE id = ?1",
                params![dead],
            )
            .unwrap();
        assert_eq!(reg.mark_abandoned_runs().unwrap(), vec![dead]);
        let runs = reg.runs(10).unwrap();
        let status = |id| runs.iter().find(|r| r.id == id).unwrap().status.clone();
        assert_eq!(status(dead), "interrupted");
        assert_eq!(status(live), "running");
        assert!(reg.mark_abandoned_runs().unwrap().is_empty());
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
