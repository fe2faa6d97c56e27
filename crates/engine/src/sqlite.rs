//! Opening the engine's SQLite databases (the run registry, the stat cache), which several
//! processes open at once: heads of concurrent runs and their stage processes.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};

/// How long a connection waits for another process's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens `path` in WAL mode with [`BUSY_TIMEOUT`]. Switching a new database to WAL takes an
/// exclusive lock, and SQLite answers a second process doing the same at that moment with
/// `database is locked` at once, without waiting (its busy handler is not called there, to
/// avoid a deadlock), so the switch is retried here until the timeout.
pub fn open_wal(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(e) if busy(&e) && start.elapsed() < BUSY_TIMEOUT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => break other?,
        }
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    #[test]
    fn processes_opening_a_new_database_together_all_get_it() {
        // Unretried, 6 threads opening one new database together failed with `database is
        // locked` in about 2 of 40 rounds here; 40 rounds give each race many chances.
        for _ in 0..40 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.sqlite");
            let start = Arc::new(Barrier::new(6));
            let threads: Vec<_> = (0..6)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        let conn = super::open_wal(&path)?;
                        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (a INTEGER);")?;
                        conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
                    })
                })
                .collect();
            for t in threads {
                assert_eq!(t.join().unwrap().unwrap(), "wal");
            }
        }
    }
}
