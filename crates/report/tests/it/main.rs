//! Integration tests of ugc-report, in one binary, as in the other crates.

mod browser;
mod report;
