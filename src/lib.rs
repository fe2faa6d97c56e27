//! The `ugc-pipe` binary's library: the command line ([`cli`]), the built-in stage kinds
//! ([`stages`]) and the run-time environment ([`runtime`]). The engine, models, data and
//! metrics live in their own crates (`crates/`).

pub mod cli;
pub mod runtime;
pub mod stages;
pub mod ui;
