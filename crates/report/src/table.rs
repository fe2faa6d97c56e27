//! A rendered table: a markdown view with the paper's formats and a CSV view with raw
//! numbers (so other tools can re-plot without parsing `0.866G`).

use std::path::Path;

use crate::error::ReportError;

#[derive(Debug, Clone, Default)]
pub struct Table {
    /// File stem: `tables/<name>.md` and `tables/<name>.csv`.
    pub name: String,
    pub caption: String,
    pub md_header: Vec<String>,
    pub md_rows: Vec<Vec<String>>,
    pub csv_header: Vec<String>,
    pub csv_rows: Vec<Vec<String>>,
}

impl Table {
    /// GitHub-flavoured markdown with the caption above it.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &String| s.replace('|', "\\|");
        let mut out = format!("**{}**\n\n", self.caption);
        out.push_str(&format!(
            "| {} |\n",
            self.md_header
                .iter()
                .map(esc)
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        out.push_str(&format!(
            "|{}|\n",
            self.md_header
                .iter()
                .map(|_| "---")
                .collect::<Vec<_>>()
                .join("|")
        ));
        for row in &self.md_rows {
            out.push_str(&format!(
                "| {} |\n",
                row.iter().map(esc).collect::<Vec<_>>().join(" | ")
            ));
        }
        out
    }

    /// RFC 4180 CSV (fields with commas, quotes or newlines are quoted).
    pub fn to_csv(&self) -> String {
        let mut out = csv_line(&self.csv_header);
        for row in &self.csv_rows {
            out.push_str(&csv_line(row));
        }
        out
    }

    /// Writes `<dir>/<name>.md` and `<dir>/<name>.csv`.
    pub fn write(&self, dir: &Path) -> Result<(), ReportError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ReportError::io(format!("creating {}", dir.display()), e))?;
        for (ext, text) in [("md", self.to_markdown()), ("csv", self.to_csv())] {
            let file = dir.join(format!("{}.{ext}", self.name));
            std::fs::write(&file, text)
                .map_err(|e| ReportError::io(format!("writing {}", file.display()), e))?;
        }
        Ok(())
    }
}

fn csv_line(fields: &[String]) -> String {
    let cells: Vec<String> = fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect();
    format!("{}\n", cells.join(","))
}
