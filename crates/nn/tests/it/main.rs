//! Integration tests of ugc-nn, in one binary (each test binary links libtorch).

mod common;
mod hd_gaugan;
mod pix2pix_interop;
mod pix2pix_supernet;
mod pth;
mod variants;
