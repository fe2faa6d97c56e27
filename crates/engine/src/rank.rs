//! Where a process sits in a data-parallel stage: its rank among the stage's processes and
//! how the ranks meet. The fields are torchrun's environment variables (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), so the local launcher, `srun`
//! on a cluster and a user starting ranks by hand all start a rank the same way. The
//! engine only carries this; the training core (`ugc-train`) builds the process group.

use std::time::Duration;

/// The environment variable for the c10d timeout, in seconds (ours; torchrun has none).
pub const TIMEOUT_VAR: &str = "UGC_DIST_TIMEOUT_S";

/// Default c10d timeout: long enough for a slow first collective (a rank still loading its
/// data), short enough that a dead peer fails the stage within minutes, not hours.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One rank of a data-parallel stage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RankEnv {
    /// 0-based rank; rank 0 alone writes checkpoints, logs, samples and outputs.
    pub rank: usize,
    /// Number of ranks (at least 2; one process is not a data-parallel stage).
    pub world: usize,
    /// Rank among the processes on this machine (its device index when each has a GPU).
    pub local_rank: usize,
    /// Host of rank 0's TCP store.
    pub master_addr: String,
    pub master_port: u16,
    /// How long a collective (and the rendezvous) may wait for a peer before the stage
    /// fails: a rank killed mid-step fails the others within this bound, never a hang.
    #[serde(with = "secs")]
    pub timeout: Duration,
}

/// A problem with the rank variables; names the variable and its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("environment variable {var}={value:?}: {reason}")]
pub struct RankEnvError {
    pub var: String,
    pub value: String,
    pub reason: String,
}

impl RankEnv {
    /// Reads torchrun's variables through `get` (`std::env::var` in a process). `None`
    /// when `WORLD_SIZE` is unset or 1: a single process, today's path. `LOCAL_RANK`
    /// defaults to `RANK`, `MASTER_ADDR` to `127.0.0.1`, the timeout to [`DEFAULT_TIMEOUT`].
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, RankEnvError> {
        let err = |var: &str, value: &str, reason: &str| RankEnvError {
            var: var.into(),
            value: value.into(),
            reason: reason.into(),
        };
        let Some(world_s) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let world: usize = world_s
            .trim()
            .parse()
            .map_err(|_| err("WORLD_SIZE", &world_s, "not a whole number"))?;
        if world == 0 {
            return Err(err("WORLD_SIZE", &world_s, "must be at least 1"));
        }
        if world == 1 {
            return Ok(None);
        }
        let num = |var: &str| -> Result<Option<usize>, RankEnvError> {
            match get(var) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| err(var, &v, "not a whole number")),
            }
        };
        let rank = num("RANK")?.ok_or_else(|| err("RANK", "", "unset while WORLD_SIZE > 1"))?;
        if rank >= world {
            return Err(err("RANK", &rank.to_string(), "must be below WORLD_SIZE"));
        }
        let local_rank = num("LOCAL_RANK")?.unwrap_or(rank);
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port_s = get("MASTER_PORT").ok_or_else(|| err("MASTER_PORT", "", "unset"))?;
        let master_port: u16 = port_s
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| err("MASTER_PORT", &port_s, "not a port number (1-65535)"))?;
        let timeout = match get(TIMEOUT_VAR) {
            None => DEFAULT_TIMEOUT,
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| err(TIMEOUT_VAR, &v, "not a positive number of seconds"))?,
        };
        Ok(Some(RankEnv {
            rank,
            world,
            local_rank,
            master_addr,
            master_port,
            timeout,
        }))
    }

    /// [`RankEnv::from_vars`] over this process's environment.
    pub fn from_process_env() -> Result<Option<Self>, RankEnvError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// The variables that start this rank (for a launcher to set on a child process).
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", self.rank.to_string()),
            ("WORLD_SIZE", self.world.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
            (TIMEOUT_VAR, self.timeout.as_secs_f64().to_string()),
        ]
    }

    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }
}

/// A [`Duration`] as a number of seconds (the job file's and the pipeline's form); shared
/// with `spec::resources`.
pub(crate) mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = <f64 as serde::Deserialize>::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn no_world_or_a_world_of_one_is_a_single_process() {
        assert_eq!(RankEnv::from_vars(vars(&[])), Ok(None));
        assert_eq!(
            RankEnv::from_vars(vars(&[("WORLD_SIZE", "1"), ("RANK", "0")])),
            Ok(None)
        );
    }

    #[test]
    fn torchrun_variables_round_trip() {
        let env = RankEnv::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "29500"),
            (TIMEOUT_VAR, "12.5"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (env.rank, env.world, env.local_rank, env.master_port),
            (3, 4, 1, 29500)
        );
        assert_eq!(env.timeout, Duration::from_secs_f64(12.5));
        let back: Vec<(String, String)> = env
            .to_vars()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let again =
            RankEnv::from_vars(|k| back.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
                .unwrap()
                .unwrap();
        assert_eq!(again, env);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = RankEnv::from_vars(vars(&[("WORLD_SIZE", "2"), ("RANK", "2")])).unwrap_err();
        assert_eq!(e.var, "RANK");
        let e = RankEnv::from_vars(vars(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_PORT", "x"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("MASTER_PORT=\"x\""), "{e}");
        let e = RankEnv::from_vars(vars(&[("WORLD_SIZE", "two")])).unwrap_err();
        assert_eq!(e.var, "WORLD_SIZE");
    }
}
