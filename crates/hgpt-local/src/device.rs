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
