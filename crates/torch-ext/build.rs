//! Compiles `cpp/ext.cpp` and `cpp/dist*.cpp` against the headers of the libtorch that tch links (the wheel
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
    let mut b = cc::Build::new();
    b.cpp(true)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .file("cpp/ext.cpp")
        .file("cpp/dist.cpp")
        // c10d's ProcessGroupGloo.hpp includes Gloo headers the wheel does not ship.
        .include("cpp/gloo-decl")
        .define("USE_C10D_GLOO", None);
    // NCCL: the wheel's nvidia-* packages carry the CUDA runtime and NCCL headers.
    let nvidia = root
        .canonicalize()
        .ok()
        .and_then(|torch| torch.parent().map(|site| site.join("nvidia")));
    let cuda_inc = nvidia.as_ref().and_then(|n| {
        ["cu13/include", "cuda_runtime/include"]
            .iter()
            .map(|d| n.join(d))
            .find(|d| {
                // The runtime headers, with the crt/ and CCCL headers they include.
                ["cuda_runtime_api.h", "crt/host_config.h", "nv/target"]
                    .iter()
                    .all(|f| d.join(f).exists())
            })
    });
    let nccl_inc = nvidia
        .as_ref()
        .map(|n| n.join("nccl/include"))
        .filter(|d| d.join("nccl.h").exists());
    b.file("cpp/dist_nccl.cpp");
    if let (Some(cuda), Some(nccl)) = (&cuda_inc, &nccl_inc) {
        b.include(cuda)
            .include(nccl)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("UGC_HAVE_NCCL", None);
        println!("cargo:rustc-cfg=ugc_nccl");
    } else {
        println!("cargo:warning=CUDA/NCCL headers not found beside libtorch: built without NCCL");
    }
    println!("cargo:rustc-check-cfg=cfg(ugc_nccl)");
    println!("cargo:rerun-if-changed=cpp/dist.cpp");
    println!("cargo:rerun-if-changed=cpp/dist_nccl.cpp");
    println!("cargo:rerun-if-changed=cpp/guarded.h");
    b.compile("ugc_torch_ext");
    torch_link::emit();
}
