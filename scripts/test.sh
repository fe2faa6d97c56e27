#!/usr/bin/env bash
# Runs the whole test suite: installs what the build needs (scripts/setup.sh), then
# `cargo test` over the workspace with --no-fail-fast (one failing binary never hides the
# others). Extra arguments go to that cargo test.
#
# Then the numeric fixture comparisons run again with oneDNN capped at AVX2
# (ONEDNN_MAX_CPU_ISA=AVX2) and at SSE4.1: oneDNN picks its kernels by CPU (AVX2 on AMD
# Zen 3, AVX-512 on Zen 4 and Xeon, AMX on Sapphire Rapids), each summing in its own order,
# so one machine checks that the tolerances (derived in crates/tolerance) hold for the
# other kernels too. On a CPU without AVX-512 the AVX2 pass repeats the first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
command -v chromium >/dev/null && export UGC_REQUIRE_CHROMIUM=1  # setup installed it: the report's browser test must run

# The Slurm executor's integration tests need the one-node test cluster: brought up here
# (installing Debian's packages when missing) where we are root; UGC_REQUIRE_SLURM then
# makes them fail instead of skipping if sbatch is missing (`ugc-engine --test it slurm::`
# for the modules, `ugc-pipe --test it slurm::` for `run --executor slurm`, both in the
# workspace run below).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    ./scripts/slurm-up.sh
    export UGC_REQUIRE_SLURM=1
    # And a two-node cluster (network namespaces of this machine) for a data-parallel
    # stage whose ranks span two nodes; a machine without network namespaces skips that
    # one test, saying so.
    if conf=$(./scripts/slurm-two-nodes.sh up); then
        export UGC_SLURM_TWO_NODES=$conf
    else
        echo "test.sh: no two-node cluster here; slurm::a_data_parallel_stage_spans_two_nodes skips" >&2
    fi
fi

status=0
cargo test --workspace --locked --no-fail-fast "$@" || status=$?

# The test binaries that compare against float reference fixtures.
fixture_test_sets=(
    "-p ugc-nn --test it"
    "-p ugc-metrics --test it"
    "-p ugc-method --test it core::"
    "-p ugc-eval --test it export"
)
for isa in AVX2 SSE41; do
    echo "== fixture comparisons with ONEDNN_MAX_CPU_ISA=$isa"
    for set in "${fixture_test_sets[@]}"; do
        # shellcheck disable=SC2086 # each set is a list of cargo arguments
        ONEDNN_MAX_CPU_ISA=$isa cargo test --locked --no-fail-fast $set || status=$?
    done
done
# The slow Slurm test (a time limit: whole minutes, checked every 30 s), once.
cargo test --locked -p ugc-engine --test it slurm::slow -- --ignored || status=$?
exit "$status"
