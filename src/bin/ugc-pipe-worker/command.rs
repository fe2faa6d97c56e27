//! The `command` stage kind: a user shell command as a cached stage (the DVC-style escape
//! hatch). The command runs with the fresh output directory as its working directory, in a
//! process group of its own that dies with the stage (`group.rs`): cancellation reaches
//! the whole group as SIGTERM, and after a grace period SIGKILL; when the command ends,
//! whatever it left running is killed before its outputs are checked.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_kinds::command::{Params, env_value};

use crate::group::CommandGroup;

pub struct CommandStage {
    schema: KindSchema,
}

impl CommandStage {
    pub fn new(schema: KindSchema) -> Self {
        Self { schema }
    }
}

/// `UGC_DEP_<NAME>`: upper-cased, anything not alphanumeric becomes `_`.
fn dep_var(name: &str) -> String {
    let tail: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("UGC_DEP_{tail}")
}

impl StageKind for CommandStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let p: Params = ctx.typed_params()?;
        for input in &p.inputs {
            if !input.exists() {
                return Err(StageError::Config(format!(
                    "stage `{}`: input {} does not exist",
                    ctx.node,
                    input.display()
                )));
            }
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&p.cmd)
            .current_dir(ctx.out_dir)
            .stdin(Stdio::null())
            // stdout of the stage process is the event pipe: the command's output goes to
            // the stage log (our stderr) instead.
            .stdout(Stdio::from(
                std::io::stderr()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| StageError::io("duplicating stderr", e))?,
            ))
            .stderr(Stdio::inherit())
            .envs(ctx.env)
            .env("UGC_OUT", ctx.out_dir)
            .env("UGC_SCRATCH", ctx.scratch_dir)
            .env("UGC_DEVICE", ctx.device.to_string());
        for input in ctx.inputs {
            cmd.env(dep_var(&input.name), &input.dir);
        }
        // All inputs with their node ids and matrix points: what a gathering stage needs.
        let inputs = serde_json::to_string(ctx.inputs)
            .map_err(|e| StageError::Failed(format!("encoding UGC_INPUTS: {e}")))?;
        cmd.env("UGC_INPUTS", inputs);
        for (k, v) in &p.env {
            cmd.env(k, env_value(v));
        }
        let mut group = CommandGroup::start().map_err(|e| {
            StageError::io("starting the guardian of the command's process group", e)
        })?;
        cmd.process_group(group.pgid());
        let stage_process = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe, and the error is built without
        // allocating. The shell dies at once with the stage process (its descendants die
        // through the guardian); the parent check covers a stage process that died before
        // the prctl took effect.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != stage_process {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        ctx.progress.message(&format!("$ {}", p.cmd));
        let mut child = cmd
            .spawn()
            .map_err(|e| StageError::io(format!("starting `sh -c {}`", p.cmd), e))?;
        let mut term_sent: Option<Instant> = None;
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| StageError::io("waiting for the command", e))?
            {
                break status;
            }
            if ctx.cancel.is_cancelled() {
                match term_sent {
                    None => {
                        group.signal(libc::SIGTERM);
                        term_sent = Some(Instant::now());
                    }
                    Some(t) if t.elapsed() > Duration::from_secs(10) => {
                        group.signal(libc::SIGKILL);
                    }
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Nothing the command left running may write into the output while it is checked
        // and committed, or into scratch after the stage.
        group.end();
        if ctx.cancel.is_cancelled() {
            return Err(StageError::Cancelled);
        }
        if !status.success() {
            let how = match (status.code(), status.signal()) {
                (Some(c), _) => format!("exit code {c}"),
                (_, Some(s)) => format!("signal {s}"),
                _ => "unknown status".into(),
            };
            return Err(StageError::Failed(format!(
                "command `{}` failed with {how}",
                p.cmd
            )));
        }
        for out in &p.outputs {
            if !ctx.out_dir.join(out).exists() {
                return Err(StageError::Failed(format!(
                    "command `{}` did not create declared output `{out}`",
                    p.cmd
                )));
            }
        }
        Ok(())
    }
}

use std::os::fd::AsFd;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_vars_are_shell_safe() {
        assert_eq!(dep_var("teacher-wide"), "UGC_DEP_TEACHER_WIDE");
        assert_eq!(dep_var("split"), "UGC_DEP_SPLIT");
    }
}
