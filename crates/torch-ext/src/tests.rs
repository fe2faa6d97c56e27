use tch::{Kind, Tensor};

use super::*;

fn where_form(x: &Tensor, slope: f64) -> Tensor {
    x.where_self(&x.ge(0.0), &(x * slope))
}

#[test]
fn leaky_relu_matches_the_definition_forward_and_backward() {
    tch::manual_seed(0);
    let a = Tensor::randn([2, 3, 5, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let b = a.detach().copy().set_requires_grad(true);
    let ya = leaky_relu(&a, 0.2);
    let yb = where_form(&b, 0.2);
    assert!(ya.allclose(&yb, 0.0, 0.0, false));
    let w = Tensor::randn([2, 3, 5, 5], (Kind::Float, Device::Cpu));
    (&ya * &w).sum(Kind::Float).backward();
    (&yb * &w).sum(Kind::Float).backward();
    assert!(a.grad().allclose(&b.grad(), 0.0, 0.0, false));
    // The slope really is ours, not tch's fixed 0.01.
    let y = leaky_relu(&Tensor::from_slice(&[-1.0f32, 2.0]), 0.2);
    assert_eq!(Vec::<f32>::try_from(&y).unwrap(), vec![-0.2, 2.0]);
}

#[test]
fn cleared_gradients_are_undefined_and_come_back_fresh() {
    let p = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    (&p * 2.0).sum(Kind::Float).backward();
    clear_grad(&p).unwrap();
    assert!(!p.grad().defined());
    (&p * 3.0).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(&p.grad()).unwrap(), vec![3.0; 3]);
}

#[test]
fn shim_errors_become_tch_errors() {
    let ids = Tensor::from_slice(&[1i64, -2]);
    let e = f_leaky_relu(&ids, 0.2).unwrap_err().to_string();
    assert!(!e.is_empty());
}

#[test]
fn channels_last_relayout_keeps_values_and_handles() {
    let p = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let alias = p.shallow_clone();
    let before = p.detach().copy();
    assert!(!is_channels_last(&p).unwrap());
    set_channels_last(&p).unwrap();
    assert!(
        is_channels_last(&alias).unwrap(),
        "every handle sees the new layout"
    );
    assert!(alias.requires_grad());
    assert!(p.allclose(&before, 0.0, 0.0, false));
    let x = to_channels_last(&Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu))).unwrap();
    assert!(is_channels_last(&x).unwrap());
    set_memory_format(&p, false).unwrap();
    assert!(!is_channels_last(&alias).unwrap() && alias.is_contiguous());
    // A bias (1-D) is left alone.
    set_channels_last(&Tensor::zeros([4], (Kind::Float, Device::Cpu))).unwrap();
}

#[test]
fn cpu_autocast_runs_convolutions_in_bfloat16_and_restores_state() {
    let x = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
    let conv = || x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    let y = autocast(Device::Cpu, AutocastDtype::BFloat16, conv);
    assert_eq!(y.kind(), Kind::BFloat16);
    // Nested regions keep the outer one on until it ends.
    let (inner, after_inner) = autocast(Device::Cpu, AutocastDtype::BFloat16, || {
        let inner = autocast(Device::Cpu, AutocastDtype::BFloat16, conv).kind();
        (inner, conv().kind())
    });
    assert_eq!((inner, after_inner), (Kind::BFloat16, Kind::BFloat16));
    assert_eq!(conv().kind(), Kind::Float, "autocast is off again");
}

#[test]
fn fused_adam_matches_the_textbook_update() {
    tch::manual_seed(1);
    let opts = (Kind::Float, Device::Cpu);
    let p = Tensor::randn([3, 4], opts);
    let g = Tensor::randn([3, 4], opts);
    let (m0, v0) = (
        Tensor::randn([3, 4], opts) * 0.1,
        Tensor::rand([3, 4], opts) * 0.1,
    );
    let h = AdamHyper {
        lr: 1e-2,
        beta1: 0.5,
        beta2: 0.999,
        eps: 1e-8,
    };
    let t = 3.0;
    let m1 = &m0 * h.beta1 + &g * (1.0 - h.beta1);
    let v1 = &v0 * h.beta2 + &g * &g * (1.0 - h.beta2);
    let (bc1, bc2) = (1.0 - h.beta1.powf(t), 1.0 - h.beta2.powf(t));
    let want = &p - (&m1 / (v1.sqrt() / bc2.sqrt() + h.eps)) * (h.lr / bc1);
    let (pp, mm, vv) = (p.copy(), m0.copy(), v0.copy());
    let step = Tensor::from(t as f32);
    let one = |x: &Tensor| vec![x.shallow_clone()];
    fused_adam(&one(&pp), &one(&g), &one(&mm), &one(&vv), &step, h).unwrap();
    assert!(pp.allclose(&want, 1e-6, 1e-7, false));
    assert!(mm.allclose(&m1, 1e-6, 1e-7, false));
    assert!(vv.allclose(&v1, 1e-6, 1e-7, false));
    let e = fused_adam(&one(&pp), &[], &one(&mm), &one(&vv), &step, h).unwrap_err();
    assert!(e.to_string().contains("0 grads"), "{e}");
}

#[test]
fn cuda_statistics_are_absent_without_cuda() {
    if !tch::Cuda::is_available() {
        assert_eq!(cuda_memory(0), None);
        cuda_reset_peak(0);
    }
}

/// Run on a GPU machine: `cargo test -p ugc-torch-ext --features cuda-tests`.
#[cfg(feature = "cuda-tests")]
#[test]
fn cuda_statistics_track_the_peak_and_autocast_uses_bf16() {
    assert!(tch::Cuda::is_available(), "cuda-tests needs a CUDA device");
    let dev = Device::Cuda(0);
    cuda_reset_peak(0);
    let base = cuda_memory(0).map(|m| m.allocated).unwrap_or(0);
    {
        let _big = Tensor::zeros([64, 1024, 1024], (Kind::Float, dev)); // 256 MiB
        let m = cuda_memory(0).expect("allocator initialised");
        assert!(m.allocated >= base + (256 << 20), "{m:?}");
    }
    let m = cuda_memory(0).unwrap();
    assert!(m.peak_allocated >= base + (256 << 20), "{m:?}");
    assert!(m.allocated < m.peak_allocated, "{m:?}");
    cuda_reset_peak(0);
    assert!(cuda_memory(0).unwrap().peak_allocated < (256 << 20) + base);
    let x = Tensor::randn([2, 8, 16, 16], (Kind::Float, dev));
    let w = Tensor::randn([8, 8, 3, 3], (Kind::Float, dev));
    let y = autocast(dev, AutocastDtype::BFloat16, || {
        to_channels_last(&x)
            .unwrap()
            .conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
    });
    assert_eq!(y.kind(), Kind::BFloat16);
    assert!(is_channels_last(&y).unwrap());
    let y = leaky_relu(&y, 0.2);
    assert_eq!(y.device(), dev);
}

#[test]
fn fused_adam_updates_channels_last_parameters_like_contiguous_ones() {
    tch::manual_seed(2);
    let opts = (Kind::Float, Device::Cpu);
    let p = Tensor::randn([8, 3, 3, 3], opts);
    let g = Tensor::randn([8, 3, 3, 3], opts);
    let h = AdamHyper {
        lr: 1e-2,
        beta1: 0.5,
        beta2: 0.999,
        eps: 1e-8,
    };
    let step = Tensor::from(1f32);
    let run = |nhwc: bool| {
        let t = [p.copy(), g.copy(), p.zeros_like(), p.zeros_like()];
        if nhwc {
            for x in &t {
                set_channels_last(x).unwrap();
            }
            assert!(is_channels_last(&t[0]).unwrap());
        }
        let one = |x: &Tensor| vec![x.shallow_clone()];
        fused_adam(&one(&t[0]), &one(&t[1]), &one(&t[2]), &one(&t[3]), &step, h).unwrap();
        t[0].contiguous()
    };
    assert!(run(true).allclose(&run(false), 0.0, 0.0, false));
}
