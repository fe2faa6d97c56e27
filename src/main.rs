//! ugc-pipe: cached, resumable pipelines that compress image-to-image GANs with UGC.
//! The binary is thin: parse arguments, dispatch, map errors to exit codes.

fn main() {
    let code = ugc_pipe::cli::main();
    std::process::exit(code);
}
