//! The typed parameters of the `report` stage live with its schema in `ugc-kinds`
//! (`crates/kinds/src/report/`: one place for names, types, allowed values and the
//! cross-field rules); re-exported here under the names this crate has always used.

pub use ugc_kinds::report::{
    FigureFormat, Metric, Params as ReportParams, TableKind, metric_display,
};
