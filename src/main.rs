fn main() {
    println!(
        "ugc-pipe {} cuda={}",
        env!("CARGO_PKG_VERSION"),
        tch::Cuda::is_available()
    );
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0]).sum(tch::Kind::Float);
    println!("{}", f64::try_from(t).unwrap());
}
