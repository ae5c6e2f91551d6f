//! Quantized matrix products, with hgpt's own CPU kernels for the types
//! small controllers ship in.
//!
//! candle 0.11 multiplies Q4_1 blocks one scalar at a time and converts each
//! Q8_0 block's scale through a function call; on SmolLM2-135M (Q4_1 layers,
//! a Q8_0 output layer) those two products were most of a decode step.
//! [`QWeight`] keeps candle's `QMatMul` for every other type and device, and
//! repacks Q4_1 and Q8_0 weights on the CPU at load time into groups of
//! eight rows interleaved block by block: the eight scales of a block
//! convert in one instruction, and one broadcast of four activations meets
//! four values of each of the eight rows, so the eight dot products come
//! out in the eight lanes of one vector without horizontal sums.
//!
//! The arithmetic is llama.cpp's, summed in another order: activations are
//! quantized per row to Q8_1 blocks (scale and sum rounded to f16, values
//! rounded half to even); a block's integer dot product is exact; each
//! block adds `d_w·d_a·Σ q_w·q_a`, and for Q4_1 then `m_w·s_a`, to an f32
//! sum with fused multiply-adds. The vector and portable kernels do exactly
//! these operations in this order, so they agree bit for bit, and a row's
//! result does not depend on which other rows are computed with it.

use crate::cpu::SharedOut;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Module, Shape, Tensor};
use half::f16;
use std::sync::Arc;

/// Values per block, in every format here.
const BLOCK: usize = 32;
/// Weight rows interleaved together (the lanes of an AVX2 f32 vector).
const GROUP: usize = 8;
/// Activation rows multiplied together against one weight group in prefill.
const ROW_GROUP: usize = 4;

/// A weight matrix `[rows, cols]` multiplied from the right: `x · Wᵀ`.
#[derive(Debug, Clone)]
pub enum QWeight {
    /// Any type and device candle's own kernels handle.
    Candle(QMatMul),
    /// Q4_1 or Q8_0 on the CPU, repacked for hgpt's kernels.
    Packed(Arc<PackedMatrix>),
}

impl QWeight {
    /// Wrap a quantized tensor of shape `[rows, cols]`.
    pub fn new(tensor: Arc<QTensor>) -> candle_core::Result<Self> {
        if let Some(format) = Format::of(tensor.dtype())
            && tensor.device().is_cpu()
            && let [rows, cols] = tensor.shape().dims()
            && cols.is_multiple_of(BLOCK)
        {
            let (rows, cols) = (*rows, *cols);
            let data = tensor.data()?;
            if data.len() == rows * cols / BLOCK * format.block_bytes() {
                return Ok(Self::Packed(Arc::new(PackedMatrix::pack(
                    format, rows, cols, &data,
                ))));
            }
        }
        Ok(Self::Candle(QMatMul::from_arc(tensor)?))
    }

    /// `x · Wᵀ` for `x` of shape `[.., cols]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Packed(m) => x.contiguous()?.apply_op1_no_bwd(m.as_ref()),
        }
    }

    /// Rows `ids` of the matrix in f32, shaped `[ids.., cols]`: the lookup
    /// of a token embedding table (which is also the output layer of models
    /// that tie them, so the table is held once).
    pub fn embedding(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(m) => m.embedding(ids),
            Self::Packed(m) => {
                let rows = ids.flatten_all()?.to_vec1::<u32>()?;
                let mut values = Vec::with_capacity(rows.len() * m.cols);
                for row in rows {
                    m.dequantize_row(row as usize, &mut values)?;
                }
                let mut shape = ids.dims().to_vec();
                shape.push(m.cols);
                Tensor::from_vec(values, shape, ids.device())
            }
        }
    }
}

/// The block formats with hgpt kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// f16 scale, f16 minimum, 32 unsigned nibbles: `d·q + m`.
    Q4_1,
    /// f16 scale, 32 signed bytes: `d·q`.
    Q8_0,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one block in GGUF (and per row of a packed block).
    fn block_bytes(self) -> usize {
        self.scale_bytes() + self.quant_bytes()
    }

    /// Bytes of f16 scales leading a GGUF block.
    fn scale_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 4,
            Self::Q8_0 => 2,
        }
    }

    /// Bytes of quantized values in a block.
    fn quant_bytes(self) -> usize {
        match self {
            Self::Q4_1 => BLOCK / 2,
            Self::Q8_0 => BLOCK,
        }
    }
}

/// A Q4_1 or Q8_0 matrix repacked in groups of [`GROUP`] rows.
///
/// Group `g`, block `b` is one packed block of `GROUP * block_bytes` bytes:
/// first each f16 scale field of the eight rows side by side (`d` of rows
/// 0..8, then for Q4_1 `m` of rows 0..8), then the quantized bytes in
/// 32-byte vectors where vector `k`, lane `r` holds bytes `4k..4k+4` of row
/// `r`'s block. Rows past `rows` in the last group are zero.
#[derive(Debug)]
pub struct PackedMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl PackedMatrix {
    /// Repack `data`, `rows` GGUF rows of `cols / 32` blocks.
    fn pack(format: Format, rows: usize, cols: usize, data: &[u8]) -> Self {
        let blocks = cols / BLOCK;
        let block_bytes = format.block_bytes();
        let scales = format.scale_bytes();
        let packed_block = GROUP * block_bytes;
        let mut packed = vec![0u8; rows.div_ceil(GROUP) * blocks * packed_block];
        for (row, source) in data.chunks_exact(blocks * block_bytes).enumerate() {
            let (group, lane) = (row / GROUP, row % GROUP);
            for (b, block) in source.chunks_exact(block_bytes).enumerate() {
                let target = &mut packed[(group * blocks + b) * packed_block..][..packed_block];
                let (target_scales, target_quants) = target.split_at_mut(GROUP * scales);
                for (field, value) in block[..scales].chunks_exact(2).enumerate() {
                    target_scales[field * 2 * GROUP + lane * 2..][..2].copy_from_slice(value);
                }
                for (k, four) in block[scales..].chunks_exact(4).enumerate() {
                    target_quants[k * 4 * GROUP + lane * 4..][..4].copy_from_slice(four);
                }
            }
        }
        Self {
            format,
            rows,
            cols,
            data: packed,
        }
    }

    /// Append row `row` in f32, computed as candle dequantizes it.
    fn dequantize_row(&self, row: usize, out: &mut Vec<f32>) -> candle_core::Result<()> {
        if row >= self.rows {
            candle_core::bail!("row {row} is outside a matrix of {} rows", self.rows);
        }
        let (group, lane) = (row / GROUP, row % GROUP);
        for block in self
            .group(group)
            .chunks_exact(GROUP * self.format.block_bytes())
        {
            let (d, min) = lane_scales(self.format, block, lane);
            let values = lane_values(self.format, block, lane);
            out.extend(values.map(|q| match self.format {
                Format::Q4_1 => q as f32 * d + min,
                Format::Q8_0 => q as f32 * d,
            }));
        }
        Ok(())
    }

    /// The packed blocks of one group of rows.
    fn group(&self, group: usize) -> &[u8] {
        let len = self.cols / BLOCK * GROUP * self.format.block_bytes();
        &self.data[group * len..(group + 1) * len]
    }
}

/// One block of activations quantized to Q8_1 (Q8_0 products ignore the
/// sum); the f16 scale and sum are kept widened to f32.
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

    /// Quantize 32 values as llama.cpp's `quantize_row_q8_1` does (its
    /// `quantize_row_q8_0` gives the same scale and values).
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

impl CustomOp1 for PackedMatrix {
    fn name(&self) -> &'static str {
        match self.format {
            Format::Q4_1 => "hgpt-q4_1-matmul",
            Format::Q8_0 => "hgpt-q8_0-matmul",
        }
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
        let kernel = Kernel::detect();
        let mut acts = vec![Q8_1::ZERO; m * self.cols / BLOCK];
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

impl PackedMatrix {
    /// `out[r * rows + c] = acts_row_r · weight_row_c` for all `m` rows,
    /// the groups of weight rows split across candle's CPU thread pool.
    fn multiply(&self, kernel: Kernel, acts: &[Q8_1], m: usize, out: &mut [f32]) {
        let out = SharedOut::new(out);
        candle_core::utils::barrier_pool().execute_chunked(self.rows.div_ceil(GROUP), |groups| {
            let part = Part {
                matrix: self,
                groups,
                acts,
                m,
                out: &out,
            };
            match kernel {
                Kernel::Portable => part.run(
                    |w, acts| dot_portable(self.format, w, acts),
                    |w, act| {
                        let [d] = dot_portable(self.format, w, [act]);
                        d
                    },
                ),
                // SAFETY: `detect` checked that the CPU has AVX2, FMA and F16C.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { avx2::run(&part) },
            }
        });
    }
}

/// The products of some groups of weight rows with all `m` activation rows.
struct Part<'a> {
    matrix: &'a PackedMatrix,
    groups: std::ops::Range<usize>,
    acts: &'a [Q8_1],
    m: usize,
    out: &'a SharedOut,
}

/// The dot products of one group's eight rows with one activation row.
type Lanes = [f32; GROUP];

impl Part<'_> {
    /// Work through the part with these group products (inlined into the
    /// caller, so a vector kernel's caller compiles the loop with it).
    #[inline(always)]
    fn run(
        &self,
        several: impl Fn(&[u8], [&[Q8_1]; ROW_GROUP]) -> [Lanes; ROW_GROUP],
        one: impl Fn(&[u8], &[Q8_1]) -> Lanes,
    ) {
        let blocks = self.matrix.cols / BLOCK;
        let n = self.matrix.rows;
        let act_row = |r: usize| &self.acts[r * blocks..(r + 1) * blocks];
        let write = |r: usize, group: usize, lanes: &Lanes| {
            let first = group * GROUP;
            let real = (n - first).min(GROUP);
            // SAFETY: each (row, column) is written by exactly one work item
            // and lies inside `out` (m * n values).
            unsafe { self.out.write(r * n + first, &lanes[..real]) };
        };
        for group in self.groups.clone() {
            let w = self.matrix.group(group);
            let mut r = 0;
            while r + ROW_GROUP <= self.m {
                let dots = several(w, std::array::from_fn(|i| act_row(r + i)));
                for (i, lanes) in dots.iter().enumerate() {
                    write(r + i, group, lanes);
                }
                r += ROW_GROUP;
            }
            while r < self.m {
                write(r, group, &one(w, act_row(r)));
                r += 1;
            }
        }
    }
}

/// Which implementation of the products this CPU runs.
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

    /// One group of weight rows against `R` rows of activations.
    #[cfg(test)]
    fn dot<const R: usize>(self, format: Format, w: &[u8], acts: [&[Q8_1]; R]) -> [Lanes; R] {
        match self {
            Self::Portable => dot_portable(format, w, acts),
            // SAFETY: `detect` checked that the CPU has AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe {
                match format {
                    Format::Q4_1 => avx2::q4_1(w, acts),
                    Format::Q8_0 => avx2::q8_0(w, acts),
                }
            },
        }
    }
}

/// The products of one packed group with `R` activation rows, one value at
/// a time, in the order the vector kernels use.
fn dot_portable<const R: usize>(format: Format, w: &[u8], acts: [&[Q8_1]; R]) -> [Lanes; R] {
    let mut sums = [[0f32; GROUP]; R];
    for (b, block) in w.chunks_exact(GROUP * format.block_bytes()).enumerate() {
        for lane in 0..GROUP {
            let (d, min) = lane_scales(format, block, lane);
            let values = lane_values(format, block, lane);
            for (sum, act) in sums.iter_mut().zip(&acts) {
                let Some(a) = act.get(b) else {
                    sum[lane] = f32::NAN;
                    continue;
                };
                let dot: i32 = values.iter().zip(a.qs).map(|(&w, a)| w * a as i32).sum();
                sum[lane] = (d * a.d).mul_add(dot as f32, sum[lane]);
                if format == Format::Q4_1 {
                    sum[lane] = min.mul_add(a.s, sum[lane]);
                }
            }
        }
    }
    sums
}

/// The scale and (Q4_1) minimum of one lane of a packed block.
fn lane_scales(format: Format, block: &[u8], lane: usize) -> (f32, f32) {
    let half = |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
    match format {
        Format::Q4_1 => (half(lane * 2), half(2 * GROUP + lane * 2)),
        Format::Q8_0 => (half(lane * 2), 0.0),
    }
}

/// The 32 quantized values of one lane of a packed block.
fn lane_values(format: Format, block: &[u8], lane: usize) -> [i32; BLOCK] {
    let quants = &block[GROUP * format.scale_bytes()..];
    let mut values = [0i32; BLOCK];
    for (k, vector) in quants.chunks_exact(4 * GROUP).enumerate() {
        for (i, &byte) in vector[lane * 4..lane * 4 + 4].iter().enumerate() {
            let at = 4 * k + i;
            match format {
                Format::Q4_1 => {
                    values[at] = (byte & 0x0F) as i32;
                    values[at + BLOCK / 2] = (byte >> 4) as i32;
                }
                Format::Q8_0 => values[at] = byte as i8 as i32,
            }
        }
    }
    values
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BLOCK, Format, GROUP, Lanes, Part, Q8_1};
    use crate::cpu::x86::hsum;
    use std::arch::x86_64::*;

    /// Bytes of one packed Q4_1 / Q8_0 group block.
    const Q4_1_GROUP_BYTES: usize = GROUP * 20;
    const Q8_0_GROUP_BYTES: usize = GROUP * 34;

    /// [`Part::run`] with the vector group products, compiled for AVX2.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run(part: &Part<'_>) {
        // SAFETY (all closures): the caller's CPU contract.
        match part.matrix.format {
            Format::Q4_1 => part.run(
                |w, acts| unsafe { q4_1(w, acts) },
                |w, act| {
                    let [d] = unsafe { q4_1(w, [act]) };
                    d
                },
            ),
            Format::Q8_0 => part.run(
                |w, acts| unsafe { q8_0(w, acts) },
                |w, act| {
                    let [d] = unsafe { q8_0(w, [act]) };
                    d
                },
            ),
        }
    }

    #[target_feature(enable = "avx2")]
    fn lanes(v: __m256) -> Lanes {
        let mut out = [0f32; GROUP];
        // SAFETY: `out` holds eight f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    /// Four activations (bytes `4j..4j+4` of a block) in every lane.
    ///
    /// # Safety
    /// `j < 8`.
    #[target_feature(enable = "avx2")]
    unsafe fn four(a: &Q8_1, j: usize) -> __m256i {
        // SAFETY: the block has 32 values; the caller keeps `j` below 8.
        _mm256_set1_epi32(unsafe {
            std::ptr::read_unaligned(a.qs.as_ptr().add(4 * j) as *const i32)
        })
    }

    /// One packed Q4_1 group against `R` activation rows.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_1<const R: usize>(w: &[u8], acts: [&[Q8_1]; R]) -> [Lanes; R] {
        let blocks = w.len() / Q4_1_GROUP_BYTES;
        if acts.iter().any(|a| a.len() < blocks) {
            return [[f32::NAN; GROUP]; R];
        }
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..blocks {
            // SAFETY: block `b` of the group is 160 bytes: 16 of f16 scales,
            // 16 of f16 minimums, 128 of nibbles; every row has `blocks`
            // activation blocks.
            unsafe {
                let p = w.as_ptr().add(b * Q4_1_GROUP_BYTES);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
                let min = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i));
                // Vector k's low nibbles are values 4k..4k+4 of each row,
                // its high nibbles values 16+4k..20+4k.
                let q: [__m256i; 8] = std::array::from_fn(|j| {
                    let v = _mm256_loadu_si256(p.add(32 + 32 * (j % 4)) as *const __m256i);
                    if j < 4 {
                        _mm256_and_si256(v, low)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16(v, 4), low)
                    }
                });
                for r in 0..R {
                    let a = &*acts[r].as_ptr().add(b);
                    // Each 16-bit sum is at most 16 · 15 · 127 in magnitude.
                    let pair = |j: usize| {
                        _mm256_add_epi16(
                            _mm256_maddubs_epi16(q[j], four(a, j)),
                            _mm256_maddubs_epi16(q[j + 1], four(a, j + 1)),
                        )
                    };
                    let sum16 = _mm256_add_epi16(
                        _mm256_add_epi16(pair(0), pair(2)),
                        _mm256_add_epi16(pair(4), pair(6)),
                    );
                    let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum16, ones));
                    acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(a.d)), dot, acc[r]);
                    acc[r] = _mm256_fmadd_ps(min, _mm256_set1_ps(a.s), acc[r]);
                }
            }
        }
        acc.map(|v| lanes(v))
    }

    /// One packed Q8_0 group against `R` activation rows.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_0<const R: usize>(w: &[u8], acts: [&[Q8_1]; R]) -> [Lanes; R] {
        let blocks = w.len() / Q8_0_GROUP_BYTES;
        if acts.iter().any(|a| a.len() < blocks) {
            return [[f32::NAN; GROUP]; R];
        }
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..blocks {
            // SAFETY: block `b` of the group is 272 bytes: 16 of f16 scales
            // and 256 of values; every row has `blocks` activation blocks.
            unsafe {
                let p = w.as_ptr().add(b * Q8_0_GROUP_BYTES);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
                for r in 0..R {
                    let a = &*acts[r].as_ptr().add(b);
                    // Signed by signed: |w| times a with w's sign, as
                    // llama.cpp does; a 16-bit pair sum fits, two do not.
                    let part = |j: usize| {
                        let q = _mm256_loadu_si256(p.add(16 + 32 * j) as *const __m256i);
                        let x = _mm256_maddubs_epi16(
                            _mm256_sign_epi8(q, q),
                            _mm256_sign_epi8(four(a, j), q),
                        );
                        _mm256_madd_epi16(x, ones)
                    };
                    let quad = |j: usize| {
                        _mm256_add_epi32(
                            _mm256_add_epi32(part(j), part(j + 1)),
                            _mm256_add_epi32(part(j + 2), part(j + 3)),
                        )
                    };
                    let dot = _mm256_cvtepi32_ps(_mm256_add_epi32(quad(0), quad(4)));
                    acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(a.d)), dot, acc[r]);
                }
            }
        }
        acc.map(|v| lanes(v))
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
    pub(super) unsafe fn quantize(xs: &[f32; BLOCK]) -> Q8_1 {
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
        let mut qs = [0i8; BLOCK];
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

    fn quantized(dtype: GgmlDType, rows: usize, cols: usize) -> Arc<QTensor> {
        let w = Tensor::from_vec(values(rows * cols, 7), (rows, cols), &Device::Cpu).unwrap();
        Arc::new(QTensor::quantize(&w, dtype).unwrap())
    }

    fn packed(dtype: GgmlDType, rows: usize, cols: usize) -> Arc<PackedMatrix> {
        match QWeight::new(quantized(dtype, rows, cols)).unwrap() {
            QWeight::Packed(m) => m,
            QWeight::Candle(_) => panic!("{dtype:?} on the CPU is packed"),
        }
    }

    #[test]
    fn q4_1_and_q8_0_on_the_cpu_use_hgpt_kernels_and_others_use_candle() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            assert!(matches!(
                QWeight::new(quantized(dtype, 8, 64)).unwrap(),
                QWeight::Packed(_)
            ));
        }
        assert!(matches!(
            QWeight::new(quantized(GgmlDType::Q4_0, 8, 64)).unwrap(),
            QWeight::Candle(_)
        ));
    }

    #[test]
    fn packing_interleaves_eight_rows_block_by_block() {
        let (rows, cols) = (11, 64);
        let tensor = quantized(GgmlDType::Q8_0, rows, cols);
        let plain = tensor.data().unwrap().into_owned();
        let matrix = packed(GgmlDType::Q8_0, rows, cols);
        // Row 9 is lane 1 of the second group; its second block's scale and
        // values 4..8.
        let source = &plain[(9 * 2 + 1) * 34..][..34];
        let group = matrix.group(1);
        let block = &group[GROUP * 34..];
        assert_eq!(&block[2..4], &source[..2]);
        assert_eq!(&block[16 + 32 + 4..16 + 32 + 8], &source[2 + 4..2 + 8]);
        // The padding lanes of the last group are zero.
        assert!(block[16 + 3 * 4..16 + 4 * 4].iter().all(|&b| b == 0));
    }

    #[test]
    fn embedding_rows_equal_candles_dequantized_rows() {
        let ids = Tensor::new(&[0u32, 9, 36, 9], &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let tensor = quantized(dtype, 37, 64);
            let expected = tensor.embedding(&ids).unwrap();
            let ours = QWeight::new(tensor).unwrap().embedding(&ids).unwrap();
            assert_eq!(ours.dims(), [4, 64]);
            assert_eq!(
                ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                expected.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{dtype:?}"
            );
            let outside = Tensor::new(&[37u32], &Device::Cpu).unwrap();
            let weight = QWeight::new(quantized(dtype, 37, 64)).unwrap();
            assert!(weight.embedding(&outside).is_err());
        }
    }

    #[test]
    fn matches_the_dequantized_product_for_every_row_count() {
        // Rows not a multiple of the group; 1 activation row (decode), a
        // multiple of the row group and a remainder.
        let (rows, cols) = (37, 256);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let tensor = quantized(dtype, rows, cols);
            let dense = tensor.dequantize(&Device::Cpu).unwrap();
            let weight = QWeight::new(tensor).unwrap();
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
                    assert!((a - b).abs() < 1e-2, "{dtype:?} m={m}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn the_vector_kernels_equal_the_portable_ones_bit_for_bit() {
        let kernel = Kernel::detect();
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
        let bits = |lanes: &Lanes| lanes.map(f32::to_bits);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let matrix = packed(dtype, 16, 512);
            for group in 0..2 {
                let w = matrix.group(group);
                let [slow] = dot_portable(matrix.format, w, [&acts]);
                let [fast] = kernel.dot(matrix.format, w, [&acts]);
                assert_eq!(bits(&fast), bits(&slow), "{dtype:?}");
                // A row's result does not depend on the rows it is computed
                // with, so a prefix prefilled in other chunks gives the same
                // state.
                let four = kernel.dot(matrix.format, w, [&acts[..]; ROW_GROUP]);
                assert!(four.iter().all(|l| bits(l) == bits(&fast)), "{dtype:?}");
            }
        }
    }

    #[test]
    fn extreme_values_stay_within_the_sixteen_bit_sums() {
        // All nibbles 15 against all activations ±127, and Q8_0 values of
        // -128 (|w| is then 128 as an unsigned byte).
        let kernel = Kernel::detect();
        let mut act = Q8_1::ZERO;
        act.d = 1.0;
        for sign in [1i8, -1] {
            act.qs = [127 * sign; BLOCK];
            let acts = [act; 2];
            let mut q4 = vec![0u8; 2 * GROUP * 20];
            let mut q8 = vec![0u8; 2 * GROUP * 34];
            for block in q4.chunks_exact_mut(GROUP * 20) {
                // d = 1.0, m = 0.0 for every lane.
                for lane in 0..GROUP {
                    block[lane * 2..lane * 2 + 2].copy_from_slice(&f16::ONE.to_le_bytes());
                }
                block[32..].fill(0xFF);
            }
            for block in q8.chunks_exact_mut(GROUP * 34) {
                for lane in 0..GROUP {
                    block[lane * 2..lane * 2 + 2].copy_from_slice(&f16::ONE.to_le_bytes());
                }
                block[16..].fill(0x80);
            }
            let expected4 = 2.0 * 32.0 * 15.0 * 127.0 * sign as f32;
            let expected8 = -2.0 * 32.0 * 128.0 * 127.0 * sign as f32;
            let [got4] = kernel.dot(Format::Q4_1, &q4, [&acts]);
            let [got8] = kernel.dot(Format::Q8_0, &q8, [&acts]);
            assert_eq!(got4, [expected4; GROUP]);
            assert_eq!(got8, [expected8; GROUP]);
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
