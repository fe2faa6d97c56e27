//! Build-script helper shared by every crate whose binaries or tests link libtorch.
//!
//! Two problems it solves, both at link time of the final executables:
//! - rustc links with `--as-needed`, so `libtorch_cuda.so` (which no Rust symbol references
//!   directly) would be dropped and CUDA would silently be unavailable on a GPU machine;
//! - the binaries must find libtorch at run time without the user exporting
//!   `LD_LIBRARY_PATH`, so we embed an rpath to the wheel's `torch/lib`.

use std::path::{Path, PathBuf};

/// Emits the link arguments for every target of the calling package. Call from `build.rs`.
pub fn emit() {
    emit_for("rustc-link-arg");
}

/// Emits the link arguments only for the named binary and for the package's tests and
/// benches (cargo refuses the per-kind directive for a kind the package lacks): for a
/// package whose other binaries must not load libtorch.
pub fn emit_for_bin(bin: &str) {
    emit_for(&format!("rustc-link-arg-bin={bin}="));
    for target in ["rustc-link-arg-tests", "rustc-link-arg-benches"] {
        emit_for(target);
    }
}

/// `directive` is `rustc-link-arg` or a per-target variant; values follow it directly
/// (`rustc-link-arg-bin=NAME=` already ends in `=`).
fn emit_for(directive: &str) {
    let sep = if directive.ends_with('=') { "" } else { "=" };
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(lib_dir) = libtorch_lib_dir() else {
        println!(
            "cargo:warning=LIBTORCH is not set; run scripts/setup.sh (it installs PyTorch 2.11.0 into .venv)"
        );
        return;
    };
    // Resolve the symlink so the rpath survives a re-created .venv/libtorch link.
    let lib_dir = lib_dir.canonicalize().unwrap_or(lib_dir);
    println!("cargo:{directive}{sep}-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:{directive}{sep}-Wl,--no-as-needed");
        println!("cargo:{directive}{sep}-L{}", lib_dir.display());
        println!("cargo:{directive}{sep}-ltorch_cuda");
        println!("cargo:{directive}{sep}-Wl,--as-needed");
    }
}

fn libtorch_lib_dir() -> Option<PathBuf> {
    let root = std::env::var_os("LIBTORCH")?;
    let lib = Path::new(&root).join("lib");
    lib.exists().then_some(lib)
}
