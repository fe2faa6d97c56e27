//! Integration tests of the evaluation stage kinds, driven through the stage contract on
//! tiny synthetic data (32x32) on the CPU.

mod common;
mod evaluate;
mod evaluator;
mod export;
