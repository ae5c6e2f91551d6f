//! Quantized matrix products, with hgpt's own CPU kernel where candle's is
//! scalar.
//!
//! candle 0.11 has AVX2 dot products for Q4_0, Q8_0 and the k-quants, but
//! multiplies Q4_1 blocks one scalar at a time: on SmolLM2-135M (Q4_1) that
//! was 85% of a decode step. [`QWeight`] keeps candle's `QMatMul` for every
//! other case and runs Q4_1 on the CPU with the same arithmetic as llama.cpp:
//! the activations are quantized to Q8_1 blocks per row (scale and sum stored
//! as f16, round half to even), and each block product is
//! `d_w * d_a * Σ q_w·q_a + m_w * s_a`, summed in f32, with AVX2/FMA/F16C
//! when the CPU has them and a portable loop otherwise.

use crate::cpu::SharedOut;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Module, Shape, Tensor};
use half::f16;
use std::sync::Arc;

/// Values per Q4_1 / Q8_1 block.
const BLOCK: usize = 32;
/// Bytes of one Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;
/// Activation rows multiplied together against one weight row in prefill.
const ROW_GROUP: usize = 4;

/// A weight matrix `[rows, cols]` multiplied from the right: `x · Wᵀ`.
#[derive(Debug, Clone)]
pub enum QWeight {
    /// Any type and device candle's own kernels handle well.
    Candle(QMatMul),
    /// Q4_1 on the CPU, multiplied by hgpt's kernel.
    Q4_1(Arc<Q4_1Matrix>),
}

impl QWeight {
    /// Wrap a quantized tensor of shape `[rows, cols]`.
    pub fn new(tensor: Arc<QTensor>) -> candle_core::Result<Self> {
        if tensor.dtype() == GgmlDType::Q4_1
            && tensor.device().is_cpu()
            && let [rows, cols] = tensor.shape().dims()
            && cols.is_multiple_of(BLOCK)
        {
            let (rows, cols) = (*rows, *cols);
            let data = tensor.data()?.into_owned();
            if data.len() == rows * cols / BLOCK * Q4_1_BYTES {
                return Ok(Self::Q4_1(Arc::new(Q4_1Matrix { rows, cols, data })));
            }
        }
        Ok(Self::Candle(QMatMul::from_arc(tensor)?))
    }

    /// `x · Wᵀ` for `x` of shape `[.., cols]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Q4_1(m) => x.contiguous()?.apply_op1_no_bwd(m.as_ref()),
        }
    }
}

/// A Q4_1 matrix in GGUF layout: `rows` rows of `cols / 32` blocks.
#[derive(Debug)]
pub struct Q4_1Matrix {
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl Q4_1Matrix {
    fn row(&self, row: usize) -> &[u8] {
        let len = self.cols / BLOCK * Q4_1_BYTES;
        &self.data[row * len..(row + 1) * len]
    }
}

/// One block of activations quantized to Q8_1; the f16 scale and sum are
/// kept widened to f32.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Q8_1 {
    d: f32,
    s: f32,
    qs: [i8; BLOCK],
}

impl Q8_1 {
    const ZERO: Self = Self {
        d: 0.0,
        s: 0.0,
        qs: [0; BLOCK],
    };

    /// Quantize 32 values as llama.cpp's `quantize_row_q8_1` does.
    fn quantize(xs: &[f32]) -> Self {
        let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
        let d = amax / 127.0;
        let id = if amax == 0.0 { 0.0 } else { 127.0 / amax };
        let mut qs = [0i8; BLOCK];
        let mut sum = 0i32;
        for (q, x) in qs.iter_mut().zip(xs) {
            *q = (x * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        Self {
            d: f16::from_f32(d).to_f32(),
            s: f16::from_f32(d * sum as f32).to_f32(),
            qs,
        }
    }
}

impl CustomOp1 for Q4_1Matrix {
    fn name(&self) -> &'static str {
        "hgpt-q4_1-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("{}: expected f32 activations", self.name());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: expected contiguous activations", self.name());
        };
        let dims = layout.shape().dims();
        if dims.last() != Some(&self.cols) {
            candle_core::bail!(
                "{}: activations {dims:?} do not match a [{}, {}] weight",
                self.name(),
                self.rows,
                self.cols
            );
        }
        let x = &all[start..end];
        let m = x.len() / self.cols;
        let blocks = self.cols / BLOCK;
        let kernel = Kernel::detect();
        let mut acts = vec![Q8_1::ZERO; m * blocks];
        let (chunks, _) = x.as_chunks::<BLOCK>();
        for (a, xs) in acts.iter_mut().zip(chunks) {
            *a = kernel.quantize(xs);
        }
        let mut out = vec![0f32; m * self.rows];
        self.multiply(kernel, &acts, m, &mut out);
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.rows;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

impl Q4_1Matrix {
    /// `out[r * rows + c] = acts_row_r · weight_row_c` for all `m` rows,
    /// the weight rows split across candle's CPU thread pool.
    fn multiply(&self, kernel: Kernel, acts: &[Q8_1], m: usize, out: &mut [f32]) {
        let n = self.rows;
        let out_ptr = SharedOut::new(out);
        candle_core::utils::barrier_pool().execute_chunked(n, |cols| {
            let part = Part {
                matrix: self,
                cols,
                acts,
                m,
                out: &out_ptr,
            };
            match kernel {
                Kernel::Portable => part.run(dot_portable::<ROW_GROUP>, |w, a| {
                    let [d] = dot_portable(w, [a]);
                    d
                }),
                // SAFETY: `detect` checked that the CPU has AVX2, FMA and F16C.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { avx2::run(&part) },
            }
        });
    }
}

/// The products of some weight rows (`cols`) with all `m` activation rows.
struct Part<'a> {
    matrix: &'a Q4_1Matrix,
    cols: std::ops::Range<usize>,
    acts: &'a [Q8_1],
    m: usize,
    out: &'a SharedOut,
}

impl Part<'_> {
    /// Work through the part with these block products (inlined into the
    /// caller, so a vector kernel's caller compiles the loop with it).
    #[inline(always)]
    fn run(
        &self,
        group: impl Fn(&[u8], [&[Q8_1]; ROW_GROUP]) -> [f32; ROW_GROUP],
        one: impl Fn(&[u8], &[Q8_1]) -> f32,
    ) {
        let blocks = self.matrix.cols / BLOCK;
        let n = self.matrix.rows;
        let act_row = |r: usize| &self.acts[r * blocks..(r + 1) * blocks];
        for c in self.cols.clone() {
            let w = self.matrix.row(c);
            let mut r = 0;
            while r + ROW_GROUP <= self.m {
                let dots = group(w, std::array::from_fn(|i| act_row(r + i)));
                for (i, d) in dots.into_iter().enumerate() {
                    // SAFETY: each (row, column) is written by exactly one
                    // work item and lies inside `out` (m * n values).
                    unsafe { self.out.write((r + i) * n + c, &[d]) };
                }
                r += ROW_GROUP;
            }
            while r < self.m {
                // SAFETY: as above.
                unsafe { self.out.write(r * n + c, &[one(w, act_row(r))]) };
                r += 1;
            }
        }
    }
}

/// Which implementation of the block product this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            return Self::Avx2;
        }
        Self::Portable
    }

    /// Quantize 32 activations to a Q8_1 block.
    fn quantize(self, xs: &[f32; BLOCK]) -> Q8_1 {
        match self {
            Self::Portable => Q8_1::quantize(xs),
            // SAFETY: `detect` checked that the CPU has AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { avx2::quantize(xs) },
        }
    }

    /// One Q4_1 weight row against `R` rows of Q8_1 activations.
    #[cfg(test)]
    fn dot<const R: usize>(self, w: &[u8], acts: [&[Q8_1]; R]) -> [f32; R] {
        match self {
            Self::Portable => dot_portable(w, acts),
            // SAFETY: `detect` checked that the CPU has AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { avx2::dot(w, acts) },
        }
    }
}

fn dot_portable<const R: usize>(w: &[u8], acts: [&[Q8_1]; R]) -> [f32; R] {
    let mut sums = [0f32; R];
    for (b, block) in w.chunks_exact(Q4_1_BYTES).enumerate() {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let min = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let nibbles = &block[4..];
        for (sum, act) in sums.iter_mut().zip(&acts) {
            let a = &act[b];
            let mut dot = 0i32;
            for (j, &byte) in nibbles.iter().enumerate() {
                dot += (byte & 0x0F) as i32 * a.qs[j] as i32;
                dot += (byte >> 4) as i32 * a.qs[j + BLOCK / 2] as i32;
            }
            *sum += d * a.d * dot as f32 + min * a.s;
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Part, Q4_1_BYTES, Q8_1};
    use crate::cpu::x86::hsum;
    use std::arch::x86_64::*;

    /// [`Part::run`] with the vector block products, compiled for AVX2.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run(part: &Part<'_>) {
        // SAFETY (both closures): the caller's CPU contract; activation rows
        // have as many blocks as weight rows.
        part.run(
            |w, acts| unsafe { dot(w, acts) },
            |w, act| {
                let [d] = unsafe { dot(w, [act]) };
                d
            },
        );
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; every activation row has at
    /// least as many blocks as `w`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<const R: usize>(w: &[u8], acts: [&[Q8_1]; R]) -> [f32; R] {
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [0f32; R];
        let blocks = w.len() / Q4_1_BYTES;
        if acts.iter().any(|a| a.len() < blocks) {
            return [f32::NAN; R];
        }
        let rows: [*const Q8_1; R] = std::array::from_fn(|r| acts[r].as_ptr());
        for b in 0..blocks {
            // SAFETY: block `b` of `w` is 20 bytes: 4 of f16 scale and
            // minimum, 16 of nibbles; every row has `blocks` activations.
            unsafe {
                let p = w.as_ptr().add(b * Q4_1_BYTES);
                let scales =
                    _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
                let nibbles = _mm_loadu_si128(p.add(4) as *const __m128i);
                let d = _mm_cvtss_f32(scales);
                let min = _mm_cvtss_f32(_mm_movehdup_ps(scales));
                // Low nibbles are values 0..16 of the block, high nibbles 16..32.
                let q =
                    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nibbles, 4), nibbles), low);
                for r in 0..R {
                    let a = &*rows[r].add(b);
                    let qa = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                    let pairs = _mm256_maddubs_epi16(q, qa);
                    let quads = _mm256_madd_epi16(pairs, ones);
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(quads), acc[r]);
                    mins[r] += min * a.s;
                }
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) + mins[r])
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn hmax(v: __m256) -> f32 {
        let half = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_max_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_max_ss(pair, _mm_movehdup_ps(pair)))
    }

    /// [`Q8_1::quantize`] with vectors, bit for bit.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize(xs: &[f32; 32]) -> Q8_1 {
        let p = xs.as_ptr();
        // SAFETY: 32 floats, read as four vectors of eight.
        let v = [0, 8, 16, 24].map(|i| unsafe { _mm256_loadu_ps(p.add(i)) });
        let sign = _mm256_set1_ps(-0.0);
        let abs = v.map(|x| _mm256_andnot_ps(sign, x));
        let amax = hmax(_mm256_max_ps(
            _mm256_max_ps(abs[0], abs[1]),
            _mm256_max_ps(abs[2], abs[3]),
        ));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax == 0.0 { 0.0 } else { 127.0 / amax });
        let r = v.map(|x| {
            _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                x, id,
            ))
        });
        let sum = hsum(_mm256_add_ps(
            _mm256_add_ps(r[0], r[1]),
            _mm256_add_ps(r[2], r[3]),
        ));
        let i = r.map(|x| _mm256_cvtps_epi32(x));
        // Packing works per 128-bit lane; the permutation restores the order.
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(i[0], i[1]),
            _mm256_packs_epi32(i[2], i[3]),
        );
        let ordered =
            _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let mut qs = [0i8; 32];
        // SAFETY: `qs` is 32 bytes.
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, ordered) };
        Q8_1 {
            d: half::f16::from_f32(d).to_f32(),
            s: half::f16::from_f32(d * sum).to_f32(),
            qs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A deterministic pseudo-random sequence in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn q4_1(rows: usize, cols: usize) -> Arc<QTensor> {
        let w = Tensor::from_vec(values(rows * cols, 7), (rows, cols), &Device::Cpu).unwrap();
        Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap())
    }

    #[test]
    fn q4_1_on_the_cpu_uses_hgpt_kernel_and_others_use_candle() {
        assert!(matches!(
            QWeight::new(q4_1(8, 64)).unwrap(),
            QWeight::Q4_1(_)
        ));
        let w = Tensor::from_vec(values(8 * 64, 3), (8, 64), &Device::Cpu).unwrap();
        let q8 = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        assert!(matches!(QWeight::new(q8).unwrap(), QWeight::Candle(_)));
    }

    #[test]
    fn matches_the_dequantized_product_for_every_row_count() {
        let (rows, cols) = (37, 256);
        let tensor = q4_1(rows, cols);
        let dense = tensor.dequantize(&Device::Cpu).unwrap();
        let weight = QWeight::new(tensor).unwrap();
        // 1 row (decode), a multiple of the row group and a remainder.
        for m in [1, 4, 7] {
            let xs = values(m * cols, m as u64);
            // The activations as the kernel sees them: quantized to Q8_1.
            let seen: Vec<f32> = xs
                .chunks(BLOCK)
                .flat_map(|c| {
                    let q = Q8_1::quantize(c);
                    q.qs.map(|v| v as f32 * q.d)
                })
                .collect();
            let x = Tensor::from_vec(xs, (1, m, cols), &Device::Cpu).unwrap();
            let ours = weight.forward(&x).unwrap();
            assert_eq!(ours.dims(), [1, m, rows]);
            let seen = Tensor::from_vec(seen, (1, m, cols), &Device::Cpu).unwrap();
            let exact = seen.broadcast_matmul(&dense.t().unwrap()).unwrap();
            let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let exact = exact.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (a, b) in ours.iter().zip(&exact) {
                // Only the f16 rounding of the activation block sums differs.
                assert!((a - b).abs() < 1e-2, "m={m}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn the_vector_kernel_equals_the_portable_one() {
        let kernel = Kernel::detect();
        let matrix = match QWeight::new(q4_1(3, 512)).unwrap() {
            QWeight::Q4_1(m) => m,
            QWeight::Candle(_) => unreachable!("Q4_1 on the CPU"),
        };
        let xs = values(512, 11);
        let acts: Vec<Q8_1> = xs.chunks(BLOCK).map(Q8_1::quantize).collect();
        let (chunks, _) = xs.as_chunks::<BLOCK>();
        for (chunk, expected) in chunks.iter().zip(&acts) {
            let got = kernel.quantize(chunk);
            assert_eq!(
                (got.d, got.s, got.qs),
                (expected.d, expected.s, expected.qs)
            );
        }
        // Exact ties round to even in both.
        let mut ties = [0f32; BLOCK];
        ties[..4].copy_from_slice(&[127.0, -0.5, 1.5, 2.5]);
        assert_eq!(kernel.quantize(&ties).qs, Q8_1::quantize(&ties).qs);
        for row in 0..3 {
            let [slow] = dot_portable(matrix.row(row), [&acts]);
            let [fast] = kernel.dot(matrix.row(row), [&acts]);
            let close = |f: f32| (f - slow).abs() <= 1e-4 * slow.abs().max(1.0);
            assert!(close(fast), "{fast} vs {slow}");
            // A row's result does not depend on the rows it is computed with,
            // so a prefix prefilled in other chunks gives the same state.
            let four = kernel.dot(matrix.row(row), [&acts[..]; 4]);
            assert!(
                four.into_iter().all(|f| f.to_bits() == fast.to_bits()),
                "{four:?} vs {fast}"
            );
        }
    }

    #[test]
    fn activations_quantize_like_llama_cpp() {
        let mut xs = [0f32; BLOCK];
        // amax 127: a step of exactly 1, so the halves are exact ties.
        xs[..4].copy_from_slice(&[127.0, -0.5, 1.5, 2.5]);
        let q = Q8_1::quantize(&xs);
        assert_eq!(&q.qs[..4], &[127, 0, 2, 2]);
        assert_eq!((q.d, q.s), (1.0, 131.0));
        assert_eq!(Q8_1::quantize(&[0.0; BLOCK]).qs, [0; BLOCK]);
    }
}
