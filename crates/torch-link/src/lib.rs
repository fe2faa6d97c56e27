//! Build-script helper shared by every crate whose binaries or tests link libtorch.
//!
//! Two problems it solves, both at link time of the final executables:
//! - rustc links with `--as-needed`, so `libtorch_cuda.so` (which no Rust symbol references
//!   directly) would be dropped and CUDA would silently be unavailable on a GPU machine;
//! - the binaries must find libtorch at run time without the user exporting
//!   `LD_LIBRARY_PATH`, so we embed an rpath to the wheel's `torch/lib`.

use std::path::{Path, PathBuf};

/// Emits the `cargo:rustc-link-arg` lines for the calling package. Call from `build.rs`.
pub fn emit() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(lib_dir) = libtorch_lib_dir() else {
        println!(
            "cargo:warning=LIBTORCH is not set; run scripts/setup.sh (it installs PyTorch 2.11.0 into .venv)"
        );
        return;
    };
    // Resolve the symlink so the rpath survives a re-created .venv/libtorch link.
    let lib_dir = lib_dir.canonicalize().unwrap_or(lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib_dir.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

fn libtorch_lib_dir() -> Option<PathBuf> {
    let root = std::env::var_os("LIBTORCH")?;
    let lib = Path::new(&root).join("lib");
    lib.exists().then_some(lib)
}
