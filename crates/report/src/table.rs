//! A rendered table: markdown, LaTeX (booktabs) and HTML views with the paper's formats,
//! and a CSV view with raw numbers (so other tools can re-plot without parsing `0.866G`).

use std::path::Path;

use crate::error::ReportError;

#[derive(Debug, Clone, Default)]
pub struct Table {
    /// File stem: `tables/<name>.md` and `tables/<name>.csv`.
    pub name: String,
    pub caption: String,
    /// Sentences under the table (input size of the MACs, how latency was measured, what
    /// a dash means), in every view but the CSV.
    pub notes: Vec<String>,
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
        if !self.notes.is_empty() {
            out.push('\n');
            out.push_str(&self.notes.join(" "));
            out.push('\n');
        }
        out
    }

    /// A LaTeX `table` with `booktabs` rules (`\usepackage{booktabs}`); text columns left,
    /// number columns right.
    pub fn to_latex(&self) -> String {
        let numeric = |c: usize| {
            !self.md_rows.is_empty()
                && self.md_rows.iter().all(|r| {
                    r.get(c).is_some_and(|v| {
                        v == crate::format::DASH
                            || v.starts_with(|ch: char| ch.is_ascii_digit() || ch == '-')
                    })
                })
        };
        let spec: String = (0..self.md_header.len())
            .map(|c| if numeric(c) { 'r' } else { 'l' })
            .collect();
        let row = |cells: &[String]| {
            format!(
                "{} \\\\\n",
                cells
                    .iter()
                    .map(|c| latex_escape(c))
                    .collect::<Vec<_>>()
                    .join(" & ")
            )
        };
        let mut out =
            String::from("% Requires \\usepackage{booktabs}.\n\\begin{table}[t]\n\\centering\n");
        out.push_str(&format!("\\caption{{{}}}\n", latex_escape(&self.caption)));
        out.push_str(&format!("\\label{{tab:{}}}\n", self.name));
        out.push_str(&format!("\\begin{{tabular}}{{{spec}}}\n\\toprule\n"));
        out.push_str(&row(&self.md_header));
        out.push_str("\\midrule\n");
        for r in &self.md_rows {
            out.push_str(&row(r));
        }
        out.push_str("\\bottomrule\n\\end{tabular}\n");
        if !self.notes.is_empty() {
            out.push_str(&format!(
                "\\par\\smallskip\\footnotesize {}\n",
                latex_escape(&self.notes.join(" "))
            ));
        }
        out.push_str("\\end{table}\n");
        out
    }

    /// An HTML `<table>` (class `sortable`: the report's script sorts it by a header
    /// click), its caption and notes; text is escaped.
    pub fn to_html(&self) -> String {
        let mut out = format!(
            "<figure class=\"table\" id=\"table-{0}\"><table class=\"sortable\" data-name=\"{0}\">\n<caption>{1}</caption>\n<thead><tr>",
            html_escape(&self.name),
            html_escape(&self.caption)
        );
        for h in &self.md_header {
            out.push_str(&format!(
                "<th title=\"click to sort\">{}</th>",
                html_escape(h)
            ));
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for r in &self.md_rows {
            out.push_str("<tr>");
            for c in r {
                out.push_str(&format!("<td>{}</td>", html_escape(c)));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody></table>\n");
        if !self.notes.is_empty() {
            out.push_str(&format!(
                "<figcaption>{}</figcaption>",
                html_escape(&self.notes.join(" "))
            ));
        }
        out.push_str("</figure>\n");
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

    /// Writes `<dir>/<name>.md`, `.csv` and `.tex`.
    pub fn write(&self, dir: &Path) -> Result<(), ReportError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ReportError::io(format!("creating {}", dir.display()), e))?;
        for (ext, text) in [
            ("md", self.to_markdown()),
            ("csv", self.to_csv()),
            ("tex", self.to_latex()),
        ] {
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

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Escapes LaTeX's special characters and writes the report's symbols in math mode.
pub fn latex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '±' => out.push_str("$\\pm$"),
            '↑' => out.push_str("$\\uparrow$"),
            '↓' => out.push_str("$\\downarrow$"),
            '×' => out.push_str("$\\times$"),
            '–' => out.push_str("--"),
            '−' => out.push_str("$-$"),
            'Δ' => out.push_str("$\\Delta$"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Table {
        Table {
            name: "models".into(),
            caption: "MACs & 25% labels".into(),
            notes: vec!["– : not computed.".into()],
            md_header: vec!["Model".into(), "mIoU (%) ↑".into()],
            md_rows: vec![
                vec!["UGC_x".into(), "41.20 ± 0.30".into()],
                vec!["<b>".into(), "–".into()],
            ],
            ..Table::default()
        }
    }

    #[test]
    fn latex_uses_booktabs_and_escapes() {
        let tex = t().to_latex();
        for want in [
            "\\toprule",
            "\\midrule",
            "\\bottomrule",
            "\\begin{tabular}{lr}",
            "MACs \\& 25\\% labels",
            "mIoU (\\%) $\\uparrow$ \\\\",
            "UGC\\_x & 41.20 $\\pm$ 0.30 \\\\",
            "-- : not computed.",
        ] {
            assert!(tex.contains(want), "no {want:?} in\n{tex}");
        }
    }

    #[test]
    fn html_escapes_cells_and_is_sortable() {
        let h = t().to_html();
        assert!(
            h.contains("<table class=\"sortable\" data-name=\"models\">"),
            "{h}"
        );
        assert!(h.contains("<td>&lt;b&gt;</td>"), "{h}");
        assert!(h.contains("MACs &amp; 25% labels"), "{h}");
        assert_eq!(h.matches("<tr>").count(), 3, "{h}");
    }
}
