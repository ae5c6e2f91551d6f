//! Choosing where tensors live: CPU by default, a GPU when built with the
//! `cuda` or `metal` feature and one is present.

use candle_core::Device;

/// The best device this build can use.
pub fn best_device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(device) = Device::new_cuda(0) {
        return device;
    }
    #[cfg(feature = "metal")]
    if let Ok(device) = Device::new_metal(0) {
        return device;
    }
    Device::Cpu
}

/// Fix the CPU thread count candle uses, once, at its own default.
///
/// Without `RAYON_NUM_THREADS`, candle works out the number of physical
/// cores again on every f32 matrix product, which on Linux means reading
/// `/proc/cpuinfo` (about 0.2 ms, more than a small product itself). Setting
/// the variable to that same number up front keeps the behaviour and drops
/// the cost. A value the user set is kept.
///
/// # Safety
/// Changes the process environment: call it before any other thread exists
/// (first thing in `main`).
pub unsafe fn pin_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        // SAFETY: the caller guarantees no other thread reads the environment.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}
