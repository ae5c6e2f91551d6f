//! What the CPU kernels ([`crate::qmatmul`], [`crate::attention`]) share: an
//! output buffer written from several threads, and AVX helpers.

/// An output buffer that the threads of one operation write at disjoint
/// places.
pub(crate) struct SharedOut(*mut f32);

// SAFETY: only used for writes to places no two work items share (the
// callers' contract on `write`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(out: &mut [f32]) -> Self {
        Self(out.as_mut_ptr())
    }

    /// # Safety
    /// `at..at + values.len()` is inside the buffer, which outlives the
    /// write, and no other thread writes there.
    pub(crate) unsafe fn write(&self, at: usize, values: &[f32]) {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(at), values.len()) };
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// The sum of the eight lanes (always in the same order).
    #[target_feature(enable = "avx")]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
    }
}
