//! Text without system fonts: DejaVu Sans (embedded by the `dejavu` crate, free license)
//! registered with plotters' `ab_glyph` text backend, so plots and grids render the same
//! on a bare CI machine as on a desktop.

use std::sync::OnceLock;

use plotters::style::FontStyle;

use crate::error::ReportError;

/// The family name plots and grids ask for.
pub const FAMILY: &str = "sans-serif";

/// Registers the embedded font once per process.
pub fn ensure_registered() -> Result<(), ReportError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FAMILY, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Draw {
            what: "text".into(),
            msg: "the embedded DejaVu Sans font could not be parsed".into(),
        })
    }
}
