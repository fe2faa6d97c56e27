//! report.html in a real browser: headless Chromium (Debian's `chromium`, installed by
//! scripts/install-chromium.sh) renders it without a script error, the DOM holds every
//! table and figure, and the screenshot is not blank. Skipped, saying so, only when
//! chromium is absent and `UGC_REQUIRE_CHROMIUM` is unset (scripts/test.sh sets it).

use std::path::Path;
use std::process::Command;

use serde_json::json;
use ugc_engine::testing::run_quick;
use ugc_report::ReportStage;

use crate::report::quickstart;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn headless(bin: &str, profile: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--allow-file-access-from-files",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
fn report_html_renders_in_headless_chromium() {
    let Some(bin) = chromium() else {
        if std::env::var_os("UGC_REQUIRE_CHROMIUM").is_some() {
            panic!("UGC_REQUIRE_CHROMIUM is set but no chromium is on PATH");
        }
        eprintln!(
            "SKIPPED report_html_renders_in_headless_chromium: no `chromium` on PATH \
             (scripts/install-chromium.sh installs it)"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let inputs = quickstart(tmp.path());
    let out = tempfile::tempdir().unwrap();
    let schema = ugc_kinds::Kind::Report.schema();
    run_quick(
        &ReportStage::new(schema),
        json!({"grid_rows": 2, "pareto_front": true}),
        &inputs,
        out.path(),
    )
    .unwrap();
    let page = out.path().join("report.html");
    let url = format!("file://{}", page.display());
    let profile = tempfile::tempdir().unwrap();

    let dom = headless(bin, profile.path())
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(&url)
        .output()
        .unwrap();
    assert!(dom.status.success(), "chromium failed: {dom:?}");
    let html = String::from_utf8_lossy(&dom.stdout);
    let log = String::from_utf8_lossy(&dom.stderr);
    // The page's script ran to its end and recorded no error; the console shows none.
    assert!(
        html.contains("data-ready=\"ok\""),
        "script did not finish:\n{html}"
    );
    assert!(
        html.contains("<ul id=\"errors\"></ul>"),
        "script errors:\n{html}"
    );
    for bad in ["Uncaught", "CONSOLE(", "Failed to load"] {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(bad)).collect();
        assert!(hits.is_empty(), "console: {hits:?}");
    }
    for want in [
        "data-name=\"models\"",
        "data-name=\"tradeoff\"",
        "id=\"figure-tradeoff\"",
        "id=\"figure-grid\"",
        "src=\"data:image/png;base64,",
        "class=\"dag\"",
        "class=\"model\"",
        "id=\"headline\"",
    ] {
        assert!(html.contains(want), "DOM lacks {want}");
    }

    let shot = tmp.path().join("shot.png");
    let s = headless(bin, profile.path())
        .args(["--window-size=1200,1600", "--hide-scrollbars"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(s.status.success(), "screenshot failed: {s:?}");
    let img = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1200, 1600));
    // Not blank: text, table rules and the embedded figure give many non-white pixels and
    // many colours (a blank or error page has a handful).
    let non_white = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    let colours: std::collections::BTreeSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(non_white > 20_000, "only {non_white} non-white pixels");
    assert!(colours.len() > 50, "only {} colours", colours.len());
}
