//! Integration tests of ugc-data, in one binary (each test binary links libtorch).

mod bad_data;
mod common;
mod loader;
mod readers;
mod split;
mod stages;
mod synth;
