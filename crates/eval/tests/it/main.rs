//! Integration tests of the evaluation stage kinds, driven through the stage contract on
//! tiny synthetic data (32x32) on the CPU.
//!
//! Every test holds `ugc_engine::testing::torch_rng()` for its whole run: libtorch has one
//! random generator per process, and any network built anywhere (even one about to load
//! weights) draws from it, so a parallel test could otherwise change another's seeded
//! initialisation (seen: an evaluator resumed "bit-identically" from other initial
//! weights). The tests of these binaries therefore run one at a time.

mod common;
mod dist;
mod evaluate;
mod evaluator;
mod export;
