//! Multi-head attention pieces the transformer families share.

use crate::kernels::attention_cpu;
use candle_core::{DType, Device, Result, Tensor};

/// `[batch, seq, heads * size]` -> `[batch, heads, seq, size]`.
pub(crate) fn split_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, seq, width) = xs.dims3()?;
    xs.reshape((batch, seq, heads, width / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `[batch, heads, seq, size]` -> `[batch, seq, heads * size]`.
pub(crate) fn merge_heads(xs: &Tensor) -> Result<Tensor> {
    let (batch, heads, seq, size) = xs.dims4()?;
    xs.transpose(1, 2)?.reshape((batch, seq, heads * size))
}

/// `softmax(query key^T * scale + mask) value` over `[batch, heads, seq,
/// size]` tensors; `mask` (added) is `[queries, keys]`.
pub(crate) fn attend(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let mut scores = query.matmul(&key.t()?)?;
    if scale != 1.0 {
        scores = (scores * scale)?;
    }
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(value)
}

/// The additive causal mask of `count` new tokens after `start` cached ones
/// (`[count, start + count]`), or `None` for a single token, which sees
/// everything.
pub(crate) fn causal_mask(start: usize, count: usize, device: &Device) -> Result<Option<Tensor>> {
    if count <= 1 {
        return Ok(None);
    }
    let total = start + count;
    let values: Vec<f32> = (0..count)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (count, total), device).map(Some)
}

/// Self-attention over packed projections `qkv` (`[batch, seq, 3 * hidden]`,
/// queries already scaled): `[batch, seq, hidden]`; `causal` keeps each
/// token from later ones. The CPU kernel for f32 on the CPU, candle's
/// operations otherwise.
pub(crate) fn self_attention(qkv: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    let (batch, seq, width) = qkv.dims3()?;
    let hidden = width / 3;
    if qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
        let lengths = vec![seq; batch];
        return attention_cpu(&qkv.reshape((batch * seq, width))?, &lengths, heads, causal)?
            .reshape((batch, seq, hidden));
    }
    let part = |i: usize| split_heads(&qkv.narrow(2, i * hidden, hidden)?, heads);
    let mask = if causal {
        causal_mask(0, seq, qkv.device())?
    } else {
        None
    };
    merge_heads(&attend(
        &part(0)?,
        &part(1)?,
        &part(2)?,
        1.0,
        mask.as_ref(),
    )?)
}
