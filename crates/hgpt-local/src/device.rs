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

/// Keep freed memory in the process for the next request instead of
/// handing it back to the kernel, where the allocator allows it (glibc:
/// blocks up to 1 GiB come from the heap, and up to 1 GiB of free heap stays
/// mapped).
///
/// The vision pipelines allocate and free feature maps of tens of
/// megabytes per layer. With glibc's defaults each of them is mapped and
/// unmapped again, and every unmapping makes all cores flush their TLBs:
/// about a fifth of a depth estimation's time on 2 cores. Peak memory does
/// not change; memory freed after a request stays with the process (up to
/// 1 GiB) for the next one. Settings made with `MALLOC_MMAP_THRESHOLD_` or
/// `MALLOC_TRIM_THRESHOLD_` are kept.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ONE_GIB: libc::c_int = 1 << 30;
        for (variable, option) in [
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD),
            ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD),
        ] {
            if std::env::var_os(variable).is_none() {
                // SAFETY: mallopt only changes the allocator's thresholds; it
                // takes the allocator's own lock.
                unsafe { libc::mallopt(option, ONE_GIB) };
            }
        }
    }
}

/// Hand memory freed so far back to the kernel (glibc: `malloc_trim`), for
/// when a large part of it will not be needed again soon, such as an
/// unloaded model's weights: [`keep_freed_memory`] otherwise keeps what is
/// freed inside the heap mapped.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free pages of the allocator's
        // arenas to the kernel; it takes the allocator's own locks.
        unsafe { libc::malloc_trim(0) };
    }
}
