//! Compiles `cpp/ext.cpp` against the headers of the libtorch that tch links (the wheel
//! that `scripts/setup.sh` installs; `LIBTORCH` points at it, see `.cargo/config.toml`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=cpp/ext.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let root = std::env::var_os("LIBTORCH_INCLUDE")
        .or_else(|| std::env::var_os("LIBTORCH"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "LIBTORCH is not set; run scripts/setup.sh (it installs PyTorch 2.11.0 into .venv)"
            )
        });
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("cpp/ext.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("ugc_torch_ext");
    torch_link::emit();
}
