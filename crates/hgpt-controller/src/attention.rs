//! Scaled dot-product attention over the KV cache as one CPU operation.
//!
//! On the CPU the decoder's attention written as candle tensor ops costs
//! about ten operations per layer (scale, reshapes, two f32 matmuls, the
//! mask, softmax), each allocating and dispatching; for one decoded token
//! that overhead is larger than the arithmetic. [`attend`] does it in one
//! pass per query head, in f32, with the causal mask and sliding window
//! applied by skipping keys instead of adding `-inf`. Other devices keep the
//! tensor-op path.

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
        let out_ptr = SharedOut(out.as_mut_ptr());
        candle_core::utils::barrier_pool().execute_chunked(heads * seq, |items| {
            let out_ptr = &out_ptr;
            let mut scores = Vec::with_capacity(total);
            let mut acc = vec![0f32; dim];
            for item in items {
                let (head, i) = (item / seq, item % seq);
                let kv = head / group;
                let query = self.start + i;
                let first = match self.window {
                    Some(w) => (query + 1).saturating_sub(w),
                    None => 0,
                };
                let qrow = q.row(head, i);
                scores.clear();
                let mut max = f32::NEG_INFINITY;
                for key in first..=query {
                    let s = dot(qrow, k.row(kv, key)) * self.scale;
                    max = max.max(s);
                    scores.push(s);
                }
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                acc.fill(0.0);
                for (p, key) in scores.iter().zip(first..=query) {
                    axpy(&mut acc, *p / sum, v.row(kv, key));
                }
                // SAFETY: each (query, head) item owns its `dim` outputs,
                // inside `out` (seq * heads * dim values).
                unsafe { out_ptr.write(i * width + head * dim, &acc) };
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((seq, width))))
    }
}

/// `a · b`, in eight independent lanes so that it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, a_tail) = a.as_chunks::<8>();
    let (b8, b_tail) = b.as_chunks::<8>();
    for (x, y) in a8.iter().zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `acc += p * row`.
fn axpy(acc: &mut [f32], p: f32, row: &[f32]) {
    for (a, x) in acc.iter_mut().zip(row) {
        *a += p * x;
    }
}

/// The output buffer, written from several threads at disjoint ranges.
struct SharedOut(*mut f32);

// SAFETY: only used for writes to ranges no two work items share.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `at..at + values.len()` is inside the buffer and written by no other thread.
    unsafe fn write(&self, at: usize, values: &[f32]) {
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(at), values.len()) };
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
