//! CPU kernels for f32 transformer layers, shared by the model families:
//! linear layers with the bias, a residual or the activation fused in
//! (direct `gemm` calls, a matrix-vector path for single rows, and for
//! layers that see a few rows at a time on AVX-512 CPUs, weights packed for
//! [`crate::few_rows`]), packed self-attention, and vectorisable GELU and
//! `exp`.
//!
//! On other devices, or with other dtypes, [`Dense`] falls back to candle's
//! operations.

use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use std::mem::MaybeUninit;
#[cfg(target_arch = "x86_64")]
use std::sync::Arc;

#[cfg(target_arch = "x86_64")]
use crate::few_rows::{PANEL, PackedWeight};
/// Output columns per thread block are a multiple of this.
#[cfg(not(target_arch = "x86_64"))]
const PANEL: usize = 32;

/// A linear layer `x W^T + b` (`W` is `[out, in]`).
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    weight: Weight,
    bias: Option<Tensor>,
}

/// How a [`Dense`] layer holds its weight.
#[derive(Debug, Clone)]
enum Weight {
    /// As stored (`[out, in]`, contiguous).
    Plain(Tensor),
    /// f32 on an AVX-512 CPU, packed for the few-rows kernel.
    #[cfg(target_arch = "x86_64")]
    Packed(Arc<PackedWeight>),
}

/// What follows the product in a linear layer.
#[derive(Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// `x W^T + b`.
    Bias,
    /// `x W^T + b + residual`.
    Residual(&'a Tensor),
    /// `relu(x W^T + b + residual)`.
    ResidualRelu(&'a Tensor),
    /// `gelu(x W^T + b)`, the exact (erf) GELU.
    Gelu,
    /// `gelu(x W^T + b)` with the tanh approximation (`gelu_new`).
    GeluTanh,
    /// `relu(x W^T + b)`.
    Relu,
    /// `quick_gelu(x W^T + b)`: `x sigmoid(1.702 x)` (CLIP's).
    QuickGelu,
}

impl Dense {
    /// `weight` `[out, in]` and an optional `bias` `[out]`.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        let (outputs, _) = weight.dims2()?;
        if let Some(bias) = &bias
            && bias.dims1()? != outputs
        {
            candle_core::bail!("linear: {} biases for {outputs} outputs", bias.dims1()?);
        }
        Ok(Self {
            weight: Weight::Plain(weight.contiguous()?),
            bias,
        })
    }

    /// This layer for a few rows at a time (a text, a small image's tokens,
    /// one token when decoding): on an AVX-512 CPU, an f32 weight is packed
    /// for [`crate::few_rows`]'s kernel, which beats the general GEMM up to
    /// about a hundred rows and trails it beyond (the packed copy replaces
    /// the weight, which is freed unless held elsewhere).
    pub(crate) fn for_few_rows(self) -> candle_core::Result<Self> {
        #[cfg(target_arch = "x86_64")]
        if let Weight::Plain(weight) = &self.weight
            && weight.device().is_cpu()
            && weight.dtype() == DType::F32
            && crate::few_rows::available()
        {
            let (outputs, inputs) = weight.dims2()?;
            let (storage, layout) = weight.storage_and_layout();
            let values = cpu_f32("linear weight", &storage, layout)?;
            let packed = PackedWeight::pack(values, outputs, inputs).ok_or_else(|| {
                candle_core::Error::Msg(format!("linear: the weight is not {outputs}x{inputs}"))
            })?;
            drop(storage);
            return Ok(Self {
                weight: Weight::Packed(Arc::new(packed)),
                bias: self.bias,
            });
        }
        Ok(self)
    }

    /// `weight` and `bias` under `vb`, as `nn.Linear` stores them.
    pub(crate) fn load(inputs: usize, outputs: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get((outputs, inputs), "weight")?;
        let bias = vb.get(outputs, "bias")?;
        Self::new(weight, Some(bias))
    }

    /// Several layers reading the same input, as one (outputs side by side).
    pub(crate) fn from_parts(weights: &[Tensor], biases: &[Tensor]) -> candle_core::Result<Self> {
        Self::new(Tensor::cat(weights, 0)?, Some(Tensor::cat(biases, 0)?))
    }

    /// The transposed weight, `[in, out]`.
    fn transposed(&self) -> candle_core::Result<Tensor> {
        match &self.weight {
            Weight::Plain(weight) => weight.t(),
            #[cfg(target_arch = "x86_64")]
            Weight::Packed(packed) => Tensor::from_vec(
                packed.unpack(),
                (packed.outputs(), packed.inputs()),
                &Device::Cpu,
            )?
            .t(),
        }
    }

    /// `[out, in]`.
    fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match &self.weight {
            Weight::Plain(weight) => weight.dims2(),
            #[cfg(target_arch = "x86_64")]
            Weight::Packed(packed) => Ok((packed.outputs(), packed.inputs())),
        }
    }

    /// The layer on `x` (`[..., in]`), then `epilogue`: the CPU kernels for
    /// f32 tensors on the CPU, candle's operations otherwise.
    pub(crate) fn forward(&self, x: &Tensor, epilogue: Epilogue) -> candle_core::Result<Tensor> {
        let cpu = x.device().is_cpu() && x.dtype() == DType::F32 && self.on_cpu();
        self.forward_with(x, epilogue, cpu)
    }

    /// [`Dense::forward`], choosing the CPU kernels or candle's operations.
    pub(crate) fn forward_with(
        &self,
        x: &Tensor,
        epilogue: Epilogue,
        cpu: bool,
    ) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let Some((&inputs, leading)) = dims.split_last() else {
            candle_core::bail!("linear: a scalar input");
        };
        let rows: usize = leading.iter().product();
        let (outputs, _) = self.dims()?;
        let x2 = x.reshape((rows, inputs))?;
        let y = if cpu {
            let residual = match epilogue {
                Epilogue::Residual(r) | Epilogue::ResidualRelu(r) => {
                    Some(r.reshape((rows, outputs))?)
                }
                _ => None,
            };
            self.forward_cpu(&x2, epilogue, residual.as_ref())?
        } else {
            let mut y = x2.matmul(&self.transposed()?)?;
            if let Some(bias) = &self.bias {
                y = y.broadcast_add(bias)?;
            }
            match epilogue {
                Epilogue::Bias => y,
                Epilogue::Residual(r) => (y + r.reshape((rows, outputs))?)?,
                Epilogue::ResidualRelu(r) => (y + r.reshape((rows, outputs))?)?.relu()?,
                Epilogue::Gelu => y.gelu_erf()?,
                Epilogue::GeluTanh => y.gelu()?,
                Epilogue::Relu => y.relu()?,
                Epilogue::QuickGelu => (&y * candle_nn::ops::sigmoid(&(&y * 1.702)?)?)?,
            }
        };
        let mut shape = leading.to_vec();
        shape.push(outputs);
        y.reshape(shape)
    }

    /// [`Dense::forward`] on the CPU for `x` `[m, k]`.
    fn forward_cpu(
        &self,
        x: &Tensor,
        epilogue: Epilogue,
        residual: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        let (m, _) = x.dims2()?;
        let (n, _) = self.dims()?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let xs = cpu_f32("linear input", &x_storage, x_layout)?;
        let residual_tensor = residual.map(Tensor::contiguous).transpose()?;
        let residual_guard = residual_tensor.as_ref().map(|r| r.storage_and_layout());
        let residual = match &residual_guard {
            Some((storage, layout)) => Some(cpu_f32("linear residual", storage, layout)?),
            None => None,
        };
        let out = self.forward_slice(xs, m, epilogue, residual)?;
        drop(residual_guard);
        drop(x_storage);
        Tensor::from_vec(out, (m, n), &Device::Cpu)
    }

    /// The number of outputs.
    pub(crate) fn outputs(&self) -> candle_core::Result<usize> {
        Ok(self.dims()?.0)
    }

    /// Whether [`Dense::forward_slice`] can run: f32 weights on the CPU.
    pub(crate) fn on_cpu(&self) -> bool {
        match &self.weight {
            Weight::Plain(weight) => weight.device().is_cpu() && weight.dtype() == DType::F32,
            #[cfg(target_arch = "x86_64")]
            Weight::Packed(_) => true,
        }
    }

    /// The layer on `m` rows of f32 values on the CPU (`xs` is `[m, in]`,
    /// `residual` `[m, out]` for the residual epilogues), returning `[m,
    /// out]`; rayon's threads take blocks of output columns.
    pub(crate) fn forward_slice(
        &self,
        xs: &[f32],
        m: usize,
        epilogue: Epilogue,
        residual: Option<&[f32]>,
    ) -> candle_core::Result<Vec<f32>> {
        let (n, _) = self.dims()?;
        // Every value is written (first by the fill in `block_into`) before
        // `set_len`.
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        // A column block per thread; single rows in smaller blocks, to share
        // the memory traffic of the weights evenly.
        let threads = rayon::current_num_threads();
        let block = if m == 1 {
            n.div_ceil(threads * 8).next_multiple_of(PANEL)
        } else {
            n.div_ceil(threads).next_multiple_of(PANEL)
        };
        let parts = n.div_ceil(block.max(1));
        let dst = OutPtr(out.as_mut_ptr());
        (0..parts).into_par_iter().try_for_each(|part| {
            let columns = (part * block).min(n)..((part + 1) * block).min(n);
            // SAFETY: `out` has room for m * n values and outlives the
            // parallel loop; this part alone writes these columns.
            unsafe { self.block_into(xs, m, epilogue, residual, &dst, columns) }
        })?;
        // SAFETY: the blocks cover all n columns of the m rows, all written.
        unsafe { out.set_len(m * n) };
        Ok(out)
    }

    /// [`Dense::forward_slice`] on this thread alone, into `out` (`[m,
    /// out]`).
    pub(crate) fn rows_into(
        &self,
        xs: &[f32],
        m: usize,
        epilogue: Epilogue,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        let (n, _) = self.dims()?;
        if out.len() != m * n {
            candle_core::bail!("linear: the output is not {m}x{n}");
        }
        let dst = OutPtr(out.as_mut_ptr());
        // SAFETY: `out` holds m * n values and is borrowed mutably here.
        unsafe { self.block_into(xs, m, epilogue, residual, &dst, 0..n) }
    }

    /// Columns `columns` of the layer's output on `m` rows, written to
    /// `dst` (`[m, out]`): the product (one `gemm` call, or a dot product
    /// per column for a single row), then the bias, the residual and the
    /// activation in one pass; a packed weight adds its product to the bias
    /// and residual instead.
    ///
    /// # Safety
    /// `dst` must have room for `m * out` values, and nothing else may
    /// access those columns of it meanwhile.
    unsafe fn block_into(
        &self,
        xs: &[f32],
        m: usize,
        epilogue: Epilogue,
        residual: Option<&[f32]>,
        dst: &OutPtr,
        columns: std::ops::Range<usize>,
    ) -> candle_core::Result<()> {
        let (n, k) = self.dims()?;
        if xs.len() != m * k {
            candle_core::bail!("linear: input {m}x{k} does not fit the weight {k}x{n}");
        }
        if residual.is_some_and(|r| r.len() != m * n) {
            candle_core::bail!("linear: the residual is not {m}x{n}");
        }
        let bias_guard = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_guard {
            Some((storage, layout)) => Some(cpu_f32("linear bias", storage, layout)?),
            None => None,
        };
        let (c0, c1) = (columns.start.min(n), columns.end.min(n));
        if c0 == c1 || m == 0 {
            return Ok(());
        }
        let bias = bias.map(|b| &b[c0..c1]);
        let residual_row = |row: usize| residual.map(|r| &r[row * n + c0..row * n + c1]);
        // Whether the bias and residual are still to be added.
        let add_after = match &self.weight {
            // SAFETY: the caller's promise; the product writes every value
            // of the block.
            Weight::Plain(weight) => {
                unsafe { plain_product(weight, xs, m, dst, c0..c1)? };
                true
            }
            #[cfg(target_arch = "x86_64")]
            Weight::Packed(packed) => {
                if !c0.is_multiple_of(PANEL) {
                    candle_core::bail!("linear: column block {c0}..{c1} does not start a panel");
                }
                for row in 0..m {
                    // SAFETY: in `dst` (the caller's promise); these columns
                    // are ours.
                    let fill = unsafe { dst.uninit_block(row * n + c0, c1 - c0) };
                    match (bias, residual_row(row)) {
                        (Some(b), Some(r)) => fill
                            .iter_mut()
                            .zip(b.iter().zip(r))
                            .for_each(|(d, (b, r))| _ = d.write(b + r)),
                        (Some(v), None) | (None, Some(v)) => {
                            fill.iter_mut().zip(v).for_each(|(d, v)| _ = d.write(*v))
                        }
                        (None, None) => fill.iter_mut().for_each(|d| _ = d.write(0.0)),
                    }
                }
                // SAFETY: packed weights exist only where AVX-512 does; the
                // block's m rows of n values are initialised, these columns
                // are ours, and `xs` holds m x k values.
                unsafe { packed.accumulate(xs, m, dst.0, c0..c1) };
                false
            }
        };
        for row in 0..m {
            // SAFETY: as above; every value of the block is written.
            let values = unsafe { dst.row_block(row * n + c0, c1 - c0) };
            if add_after {
                if let Some(b) = bias {
                    values.iter_mut().zip(b).for_each(|(x, b)| *x += b);
                }
                if let Some(r) = residual_row(row) {
                    values.iter_mut().zip(r).for_each(|(x, r)| *x += r);
                }
            }
            match epilogue {
                Epilogue::Gelu => gelu_in_place(values),
                Epilogue::GeluTanh => values.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
                Epilogue::Relu | Epilogue::ResidualRelu(_) => {
                    values.iter_mut().for_each(|x| *x = x.max(0.0))
                }
                Epilogue::QuickGelu => quick_gelu_in_place(values),
                Epilogue::Bias | Epilogue::Residual(_) => {}
            }
        }
        drop(bias_guard);
        Ok(())
    }
}

/// Writes `xs W^T` to columns `columns` of `dst` (`[m, out]`) for a plain
/// weight: one `gemm` call, or a dot product per column for a single row.
///
/// # Safety
/// `dst` must have room for `m * out` values, with nothing else accessing
/// these columns meanwhile; `xs` must hold `m * in` values.
unsafe fn plain_product(
    weight: &Tensor,
    xs: &[f32],
    m: usize,
    dst: &OutPtr,
    columns: std::ops::Range<usize>,
) -> candle_core::Result<()> {
    let (n, k) = weight.dims2()?;
    let (c0, c1) = (columns.start, columns.end);
    let (w_storage, w_layout) = weight.storage_and_layout();
    let ws = cpu_f32("linear weight", &w_storage, w_layout)?;
    if xs.len() != m * k || ws.len() != k * n || c1 > n {
        candle_core::bail!("linear: input {m}x{k} does not fit the weight {k}x{n}");
    }
    if m == 1 {
        // SAFETY: as above.
        let row = unsafe { dst.uninit_block(c0, c1 - c0) };
        for (j, y) in row.iter_mut().enumerate() {
            y.write(dot(&ws[(c0 + j) * k..(c0 + j + 1) * k], xs));
        }
    } else {
        // SAFETY: the pointers and strides describe `dst` (columns
        // c0..c1, m rows of n), `xs` (m rows of k) and `W^T`'s columns
        // c0..c1 (rows c0..c1 of `ws`, n rows of k), all in bounds; these
        // columns of `dst` are ours.
        unsafe {
            gemm::gemm(
                m,
                c1 - c0,
                k,
                dst.at(c0),
                1,
                n as isize,
                false,
                xs.as_ptr(),
                1,
                k as isize,
                ws.as_ptr().add(c0 * k),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    drop(w_storage);
    Ok(())
}

/// The epilogue that applies `activation` after a linear layer, when the
/// kernels have it.
pub(crate) fn activation_epilogue(activation: candle_nn::Activation) -> Option<Epilogue<'static>> {
    use candle_nn::Activation as A;
    match activation {
        A::Gelu => Some(Epilogue::Gelu),
        A::NewGelu | A::GeluPytorchTanh => Some(Epilogue::GeluTanh),
        A::Relu => Some(Epilogue::Relu),
        _ => None,
    }
}

/// A linear layer followed by `activation`, fused when the kernels have it.
pub(crate) fn dense_activation(
    dense: &Dense,
    x: &Tensor,
    activation: candle_nn::Activation,
) -> candle_core::Result<Tensor> {
    match activation_epilogue(activation) {
        Some(epilogue) => dense.forward(x, epilogue),
        None => dense.forward(x, Epilogue::Bias)?.apply(&activation),
    }
}

/// `sum(a * b)` over equal-length slices, vectorised where the CPU allows.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_slice(a, b)
}

/// [`dot_slice`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_slice(a, b)
}

/// Four 8-wide partial sums (so that the loop vectorises), then the tail.
#[inline(always)]
fn dot_slice(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let (a_chunks, b_chunks) = (a.chunks_exact(32), b.chunks_exact(32));
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..32 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

/// `x sigmoid(1.702 x)` on each value.
fn quick_gelu_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { quick_gelu_avx2(xs) };
            return;
        }
    }
    quick_gelu_slice(xs);
}

/// [`quick_gelu_slice`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quick_gelu_avx2(xs: &mut [f32]) {
    quick_gelu_slice(xs);
}

/// Branch-free, so that the loop vectorises: `sigmoid(z)` from
/// `e = exp(-|z|)` as `1 / (1 + e)` or `e / (1 + e)`.
#[inline(always)]
fn quick_gelu_slice(xs: &mut [f32]) {
    for x in xs {
        let z = 1.702 * *x;
        let e = exp_nonpositive(-z.abs());
        let sigmoid = if z >= 0.0 { 1.0 } else { e } / (1.0 + e);
        *x *= sigmoid;
    }
}

/// `gelu` with the tanh approximation, as candle and transformers'
/// `gelu_new` compute it.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_TWO_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// An output buffer shared by threads that each write their own part of
/// it.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);

// SAFETY: the threads write disjoint parts of the buffer (see `row_block`'s
// callers), which outlives the parallel section.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The address `offset` values in (a method, so that closures capture
    /// the whole `OutPtr`, which is `Sync`).
    pub(crate) fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }

    /// Room for `len` values from `start`, not yet initialised.
    ///
    /// # Safety
    /// It must be in the buffer, and no other live reference may overlap it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn uninit_block(&self, start: usize, len: usize) -> &mut [MaybeUninit<f32>] {
        // SAFETY: upheld by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.at(start).cast(), len) }
    }

    /// `len` values from `start`.
    ///
    /// # Safety
    /// They must be in the buffer and initialised, and no other live
    /// reference may overlap them.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn row_block(&self, start: usize, len: usize) -> &mut [f32] {
        // SAFETY: upheld by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// The contiguous f32 data of a CPU tensor.
pub(crate) fn cpu_f32<'a>(
    what: &str,
    storage: &'a Storage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    match storage {
        Storage::Cpu(cpu) => op_f32(what, cpu, layout),
        _ => candle_core::bail!("{what}: a contiguous f32 CPU tensor was expected"),
    }
}

/// Self-attention on the CPU, from the packed projections `qkv`
/// (`[tokens, 3 * hidden]`, queries already scaled by `1 / sqrt(head_dim)`)
/// of texts of `lengths` tokens: for each text and head, in parallel,
/// `softmax(q k^T) v` read from and written to the packed rows (a text
/// attends to its own tokens only, so there is no padding to mask). On
/// AVX-512 CPUs [`crate::packed_attention`] does it; elsewhere, blocks of
/// queries through the general GEMM.
pub(crate) fn attention_cpu(
    qkv: &Tensor,
    lengths: &[usize],
    heads: usize,
    causal: bool,
) -> candle_core::Result<Tensor> {
    let (tokens, width) = qkv.dims2()?;
    let hidden = width / 3;
    let head_dim = hidden / heads;
    if hidden * 3 != width || head_dim * heads != hidden || lengths.iter().sum::<usize>() != tokens
    {
        candle_core::bail!("attention: the projections do not fit the texts");
    }
    let (storage, layout) = qkv.storage_and_layout();
    let qkv = cpu_f32("attention projections", &storage, layout)?;
    let mut out = vec![0f32; tokens * hidden];
    #[cfg(target_arch = "x86_64")]
    {
        let input = crate::packed_attention::Projections {
            qkv,
            lengths,
            heads,
            causal,
        };
        if crate::packed_attention::attend(&input, &mut out).is_some() {
            drop(storage);
            return Tensor::from_vec(out, (tokens, hidden), &Device::Cpu);
        }
    }
    // Queries go in blocks, so that a block's scores stay in cache however
    // long the text.
    const QUERY_BLOCK: usize = 128;
    let mut tasks = Vec::new();
    let mut start = 0;
    for &len in lengths {
        for head in 0..heads {
            for first in (0..len).step_by(QUERY_BLOCK) {
                tasks.push((start, len, head, first, QUERY_BLOCK.min(len - first)));
            }
        }
        start += len;
    }
    let dst = OutPtr(out.as_mut_ptr());
    tasks.par_iter().for_each_init(
        Vec::new,
        |scores: &mut Vec<f32>, &(start, len, head, first, rows)| {
            scores.clear();
            scores.resize(rows * len, 0.0);
            let k = start * width + hidden + head * head_dim;
            let v = k + hidden;
            let q = (start + first) * width + head * head_dim;
            // SAFETY: the pointers and strides describe, in bounds: `scores`
            // (rows x len), the block's queries (rows of head_dim, `width`
            // apart) and the text's keys read transposed (head_dim x len).
            unsafe {
                gemm::gemm(
                    rows,
                    len,
                    head_dim,
                    scores.as_mut_ptr(),
                    1,
                    len as isize,
                    false,
                    qkv.as_ptr().add(q),
                    1,
                    width as isize,
                    qkv.as_ptr().add(k),
                    width as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (i, row) in scores.chunks_exact_mut(len).enumerate() {
                if causal {
                    // A token attends to itself and the tokens before it.
                    row[first + i + 1..].fill(f32::NEG_INFINITY);
                }
                softmax_in_place(row);
            }
            // SAFETY: as above for `scores` and the text's values (len rows
            // of head_dim, `width` apart); the output block (the block's
            // rows, the head's columns) is written by this task alone.
            unsafe {
                gemm::gemm(
                    rows,
                    head_dim,
                    len,
                    dst.at((start + first) * hidden + head * head_dim),
                    1,
                    hidden as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    len as isize,
                    qkv.as_ptr().add(v),
                    1,
                    width as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
    drop(storage);
    Tensor::from_vec(out, (tokens, hidden), &Device::Cpu)
}

/// `e^(x - max) / sum` over a row of scores.
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            unsafe { softmax_avx512(row) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { softmax_avx2(row) };
            return;
        }
    }
    softmax_slice(row);
}

/// [`softmax_slice`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_avx512(row: &mut [f32]) {
    softmax_slice(row);
}

/// [`softmax_slice`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn softmax_avx2(row: &mut [f32]) {
    softmax_slice(row);
}

/// The maximum and the sum in 16 lanes, so that every pass vectorises.
#[inline(always)]
fn softmax_slice(row: &mut [f32]) {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = l.max(x);
        }
    }
    let max = tail
        .iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for x in row.iter_mut() {
        *x = exp_nonpositive(*x - max);
    }
    let mut sums = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (s, &x) in sums.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    let sum = sums.iter().sum::<f32>() + tail;
    for x in row.iter_mut() {
        *x /= sum;
    }
}

/// The contiguous f32 data of a CPU tensor given to a custom op.
pub(crate) fn op_f32<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op}: contiguous f32 tensors only"),
    }
}

/// [`op_f32`], mutable.
pub(crate) fn op_f32_mut<'a>(
    op: &str,
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&mut data[start..end]),
        _ => candle_core::bail!("{op}: contiguous f32 tensors only"),
    }
}

/// `gelu` on each value.
pub(crate) fn gelu_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            unsafe { gelu_avx512(xs) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { gelu_avx2(xs) };
            return;
        }
    }
    gelu_slice(xs);
}

#[inline(always)]
fn gelu_slice(xs: &mut [f32]) {
    for x in xs {
        *x = gelu_erf(*x);
    }
}

/// [`gelu_slice`] compiled for AVX-512 (the loop vectorises 16 wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gelu_avx512(xs: &mut [f32]) {
    gelu_slice(xs);
}

/// [`gelu_slice`] compiled for AVX2 (the loop vectorises 8 wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gelu_avx2(xs: &mut [f32]) {
    gelu_slice(xs);
}

/// `x Φ(x)` with the normal CDF from erf (`transformers`' "gelu"),
/// branch-free so that loops over it vectorise.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf to within 1.5e-7 (Abramowitz and Stegun 7.1.26, the approximation
/// PyTorch's vectorised CPU erf also uses), branch-free.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    (1.0 - poly * exp_nonpositive(-a * a)).copysign(x)
}

/// `e^x` for `x <= 0` to about 1e-7 relative (0 below -87), branch-free.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that n * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor series of e^r to r^7 (|r| <= ln2 / 2: error under 1e-8).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n, n in [-126, 0], built in the exponent field.
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    p * f32::from_bits(((n_int + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_candles_exact_gelu() {
        let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.0025).collect();
        let reference = Tensor::new(xs.as_slice(), &Device::Cpu)
            .unwrap()
            .gelu_erf()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (x, want) in xs.iter().zip(reference) {
            let got = gelu_erf(*x);
            assert!(
                (got - want).abs() < 4e-7 * x.abs().max(1.0),
                "{x}: {got} vs {want}"
            );
        }
        assert_eq!(gelu_erf(-30.0), 0.0);
        assert_eq!(gelu_erf(30.0), 30.0);
    }

    #[test]
    fn exp_is_accurate_over_its_range() {
        for i in 0..=8700 {
            let x = -(i as f32) * 0.01;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!((got - want).abs() <= 3e-7 * want, "{x}: {got} vs {want}");
        }
        assert!(exp_nonpositive(-200.0) < 1e-37);
    }

    #[test]
    fn the_cpu_linear_kernels_match_candles_operations() {
        let device = Device::Cpu;
        // 37 outputs: blocks that are not a multiple of the vector width.
        let weight = Tensor::randn(0f32, 1.0, (37, 70), &device).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 37, &device).unwrap();
        let dense = Dense::new(weight, Some(bias)).unwrap();
        let unbiased =
            Dense::new(Tensor::randn(0f32, 1.0, (37, 70), &device).unwrap(), None).unwrap();
        // Packed for the few-rows kernel where the CPU has it.
        let packed = dense.clone().for_few_rows().unwrap();
        let packed_unbiased = unbiased.clone().for_few_rows().unwrap();
        for rows in [1, 5] {
            // One row takes the matrix-vector path, several the gemm one.
            let x = Tensor::randn(0f32, 1.0, (2, rows, 70), &device).unwrap();
            let x = x.narrow(0, 0, 1).unwrap();
            let residual = Tensor::randn(0f32, 1.0, (1, rows, 37), &device).unwrap();
            for epilogue in [
                Epilogue::Bias,
                Epilogue::Residual(&residual),
                Epilogue::ResidualRelu(&residual),
                Epilogue::Gelu,
                Epilogue::GeluTanh,
                Epilogue::Relu,
                Epilogue::QuickGelu,
            ] {
                for layer in [&dense, &unbiased, &packed, &packed_unbiased] {
                    let fast = layer.forward_with(&x, epilogue, true).unwrap();
                    let slow = layer.forward_with(&x, epilogue, false).unwrap();
                    assert_eq!(fast.dims(), [1, rows, 37]);
                    let diff = (fast - slow)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(diff < 1e-4, "{rows} rows: {diff}");
                }
            }
        }
    }
}
