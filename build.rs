fn main() {
    // Only the worker (and tests/benches/examples) load libtorch; the head binary must not.
    torch_link::emit_for_bin("ugc-pipe-worker");
}
