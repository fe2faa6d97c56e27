//! Data parallelism: a stage's process group and the arithmetic of sharded global batches.
//!
//! A stage that runs as `W` ranks (one process each, [`ugc_engine::rank::RankEnv`]) builds
//! one [`Dist`] from `ctx.rank` and `ctx.device`: a c10d process group (Gloo on the CPU,
//! NCCL on CUDA) with the rank's timeout for the rendezvous and every collective. A stage
//! run as one process gets [`Dist::none`]: every collective is a no-op, every shard is the
//! whole batch and every scale factor is exactly 1.0, so today's path is unchanged.
//!
//! The batch-size parameters are the *global* batch: rank `r` takes rows
//! `[start_r, start_r + n_r)` of each global batch of `N` rows ([`Dist::shard`]). A loss
//! that is a mean over the rows it sees is multiplied by `n_r * W / N` ([`Dist::scale`])
//! before backward; the gradients are summed over ranks and divided by `W` (the optimiser's
//! reducer), which is the gradient of the global-batch mean for every term, however the
//! shard fractions of the terms differ. A loss that *sums* over rows is multiplied by `W`
//! ([`Dist::sum_scale`]).

use tch::{Device, Tensor};
use ugc_engine::rank::RankEnv;
use ugc_torch_ext::dist::{Backend, ProcessGroup};

use crate::error::TrainError;

/// The process group of a data-parallel stage, or none (one process).
#[derive(Clone)]
pub struct Dist {
    pg: Option<ProcessGroup>,
    rank: usize,
    world: usize,
    /// Where the group's collectives run (NCCL takes CUDA tensors only): a tensor elsewhere
    /// (e.g. the optimiser's step count on the CPU) is staged through a copy.
    device: Device,
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dist(rank {} of {})", self.rank, self.world)
    }
}

impl Default for Dist {
    fn default() -> Self {
        Dist::none()
    }
}

impl Dist {
    /// One process: no group, rank 0 of 1.
    pub const fn none() -> Self {
        Dist {
            pg: None,
            rank: 0,
            world: 1,
            device: Device::Cpu,
        }
    }

    /// The group of `rank` (`None` = one process) on `device`: Gloo on the CPU, NCCL on
    /// CUDA. Joining waits for every rank up to the rank's timeout; the error names the
    /// rank and the rendezvous address.
    pub fn new(rank: Option<&RankEnv>, device: Device) -> Result<Self, TrainError> {
        let Some(r) = rank else {
            return Ok(Dist::none());
        };
        let backend = Backend::for_device(device);
        let pg = ProcessGroup::new(
            backend,
            &r.master_addr,
            r.master_port,
            r.rank,
            r.world,
            r.timeout,
            device,
        )
        .map_err(|e| {
            TrainError::torch(
                format!(
                    "rank {} of {} joining the process group at {}:{}",
                    r.rank, r.world, r.master_addr, r.master_port
                ),
                e,
            )
        })?;
        Ok(Dist {
            pg: Some(pg),
            rank: r.rank,
            world: r.world,
            device,
        })
    }

    /// Whether there are other ranks.
    pub fn is_distributed(&self) -> bool {
        self.pg.is_some()
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Rank 0: the one that writes checkpoints, logs, samples and outputs.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// The c10d group (for the optimiser's reducer and synchronised batch norm).
    pub fn group(&self) -> Option<&ProcessGroup> {
        self.pg.as_ref()
    }

    /// This rank's rows `(start, n)` of a global batch of `rows`
    /// ([`ugc_data::loader::shard_range`]).
    pub fn shard(&self, rows: usize) -> (usize, usize) {
        ugc_data::loader::shard_range(rows, self.rank, self.world)
    }

    /// The factor `n * W / rows` of a per-row-mean loss over this rank's `n` of `rows`
    /// global rows (exactly 1.0 with one process, and with equal shards).
    pub fn scale(&self, n: usize, rows: usize) -> f64 {
        if self.world == 1 || rows == 0 {
            return 1.0;
        }
        (n * self.world) as f64 / rows as f64
    }

    /// The factor `W` of a loss that sums over rows (1.0 with one process).
    pub fn sum_scale(&self) -> f64 {
        self.world as f64
    }

    /// `loss * factor`, or `loss` itself when the factor is 1.0 (no extra operation, so
    /// one process computes exactly what it did before there were ranks).
    pub fn scaled(loss: &Tensor, factor: f64) -> Tensor {
        if factor == 1.0 {
            loss.shallow_clone()
        } else {
            loss * factor
        }
    }

    /// Sums `ts` over ranks in place (no-op with one process).
    pub fn all_reduce_sum(&self, ts: &[Tensor]) -> Result<(), TrainError> {
        match &self.pg {
            None => Ok(()),
            Some(pg) => self
                .staged(ts, |t| pg.all_reduce_sum(t))
                .map_err(|e| self.err("an all-reduce", e)),
        }
    }

    /// Copies `ts` of rank `root` into every rank's `ts`, in place (no-op with one
    /// process). The tensors are detached first: a broadcast writes values, not a graph.
    pub fn broadcast(&self, ts: &[Tensor], root: usize) -> Result<(), TrainError> {
        match &self.pg {
            None => Ok(()),
            Some(pg) => self
                .staged(ts, |t| pg.broadcast(t, root))
                .map_err(|e| self.err("a broadcast", e)),
        }
    }

    /// Runs an in-place collective on detached, contiguous tensors on the group's device,
    /// copying back into any of `ts` that had to be staged.
    fn staged(
        &self,
        ts: &[Tensor],
        op: impl FnOnce(&[Tensor]) -> Result<(), tch::TchError>,
    ) -> Result<(), tch::TchError> {
        let plain: Vec<Tensor> = ts.iter().map(Tensor::detach).collect();
        let direct = |t: &Tensor| t.device() == self.device && t.is_contiguous();
        if plain.iter().all(direct) {
            return op(&plain);
        }
        let moved: Vec<Tensor> = plain
            .iter()
            .map(|t| {
                if direct(t) {
                    Ok(t.shallow_clone())
                } else {
                    t.f_to_device(self.device)?.f_contiguous()
                }
            })
            .collect::<Result<_, _>>()?;
        op(&moved)?;
        tch::no_grad(|| {
            for (dst, src) in plain.iter().zip(&moved) {
                if !direct(dst) {
                    dst.shallow_clone().f_copy_(src)?;
                }
            }
            Ok(())
        })
    }

    /// Waits for every rank (no-op with one process).
    pub fn barrier(&self) -> Result<(), TrainError> {
        match &self.pg {
            None => Ok(()),
            Some(pg) => pg.barrier().map_err(|e| self.err("the barrier", e)),
        }
    }

    /// Rank 0's `flag` on every rank (e.g. "stop now"): one tiny broadcast.
    pub fn leader_flag(&self, flag: bool) -> Result<bool, TrainError> {
        if !self.is_distributed() {
            return Ok(flag);
        }
        let t = Tensor::from(i64::from(flag));
        self.broadcast(std::slice::from_ref(&t), 0)?;
        Ok(t.int64_value(&[]) != 0)
    }

    /// Whether `flag` holds on any rank: one tiny all-reduce.
    pub fn any(&self, flag: bool) -> Result<bool, TrainError> {
        if !self.is_distributed() {
            return Ok(flag);
        }
        let t = Tensor::from(i64::from(flag));
        self.all_reduce_sum(std::slice::from_ref(&t))?;
        Ok(t.int64_value(&[]) != 0)
    }

    /// The intra-op threads of one rank on the CPU: the stage's budget (`threads`, 0 =
    /// libtorch's default of `default`) split over the ranks, at least one, so `W` ranks on
    /// one machine do not oversubscribe its cores. With one process: `threads` unchanged.
    pub fn rank_threads(&self, threads: i32, default: i32) -> i32 {
        if self.world == 1 {
            return threads;
        }
        let budget = if threads > 0 { threads } else { default };
        (budget / self.world as i32).max(1)
    }

    fn err(&self, what: &str, e: tch::TchError) -> TrainError {
        TrainError::torch(
            format!(
                "{what} of rank {} of {} (a peer died, or timed out)",
                self.rank, self.world
            ),
            e,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_shards_nothing_and_scales_by_exactly_one() {
        let d = Dist::none();
        assert_eq!(d.shard(7), (0, 7));
        assert_eq!(d.scale(7, 7).to_bits(), 1.0f64.to_bits());
        assert_eq!(d.rank_threads(3, 8), 3);
        assert!(d.any(true).unwrap() && !d.leader_flag(false).unwrap());
    }

    /// The scale factors of the shards of an odd batch average to one: sum over ranks of
    /// `n_r * W / N` divided by `W` is `sum n_r / N = 1`, the exact-averaging condition.
    #[test]
    fn scales_of_uneven_shards_average_to_one() {
        for (rows, world) in [(5usize, 2usize), (7, 3), (9, 4)] {
            let total: f64 = (0..world)
                .map(|rank| {
                    let d = Dist {
                        rank,
                        world,
                        ..Dist::none()
                    };
                    let (_, n) = d.shard(rows);
                    d.scale(n, rows)
                })
                .sum();
            // W float64 quotients of small integers, each within half an ulp of <= 2.
            assert!((total / world as f64 - 1.0).abs() <= 4.0 * f64::EPSILON);
        }
        let d = Dist {
            rank: 1,
            world: 2,
            ..Dist::none()
        };
        assert_eq!(d.rank_threads(0, 8), 4);
        assert_eq!(d.rank_threads(1, 8), 1);
    }
}
