//! c10d, libtorch's distributed runtime (`cpp/dist.cpp`), for data-parallel training:
//! a [`ProcessGroup`] (Gloo on CPU, NCCL on CUDA, met through a `TCPStore` that rank 0
//! hosts), in-place collectives, a differentiable all-reduce for synchronised batch norm
//! ([`all_reduce_sum_autograd`]), and [`GradReducer`], DDP's bucketed gradient all-reduce
//! overlapped with the backward pass.
//!
//! Every collective must be issued by every rank in the same order; an error (a dead peer,
//! the timeout) comes back as a `TchError` naming what failed.

use std::ffi::CString;
use std::os::raw::c_int;
use std::sync::Arc;
use std::time::Duration;

use tch::{Device, TchError, Tensor};

use crate::{check, last_error, raw};

mod ffi {
    use std::os::raw::{c_char, c_int};

    use crate::ffi::AtTensor;

    #[repr(C)]
    pub struct UgcProcessGroup {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct UgcGradReducer {
        _private: [u8; 0],
    }

    unsafe extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn ugc_pg_new(
            backend: c_int,
            host: *const c_char,
            port: c_int,
            rank: c_int,
            world: c_int,
            timeout_ms: i64,
            device: c_int,
            out: *mut *mut UgcProcessGroup,
        ) -> c_int;
        pub fn ugc_pg_free(pg: *mut UgcProcessGroup);
        pub fn ugc_pg_all_reduce(
            pg: *mut UgcProcessGroup,
            ts: *const *mut AtTensor,
            n: c_int,
        ) -> c_int;
        pub fn ugc_pg_broadcast(
            pg: *mut UgcProcessGroup,
            ts: *const *mut AtTensor,
            n: c_int,
            root: c_int,
        ) -> c_int;
        pub fn ugc_pg_barrier(pg: *mut UgcProcessGroup) -> c_int;
        pub fn ugc_pg_all_reduce_autograd(
            pg: *mut UgcProcessGroup,
            x: *const AtTensor,
            out: *mut *mut AtTensor,
        ) -> c_int;
        pub fn ugc_reducer_new(
            pg: *mut UgcProcessGroup,
            ps: *const *mut AtTensor,
            n: c_int,
            bucket_bytes: i64,
            first_bucket_bytes: i64,
            scale: f64,
            out: *mut *mut UgcGradReducer,
        ) -> c_int;
        pub fn ugc_reducer_free(r: *mut UgcGradReducer);
        pub fn ugc_reducer_arm(r: *mut UgcGradReducer);
        pub fn ugc_reducer_finish(r: *mut UgcGradReducer) -> c_int;
        pub fn ugc_reducer_buckets(r: *mut UgcGradReducer, out: *mut i64, cap: c_int) -> c_int;
    }
}

/// The collective backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors (and the only choice without CUDA).
    Gloo,
    /// CUDA tensors, one GPU per rank.
    Nccl,
}

impl Backend {
    /// The backend torch.distributed uses for tensors on `device`.
    pub fn for_device(device: Device) -> Self {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }
}

/// Whether this build can create NCCL groups (the CUDA/NCCL headers were found when it was
/// compiled; see `build.rs`).
pub const HAS_NCCL: bool = cfg!(ugc_nccl);

/// One process's membership of a group of `world` ranks. Cloning shares the membership
/// (reducers and graphs keep it alive); the group is left when the last clone drops.
#[derive(Clone)]
pub struct ProcessGroup(Arc<Membership>);

struct Membership {
    ptr: *mut ffi::UgcProcessGroup,
    rank: usize,
    world: usize,
    device: Device,
}

// SAFETY: c10d backends are used from several threads by design (the autograd engine's
// threads call the gradient hooks); the handle is only freed on drop.
unsafe impl Send for Membership {}
// SAFETY: as above; every entry point of the shim is safe to call concurrently.
unsafe impl Sync for Membership {}

impl Drop for Membership {
    fn drop(&mut self) {
        // SAFETY: the handle came from `ugc_pg_new` and is freed once.
        unsafe { ffi::ugc_pg_free(self.ptr) }
    }
}

fn tensor_ptrs(ts: &[Tensor]) -> Vec<*mut crate::ffi::AtTensor> {
    ts.iter()
        .map(|t| t.as_ptr() as *mut crate::ffi::AtTensor)
        .collect()
}

fn count(n: usize, what: &str) -> Result<c_int, TchError> {
    c_int::try_from(n).map_err(|_| TchError::Shape(format!("{what}: {n} is too many")))
}

impl ProcessGroup {
    /// Joins the group: rank 0 hosts a TCP store at `master_addr:master_port`, the others
    /// connect to it (retrying until `timeout`), then the backend's own connections are
    /// made. `timeout` also bounds every collective: a rank that died fails its peers
    /// within it. `device` is where collectives' tensors live (NCCL: this rank's GPU).
    pub fn new(
        backend: Backend,
        master_addr: &str,
        master_port: u16,
        rank: usize,
        world: usize,
        timeout: Duration,
        device: Device,
    ) -> Result<Self, TchError> {
        if world == 0 || rank >= world {
            return Err(TchError::Shape(format!(
                "process group: rank {rank} of world {world}"
            )));
        }
        let host = CString::new(master_addr)
            .map_err(|_| TchError::Convert(format!("master address {master_addr:?}")))?;
        let dev = match device {
            Device::Cuda(i) => count(i, "CUDA device index")?,
            _ => -1,
        };
        if backend == Backend::Nccl && dev < 0 {
            return Err(TchError::Convert(
                "the NCCL backend needs a CUDA device".into(),
            ));
        }
        let mut ptr = std::ptr::null_mut();
        let timeout_ms = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        // SAFETY: `host` outlives the call; `ptr` is written only on success.
        let rc = unsafe {
            ffi::ugc_pg_new(
                match backend {
                    Backend::Gloo => 0,
                    Backend::Nccl => 1,
                },
                host.as_ptr(),
                c_int::from(master_port),
                count(rank, "rank")?,
                count(world, "world size")?,
                timeout_ms,
                dev,
                &mut ptr,
            )
        };
        if rc != 0 {
            return Err(TchError::Torch(format!(
                "joining the process group as rank {rank} of {world} at {master_addr}:{master_port}: {}",
                last_error()
            )));
        }
        Ok(ProcessGroup(Arc::new(Membership {
            ptr,
            rank,
            world,
            device,
        })))
    }

    pub fn rank(&self) -> usize {
        self.0.rank
    }

    pub fn world(&self) -> usize {
        self.0.world
    }

    pub fn device(&self) -> Device {
        self.0.device
    }

    fn ptr(&self) -> *mut ffi::UgcProcessGroup {
        self.0.ptr
    }

    fn named(&self, what: &str, rc: c_int) -> Result<(), TchError> {
        check(rc).map_err(|e| TchError::Torch(format!("{what} (rank {}): {e}", self.rank())))
    }

    /// Sums every tensor over the ranks, in place (one collective per dtype).
    pub fn all_reduce_sum(&self, ts: &[Tensor]) -> Result<(), TchError> {
        if ts.is_empty() {
            return Ok(());
        }
        let p = tensor_ptrs(ts);
        // SAFETY: `p` holds live tensor handles that outlive the call.
        let rc =
            unsafe { ffi::ugc_pg_all_reduce(self.ptr(), p.as_ptr(), count(p.len(), "tensors")?) };
        self.named("all-reduce", rc)
    }

    /// Overwrites every tensor with rank `root`'s value, in place.
    pub fn broadcast(&self, ts: &[Tensor], root: usize) -> Result<(), TchError> {
        if ts.is_empty() {
            return Ok(());
        }
        let p = tensor_ptrs(ts);
        // SAFETY: as in `all_reduce_sum`.
        let rc = unsafe {
            ffi::ugc_pg_broadcast(
                self.ptr(),
                p.as_ptr(),
                count(p.len(), "tensors")?,
                count(root, "root rank")?,
            )
        };
        self.named("broadcast", rc)
    }

    /// Returns once every rank has called it (or fails after the timeout).
    pub fn barrier(&self) -> Result<(), TchError> {
        // SAFETY: plain handle.
        let rc = unsafe { ffi::ugc_pg_barrier(self.ptr()) };
        self.named("barrier", rc)
    }
}

/// `y = sum over ranks of x`, differentiable: the backward sums `dL/dy` over the ranks
/// (each rank's `y` depends on every rank's `x`). Every rank must build the same graph, as
/// the backward's all-reduces are collectives too. The graph holds a plain pointer to the
/// group: keep a clone of `pg` alive until its backward has run (a stage holds its group
/// from start to end).
pub fn all_reduce_sum_autograd(pg: &ProcessGroup, x: &Tensor) -> Result<Tensor, TchError> {
    let mut out = std::ptr::null_mut();
    // SAFETY: live handles; `out` is written only on success.
    let rc = unsafe { ffi::ugc_pg_all_reduce_autograd(pg.ptr(), raw(x), &mut out) };
    pg.named("differentiable all-reduce", rc)?;
    // SAFETY: a fresh `new at::Tensor`, which `from_ptr` takes ownership of.
    Ok(unsafe { Tensor::from_ptr(out as *mut _) })
}

/// DDP's default bucket sizes: the first bucket small, so the first all-reduce starts as
/// soon as the last layers' gradients exist.
pub const BUCKET_BYTES: usize = 25 << 20;
pub const FIRST_BUCKET_BYTES: usize = 1 << 20;

/// Bucketed gradient all-reduce over a fixed list of parameters.
///
/// A post-accumulate-grad hook on each parameter marks it ready during an *armed*
/// backward ([`GradReducer::arm`]); a bucket whose parameters are all ready is flattened,
/// scaled by `scale` and all-reduced asynchronously while the backward continues. Buckets
/// launch strictly in order, so all ranks issue identical collectives. [`GradReducer::finish`]
/// launches what is left (parameters the armed backward did not reach, or all of them
/// when no backward was armed), waits, and writes `scale x (sum over ranks)` back into each
/// defined gradient; it fails if the ranks disagree on which parameters have gradients.
/// After the first finished step the buckets are rebuilt once in the order rank 0 saw
/// its gradients become ready (broadcast, so all ranks agree).
pub struct GradReducer {
    ptr: *mut ffi::UgcGradReducer,
    pg: ProcessGroup,
}

// SAFETY: the reducer's state is guarded by a mutex on the C++ side.
unsafe impl Send for GradReducer {}

impl GradReducer {
    /// A reducer over `params` (live leaf tensors; the hooks stay on them until drop)
    /// with DDP's bucket sizes.
    pub fn new(pg: &ProcessGroup, params: &[Tensor], scale: f64) -> Result<Self, TchError> {
        Self::with_buckets(pg, params, scale, BUCKET_BYTES, FIRST_BUCKET_BYTES)
    }

    /// [`GradReducer::new`] with explicit bucket caps in bytes.
    pub fn with_buckets(
        pg: &ProcessGroup,
        params: &[Tensor],
        scale: f64,
        bucket_bytes: usize,
        first_bucket_bytes: usize,
    ) -> Result<Self, TchError> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(TchError::Convert(format!("reducer scale {scale}")));
        }
        let p = tensor_ptrs(params);
        let mut ptr = std::ptr::null_mut();
        // SAFETY: live handles (the shim keeps its own references); `ptr` written on success.
        let rc = unsafe {
            ffi::ugc_reducer_new(
                pg.ptr(),
                p.as_ptr(),
                count(p.len(), "parameters")?,
                bucket_bytes as i64,
                first_bucket_bytes as i64,
                scale,
                &mut ptr,
            )
        };
        pg.named("gradient reducer", rc)?;
        Ok(GradReducer {
            ptr,
            pg: pg.clone(),
        })
    }

    /// The next backward is the step's last: buckets launch as their gradients complete.
    pub fn arm(&self) {
        // SAFETY: plain handle.
        unsafe { ffi::ugc_reducer_arm(self.ptr) }
    }

    /// Reduces what is left, waits for every bucket, writes the gradients back; call
    /// before the optimiser update (on every rank).
    pub fn finish(&self) -> Result<(), TchError> {
        // SAFETY: plain handle.
        let rc = unsafe { ffi::ugc_reducer_finish(self.ptr) };
        self.pg.named("gradient all-reduce", rc)
    }

    /// The buckets in launch order, as parameter indices (for tests and diagnostics).
    pub fn buckets(&self) -> Vec<Vec<usize>> {
        // SAFETY: a zero-capacity call only counts.
        let n = unsafe { ffi::ugc_reducer_buckets(self.ptr, std::ptr::null_mut(), 0) };
        let mut flat = vec![0i64; n.max(0) as usize];
        // SAFETY: `flat` has room for the `n` entries the shim writes.
        unsafe { ffi::ugc_reducer_buckets(self.ptr, flat.as_mut_ptr(), n) };
        flat.split(|&i| i < 0)
            .filter(|b| !b.is_empty())
            .map(|b| b.iter().map(|&i| i as usize).collect())
            .collect()
    }
}

impl Drop for GradReducer {
    fn drop(&mut self) {
        // SAFETY: the handle came from `ugc_reducer_new` and is freed once; the shim removes
        // its hooks from the parameters first.
        unsafe { ffi::ugc_reducer_free(self.ptr) }
    }
}

#[cfg(test)]
mod tests;
