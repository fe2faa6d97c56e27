//! The line protocol between the head process and a stage process (`ugc-pipe exec`).
//!
//! A stage runs in its own process so that a crash, a cancellation or a memory blow-up
//! stays inside it, its peak memory can be measured, and a cluster executor can run the very
//! same command on another machine. It reports progress as JSON lines on stdout; logs go to
//! its stderr, which the head points at the per-stage log file.

use std::io::Write;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::stage::Progress;

/// One line on a stage process's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum StageEvent {
    /// A phase of `total` steps starts (a new bar length).
    Start { phase: String, total: u64 },
    /// Current step within the phase.
    Step { step: u64 },
    /// A status line for the user.
    Message { text: String },
    /// Another process holds the key's lock; this one waits for it.
    Waiting { holder: String },
    /// Final line: what happened. `outcome` is `executed`, `hit`, `failed` or `cancelled`.
    Done {
        outcome: String,
        #[serde(default)]
        error: Option<String>,
    },
}

impl StageEvent {
    /// Parses one stdout line; anything that is not an event is returned as `None` and
    /// treated as plain output by the head.
    pub fn parse(line: &str) -> Option<StageEvent> {
        serde_json::from_str(line).ok()
    }
}

/// [`Progress`] implementation of a stage process: writes [`StageEvent`] lines to a writer
/// (stdout), throttling step updates so a tight training loop does not flood the pipe.
pub struct EventProgress<W: Write + Send> {
    out: Mutex<(W, std::time::Instant, u64)>,
}

impl<W: Write + Send> EventProgress<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new((out, std::time::Instant::now(), 0)),
        }
    }

    /// Writes one event immediately.
    pub fn emit(&self, ev: &StageEvent) {
        if let Ok(mut g) = self.out.lock() {
            write_event(&mut g.0, ev);
        }
    }
}

fn write_event<W: Write>(w: &mut W, ev: &StageEvent) {
    if let Ok(line) = serde_json::to_string(ev) {
        // A closed pipe means the head is gone; the stage keeps going and commits anyway.
        let _ = writeln!(w, "{line}");
        let _ = w.flush();
    }
}

impl<W: Write + Send> Progress for EventProgress<W> {
    fn start(&self, phase: &str, total: u64) {
        self.emit(&StageEvent::Start {
            phase: phase.to_string(),
            total,
        });
    }

    fn set(&self, step: u64) {
        if let Ok(mut g) = self.out.lock() {
            let now = std::time::Instant::now();
            // At most ~20 updates a second; always forward a step that moved by a lot.
            if now.duration_since(g.1).as_millis() >= 50 || step < g.2 {
                g.1 = now;
                g.2 = step;
                write_event(&mut g.0, &StageEvent::Step { step });
            }
        }
    }

    fn message(&self, msg: &str) {
        self.emit(&StageEvent::Message {
            text: msg.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_single_lines() {
        let evs = [
            StageEvent::Start {
                phase: "train".into(),
                total: 10,
            },
            StageEvent::Step { step: 3 },
            StageEvent::Message {
                text: "a\nb".into(),
            },
            StageEvent::Done {
                outcome: "executed".into(),
                error: None,
            },
        ];
        for ev in evs {
            let line = serde_json::to_string(&ev).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(StageEvent::parse(&line), Some(ev));
        }
        assert_eq!(StageEvent::parse("plain output"), None);
    }

    #[test]
    fn progress_writes_parseable_lines() {
        let p = EventProgress::new(Vec::new());
        p.start("hash", 5);
        p.message("hello");
        let buf = p.out.into_inner().unwrap().0;
        let text = String::from_utf8(buf).unwrap();
        let evs: Vec<_> = text.lines().filter_map(StageEvent::parse).collect();
        assert_eq!(evs.len(), 2);
        assert!(matches!(evs[0], StageEvent::Start { total: 5, .. }));
    }
}
