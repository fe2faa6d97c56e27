//! Integration tests of ugc-engine, in one binary, as in the other crates. The fuzzer runs
//! alone with `cargo test -p ugc-engine --test it spec_fuzz` (`scripts/fuzz-spec.sh N` for
//! long runs in release).

mod slurm;
mod spec_fuzz;
