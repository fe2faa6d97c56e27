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
    /// A training stage's losses, rate and ETA (see [`TrainStatus`]).
    Status(TrainStatus),
}

/// A training stage's live signals: the latest losses, the rate measured over the steps
/// run in this process (so a resumed stage's ETA is right), and whether this is one of the
/// every-N-steps lines a console without progress bars prints (`line`) or only a refresh
/// of the progress bar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainStatus {
    pub phase: String,
    /// Completed steps and the total.
    pub step: u64,
    pub total: u64,
    /// The task's logged values at `step`, in column order.
    pub losses: Vec<(String, f64)>,
    /// Steps per second in this process.
    pub rate: f64,
    /// Seconds left at `rate`.
    pub eta_secs: f64,
    pub line: bool,
}

/// [`crate::Progress`] has no method for structured status, so a training loop sends it
/// through `message` with this prefix and [`EventProgress`] turns it back into
/// [`StageEvent::Status`]. A sink that only prints messages shows the JSON after it.
const STATUS_PREFIX: &str = "\u{1e}status ";

impl TrainStatus {
    /// The `Progress::message` text that carries this status.
    pub fn to_message(&self) -> String {
        format!(
            "{STATUS_PREFIX}{}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// The status a `Progress::message` text carries, if it is one.
    pub fn from_message(msg: &str) -> Option<TrainStatus> {
        serde_json::from_str(msg.strip_prefix(STATUS_PREFIX)?).ok()
    }

    /// `step 40/120 · d_real 0.693 g_l1 0.1234 · 9.37 steps/s · eta 8s`, with at most
    /// `max_losses` losses (the first ones the task logs: its main ones).
    pub fn summary(&self, max_losses: usize) -> String {
        let losses: Vec<String> = self
            .losses
            .iter()
            .take(max_losses)
            .map(|(n, v)| format!("{n} {}", short_number(*v)))
            .collect();
        let mut s = format!("step {}/{}", self.step, self.total);
        if !losses.is_empty() {
            s.push_str(" · ");
            s.push_str(&losses.join(" "));
            if self.losses.len() > max_losses {
                s.push_str(" …");
            }
        }
        s.push_str(&format!(
            " · {} steps/s · eta {}",
            short_number(self.rate),
            short_duration(self.eta_secs)
        ));
        s
    }
}

/// Four significant digits, scientific outside [1e-3, 1e5).
pub fn short_number(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 || !v.is_finite() {
        format!("{v}")
    } else if (1e-3..1e5).contains(&a) {
        let digits = 3 - a.log10().floor() as i32;
        format!("{v:.*}", digits.max(0) as usize)
    } else {
        format!("{v:.3e}")
    }
}

/// `42s`, `3m07s`, `2h05m`; `?` when unknown (not finite).
pub fn short_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
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
        match TrainStatus::from_message(msg) {
            Some(status) => self.emit(&StageEvent::Status(status)),
            None => self.emit(&StageEvent::Message {
                text: msg.to_string(),
            }),
        }
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

    fn status() -> TrainStatus {
        TrainStatus {
            phase: "train".into(),
            step: 40,
            total: 120,
            losses: vec![
                ("d".into(), 0.7031),
                ("g_l1".into(), 12.5),
                ("lr".into(), 2e-4),
            ],
            rate: 9.374,
            eta_secs: 8.4,
            line: true,
        }
    }

    #[test]
    fn a_status_message_becomes_a_status_event_and_reads_for_people() {
        let p = EventProgress::new(Vec::new());
        p.message(&status().to_message());
        p.message("resuming from step 54 of 120");
        let buf = p.out.into_inner().unwrap().0;
        let evs: Vec<_> = String::from_utf8(buf)
            .unwrap()
            .lines()
            .filter_map(StageEvent::parse)
            .collect();
        assert_eq!(evs[0], StageEvent::Status(status()));
        assert!(matches!(&evs[1], StageEvent::Message { text } if text.starts_with("resuming")));
        assert_eq!(
            status().summary(2),
            "step 40/120 · d 0.7031 g_l1 12.50 … · 9.374 steps/s · eta 8s"
        );
        assert_eq!(TrainStatus::from_message("step 3"), None);
    }

    #[test]
    fn numbers_and_durations_are_short() {
        assert_eq!(short_number(2e-4), "2.000e-4");
        assert_eq!(short_number(-1234.6), "-1235");
        assert_eq!(short_number(0.0), "0");
        assert_eq!(short_duration(41.4), "41s");
        assert_eq!(short_duration(187.0), "3m07s");
        assert_eq!(short_duration(7500.0), "2h05m");
        assert_eq!(short_duration(f64::INFINITY), "?");
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
