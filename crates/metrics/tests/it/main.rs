//! Integration tests of ugc-metrics, in one binary (each test binary links libtorch).

mod architectures;
mod common;
mod pth_weights;
mod reference;
