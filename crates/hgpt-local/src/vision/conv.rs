//! Convolutions and resizes on channels-last feature maps (`[height * width,
//! channels]` rows), as the dense-prediction necks and heads (DPT, Depth
//! Anything) and DETR's ResNet run them.
//!
//! A convolution is one [`Dense`] layer over im2col rows (kernel rows, kernel
//! columns, then input channels), in bands of output rows so that the im2col
//! buffer of a large map stays small; a 3x3 convolution with stride 1 that
//! keeps the map's size goes through [`Winograd`] instead. A transposed convolution whose kernel
//! equals its stride is a linear layer per pixel followed by a scatter.
//! Resizes follow PyTorch's `interpolate` (bilinear with or without
//! `align_corners`, bicubic with A = -0.75 and indices clamped to the
//! border), in float32 like its CPU kernels.

use super::winograd::Winograd;
use crate::kernels::{Dense, Epilogue};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use std::sync::Arc;

/// Values of one band of im2col rows (16 MiB of f32): large maps are
/// convolved band by band.
const BAND_VALUES: usize = 1 << 22;

/// A channels-last feature map.
#[derive(Debug, Clone)]
pub(crate) struct Rows {
    /// `[height * width, channels]`.
    pub(crate) pixels: Tensor,
    /// `(height, width)`.
    pub(crate) size: (usize, usize),
}

impl Rows {
    /// Channels per pixel.
    pub(crate) fn channels(&self) -> Result<usize> {
        self.pixels.dim(1)
    }

    /// `relu` of every value.
    pub(crate) fn relu(&self) -> Result<Self> {
        Ok(Self {
            pixels: self.pixels.relu()?,
            size: self.size,
        })
    }
}

/// A convolution's weights and bias with an inference-mode batch norm
/// folded in: `conv(x) * scale + (bias - mean) * scale + beta`, `scale =
/// gamma / sqrt(var + eps)`.
pub(crate) fn fold_batch_norm(
    weight: &Tensor,
    bias: Option<&Tensor>,
    norm: VarBuilder,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let outputs = weight.dim(0)?;
    let get = |name: &str| norm.get(outputs, name);
    let (gamma, beta, mean, var) = (
        get("weight")?,
        get("bias")?,
        get("running_mean")?,
        get("running_var")?,
    );
    let scale = (gamma / (var + eps)?.sqrt()?)?;
    let shifted = match bias {
        Some(bias) => (bias - mean)?,
        None => mean.neg()?,
    };
    let bias = ((shifted * &scale)? + beta)?;
    let mut shape = vec![outputs];
    shape.resize(weight.rank(), 1);
    let weight = weight.broadcast_mul(&scale.reshape(shape)?)?;
    Ok((weight, bias))
}

/// PyTorch's `GroupNorm` epsilon.
const GROUP_NORM_EPS: f64 = 1e-5;

/// `nn.GroupNorm` (epsilon 1e-5 unless set) over a channels-last map,
/// optionally followed by a residual and ReLU, or by SiLU.
#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    groups: usize,
    eps: f64,
}

/// What follows a [`GroupNorm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterNorm {
    Nothing,
    Relu,
    Silu,
}

impl GroupNorm {
    /// `weight` and `bias` under `vb`, `groups` groups.
    pub(crate) fn load(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("{channels} channels do not split into {groups} groups");
        }
        let get = |name: &str| -> Result<Vec<f32>> {
            vb.get(channels, name)?.to_dtype(DType::F32)?.to_vec1()
        };
        Ok(Self {
            gamma: get("weight")?,
            beta: get("bias")?,
            groups,
            eps: GROUP_NORM_EPS,
        })
    }

    /// The same norm with another epsilon.
    pub(crate) fn with_eps(self, eps: f64) -> Self {
        Self { eps, ..self }
    }

    /// The normalised map, plus `residual` (same shape), then ReLU when
    /// `relu`.
    pub(crate) fn forward(&self, x: &Rows, relu: bool, residual: Option<&Rows>) -> Result<Rows> {
        let after = if relu {
            AfterNorm::Relu
        } else {
            AfterNorm::Nothing
        };
        self.normalise(x, after, residual)
    }

    /// `silu` of the normalised map.
    pub(crate) fn forward_silu(&self, x: &Rows) -> Result<Rows> {
        self.normalise(x, AfterNorm::Silu, None)
    }

    fn normalise(&self, x: &Rows, after: AfterNorm, residual: Option<&Rows>) -> Result<Rows> {
        let channels = x.channels()?;
        if channels != self.gamma.len() {
            candle_core::bail!(
                "group norm: {channels} channels, {} weights",
                self.gamma.len()
            );
        }
        let mut values = x.pixels.flatten_all()?.to_vec1::<f32>()?;
        let residual = residual
            .map(|r| r.pixels.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        let per_group = channels / self.groups;
        let pixels = values.len() / channels.max(1);
        // Sums and sums of squares per channel, in f64, in one pass over
        // blocks of pixels...
        let sums = values
            .par_chunks(channels.max(1) * 256)
            .map(|block| {
                let mut sums = vec![0f64; 2 * channels];
                let (sum, squares) = sums.split_at_mut(channels);
                for pixel in block.chunks_exact(channels.max(1)) {
                    for ((s, q), &v) in sum.iter_mut().zip(squares.iter_mut()).zip(pixel) {
                        *s += f64::from(v);
                        *q += f64::from(v) * f64::from(v);
                    }
                }
                sums
            })
            .reduce(
                || vec![0f64; 2 * channels],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        // ... then each channel's scale and shift, as PyTorch applies them:
        // `x * rstd * gamma + (beta - mean * rstd * gamma)`.
        let n = (pixels * per_group).max(1) as f64;
        let mut scale = vec![0f32; channels];
        let mut shift = vec![0f32; channels];
        for g in 0..self.groups {
            let group = g * per_group..(g + 1) * per_group;
            let mean = sums[group.clone()].iter().sum::<f64>() / n;
            let squares = sums[channels + group.start..channels + group.end]
                .iter()
                .sum::<f64>();
            let var = (squares / n - mean * mean).max(0.0);
            let rstd = (1.0 / (var + self.eps).sqrt()) as f32;
            for c in group {
                scale[c] = rstd * self.gamma[c];
                shift[c] = self.beta[c] - mean as f32 * scale[c];
            }
        }
        values
            .par_chunks_mut(channels.max(1))
            .enumerate()
            .for_each(|(p, pixel)| {
                for ((v, s), b) in pixel.iter_mut().zip(&scale).zip(&shift) {
                    *v = *v * s + b;
                }
                if let Some(r) = &residual {
                    let r = &r[p * channels..(p + 1) * channels];
                    pixel.iter_mut().zip(r).for_each(|(v, r)| *v += r);
                }
                match after {
                    AfterNorm::Nothing => {}
                    AfterNorm::Relu => pixel.iter_mut().for_each(|v| *v = v.max(0.0)),
                    AfterNorm::Silu => pixel.iter_mut().for_each(|v| *v /= 1.0 + (-*v).exp()),
                }
            });
        Ok(Rows {
            pixels: Tensor::from_vec(values, (pixels, channels), x.pixels.device())?,
            size: x.size,
        })
    }
}

/// The zeros around a convolution's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Padding {
    /// The same number on every side.
    Fixed(usize),
    /// TensorFlow's `SAME` (timm's dynamic padding): `ceil(size / stride)`
    /// outputs, the zeros that takes split with the smaller half first.
    Same,
}

impl Padding {
    /// `(output size, zeros before)` along a side of `size` values.
    pub(crate) fn along(self, size: usize, kernel: usize, stride: usize) -> Option<(usize, usize)> {
        match self {
            Self::Fixed(padding) => (size + 2 * padding)
                .checked_sub(kernel)
                .map(|n| (n / stride + 1, padding)),
            Self::Same => {
                let out = size.div_ceil(stride);
                let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(size);
                (out > 0).then_some((out, total / 2))
            }
        }
    }
}

/// A square 2-D convolution on channels-last maps.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    product: Product,
    kernel: usize,
    stride: usize,
    padding: Padding,
}

/// How a [`Conv`] computes.
#[derive(Debug, Clone)]
enum Product {
    /// One linear layer over im2col rows: `[out, kernel * kernel * in]`.
    Im2col(Dense),
    /// A 3x3 convolution with stride 1 that keeps the map's size, with f32
    /// weights on the CPU.
    Winograd(Arc<Winograd>),
}

/// The im2col weight of PyTorch's `weight` `[out, in, kernel, kernel]`:
/// `[out, kernel * kernel * in]` (kernel rows, kernel columns, channels).
fn im2col_layer(weight: &Tensor, bias: Option<Tensor>) -> Result<Dense> {
    let outputs = weight.dim(0)?;
    let rows = weight
        .permute((0, 2, 3, 1))?
        .reshape((outputs, ()))?
        .contiguous()?;
    Dense::new(rows, bias)
}

impl Conv {
    /// From PyTorch's `weight` `[out, in, kernel, kernel]` and `bias`.
    pub(crate) fn new(
        weight: &Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Self::padded(weight, bias, stride, Padding::Fixed(padding))
    }

    /// [`Conv::new`] with any padding.
    pub(crate) fn padded(
        weight: &Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: Padding,
    ) -> Result<Self> {
        let (outputs, inputs, kh, kw) = weight.dims4()?;
        if kh != kw {
            candle_core::bail!("the convolution's kernel is {kh}x{kw}, not square");
        }
        if stride == 0 {
            candle_core::bail!("a convolution's stride must be positive");
        }
        let weight = weight.to_dtype(DType::F32)?;
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        // One zero before and one after, whatever the size (`Same` with a
        // stride of 1 pads a 3x3 kernel that way too).
        let keeps_size = padding.along(1, kh, stride) == Some((1, 1))
            && padding.along(2, kh, stride) == Some((2, 1));
        let product = if (kh, stride) == (3, 1) && keeps_size && weight.device().is_cpu() {
            let bias = bias.as_ref().map(Tensor::to_vec1::<f32>).transpose()?;
            Product::Winograd(Arc::new(Winograd::new(
                &weight.flatten_all()?.to_vec1::<f32>()?,
                (outputs, inputs),
                bias.as_deref(),
            )?))
        } else {
            Product::Im2col(im2col_layer(&weight, bias)?)
        };
        Ok(Self {
            product,
            kernel: kh,
            stride,
            padding,
        })
    }

    /// `weight` (and `bias`) under `vb`, checked to be `[outputs, inputs,
    /// kernel, kernel]`.
    pub(crate) fn load(
        vb: VarBuilder,
        (inputs, outputs): (usize, usize),
        kernel: usize,
        (stride, padding): (usize, usize),
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((outputs, inputs, kernel, kernel), "weight")?;
        let bias = bias.then(|| vb.get(outputs, "bias")).transpose()?;
        Self::new(&weight, bias, stride, padding)
    }

    /// `((out_h, top), (out_w, left))` for an input of `(height, width)`:
    /// output sizes and zeros before.
    fn geometry(&self, (h, w): (usize, usize)) -> Result<((usize, usize), (usize, usize))> {
        let along = |n: usize| self.padding.along(n, self.kernel, self.stride);
        match (along(h), along(w)) {
            (Some(rows), Some(cols)) => Ok((rows, cols)),
            _ => candle_core::bail!(
                "a {h}x{w} map is smaller than the {0}x{0} convolution",
                self.kernel
            ),
        }
    }

    /// The convolution of `x`, then `epilogue` (a residual is `[out_h *
    /// out_w, out]`).
    pub(crate) fn forward(&self, x: &Rows, epilogue: Epilogue) -> Result<Rows> {
        self.forward_in_bands(x, epilogue, BAND_VALUES)
    }

    /// [`Conv::forward`] with im2col bands of at most `band_values` values
    /// (at least one output row).
    fn forward_in_bands(&self, x: &Rows, epilogue: Epilogue, band_values: usize) -> Result<Rows> {
        let dense = match &self.product {
            Product::Im2col(dense) => dense,
            Product::Winograd(winograd) => return winograd.forward(x, epilogue),
        };
        let ((out_h, top), (out_w, left)) = self.geometry(x.size)?;
        let out = (out_h, out_w);
        if (self.kernel, self.stride, top, left) == (1, 1, 0, 0) {
            return Ok(Rows {
                pixels: dense.forward(&x.pixels, epilogue)?,
                size: out,
            });
        }
        let channels = x.channels()?;
        let input = x.pixels.flatten_all()?.to_vec1::<f32>()?;
        let width = self.kernel * self.kernel * channels;
        let band = (band_values / (out.1 * width).max(1)).max(1).min(out.0);
        let geometry = (x.size, (top, left));
        let device = x.pixels.device();
        if device.is_cpu() && dense.on_cpu() {
            return self.forward_cpu(dense, &input, channels, geometry, out, epilogue, band);
        }
        let mut parts = Vec::with_capacity(out.0.div_ceil(band));
        for first in (0..out.0).step_by(band) {
            let rows = band.min(out.0 - first);
            let mut columns = vec![0f32; rows * out.1 * width];
            self.im2col(
                &input,
                channels,
                geometry,
                out.1,
                first..first + rows,
                &mut columns,
            );
            let columns = Tensor::from_vec(columns, (rows * out.1, width), device)?;
            let residual = match epilogue {
                Epilogue::Residual(r) | Epilogue::ResidualRelu(r) => {
                    Some(r.narrow(0, first * out.1, rows * out.1)?)
                }
                _ => None,
            };
            let band_epilogue = match (epilogue, residual.as_ref()) {
                (Epilogue::Residual(_), Some(r)) => Epilogue::Residual(r),
                (Epilogue::ResidualRelu(_), Some(r)) => Epilogue::ResidualRelu(r),
                (other, _) => other,
            };
            parts.push(dense.forward(&columns, band_epilogue)?);
        }
        let pixels = match parts.len() {
            1 => parts.remove(0),
            _ => Tensor::cat(&parts, 0)?,
        };
        Ok(Rows { pixels, size: out })
    }

    /// [`Conv::forward_in_bands`] on the CPU. With many bands, each thread
    /// takes whole bands (im2col into its own buffer, which stays in cache,
    /// and the product into the output); with few, bands go one by one and
    /// threads split each product's columns.
    #[allow(clippy::too_many_arguments)]
    fn forward_cpu(
        &self,
        dense: &Dense,
        input: &[f32],
        channels: usize,
        geometry: ((usize, usize), (usize, usize)),
        out: (usize, usize),
        epilogue: Epilogue,
        band: usize,
    ) -> Result<Rows> {
        let width = self.kernel * self.kernel * channels;
        let outputs = dense.outputs()?;
        let residual = match epilogue {
            Epilogue::Residual(r) | Epilogue::ResidualRelu(r) => {
                Some(r.flatten_all()?.to_vec1::<f32>()?)
            }
            _ => None,
        };
        let residual_rows = |first: usize, rows: usize| {
            residual
                .as_ref()
                .map(|r| &r[first * out.1 * outputs..(first + rows) * out.1 * outputs])
        };
        // Bands of at least 256 output pixels, so that each product is
        // worth packing the weights for.
        let small_band = 256usize.div_ceil(out.1).clamp(1, band);
        let fill = |first: usize, rows: usize, columns: &mut [f32]| {
            let rows = first..first + rows;
            self.im2col(input, channels, geometry, out.1, rows, columns);
        };
        let mut pixels = vec![0f32; out.0 * out.1 * outputs];
        if out.0.div_ceil(small_band) >= 4 * rayon::current_num_threads() {
            pixels
                .par_chunks_mut(small_band * out.1 * outputs)
                .enumerate()
                .try_for_each_init(Vec::new, |columns: &mut Vec<f32>, (b, dst)| {
                    let first = b * small_band;
                    let rows = dst.len() / (out.1 * outputs);
                    columns.resize(rows * out.1 * width, 0.0);
                    fill(first, rows, columns);
                    let m = rows * out.1;
                    dense.rows_into(columns, m, epilogue, residual_rows(first, rows), dst)
                })?;
        } else {
            let mut columns = vec![0f32; band * out.1 * width];
            for first in (0..out.0).step_by(band) {
                let rows = band.min(out.0 - first);
                let columns = &mut columns[..rows * out.1 * width];
                fill(first, rows, columns);
                let product = dense.forward_slice(
                    columns,
                    rows * out.1,
                    epilogue,
                    residual_rows(first, rows),
                )?;
                pixels[first * out.1 * outputs..][..product.len()].copy_from_slice(&product);
            }
        }
        Ok(Rows {
            pixels: Tensor::from_vec(pixels, (out.0 * out.1, outputs), &candle_core::Device::Cpu)?,
            size: out,
        })
    }

    /// Fill `out` with the im2col rows of output rows `rows` of a `[h * w,
    /// c]` map with `top` and `left` zeros before it: `[rows * out_w, kernel
    /// * kernel * c]`, zeros where the window leaves the map.
    fn im2col(
        &self,
        input: &[f32],
        c: usize,
        ((h, w), (top, left)): ((usize, usize), (usize, usize)),
        out_w: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let (kernel, stride) = (self.kernel, self.stride);
        let width = kernel * kernel * c;
        out.chunks_mut(out_w * width)
            .zip(rows)
            .for_each(|(row, oy)| {
                for ox in 0..out_w {
                    let patch = &mut row[ox * width..(ox + 1) * width];
                    for ky in 0..kernel {
                        let iy = (oy * stride + ky).checked_sub(top).filter(|&iy| iy < h);
                        for kx in 0..kernel {
                            let ix = (ox * stride + kx).checked_sub(left).filter(|&ix| ix < w);
                            let dst = &mut patch[(ky * kernel + kx) * c..][..c];
                            match (iy, ix) {
                                (Some(iy), Some(ix)) => {
                                    dst.copy_from_slice(&input[(iy * w + ix) * c..][..c])
                                }
                                // Outside the map: padding.
                                _ => dst.fill(0.0),
                            }
                        }
                    }
                }
            });
    }
}

/// A transposed convolution whose kernel equals its stride (no padding):
/// each input pixel becomes a `factor` x `factor` block of outputs.
#[derive(Debug, Clone)]
pub(crate) struct ConvTranspose {
    /// `[factor * factor * out, in]`: block rows, block columns, outputs.
    dense: Dense,
    factor: usize,
    outputs: usize,
}

impl ConvTranspose {
    /// PyTorch's `weight` `[inputs, outputs, factor, factor]` and `bias`
    /// under `vb`.
    pub(crate) fn load(
        vb: VarBuilder,
        (inputs, outputs): (usize, usize),
        factor: usize,
    ) -> Result<Self> {
        let weight = vb.get((inputs, outputs, factor, factor), "weight")?;
        let bias = vb.get(outputs, "bias")?;
        let rows = weight
            .permute((2, 3, 1, 0))?
            .reshape((factor * factor * outputs, inputs))?
            .contiguous()?;
        let bias = Tensor::cat(&vec![&bias; factor * factor], 0)?;
        Ok(Self {
            dense: Dense::new(rows, Some(bias))?,
            factor,
            outputs,
        })
    }

    pub(crate) fn forward(&self, x: &Rows) -> Result<Rows> {
        let (h, w) = x.size;
        let f = self.factor;
        let blocks = self.dense.forward(&x.pixels, Epilogue::Bias)?;
        let pixels = blocks
            .reshape((h, w, f, f, self.outputs))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((h * f * w * f, self.outputs))?;
        Ok(Rows {
            pixels,
            size: (h * f, w * f),
        })
    }
}

/// How [`resize`] interpolates (PyTorch's `interpolate` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interpolation {
    /// `mode="bilinear"`.
    Bilinear {
        /// `align_corners`.
        align_corners: bool,
    },
    /// `mode="bicubic", align_corners=False`.
    Bicubic,
    /// `mode="nearest"`: the source at `floor(out * in / out_size)`.
    Nearest,
}

/// The source positions and weights of each of `output` samples resized
/// from `input` samples.
pub(crate) fn taps(kind: Interpolation, input: usize, output: usize) -> Vec<Vec<(usize, f32)>> {
    let last = input.saturating_sub(1);
    (0..output)
        .map(|o| match kind {
            Interpolation::Nearest => {
                let scale = input as f32 / output as f32;
                vec![(((o as f32 * scale).floor() as usize).min(last), 1.0)]
            }
            Interpolation::Bilinear { align_corners } => {
                let real = if align_corners {
                    if output > 1 {
                        (last as f32 / (output - 1) as f32) * o as f32
                    } else {
                        0.0
                    }
                } else {
                    ((input as f32 / output as f32) * (o as f32 + 0.5) - 0.5).max(0.0)
                };
                let first = (real as usize).min(last);
                let second = (first + 1).min(last);
                let lambda = real - first as f32;
                vec![(first, 1.0 - lambda), (second, lambda)]
            }
            Interpolation::Bicubic => {
                const A: f32 = -0.75;
                let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
                let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
                let real = (input as f32 / output as f32) * (o as f32 + 0.5) - 0.5;
                let base = real.floor();
                let t = real - base;
                let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
                weights
                    .into_iter()
                    .enumerate()
                    .map(|(j, weight)| {
                        let index = (base as i64 + j as i64 - 1).clamp(0, last as i64) as usize;
                        (index, weight)
                    })
                    .collect()
            }
        })
        .collect()
}

/// Resize channels-last `values` (`[h * w, channels]`) from `from` to `to`:
/// along the width first, then along the height.
pub(crate) fn resize_values(
    values: &[f32],
    channels: usize,
    from: (usize, usize),
    to: (usize, usize),
    kind: Interpolation,
) -> Vec<f32> {
    let ((h, w), (out_h, out_w)) = (from, to);
    if h == 0 || w == 0 || channels == 0 {
        return vec![0.0; out_h * out_w * channels];
    }
    let columns = taps(kind, w, out_w);
    let mut across = vec![0f32; h * out_w * channels];
    across
        .par_chunks_mut(out_w * channels)
        .enumerate()
        .for_each(|(y, row)| {
            let src = &values[y * w * channels..(y + 1) * w * channels];
            for (out, taps) in row.chunks_mut(channels).zip(&columns) {
                for &(x, weight) in taps {
                    let pixel = &src[x * channels..(x + 1) * channels];
                    out.iter_mut()
                        .zip(pixel)
                        .for_each(|(o, v)| *o += weight * v);
                }
            }
        });
    let rows = taps(kind, h, out_h);
    let mut out = vec![0f32; out_h * out_w * channels];
    out.par_chunks_mut(out_w * channels)
        .zip(&rows)
        .for_each(|(row, taps)| {
            for &(y, weight) in taps {
                let src = &across[y * out_w * channels..(y + 1) * out_w * channels];
                row.iter_mut().zip(src).for_each(|(o, v)| *o += weight * v);
            }
        });
    out
}

/// [`resize_values`] on a map (identity when the size does not change).
pub(crate) fn resize(x: &Rows, to: (usize, usize), kind: Interpolation) -> Result<Rows> {
    if x.size == to {
        return Ok(x.clone());
    }
    let channels = x.channels()?;
    let values = x.pixels.flatten_all()?.to_vec1::<f32>()?;
    let resized = resize_values(&values, channels, x.size, to, kind);
    Ok(Rows {
        pixels: Tensor::from_vec(resized, (to.0 * to.1, channels), x.pixels.device())?,
        size: to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn taps_sum_to_one() {
        for kind in [
            Interpolation::Bicubic,
            Interpolation::Bilinear {
                align_corners: true,
            },
            Interpolation::Bilinear {
                align_corners: false,
            },
        ] {
            for (i, o) in [(4, 6), (6, 4), (4, 8), (2, 7), (1, 3)] {
                for t in taps(kind, i, o) {
                    let sum: f32 = t.iter().map(|(_, w)| w).sum();
                    assert!((sum - 1.0).abs() < 1e-6, "{kind:?} {i}->{o}: {t:?}");
                }
            }
        }
    }

    #[test]
    fn nearest_repeats_and_skips() {
        let values = [1.0, 2.0, 3.0];
        let up = resize_values(&values, 1, (1, 3), (1, 6), Interpolation::Nearest);
        assert_eq!(up, vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        let odd = resize_values(&values, 1, (1, 3), (1, 4), Interpolation::Nearest);
        // floor(o * 0.75): 0, 0, 1, 2.
        assert_eq!(odd, vec![1.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn align_corners_keeps_the_corners() {
        let values = [1.0, 2.0, 3.0, 4.0];
        let kind = Interpolation::Bilinear {
            align_corners: true,
        };
        let out = resize_values(&values, 1, (2, 2), (3, 3), kind);
        assert_eq!(out, vec![1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0]);
        // Same size: unchanged.
        assert_eq!(resize_values(&values, 1, (2, 2), (2, 2), kind), values);
    }

    /// A 3x3 convolution (padding 1) computed directly.
    fn direct_conv(
        input: &[f32],
        weight: &[f32],
        bias: &[f32],
        (h, w, c): (usize, usize, usize),
        stride: usize,
    ) -> (Vec<f32>, (usize, usize)) {
        let o = bias.len();
        let (out_h, out_w) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
        let mut out = Vec::with_capacity(out_h * out_w * o);
        for oy in 0..out_h {
            for ox in 0..out_w {
                for (oc, b) in bias.iter().enumerate() {
                    let mut sum = *b;
                    for ic in 0..c {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                                if iy < 1 || ix < 1 || iy > h || ix > w {
                                    continue;
                                }
                                let v = input[((iy - 1) * w + ix - 1) * c + ic];
                                sum += v * weight[((oc * c + ic) * 3 + ky) * 3 + kx];
                            }
                        }
                    }
                    out.push(sum);
                }
            }
        }
        (out, (out_h, out_w))
    }

    #[test]
    fn group_norm_matches_candles() -> Result<()> {
        let (h, w, c, groups) = (5usize, 3usize, 12usize, 4usize);
        let device = Device::Cpu;
        let map = Tensor::randn(0.5f32, 2.0, (h * w, c), &device)?;
        let residual = Tensor::randn(0f32, 1.0, (h * w, c), &device)?;
        let gamma = Tensor::randn(1f32, 0.5, c, &device)?;
        let beta = Tensor::randn(0f32, 0.5, c, &device)?;
        let norm = GroupNorm {
            eps: GROUP_NORM_EPS,
            gamma: gamma.to_vec1()?,
            beta: beta.to_vec1()?,
            groups,
        };
        let reference = candle_nn::GroupNorm::new(gamma, beta, c, groups, GROUP_NORM_EPS)?;
        // candle's is channels-first: [1, c, h, w].
        let as_image = |t: &Tensor| t.t()?.reshape((1, c, h, w));
        let normalised = candle_nn::Module::forward(&reference, &as_image(&map)?)?;
        let x = Rows {
            pixels: map,
            size: (h, w),
        };
        let r = Rows {
            pixels: residual.clone(),
            size: (h, w),
        };
        for (relu, with_residual) in [(false, false), (true, true)] {
            let got = norm.forward(&x, relu, with_residual.then_some(&r))?;
            let mut want = normalised.clone();
            if with_residual {
                want = (want + as_image(&residual)?)?;
            }
            if relu {
                want = want.relu()?;
            }
            let diff = (as_image(&got.pixels)? - want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "relu {relu}, residual {with_residual}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn convolutions_match_a_direct_sum() -> Result<()> {
        // A small map (one band) and a tall one (many bands, in parallel).
        for (h, w) in [(5usize, 4usize), (1040, 7)] {
            let (c, o) = (2usize, 3usize);
            let weight: Vec<f32> = (0..o * c * 9).map(|i| (i as f32 * 0.37).sin()).collect();
            let input: Vec<f32> = (0..h * w * c).map(|i| (i as f32 * 0.11).cos()).collect();
            let bias = [0.5f32, -0.25, 0.0];
            let conv = Conv::new(
                &Tensor::from_vec(weight.clone(), (o, c, 3, 3), &Device::Cpu)?,
                Some(Tensor::new(&bias, &Device::Cpu)?),
                2,
                1,
            )?;
            let x = Rows {
                pixels: Tensor::from_vec(input.clone(), (h * w, c), &Device::Cpu)?,
                size: (h, w),
            };
            let y = conv.forward(&x, Epilogue::Bias)?;
            let (want, size) = direct_conv(&input, &weight, &bias, (h, w, c), 2);
            assert_eq!(y.size, size);
            let got = y.pixels.flatten_all()?.to_vec1::<f32>()?;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-5, "{h}x{w} value {i}: {g} vs {w}");
            }
        }
        Ok(())
    }

    #[test]
    fn winograd_convolutions_match_a_direct_sum() -> Result<()> {
        // Odd and even sides (partial tiles), a single pixel, a map of one
        // band and one of many; channel counts that leave partial vectors.
        for (h, w) in [(1usize, 1usize), (5, 4), (4, 7), (64, 33)] {
            let (c, o) = (19usize, 37usize);
            let weight: Vec<f32> = (0..o * c * 9).map(|i| (i as f32 * 0.37).sin()).collect();
            let input: Vec<f32> = (0..h * w * c).map(|i| (i as f32 * 0.11).cos()).collect();
            let bias: Vec<f32> = (0..o).map(|i| (i as f32 * 0.5).sin()).collect();
            let conv = Conv::new(
                &Tensor::from_vec(weight.clone(), (o, c, 3, 3), &Device::Cpu)?,
                Some(Tensor::new(bias.as_slice(), &Device::Cpu)?),
                1,
                1,
            )?;
            assert!(matches!(conv.product, Product::Winograd(_)));
            let x = Rows {
                pixels: Tensor::from_vec(input.clone(), (h * w, c), &Device::Cpu)?,
                size: (h, w),
            };
            let residual: Vec<f32> = (0..h * w * o).map(|i| (i as f32 * 0.3).cos()).collect();
            let residual_tensor = Tensor::from_vec(residual.clone(), (h * w, o), &Device::Cpu)?;
            let (direct, size) = direct_conv(&input, &weight, &bias, (h, w, c), 1);
            assert_eq!(size, (h, w));
            for epilogue in [
                Epilogue::Bias,
                Epilogue::Relu,
                Epilogue::Residual(&residual_tensor),
                Epilogue::ResidualRelu(&residual_tensor),
            ] {
                let y = conv.forward(&x, epilogue)?;
                assert_eq!(y.size, (h, w));
                let got = y.pixels.flatten_all()?.to_vec1::<f32>()?;
                assert_eq!(got.len(), direct.len());
                for (i, (g, d)) in got.iter().zip(&direct).enumerate() {
                    let mut want = *d;
                    if matches!(epilogue, Epilogue::Residual(_) | Epilogue::ResidualRelu(_)) {
                        want += residual[i];
                    }
                    if matches!(epilogue, Epilogue::Relu | Epilogue::ResidualRelu(_)) {
                        want = want.max(0.0);
                    }
                    assert!((g - want).abs() < 1e-4, "{h}x{w} value {i}: {g} vs {want}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn same_padding_splits_the_zeros_smaller_half_first() {
        // 7 values, kernel 3, stride 2: 4 outputs, 2 zeros, 1 before.
        assert_eq!(Padding::Same.along(7, 3, 2), Some((4, 1)));
        // 8 values: 4 outputs, 1 zero, none before.
        assert_eq!(Padding::Same.along(8, 3, 2), Some((4, 0)));
        // 7x7 stride 2 on 9: 5 outputs, 6 zeros, 3 before.
        assert_eq!(Padding::Same.along(9, 7, 2), Some((5, 3)));
        assert_eq!(Padding::Same.along(6, 1, 2), Some((3, 0)));
        assert_eq!(Padding::Fixed(1).along(5, 3, 2), Some((3, 1)));
        assert_eq!(Padding::Fixed(0).along(2, 3, 1), None);
    }

    #[test]
    fn bands_give_the_whole_convolution() -> Result<()> {
        let (c, o, h, w) = (3usize, 4usize, 7usize, 6usize);
        let weight: Vec<f32> = (0..o * c * 9).map(|i| (i as f32 * 0.23).sin()).collect();
        // Through im2col, which this test is about.
        let weight = Tensor::from_vec(weight, (o, c, 3, 3), &Device::Cpu)?;
        let conv = Conv {
            product: Product::Im2col(im2col_layer(&weight, None)?),
            kernel: 3,
            stride: 1,
            padding: Padding::Fixed(1),
        };
        let input: Vec<f32> = (0..h * w * c).map(|i| (i as f32 * 0.7).cos()).collect();
        let x = Rows {
            pixels: Tensor::from_vec(input, (h * w, c), &Device::Cpu)?,
            size: (h, w),
        };
        let residual: Vec<f32> = (0..h * w * o).map(|i| i as f32 * 0.01).collect();
        let residual = Tensor::from_vec(residual, (h * w, o), &Device::Cpu)?;
        let whole = conv.forward(&x, Epilogue::ResidualRelu(&residual))?;
        // One output row per band.
        let banded = conv.forward_in_bands(&x, Epilogue::ResidualRelu(&residual), 1)?;
        assert_eq!(banded.size, whole.size);
        assert_eq!(
            banded.pixels.to_vec2::<f32>()?,
            whole.pixels.to_vec2::<f32>()?
        );
        Ok(())
    }
}
