//! The `report` stage: paper-shaped tables (markdown, CSV, LaTeX booktabs), the MACs-vs-metric
//! trade-off figure (PNG, SVG, PDF), qualitative grids, an honest headline and a
//! self-contained report.html, built from every `evaluate` output it gathers.
//! No libtorch: it reads only the files the evaluate stages wrote.

pub mod compare;
pub mod error;
pub mod font;
pub mod format;
pub mod grid;
pub mod html;
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
