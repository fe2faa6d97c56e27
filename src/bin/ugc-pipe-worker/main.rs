//! `ugc-pipe-worker`: the half of ugc-pipe that links libtorch. It runs one stage by its
//! cache key (`exec`, started by the head process for every stage that must run, or by a
//! cluster executor) and the model, metrics and synth verbs, which `ugc-pipe` hands over
//! with their arguments unchanged. Users call `ugc-pipe`; this binary sits next to it.

mod command;
mod data;
mod exec;
mod group;
mod kinds;
mod launch;
mod metrics;
mod model;

use clap::Parser;
use ugc_pipe::cli::{Cli, CliError, EXIT_USAGE, Verb, report};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    if matches!(cli.command, Verb::Exec { .. }) {
        exec::init_exec_logging(cli.verbose);
    } else {
        ugc_pipe::cli::exit_quietly_when_stdout_closes();
    }
    let result = match cli.command {
        Verb::Exec {
            key,
            cache_dir,
            force,
            run,
        } => exec::exec(&key, &cache_dir, force, run),
        Verb::Profile { arch, input, json } => model::profile(&arch, &input, json),
        Verb::Infer {
            arch,
            weights,
            input,
            output,
            load_size,
            instance,
            eval: _,
            train_mode,
            device,
            json,
        } => model::infer(model::InferArgs {
            arch: &arch,
            weights: &weights,
            input: &input,
            output: &output,
            load_size,
            instance,
            train_mode,
            device,
            json,
        }),
        Verb::Import {
            arch,
            weights,
            out,
            json,
        } => model::import(&arch, &weights, out.as_ref(), json),
        Verb::Export {
            arch,
            weights,
            out,
            json,
        } => model::export(&arch, &weights, &out, json),
        Verb::Metrics { which } => metrics::run(which),
        Verb::Synth {
            task,
            n,
            size,
            out,
            seed,
            json,
        } => data::synth(&task, n, size, &out, seed, json),
        _ => Err(CliError::usage(
            "ugc-pipe-worker runs stages and the model verbs; use `ugc-pipe` for pipelines",
        )),
    };
    std::process::exit(report(result));
}
