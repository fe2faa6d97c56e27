//! The `report` stage: paper-shaped tables (markdown + CSV), the MACs-vs-metric trade-off
//! plot (PNG + SVG) and qualitative grids, built from every `evaluate` output it gathers.
//! No libtorch: it reads only the files the evaluate stages wrote.

pub mod error;
pub mod font;
pub mod format;
pub mod grid;
pub mod params;
pub mod plot;
pub mod record;
pub mod stage;
pub mod stats;
pub mod table;
pub mod tables;

pub use error::ReportError;
pub use params::{Metric, ReportParams, TableKind};
pub use record::{EvalRecord, load_records};
pub use stage::{ReportStage, ReportSummary, build_report};
pub use table::Table;
