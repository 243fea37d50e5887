//! Choosing the device: CUDA when libtorch's CUDA backend can be loaded and a GPU is
//! present, the CPU otherwise.
//!
//! `tch` does not link `libtorch_cuda.so` (the binary must start on machines without a
//! GPU), so the backend is loaded here at start. Places searched, in order:
//! `$FDET_TORCH_CUDA` (a file), `$LIBTORCH/cuda-lib/` (where scripts/setup.sh moves it),
//! `.libtorch/torch/cuda-lib/`, and an installed PyTorch's `torch/lib/` named by
//! `$TORCH_LIB`.
//!
//! Troubleshooting: a "cannot load" warning names the library and the loader's message.
//! `scripts/setup.sh` fetches only what the CPU build needs, so on a GPU machine the CUDA
//! libraries `libtorch_cuda.so` links (cuBLAS, cuDNN, NCCL, nvshmem, ...) must come from
//! an installed PyTorch 2.11: `pip install torch==2.11.0`, then point `TORCH_LIB` at its
//! `torch/lib` and put its `nvidia/*/lib` folders on `LD_LIBRARY_PATH`. Training then runs
//! on CUDA; otherwise on the CPU, only slower. Not run here: no GPU was available.

use std::path::PathBuf;

use tch::Device;

/// Candidate paths of `libtorch_cuda.so`, in search order.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("FDET_TORCH_CUDA") {
        out.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("LIBTORCH") {
        out.push(PathBuf::from(p).join("cuda-lib/libtorch_cuda.so"));
    }
    out.push(PathBuf::from(".libtorch/torch/cuda-lib/libtorch_cuda.so"));
    if let Some(p) = std::env::var_os("TORCH_LIB") {
        out.push(PathBuf::from(p).join("libtorch_cuda.so"));
    }
    out
}

/// Loads the CUDA backend if possible and returns the device to train on. Logs one line
/// saying which and, when falling back, why.
pub fn select_device() -> Device {
    // Without the NVIDIA driver's device node there is nothing to load the backend for,
    // and the loader's complaint about missing CUDA libraries would only mislead.
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        tracing::info!("no NVIDIA GPU on this machine (/dev/nvidiactl absent); using the CPU");
        return Device::Cpu;
    }
    let mut loaded = false;
    for path in candidates().iter().filter(|p| p.exists()) {
        match load_library(path) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), "loaded the CUDA backend");
                loaded = true;
                break;
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot load this CUDA backend; trying the next place"
            ),
        }
    }
    if !loaded {
        tracing::warn!("no loadable libtorch_cuda.so (see host/src/accel.rs); using the CPU");
        return Device::Cpu;
    }
    if tch::Cuda::is_available() {
        tracing::info!(gpus = tch::Cuda::device_count(), "training on CUDA");
        Device::Cuda(0)
    } else {
        tracing::info!("CUDA backend loaded but no GPU is visible; using the CPU");
        Device::Cpu
    }
}

/// Loads a shared library for the whole process lifetime.
#[allow(unsafe_code)]
fn load_library(path: &std::path::Path) -> Result<(), libloading::Error> {
    // SAFETY: libtorch_cuda.so's initialisers only register CUDA kernels and allocators
    // with the already loaded libtorch of the same version (setup.sh pins both); no Rust
    // invariants depend on it. The handle is leaked on purpose: unloading a library that
    // registered itself with libtorch would leave dangling registrations.
    let lib = unsafe { libloading::Library::new(path) }?;
    std::mem::forget(lib);
    Ok(())
}
