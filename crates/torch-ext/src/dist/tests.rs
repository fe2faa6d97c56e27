//! Two Gloo ranks as two threads of the test process (each with its own group over a real
//! TCP store on loopback). Values are small integers or exact binary fractions, so sums are
//! exact in float32 and the comparisons are exact.

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `body(rank, group)` on `world` threads, one rank each; returns their results.
fn ranks<T: Send + 'static>(
    world: usize,
    timeout: Duration,
    body: impl Fn(usize, ProcessGroup) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let body = body.clone();
            std::thread::spawn(move || {
                let pg = ProcessGroup::new(
                    Backend::Gloo,
                    "127.0.0.1",
                    port,
                    r,
                    world,
                    timeout,
                    Device::Cpu,
                )
                .unwrap();
                body(r, pg)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn vals(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

const T: Duration = Duration::from_secs(30);

#[test]
fn all_reduce_and_broadcast_work_on_tensors_of_several_shapes_and_dtypes() {
    let out = ranks(2, T, |r, pg| {
        let k = (r + 1) as f64;
        let a = Tensor::ones([2, 3], (Kind::Float, Device::Cpu)) * k;
        let b = Tensor::from_slice(&[r as i64, 10]);
        let c = Tensor::from(0.5 * k);
        pg.all_reduce_sum(&[a.shallow_clone(), b.shallow_clone(), c.shallow_clone()])
            .unwrap();
        let d = Tensor::from_slice(&[k as f32, -k as f32]);
        pg.broadcast(&[d.shallow_clone()], 1).unwrap();
        pg.barrier().unwrap();
        (vals(&a), vals(&b), vals(&c), vals(&d))
    });
    for (a, b, c, d) in out {
        assert_eq!(a, vec![3.0; 6]);
        assert_eq!(b, vec![1.0, 20.0]);
        assert_eq!(c, vec![1.5]);
        assert_eq!(d, vec![2.0, -2.0]);
    }
}

#[test]
fn the_differentiable_all_reduce_sums_gradients_over_ranks() {
    let out = ranks(2, T, |r, pg| {
        let k = (r + 1) as f64;
        let x = (Tensor::ones([3], (Kind::Float, Device::Cpu)) * k).set_requires_grad(true);
        let y = all_reduce_sum_autograd(&pg, &x).unwrap();
        // Rank r weighs the sum by w_r = (1, 2, 3) * k; dL_total/dx_r = sum of the w's.
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * k;
        (&y * &w).sum(Kind::Float).backward();
        (vals(&y), vals(&x.grad()))
    });
    for (y, g) in out {
        assert_eq!(y, vec![3.0; 3]);
        assert_eq!(g, vec![3.0, 6.0, 9.0]);
    }
}

/// y = W2 relu(W1 x): two layers, so with tiny caps there are several buckets.
struct Net {
    w1: Tensor,
    w2: Tensor,
    unused: Tensor,
}

fn net() -> Net {
    let w1 = Tensor::from_slice(&[0.5f32, -0.25, 1.0, 0.75, -0.5, 0.25]).reshape([3, 2]);
    let w2 = Tensor::from_slice(&[1.0f32, -1.0, 0.5]).reshape([1, 3]);
    Net {
        w1: w1.set_requires_grad(true),
        w2: w2.set_requires_grad(true),
        unused: Tensor::zeros([4], (Kind::Float, Device::Cpu)).set_requires_grad(true),
    }
}

fn loss(n: &Net, x: &Tensor) -> Tensor {
    x.matmul(&n.w1.tr())
        .relu()
        .matmul(&n.w2.tr())
        .sum(Kind::Float)
}

fn shard(r: usize) -> Tensor {
    let rows = [[1.0f32, 2.0], [0.5, -1.0], [2.0, 0.25], [-0.5, 1.5]];
    let mine: Vec<f32> = rows[2 * r..2 * r + 2].iter().flatten().copied().collect();
    Tensor::from_slice(&mine).reshape([2, 2])
}

#[test]
fn reduced_gradients_are_the_mean_of_the_ranks_gradients_armed_or_not() {
    // The expected mean, computed in one process.
    let n = net();
    for r in 0..2 {
        loss(&n, &shard(r)).backward();
    }
    let expect = [vals(&(n.w1.grad() / 2.0)), vals(&(n.w2.grad() / 2.0))];
    let out = ranks(2, T, |r, pg| {
        let n = net();
        let params = [
            n.w1.shallow_clone(),
            n.w2.shallow_clone(),
            n.unused.shallow_clone(),
        ];
        // 8-byte caps: one parameter per bucket, so the launch order matters.
        let red = GradReducer::with_buckets(&pg, &params, 0.5, 8, 8).unwrap();
        let before = red.buckets();
        let mut seen = Vec::new();
        for armed in [true, false, true] {
            for p in &params {
                crate::clear_grad(p).unwrap();
            }
            if armed {
                red.arm();
            }
            loss(&n, &shard(r)).backward();
            red.finish().unwrap();
            seen.push([vals(&n.w1.grad()), vals(&n.w2.grad())]);
            // A parameter no backward reached keeps no gradient.
            assert!(!n.unused.grad().defined());
        }
        (seen, before, red.buckets())
    });
    for (seen, before, after) in out {
        for s in &seen {
            assert_eq!(s, &expect);
        }
        // Reverse parameter order first; after the first step, the order the backward
        // produced the gradients (w2 before w1), the unused one last.
        assert_eq!(before, vec![vec![2], vec![1], vec![0]]);
        assert_eq!(after, vec![vec![1], vec![0], vec![2]]);
    }
}

#[test]
fn ranks_that_disagree_on_which_parameters_have_gradients_fail_instead_of_averaging() {
    let out = ranks(2, T, |r, pg| {
        let n = net();
        let params = [
            n.w1.shallow_clone(),
            n.w2.shallow_clone(),
            n.unused.shallow_clone(),
        ];
        let red = GradReducer::new(&pg, &params, 0.5).unwrap();
        let mut l = loss(&n, &shard(r));
        if r == 1 {
            l += n.unused.sum(Kind::Float);
        }
        red.arm();
        l.backward();
        red.finish().map_err(|e| e.to_string())
    });
    for e in out {
        let e = e.unwrap_err();
        assert!(
            e.contains("disagree on which parameters have gradients"),
            "{e}"
        );
    }
}

#[test]
fn a_peer_that_goes_away_fails_the_collective_within_the_timeout_naming_the_rank() {
    let timeout = Duration::from_secs(3);
    let out = ranks(2, timeout, |r, pg| {
        // Both have joined (rank 1 leaving while rank 0 still connects would fail the
        // join instead of the collective under test).
        pg.barrier().unwrap();
        if r == 1 {
            // Leaves the group without taking part.
            drop(pg);
            return None;
        }
        let start = Instant::now();
        let t = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let e = pg.all_reduce_sum(&[t]).unwrap_err().to_string();
        Some((e, start.elapsed()))
    });
    let (e, took) = out[0].clone().unwrap();
    assert!(e.contains("rank 0"), "{e}");
    // Bound: the timeout plus generous slack for a loaded machine.
    assert!(took < timeout + Duration::from_secs(20), "{took:?}");
}

/// Latency of a tiny all-reduce between two ranks (threads here): a figure for the docs,
/// not a pass/fail check. `cargo test -p ugc-torch-ext --release -- --ignored --nocapture latency`
#[test]
#[ignore]
fn latency_of_a_tiny_all_reduce() {
    let out = ranks(2, T, |_, pg| {
        let t = Tensor::ones([3], (Kind::Float, Device::Cpu));
        for _ in 0..100 {
            pg.all_reduce_sum(std::slice::from_ref(&t)).unwrap();
        }
        let n = 2000;
        let start = Instant::now();
        for _ in 0..n {
            pg.all_reduce_sum(std::slice::from_ref(&t)).unwrap();
        }
        start.elapsed().as_secs_f64() / n as f64
    });
    println!("tiny all-reduce: {:.1} us", out[0] * 1e6);
}
