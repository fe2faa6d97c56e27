//! The method's integration tests, in one binary: `cargo test -p ugc-method --test it
//! <file>::` runs one file's tests (`core::`, `stages::`, `stage_two::`).

mod common;
mod core;
mod stage_two;
mod stages;
