//! The method's integration tests, in one binary: `cargo test -p ugc-method --test it
//! <file>::` runs one file's tests (`core::`, `dist::`, `stages::`, `stage_two::`).
//!
//! Every test holds `ugc_engine::testing::torch_rng()` for its whole run: libtorch has one
//! random generator per process, and any network built anywhere (even one about to load
//! weights) draws from it, so a parallel test could otherwise change another's seeded
//! initialisation (seen: an evaluator resumed "bit-identically" from other initial
//! weights). The tests of these binaries therefore run one at a time.

mod common;
mod core;
mod dist;
mod stage_two;
mod stages;
