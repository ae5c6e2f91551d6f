//! A GEMM for linear layers applied to a few rows at a time, on AVX-512
//! CPUs, with the weight packed once, when the model loads.
//!
//! A general GEMM packs both operands on every call, which costs as much as
//! the product when there are only a few rows (CLIP's 50 tokens and short
//! texts, one token at a time when decoding). [`PackedWeight`] stores the
//! weight the way the kernel reads it: panels of [`PANEL`] outputs, each
//! `inputs` steps of [`PANEL`] consecutive values, panel after panel, so a
//! call streams it from memory once, front to back. Each call packs only
//! the rows, in groups of [`ROWS`] interleaved by input, and the kernel
//! keeps a `ROWS x PANEL` block of the output in 28 vector registers while
//! it walks the inputs. Beyond about a hundred rows the general GEMM is
//! faster (by 10 to 35% on the shapes of ViT-L and DINOv2 layers, 577 to
//! 1370 rows), which is why only layers that see a few rows are packed.

use std::arch::x86_64::{
    __m512, __mmask16, _MM_HINT_T0, _mm_prefetch, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps,
    _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
};

/// Outputs per panel: two 16-lane vectors.
pub(crate) const PANEL: usize = 32;
/// Input rows per kernel call (2 x 14 = 28 accumulator registers).
pub(crate) const ROWS: usize = 14;
/// Rows packed at once; up to this many, all inputs go in one pass.
const BLOCK_ROWS: usize = 10 * ROWS;
/// Inputs per pass over more rows than [`BLOCK_ROWS`] (a panel's slice of
/// them, 32 KiB, stays in L1).
const DEPTH: usize = 256;
/// How far ahead of the kernel the weights are prefetched, in values.
const AHEAD: usize = 1024;

/// A `[outputs, inputs]` weight matrix in the kernel's layout.
#[derive(Debug)]
pub(crate) struct PackedWeight {
    outputs: usize,
    inputs: usize,
    /// `outputs.div_ceil(PANEL)` panels of `inputs * PANEL` values; the
    /// last panel's missing outputs are zeros.
    panels: Vec<f32>,
}

/// Whether this CPU runs the kernel.
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

impl PackedWeight {
    /// Packs `weight`, `[outputs, inputs]` row-major; `None` if it does not
    /// hold that many values.
    pub(crate) fn pack(weight: &[f32], outputs: usize, inputs: usize) -> Option<Self> {
        if weight.len() != outputs.checked_mul(inputs)? {
            return None;
        }
        let mut panels = vec![0f32; outputs.div_ceil(PANEL) * inputs * PANEL];
        for (output, row) in weight.chunks_exact(inputs.max(1)).enumerate() {
            let base = (output / PANEL) * inputs * PANEL + output % PANEL;
            for (input, &w) in row.iter().enumerate() {
                panels[base + input * PANEL] = w;
            }
        }
        Some(Self {
            outputs,
            inputs,
            panels,
        })
    }

    /// The weight back in its `[outputs, inputs]` layout.
    pub(crate) fn unpack(&self) -> Vec<f32> {
        let mut weight = vec![0f32; self.outputs * self.inputs];
        for (output, row) in weight.chunks_exact_mut(self.inputs.max(1)).enumerate() {
            let base = (output / PANEL) * self.inputs * PANEL + output % PANEL;
            for (input, w) in row.iter_mut().enumerate() {
                *w = self.panels[base + input * PANEL];
            }
        }
        weight
    }

    /// The number of outputs.
    pub(crate) fn outputs(&self) -> usize {
        self.outputs
    }

    /// The number of inputs.
    pub(crate) fn inputs(&self) -> usize {
        self.inputs
    }

    /// Adds `x W^T` to columns `columns` of `out` (`[m, outputs]`
    /// row-major), for `x` `[m, inputs]` row-major.
    ///
    /// # Safety
    /// The CPU must have AVX-512 ([`available`]); `out` must point to `m *
    /// outputs` initialised values that nothing else accesses in these
    /// columns meanwhile; `columns.start` must be a multiple of [`PANEL`],
    /// `columns.end` at most `outputs`, and `x` must hold `m * inputs`
    /// values.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn accumulate(
        &self,
        x: &[f32],
        m: usize,
        out: *mut f32,
        columns: std::ops::Range<usize>,
    ) {
        let (n, k) = (self.outputs, self.inputs);
        debug_assert!(columns.start.is_multiple_of(PANEL) && columns.end <= n);
        debug_assert_eq!(x.len(), m * k);
        // A block of rows takes all inputs in one pass: each panel is read
        // once, straight after the one before, and the outputs stay in
        // registers throughout.
        let step = if m <= BLOCK_ROWS { k.max(1) } else { DEPTH };
        let mut packed = Vec::with_capacity(BLOCK_ROWS.min(m) * step.min(k));
        for depth_start in (0..k).step_by(step) {
            let depth = step.min(k - depth_start);
            for block_start in (0..m).step_by(BLOCK_ROWS) {
                let rows = block_start..BLOCK_ROWS.min(m - block_start) + block_start;
                pack_rows(
                    x,
                    k,
                    rows.clone(),
                    depth_start..depth_start + depth,
                    &mut packed,
                );
                for first in columns.clone().step_by(PANEL) {
                    let (low, high) = lane_masks(columns.end - first);
                    // SAFETY: the panel from `first` holds `k * PANEL`
                    // values, of which this pass reads `depth * PANEL`.
                    let weights =
                        unsafe { self.panels.as_ptr().add(first * k + depth_start * PANEL) };
                    let mut row = rows.start;
                    while row < rows.end {
                        let group = ROWS.min(rows.end - row);
                        // SAFETY: `packed` holds the group's `group * depth`
                        // values from `(row - rows.start) * depth`; the
                        // output rows and masked columns are in `out` (the
                        // caller's promise).
                        unsafe {
                            kernel_rows(
                                group,
                                packed.as_ptr().add((row - rows.start) * depth),
                                group,
                                weights,
                                depth,
                                Target {
                                    at: out.add(row * n + first),
                                    stride: n,
                                    masks: (low, high),
                                    add: true,
                                },
                            );
                        }
                        row += group;
                    }
                }
            }
        }
    }
}

/// Packs rows `rows` of `x` (`[_, k]`), inputs `inputs`, in groups of
/// [`ROWS`] rows laid out input by input (`[inputs][group rows]`).
fn pack_rows(
    x: &[f32],
    k: usize,
    rows: std::ops::Range<usize>,
    inputs: std::ops::Range<usize>,
    packed: &mut Vec<f32>,
) {
    let depth = inputs.len();
    packed.clear();
    packed.resize(rows.len() * depth, 0.0);
    let mut group = rows.start;
    while group < rows.end {
        let count = ROWS.min(rows.end - group);
        let base = (group - rows.start) * depth;
        for r in 0..count {
            let source = &x[(group + r) * k + inputs.start..(group + r) * k + inputs.end];
            for (input, &value) in source.iter().enumerate() {
                packed[base + input * count + r] = value;
            }
        }
        group += count;
    }
}

/// The lane masks of a panel's two vectors when `width` of its columns are
/// written.
pub(crate) fn lane_masks(width: usize) -> (__mmask16, __mmask16) {
    let mask = |lanes: usize| -> __mmask16 {
        if lanes >= 16 {
            0xffff
        } else {
            ((1u32 << lanes) - 1) as __mmask16
        }
    };
    (mask(width), mask(width.saturating_sub(16)))
}

/// Where a kernel call writes: `R` rows `stride` apart from `at`, in the
/// lanes the two masks allow, added to what is there (`add`) or over it.
#[derive(Clone, Copy)]
pub(crate) struct Target {
    pub(crate) at: *mut f32,
    pub(crate) stride: usize,
    pub(crate) masks: (__mmask16, __mmask16),
    pub(crate) add: bool,
}

/// [`kernel`] for a group of `rows` (1 to [`ROWS`]) rows.
///
/// # Safety
/// As for [`kernel`].
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn kernel_rows(
    rows: usize,
    x: *const f32,
    x_step: usize,
    w: *const f32,
    depth: usize,
    target: Target,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match rows {
            14 => kernel::<14>(x, x_step, w, depth, target),
            13 => kernel::<13>(x, x_step, w, depth, target),
            12 => kernel::<12>(x, x_step, w, depth, target),
            11 => kernel::<11>(x, x_step, w, depth, target),
            10 => kernel::<10>(x, x_step, w, depth, target),
            9 => kernel::<9>(x, x_step, w, depth, target),
            8 => kernel::<8>(x, x_step, w, depth, target),
            7 => kernel::<7>(x, x_step, w, depth, target),
            6 => kernel::<6>(x, x_step, w, depth, target),
            5 => kernel::<5>(x, x_step, w, depth, target),
            4 => kernel::<4>(x, x_step, w, depth, target),
            3 => kernel::<3>(x, x_step, w, depth, target),
            2 => kernel::<2>(x, x_step, w, depth, target),
            _ => kernel::<1>(x, x_step, w, depth, target),
        }
    }
}

/// `out[r, 0..32] += sum_i x[i * x_step + r] w[i, 0..32]` for `R` rows
/// of `target` (`=` instead of `+=` unless it adds): `x` is the group,
/// input by input (`[depth][x_step]`, of which the first `R` values of each
/// input are read), `w` the panel's slice (`[depth][32]`).
///
/// # Safety
/// `x` must hold `(depth - 1) * x_step + R` values, `w` `depth * 32`; the
/// target's `R` rows must hold the masked lanes, with nothing else
/// accessing them.
#[inline(always)]
unsafe fn kernel<const R: usize>(
    x: *const f32,
    x_step: usize,
    w: *const f32,
    depth: usize,
    Target {
        at: out,
        stride,
        masks: (low, high),
        add,
    }: Target,
) {
    // SAFETY: every access below is within the bounds the caller promised;
    // prefetches are hints that never fault, wherever they point; the
    // intrinsics need AVX-512F, which the callers enable.
    unsafe {
        for r in 0..R {
            _mm_prefetch::<_MM_HINT_T0>(out.add(r * stride).cast());
            _mm_prefetch::<_MM_HINT_T0>(out.add(r * stride + 16).cast());
        }
        let mut acc: [[__m512; 2]; R] = [[_mm512_setzero_ps(); 2]; R];
        for i in 0..depth {
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(i * PANEL + AHEAD).cast());
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(i * PANEL + AHEAD + 16).cast());
            let w0 = _mm512_loadu_ps(w.add(i * PANEL));
            let w1 = _mm512_loadu_ps(w.add(i * PANEL + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(i * x_step + r));
                acc[0] = _mm512_fmadd_ps(xv, w0, acc[0]);
                acc[1] = _mm512_fmadd_ps(xv, w1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (half, (mask, sum)) in [(low, acc[0]), (high, acc[1])].into_iter().enumerate() {
                let lanes = out.add(r * stride + 16 * half);
                let sum = if add {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, lanes), sum)
                } else {
                    sum
                };
                _mm512_mask_storeu_ps(lanes, mask, sum);
            }
        }
    }
}

/// Small deterministic values in [-1, 1), for tests.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips() {
        let weight = test_values(37 * 70, 1);
        let packed = PackedWeight::pack(&weight, 37, 70).unwrap();
        assert_eq!(packed.unpack(), weight);
        assert!(PackedWeight::pack(&weight, 37, 71).is_none());
    }

    #[test]
    fn products_match_a_plain_loop_at_every_edge() {
        if !available() {
            return;
        }
        // Outputs that end inside either vector of a panel, row counts that
        // leave every group size and cross a block (then inputs go in
        // passes, one of them partial).
        for (m, n, k) in [
            (1, 5, 3),
            (15, 37, 70),
            (29, 64, 300),
            (150, 50, 513),
            (3, 17, 1),
        ] {
            let x = test_values(m * k, 2);
            let weight = test_values(n * k, 3);
            let packed = PackedWeight::pack(&weight, n, k).unwrap();
            let start = test_values(m * n, 4);
            for columns in [0..n, 0..n.min(PANEL), (n / PANEL * PANEL)..n] {
                let mut out = start.clone();
                // SAFETY: AVX-512 checked above; `out` is m x n; the
                // columns start on a panel.
                unsafe { packed.accumulate(&x, m, out.as_mut_ptr(), columns.clone()) };
                for row in 0..m {
                    for col in 0..n {
                        let mut expected = start[row * n + col];
                        if columns.contains(&col) {
                            expected += (0..k)
                                .map(|i| x[row * k + i] * weight[col * k + i])
                                .sum::<f32>();
                        }
                        let got = out[row * n + col];
                        assert!(
                            (got - expected).abs() < 1e-4,
                            "{m}x{n}x{k} [{row}, {col}] in {columns:?}: {got} vs {expected}"
                        );
                    }
                }
            }
        }
    }
}
