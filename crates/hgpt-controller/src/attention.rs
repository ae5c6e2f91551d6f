//! Scaled dot-product attention over the KV cache as one CPU operation.
//!
//! On the CPU the decoder's attention written as candle tensor ops costs
//! about ten operations per layer (scale, reshapes, two f32 matmuls, the
//! mask, softmax), each allocating and dispatching; for one decoded token
//! that overhead is larger than the arithmetic. [`attend`] does it in one
//! pass per query head, in f32, with the causal mask and sliding window
//! applied by skipping keys instead of adding `-inf`. Other devices keep the
//! tensor-op path.

use crate::cpu::SharedOut;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// The attention of `seq` new queries placed after `start` cached positions.
#[derive(Debug, Clone, Copy)]
pub struct Attend {
    /// Positions cached before the new queries.
    pub start: usize,
    /// Sliding window: a query sees only the last `window` keys.
    pub window: Option<usize>,
    /// Multiplies the scores (1/sqrt(head_dim) by default).
    pub scale: f32,
}

impl Attend {
    /// `q` `[heads, seq, dim]`, `keys` and `values` `[kv_heads, start + seq,
    /// dim]` (rows contiguous); returns `[seq, heads * dim]`.
    pub fn apply(&self, q: &Tensor, keys: &Tensor, values: &Tensor) -> candle_core::Result<Tensor> {
        q.contiguous()?.apply_op3_no_bwd(keys, values, self)
    }
}

/// A `[heads, rows, dim]` view of f32 storage whose rows are contiguous.
struct Heads<'a> {
    data: &'a [f32],
    offset: usize,
    head_stride: usize,
    row_stride: usize,
    dim: usize,
}

impl<'a> Heads<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("attention: {what} must be f32");
        };
        let (&[_, _, dim], &[head_stride, row_stride, 1]) =
            (layout.shape().dims(), layout.stride())
        else {
            candle_core::bail!(
                "attention: {what} must be [heads, rows, dim] with contiguous rows, got {:?} / {:?}",
                layout.shape().dims(),
                layout.stride()
            );
        };
        Ok(Self {
            data,
            offset: layout.start_offset(),
            head_stride,
            row_stride,
            dim,
        })
    }

    fn row(&self, head: usize, row: usize) -> &'a [f32] {
        let at = self.offset + head * self.head_stride + row * self.row_stride;
        &self.data[at..at + self.dim]
    }
}

impl CustomOp3 for Attend {
    fn name(&self) -> &'static str {
        "hgpt-attention"
    }

    fn cpu_fwd(
        &self,
        q_storage: &CpuStorage,
        q_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
        v_storage: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = Heads::new(q_storage, q_layout, "queries")?;
        let k = Heads::new(k_storage, k_layout, "keys")?;
        let v = Heads::new(v_storage, v_layout, "values")?;
        let (heads, seq, dim) = q_layout.shape().dims3()?;
        let (kv_heads, total, _) = k_layout.shape().dims3()?;
        if kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || total != self.start + seq
            || k.dim != dim
            || v.dim != dim
            || v_layout.shape().dims3()? != (kv_heads, total, dim)
        {
            candle_core::bail!(
                "attention: queries {:?} do not fit keys {:?} and values {:?} after {} positions",
                q_layout.shape().dims(),
                k_layout.shape().dims(),
                v_layout.shape().dims(),
                self.start
            );
        }
        let group = heads / kv_heads;
        let width = heads * dim;
        let mut out = vec![0f32; seq * width];
        let out_ptr = SharedOut::new(&mut out);
        let work = Work {
            op: self,
            q,
            k,
            v,
            seq,
            group,
            dim,
            width,
            out: &out_ptr,
        };
        let vector = VectorOps::detect();
        candle_core::utils::barrier_pool().execute_chunked(heads * seq, |items| match vector {
            Some(ops) => ops.run(&work, items),
            None => work.run(&Portable, items),
        });
        Ok((CpuStorage::F32(out), Shape::from((seq, width))))
    }
}

/// Everything one call computes, shared by the threads.
struct Work<'a> {
    op: &'a Attend,
    q: Heads<'a>,
    k: Heads<'a>,
    v: Heads<'a>,
    seq: usize,
    group: usize,
    dim: usize,
    width: usize,
    out: &'a SharedOut,
}

/// The vector primitives attention is made of.
trait Ops {
    /// `a · b`.
    fn dot(&self, a: &[f32], b: &[f32]) -> f32;
    /// `acc += p * row`.
    fn axpy(&self, acc: &mut [f32], p: f32, row: &[f32]);
    /// `x = exp(x - max)` for every `x`; returns their sum.
    fn exp_shifted(&self, xs: &mut [f32], max: f32) -> f32;
}

impl Work<'_> {
    /// The (head, query) items `items`, each written to its place in `out`.
    #[inline(always)]
    fn run(&self, ops: &impl Ops, items: std::ops::Range<usize>) {
        let (mut scores, mut acc) = (Vec::new(), vec![0f32; self.dim]);
        for item in items {
            let (head, i) = (item / self.seq, item % self.seq);
            let kv = head / self.group;
            let query = self.op.start + i;
            let first = match self.op.window {
                Some(w) => (query + 1).saturating_sub(w),
                None => 0,
            };
            let qrow = self.q.row(head, i);
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for key in first..=query {
                let s = ops.dot(qrow, self.k.row(kv, key)) * self.op.scale;
                max = max.max(s);
                scores.push(s);
            }
            let sum = ops.exp_shifted(&mut scores, max);
            acc.fill(0.0);
            for (p, key) in scores.iter().zip(first..=query) {
                ops.axpy(&mut acc, *p / sum, self.v.row(kv, key));
            }
            // SAFETY: each (query, head) item owns its `dim` outputs, inside
            // `out` (seq * heads * dim values).
            unsafe { self.out.write(i * self.width + head * self.dim, &acc) };
        }
    }
}

/// Plain loops, for CPUs without AVX2 and FMA.
struct Portable;

impl Ops for Portable {
    fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn axpy(&self, acc: &mut [f32], p: f32, row: &[f32]) {
        for (a, x) in acc.iter_mut().zip(row) {
            *a += p * x;
        }
    }

    fn exp_shifted(&self, xs: &mut [f32], max: f32) -> f32 {
        let mut sum = 0f32;
        for x in xs.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        sum
    }
}

/// AVX2 and FMA, when the CPU has them.
#[derive(Debug, Clone, Copy)]
struct VectorOps(());

impl VectorOps {
    fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(Self(()));
        }
        None
    }

    /// [`Work::run`] compiled for AVX2 and FMA.
    fn run(self, work: &Work<'_>, items: std::ops::Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `detect` checked the CPU.
        unsafe {
            avx2::run(work, items)
        }
        #[cfg(not(target_arch = "x86_64"))]
        work.run(&Portable, items)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Ops, Work};
    use crate::cpu::x86::hsum;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run(work: &Work<'_>, items: std::ops::Range<usize>) {
        work.run(&Avx2, items)
    }

    /// Only made by [`run`], on a CPU with AVX2 and FMA.
    struct Avx2;

    impl Ops for Avx2 {
        #[inline(always)]
        fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
            // SAFETY: only reachable through `run`.
            unsafe { dot(a, b) }
        }
        #[inline(always)]
        fn axpy(&self, acc: &mut [f32], p: f32, row: &[f32]) {
            // SAFETY: only reachable through `run`.
            unsafe { axpy(acc, p, row) }
        }
        #[inline(always)]
        fn exp_shifted(&self, xs: &mut [f32], max: f32) -> f32 {
            // SAFETY: only reachable through `run`.
            unsafe { exp_shifted(xs, max) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY: every load reads 8 values below `n`.
        unsafe {
            while i + 16 <= n {
                acc0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    acc0,
                );
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                    acc1,
                );
                i += 16;
            }
            while i + 8 <= n {
                acc0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    acc0,
                );
                i += 8;
            }
        }
        let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum();
        hsum(_mm256_add_ps(acc0, acc1)) + tail
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn axpy(acc: &mut [f32], p: f32, row: &[f32]) {
        let n = acc.len().min(row.len());
        let scale = _mm256_set1_ps(p);
        let mut i = 0;
        // SAFETY: every load and store touches 8 values below `n`.
        unsafe {
            while i + 8 <= n {
                let out = acc.as_mut_ptr().add(i);
                let sum = _mm256_fmadd_ps(
                    scale,
                    _mm256_loadu_ps(row.as_ptr().add(i)),
                    _mm256_loadu_ps(out),
                );
                _mm256_storeu_ps(out, sum);
                i += 8;
            }
        }
        for (a, x) in acc[i..n].iter_mut().zip(&row[i..n]) {
            *a += p * x;
        }
    }

    /// `e^x` for eight values (Cephes' single-precision method: `2^n` times
    /// a degree-5 polynomial on the remainder; about 1 ulp for
    /// `x` in [-87, 88], flushed to 0 below).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.336_55));
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.376_26));
        let n = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        // x - n ln 2, with ln 2 in two parts for precision.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_shifted(xs: &mut [f32], max: f32) -> f32 {
        let shift = _mm256_set1_ps(max);
        let mut sum = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: every load and store touches 8 values below `xs.len()`.
        unsafe {
            while i + 8 <= xs.len() {
                let p = xs.as_mut_ptr().add(i);
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), shift));
                _mm256_storeu_ps(p, e);
                sum = _mm256_add_ps(sum, e);
                i += 8;
            }
        }
        let mut tail = 0f32;
        for x in &mut xs[i..] {
            *x = (*x - max).exp();
            tail += *x;
        }
        hsum(sum) + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device};

    fn tensor(dims: (usize, usize, usize), seed: f32) -> Tensor {
        let n = dims.0 * dims.1 * dims.2;
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }

    /// The same attention with plain tensor operations and an additive mask.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, op: &Attend) -> Tensor {
        let (heads, seq, dim) = q.dims3().unwrap();
        let (kv_heads, total, _) = k.dims3().unwrap();
        let group = heads / kv_heads;
        let k = k.repeat_interleave_heads(group);
        let v = v.repeat_interleave_heads(group);
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * op.scale as f64).unwrap();
        let mut mask = vec![0f32; seq * total];
        for i in 0..seq {
            let query = op.start + i;
            for key in 0..total {
                let visible = key <= query && op.window.is_none_or(|w| query - key < w);
                if !visible {
                    mask[i * total + key] = f32::NEG_INFINITY;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (seq, total), &Device::Cpu).unwrap();
        let probs =
            candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        probs
            .matmul(&v)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .reshape((seq, heads * dim))
            .unwrap()
    }

    trait RepeatHeads {
        fn repeat_interleave_heads(&self, group: usize) -> Tensor;
    }

    impl RepeatHeads for Tensor {
        fn repeat_interleave_heads(&self, group: usize) -> Tensor {
            let (h, t, d) = self.dims3().unwrap();
            self.unsqueeze(1)
                .unwrap()
                .expand((h, group, t, d))
                .unwrap()
                .reshape((h * group, t, d))
                .unwrap()
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_masked_softmax_attention_for_prefill_decode_gqa_and_windows() {
        for (start, seq, window) in [(0, 5, None), (7, 1, None), (3, 4, Some(4)), (9, 1, Some(3))] {
            let (heads, kv_heads, dim) = (6, 2, 16);
            let op = Attend {
                start,
                window,
                scale: 0.25,
            };
            let q = tensor((heads, seq, dim), 1.0);
            // Keys and values inside a larger cache, as the model passes them.
            let cache_k = tensor((kv_heads, 32, dim), 2.0);
            let cache_v = tensor((kv_heads, 32, dim), 3.0);
            let k = cache_k.narrow(1, 0, start + seq).unwrap();
            let v = cache_v.narrow(1, 0, start + seq).unwrap();
            let ours = op.apply(&q, &k, &v).unwrap();
            let expected = reference(&q, &k.contiguous().unwrap(), &v.contiguous().unwrap(), &op);
            assert_eq!(ours.dims(), [seq, heads * dim]);
            let diff = max_diff(&ours, &expected);
            assert!(
                diff < 1e-5,
                "start {start} seq {seq} window {window:?}: {diff}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_exponential_is_accurate() {
        if VectorOps::detect().is_none() {
            return;
        }
        let xs: Vec<f32> = (0..4000).map(|i| -100.0 + i as f32 * 0.025).collect();
        let mut ours = xs.clone();
        // SAFETY: the CPU was checked above.
        let sum = unsafe { avx2::exp_shifted(&mut ours, 0.0) };
        let mut exact_sum = 0f64;
        for (x, e) in xs.iter().zip(&ours) {
            let exact = (*x as f64).exp();
            exact_sum += exact;
            if *x > -87.0 {
                assert!(
                    ((*e as f64) - exact).abs() <= 2e-7 * exact,
                    "exp({x}) = {e}, not {exact}"
                );
            } else {
                assert!(*e < 2e-38, "exp({x}) = {e}");
            }
        }
        assert!(((sum as f64) - exact_sum).abs() <= 1e-6 * exact_sum);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn portable_and_vector_primitives_agree() {
        if VectorOps::detect().is_none() {
            return;
        }
        // 67 values: vector blocks and a scalar tail.
        let a: Vec<f32> = (0..67).map(|i| (i as f32 * 0.71).sin()).collect();
        let b: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).cos()).collect();
        // SAFETY: the CPU was checked above.
        let (fast, slow) = (unsafe { avx2::dot(&a, &b) }, Portable.dot(&a, &b));
        assert!((fast - slow).abs() < 1e-5, "{fast} vs {slow}");
        let (mut fast, mut slow) = (a.clone(), a.clone());
        // SAFETY: as above.
        unsafe { avx2::axpy(&mut fast, 0.5, &b) };
        Portable.axpy(&mut slow, 0.5, &b);
        assert!(fast.iter().zip(&slow).all(|(x, y)| (x - y).abs() < 1e-6));
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let op = Attend {
            start: 2,
            window: None,
            scale: 1.0,
        };
        let q = tensor((4, 1, 8), 1.0);
        let k = tensor((2, 5, 8), 2.0); // 5 positions, but start + seq = 3
        let err = op.apply(&q, &k, &k).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
