//! The building blocks of VITS on channels-last sequences (`[length,
//! channels]` f32 rows on the CPU): 1-D convolutions as one [`Dense`] layer
//! over im2col rows (in bands of output rows that threads share), transposed
//! convolutions as a linear layer per step followed by an overlap-add,
//! depthwise convolutions, layer norms, and weights read under any of the
//! names PyTorch's weight norm gives them.

use crate::kernels::{Dense, Epilogue};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

/// im2col values per band (1 MiB of f32): long sequences are convolved band
/// by band, each band in cache.
const BAND_VALUES: usize = 1 << 18;
/// Products per band of a transposed convolution (16 MiB of f32).
const TRANSPOSED_BAND_VALUES: usize = 1 << 22;

/// A channels-last sequence: `length` rows of `channels` values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seq {
    /// `[length * channels]`, row by row.
    pub(crate) data: Vec<f32>,
    /// Values per row.
    pub(crate) channels: usize,
}

impl Seq {
    /// `length` rows of zeros.
    pub(crate) fn zeros(length: usize, channels: usize) -> Self {
        Self {
            data: vec![0.0; length * channels],
            channels,
        }
    }

    /// The number of rows.
    pub(crate) fn len(&self) -> usize {
        self.data.len() / self.channels.max(1)
    }

    /// Row `t`.
    pub(crate) fn row(&self, t: usize) -> &[f32] {
        &self.data[t * self.channels..(t + 1) * self.channels]
    }

    /// Channels `range` of every row, as a sequence.
    pub(crate) fn columns(&self, range: std::ops::Range<usize>) -> Self {
        let width = range.len();
        let mut data = Vec::with_capacity(self.len() * width);
        for row in self.data.chunks_exact(self.channels.max(1)) {
            data.extend_from_slice(&row[range.clone()]);
        }
        Self {
            data,
            channels: width,
        }
    }

    /// Each row's channels in reverse order (`torch.flip(x, [1])` on
    /// channels-first maps).
    pub(crate) fn flip_channels(&mut self) {
        for row in self.data.chunks_exact_mut(self.channels.max(1)) {
            row.reverse();
        }
    }

    /// `vector` added to every row.
    pub(crate) fn add_row(&mut self, vector: &[f32]) {
        for row in self.data.chunks_exact_mut(self.channels.max(1)) {
            row.iter_mut().zip(vector).for_each(|(x, v)| *x += v);
        }
    }

    /// `leaky_relu` with `slope` of every value, as a new sequence.
    pub(crate) fn leaky_relu(&self, slope: f32) -> Self {
        let data = self
            .data
            .par_iter()
            .map(|&x| if x >= 0.0 { x } else { x * slope })
            .collect();
        Self {
            data,
            channels: self.channels,
        }
    }
}

/// A tensor's values as f32.
pub(crate) fn values(tensor: &Tensor) -> Result<Vec<f32>> {
    tensor
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()
}

/// A convolution's `weight` `[dim0, dim1, kernel]` under `vb`: stored as is,
/// or as a weight norm over every dimension but the first (`weight_g` /
/// `weight_v`, or `parametrizations.weight.original0` / `original1` as newer
/// PyTorch saves it): `v * (g / |v|)`.
pub(crate) fn conv_weight(vb: &VarBuilder, shape: (usize, usize, usize)) -> Result<Tensor> {
    if vb.contains_tensor("weight") {
        return vb.get(shape, "weight");
    }
    let (g, v) = if vb.contains_tensor("weight_g") {
        (
            vb.get((shape.0, 1, 1), "weight_g")?,
            vb.get(shape, "weight_v")?,
        )
    } else {
        let p = vb.pp("parametrizations").pp("weight");
        (
            p.get((shape.0, 1, 1), "original0")?,
            p.get(shape, "original1")?,
        )
    };
    let norm = v.sqr()?.sum_keepdim(1)?.sum_keepdim(2)?.sqrt()?;
    v.broadcast_mul(&(g / norm)?)
}

/// `nn.LayerNorm` over the channels of each row.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f64,
}

impl LayerNorm {
    /// `weight` and `bias` under `vb`.
    pub(crate) fn load(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: values(&vb.get(channels, "weight")?)?,
            bias: values(&vb.get(channels, "bias")?)?,
            eps,
        })
    }

    /// Each row normalised in place.
    pub(crate) fn apply(&self, x: &mut Seq) {
        let n = self.weight.len();
        for row in x.data.chunks_exact_mut(n.max(1)) {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            let rstd = 1.0 / (var + self.eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = ((f64::from(*v) - mean) * rstd) as f32 * w + b;
            }
        }
    }
}

/// `nn.Conv1d` (one group) on channels-last sequences, with PyTorch's
/// zero padding on each side (`left`, `right`).
#[derive(Debug, Clone)]
pub(crate) struct Conv1d {
    /// `[out, kernel * in]` (kernel taps, then input channels).
    dense: Dense,
    inputs: usize,
    kernel: usize,
    dilation: usize,
    padding: (usize, usize),
}

impl Conv1d {
    /// From PyTorch's `weight` `[out, in, kernel]` and `bias`.
    pub(crate) fn new(
        weight: &Tensor,
        bias: Option<Tensor>,
        dilation: usize,
        padding: (usize, usize),
    ) -> Result<Self> {
        let (outputs, inputs, kernel) = weight.dims3()?;
        if kernel == 0 || dilation == 0 {
            candle_core::bail!("a convolution's kernel and dilation must be positive");
        }
        let rows = weight
            .permute((0, 2, 1))?
            .reshape((outputs, kernel * inputs))?
            .contiguous()?;
        Ok(Self {
            dense: Dense::new(rows, bias)?,
            inputs,
            kernel,
            dilation,
            padding,
        })
    }

    /// `weight` (plain or weight-normed) and optionally `bias` under `vb`,
    /// padded `(kernel * dilation - dilation) / 2` on each side as VITS pads
    /// its odd kernels.
    pub(crate) fn load(
        vb: &VarBuilder,
        (inputs, outputs): (usize, usize),
        kernel: usize,
        dilation: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = conv_weight(vb, (outputs, inputs, kernel))?;
        let bias = bias.then(|| vb.get(outputs, "bias")).transpose()?;
        let pad = (kernel * dilation - dilation) / 2;
        Self::new(&weight, bias, dilation, (pad, pad))
    }

    /// A 1x1 convolution (a linear layer) under `vb`, with its bias.
    pub(crate) fn pointwise(vb: &VarBuilder, (inputs, outputs): (usize, usize)) -> Result<Self> {
        Self::load(vb, (inputs, outputs), 1, 1, true)
    }

    /// The output length for an input of `length` rows.
    fn out_len(&self, length: usize) -> Result<usize> {
        let span = self.dilation * (self.kernel - 1);
        (length + self.padding.0 + self.padding.1)
            .checked_sub(span)
            .ok_or_else(|| candle_core::Error::Msg("a sequence shorter than its kernel".into()))
    }

    /// The convolution of `x`, plus `residual` (`[out_len, out]`) when given,
    /// then `epilogue`'s activation.
    pub(crate) fn forward_with(
        &self,
        x: &Seq,
        residual: Option<&Seq>,
        epilogue: Epilogue,
    ) -> Result<Seq> {
        self.forward_full(x, None, residual, epilogue)
    }

    /// The convolution of `leaky_relu(x, slope)` (applied as the input is
    /// gathered), plus `residual` when given.
    pub(crate) fn forward_leaky(&self, x: &Seq, slope: f32, residual: Option<&Seq>) -> Result<Seq> {
        self.forward_full(x, Some(slope), residual, Epilogue::Bias)
    }

    /// The convolution of `x` (through a leaky ReLU of `slope` when given),
    /// plus `residual`, then `epilogue`'s activation.
    fn forward_full(
        &self,
        x: &Seq,
        slope: Option<f32>,
        residual: Option<&Seq>,
        epilogue: Epilogue,
    ) -> Result<Seq> {
        if x.channels != self.inputs {
            candle_core::bail!(
                "convolution: {} channels in, {} expected",
                x.channels,
                self.inputs
            );
        }
        let length = self.out_len(x.len())?;
        let outputs = self.dense.outputs()?;
        if residual.is_some_and(|r| r.data.len() != length * outputs) {
            candle_core::bail!("convolution: the residual does not fit the output");
        }
        if self.kernel == 1 && self.padding == (0, 0) {
            let activated = slope.map(|slope| x.leaky_relu(slope));
            let data = self.dense.forward_slice(
                &activated.as_ref().unwrap_or(x).data,
                length,
                epilogue,
                residual.map(|r| &r.data[..]),
            )?;
            return Ok(Seq {
                data,
                channels: outputs,
            });
        }
        let width = self.kernel * self.inputs;
        let band = (BAND_VALUES / width.max(1))
            .max(1)
            .min(length.div_ceil(rayon::current_num_threads()).max(1));
        let mut data = vec![0f32; length * outputs];
        data.par_chunks_mut(band * outputs)
            .enumerate()
            .try_for_each(|(index, out)| {
                let first = index * band;
                let rows = out.len() / outputs.max(1);
                let columns = self.im2col(x, first, rows, slope);
                let residual = residual.map(|r| &r.data[first * outputs..(first + rows) * outputs]);
                self.dense
                    .rows_into(&columns, rows, epilogue, residual, out)
            })?;
        Ok(Seq {
            data,
            channels: outputs,
        })
    }

    /// The convolution of `x`.
    pub(crate) fn forward(&self, x: &Seq) -> Result<Seq> {
        self.forward_with(x, None, Epilogue::Bias)
    }

    /// im2col rows `first..first + rows` of `x` (through a leaky ReLU of
    /// `slope` when given).
    fn im2col(&self, x: &Seq, first: usize, rows: usize, slope: Option<f32>) -> Vec<f32> {
        let (length, channels) = (x.len(), x.channels);
        let mut columns = Vec::with_capacity(rows * self.kernel * channels);
        for t in first..first + rows {
            for k in 0..self.kernel {
                let position = (t + k * self.dilation).checked_sub(self.padding.0);
                match (position, slope) {
                    (Some(p), None) if p < length => columns.extend_from_slice(x.row(p)),
                    (Some(p), Some(slope)) if p < length => columns.extend(
                        x.row(p)
                            .iter()
                            .map(|&v| if v >= 0.0 { v } else { v * slope }),
                    ),
                    _ => columns.resize(columns.len() + channels, 0.0),
                }
            }
        }
        columns
    }
}

/// `nn.ConvTranspose1d` (one group, no output padding) on channels-last
/// sequences: each input step times the weight gives `kernel` output rows,
/// added into place at `step * stride - padding`.
#[derive(Debug, Clone)]
pub(crate) struct ConvTranspose1d {
    /// `[kernel * out, in]`.
    dense: Dense,
    bias: Vec<f32>,
    outputs: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl ConvTranspose1d {
    /// `weight` `[in, out, kernel]` (plain or weight-normed) and `bias` under
    /// `vb`.
    pub(crate) fn load(
        vb: &VarBuilder,
        (inputs, outputs): (usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        if kernel == 0 || stride == 0 {
            candle_core::bail!("a transposed convolution's kernel and stride must be positive");
        }
        let weight = conv_weight(vb, (inputs, outputs, kernel))?;
        let rows = weight
            .permute((2, 1, 0))?
            .reshape((kernel * outputs, inputs))?
            .contiguous()?;
        Ok(Self {
            dense: Dense::new(rows, None)?,
            bias: values(&vb.get(outputs, "bias")?)?,
            outputs,
            kernel,
            stride,
            padding,
        })
    }

    /// The output length for an input of `length` rows.
    pub(crate) fn out_len(&self, length: usize) -> Option<usize> {
        ((length.max(1) - 1) * self.stride + self.kernel).checked_sub(2 * self.padding)
    }

    /// The transposed convolution of `x`.
    pub(crate) fn forward(&self, x: &Seq) -> Result<Seq> {
        let length = x.len();
        let out_len = self
            .out_len(length)
            .filter(|_| length > 0)
            .ok_or_else(|| candle_core::Error::Msg("a sequence too short to upsample".into()))?;
        let (outputs, kernel) = (self.outputs, self.kernel);
        let mut out = Seq::zeros(out_len, outputs);
        for row in out.data.chunks_exact_mut(outputs) {
            row.copy_from_slice(&self.bias);
        }
        let band = (TRANSPOSED_BAND_VALUES / (kernel * outputs).max(1)).max(1);
        for first in (0..length).step_by(band) {
            let rows = band.min(length - first);
            let products = self.dense.forward_slice(
                &x.data[first * x.channels..(first + rows) * x.channels],
                rows,
                Epilogue::Bias,
                None,
            )?;
            for (r, taps) in products.chunks_exact(kernel * outputs).enumerate() {
                let start = (first + r) * self.stride;
                for (k, tap) in taps.chunks_exact(outputs).enumerate() {
                    let Some(position) = (start + k).checked_sub(self.padding) else {
                        continue;
                    };
                    if position >= out_len {
                        break;
                    }
                    let slot = &mut out.data[position * outputs..(position + 1) * outputs];
                    slot.iter_mut().zip(tap).for_each(|(y, v)| *y += v);
                }
            }
        }
        Ok(out)
    }
}

/// A depthwise `nn.Conv1d` (`groups == channels`), padded as VITS pads.
#[derive(Debug, Clone)]
pub(crate) struct DepthwiseConv1d {
    /// `[channels][kernel]`.
    weight: Vec<f32>,
    bias: Vec<f32>,
    channels: usize,
    kernel: usize,
    dilation: usize,
}

impl DepthwiseConv1d {
    /// `weight` `[channels, 1, kernel]` and `bias` under `vb`.
    pub(crate) fn load(
        vb: &VarBuilder,
        channels: usize,
        kernel: usize,
        dilation: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: values(&conv_weight(vb, (channels, 1, kernel))?)?,
            bias: values(&vb.get(channels, "bias")?)?,
            channels,
            kernel,
            dilation,
        })
    }

    /// The convolution of `x` (same length: odd kernels only).
    pub(crate) fn forward(&self, x: &Seq) -> Seq {
        let length = x.len();
        let pad = (self.kernel * self.dilation - self.dilation) / 2;
        let mut out = Seq::zeros(length, self.channels);
        for t in 0..length {
            let row = &mut out.data[t * self.channels..(t + 1) * self.channels];
            for (c, y) in row.iter_mut().enumerate() {
                let mut sum = 0f32;
                for k in 0..self.kernel {
                    let Some(p) = (t + k * self.dilation).checked_sub(pad) else {
                        continue;
                    };
                    if p < length {
                        sum += self.weight[c * self.kernel + k] * x.data[p * self.channels + c];
                    }
                }
                *y = sum + self.bias[c];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn seq(length: usize, channels: usize, phase: f32) -> Seq {
        Seq {
            data: (0..length * channels)
                .map(|i| (i as f32 * 0.37 + phase).sin())
                .collect(),
            channels,
        }
    }

    /// Channels-first `[channels, length]` values of a sequence.
    fn channels_first(x: &Seq) -> Tensor {
        Tensor::from_vec(x.data.clone(), (x.len(), x.channels), &Device::Cpu)
            .unwrap()
            .t()
            .unwrap()
            .unsqueeze(0)
            .unwrap()
    }

    fn close(ours: &Seq, theirs: &Tensor) {
        let theirs: Vec<f32> = theirs
            .squeeze(0)
            .unwrap()
            .t()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours.data.len(), theirs.len());
        for (a, b) in ours.data.iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn dilated_convolutions_match_candle_across_bands() -> Result<()> {
        let (inputs, outputs, kernel, dilation) = (5, 7, 3, 2);
        let weight: Vec<f32> = (0..outputs * inputs * kernel)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let weight = Tensor::from_vec(weight, (outputs, inputs, kernel), &Device::Cpu)?;
        let bias = Tensor::from_vec(
            (0..outputs).map(|i| i as f32 * 0.1).collect::<Vec<_>>(),
            outputs,
            &Device::Cpu,
        )?;
        let conv = Conv1d::new(&weight, Some(bias.clone()), dilation, (2, 2))?;
        // Long enough for several bands.
        let x = seq(BAND_VALUES / 4, inputs, 0.3);
        let want = channels_first(&x)
            .conv1d(&weight, 2, 1, dilation, 1)?
            .broadcast_add(&bias.reshape((1, outputs, 1))?)?;
        close(&conv.forward(&x)?, &want);
        Ok(())
    }

    #[test]
    fn transposed_convolutions_match_candle() -> Result<()> {
        let (inputs, outputs, kernel, stride, padding) = (4, 3, 8, 4, 2);
        let weight: Vec<f32> = (0..inputs * outputs * kernel)
            .map(|i| (i as f32 * 0.23).sin())
            .collect();
        let weight = Tensor::from_vec(weight, (inputs, outputs, kernel), &Device::Cpu)?;
        let bias = Tensor::zeros(outputs, candle_core::DType::F32, &Device::Cpu)?;
        let tensors = std::collections::HashMap::from([
            ("weight".to_string(), weight.clone()),
            ("bias".to_string(), bias),
        ]);
        let vb = VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu);
        let conv = ConvTranspose1d::load(&vb, (inputs, outputs), kernel, stride, padding)?;
        let x = seq(9, inputs, 0.1);
        let want = channels_first(&x).conv_transpose1d(&weight, padding, 0, stride, 1, 1)?;
        close(&conv.forward(&x)?, &want);
        Ok(())
    }
}
