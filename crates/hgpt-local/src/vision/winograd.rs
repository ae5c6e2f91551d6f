//! 3x3 convolutions with stride 1 and one pixel of zero padding by
//! Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, 2016), on the
//! CPU in f32.
//!
//! Each 2x2 block of outputs comes from a 4x4 window of the input: the
//! window is transformed (`V = B^T d B`), multiplied position by position
//! with the transformed kernels (`U = G g G^T`, computed once at load), and
//! transformed back (`Y = A^T M A`). The 16 positions make 16 products of
//! `[tiles, in] x [in, out]`, which is 16 multiplications per output pair
//! of channels and block where the direct convolution needs 36: 2.25 times
//! fewer. The transforms only add and halve, so the result is the direct
//! convolution's to float rounding. The products run on [`Dense`] layers
//! (the few-rows kernel where the CPU has it), a band of tile rows at a
//! time per thread, so that each band's transformed tiles stay in cache.

use super::conv::Rows;
use crate::kernels::{Dense, Epilogue, cpu_f32};
use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// Positions in a transformed tile.
const POSITIONS: usize = 16;
/// Tiles per band, at most: the few-rows kernel takes all inputs in one
/// pass up to 140 rows.
const BAND_TILES: usize = 140;

/// A 3x3 convolution (stride 1, padding 1) in the Winograd domain.
#[derive(Debug, Clone)]
pub(crate) struct Winograd {
    /// The transformed kernels, position by position, each `[out, in]`.
    kernels: Vec<Dense>,
    /// The bias per output channel (zeros when the convolution has none).
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Winograd {
    /// From PyTorch's `weight` `[out, in, 3, 3]` (f32 values) and `bias`.
    pub(crate) fn new(
        weight: &[f32],
        (outputs, inputs): (usize, usize),
        bias: Option<&[f32]>,
    ) -> Result<Self> {
        if weight.len() != outputs * inputs * 9 {
            candle_core::bail!("winograd: the weight is not {outputs}x{inputs}x3x3");
        }
        let bias = match bias {
            Some(b) if b.len() == outputs => b.to_vec(),
            Some(b) => candle_core::bail!("winograd: {} biases for {outputs} outputs", b.len()),
            None => vec![0.0; outputs],
        };
        let mut transformed = vec![vec![0f32; outputs * inputs]; POSITIONS];
        for (pair, g) in weight.chunks_exact(9).enumerate() {
            for (position, u) in kernel_transform(g).into_iter().enumerate() {
                transformed[position][pair] = u;
            }
        }
        let kernels = transformed
            .into_par_iter()
            .map(|u| {
                let u = Tensor::from_vec(u, (outputs, inputs), &Device::Cpu)?;
                Dense::new(u, None)?.for_few_rows()
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            kernels,
            bias,
            inputs,
            outputs,
        })
    }

    /// The convolution of `x`, then `epilogue` (a residual is `[h * w,
    /// out]`), on the CPU in f32.
    pub(crate) fn forward(&self, x: &Rows, epilogue: Epilogue) -> Result<Rows> {
        let activation = match epilogue {
            Epilogue::Gelu => Tensor::gelu_erf,
            Epilogue::GeluTanh => Tensor::gelu,
            Epilogue::QuickGelu => |y: &Tensor| y * candle_nn::ops::sigmoid(&(y * 1.702)?)?,
            _ => return self.forward_fused(x, epilogue),
        };
        let y = self.forward_fused(x, Epilogue::Bias)?;
        Ok(Rows {
            pixels: activation(&y.pixels)?,
            size: y.size,
        })
    }

    /// [`Winograd::forward`] for the epilogues the output transform applies:
    /// the bias, a residual, ReLU.
    fn forward_fused(&self, x: &Rows, epilogue: Epilogue) -> Result<Rows> {
        let (h, w) = x.size;
        if x.channels()? != self.inputs {
            candle_core::bail!(
                "winograd: {} channels into a convolution of {}",
                x.channels()?,
                self.inputs
            );
        }
        let (residual, relu) = match epilogue {
            Epilogue::Bias => (None, false),
            Epilogue::Relu => (None, true),
            Epilogue::Residual(r) => (Some(r), false),
            Epilogue::ResidualRelu(r) => (Some(r), true),
            _ => candle_core::bail!("winograd: an activation the output transform lacks"),
        };
        let pixels = x
            .pixels
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let (input_storage, input_layout) = pixels.storage_and_layout();
        let input = cpu_f32("winograd input", &input_storage, input_layout)?;
        let residual = residual
            .map(|r| {
                r.to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .contiguous()
            })
            .transpose()?;
        let residual_guard = residual.as_ref().map(|r| r.storage_and_layout());
        let residual = match &residual_guard {
            Some((storage, layout)) => Some(cpu_f32("winograd residual", storage, layout)?),
            None => None,
        };
        if input.len() != h * w * self.inputs
            || residual.is_some_and(|r| r.len() != h * w * self.outputs)
        {
            candle_core::bail!("winograd: the map or the residual is not {h}x{w}");
        }
        let map = Map {
            input,
            size: (h, w),
            residual,
            relu,
        };
        let tile_rows = h.div_ceil(2);
        let tiles_per_row = w.div_ceil(2);
        let threads = rayon::current_num_threads();
        let band_rows = (BAND_TILES / tiles_per_row.max(1))
            .min(tile_rows.div_ceil(2 * threads))
            .max(1);
        let mut out = vec![0f32; h * w * self.outputs];
        if !out.is_empty() {
            out.par_chunks_mut(2 * band_rows * w * self.outputs)
                .enumerate()
                .try_for_each_init(Scratch::default, |scratch, (band, dst)| {
                    let first = band * band_rows;
                    let rows = first..(first + band_rows).min(tile_rows);
                    self.band(&map, rows, scratch, dst)
                })?;
        }
        drop(residual_guard);
        drop(input_storage);
        Ok(Rows {
            pixels: Tensor::from_vec(out, (h * w, self.outputs), &Device::Cpu)?,
            size: (h, w),
        })
    }

    /// The outputs of tile rows `tile_rows` into `dst` (their pixel rows),
    /// in blocks of at most [`BAND_TILES`] tiles.
    fn band(
        &self,
        map: &Map,
        tile_rows: std::ops::Range<usize>,
        scratch: &mut Scratch,
        dst: &mut [f32],
    ) -> Result<()> {
        let tiles_per_row = map.size.1.div_ceil(2);
        let tiles: Vec<(usize, usize)> = tile_rows
            .clone()
            .flat_map(|ty| (0..tiles_per_row).map(move |tx| (ty, tx)))
            .collect();
        let first_pixel = 2 * tile_rows.start * map.size.1;
        for block in tiles.chunks(BAND_TILES) {
            self.block(map, block, scratch, dst, first_pixel)?;
        }
        Ok(())
    }

    /// The outputs of `tiles` into `dst`, whose first pixel is
    /// `first_pixel`.
    fn block(
        &self,
        map: &Map,
        tiles: &[(usize, usize)],
        scratch: &mut Scratch,
        dst: &mut [f32],
        first_pixel: usize,
    ) -> Result<()> {
        let (c, k, n) = (self.inputs, self.outputs, tiles.len());
        let (h, w) = map.size;
        scratch.transformed.resize(POSITIONS * n * c, 0.0);
        scratch.products.resize(POSITIONS * n * k, 0.0);
        scratch.rows.resize(POSITIONS * c.max(k), 0.0);
        scratch.zeros.resize(c, 0.0);
        for (t, &(ty, tx)) in tiles.iter().enumerate() {
            // The window: from one row and column before the tile, zeros
            // outside the map.
            let d: [&[f32]; POSITIONS] = std::array::from_fn(|p| {
                let y = (2 * ty + p / 4).checked_sub(1).filter(|&y| y < h);
                let x = (2 * tx + p % 4).checked_sub(1).filter(|&x| x < w);
                match (y, x) {
                    (Some(y), Some(x)) => &map.input[(y * w + x) * c..(y * w + x + 1) * c],
                    _ => &scratch.zeros[..],
                }
            });
            // B^T d down the columns, into `rows`...
            let r = &mut scratch.rows[..POSITIONS * c];
            for j in 0..4 {
                for (i, (a, b, sign)) in [(0, 8, -1.0), (4, 8, 1.0), (8, 4, -1.0), (4, 12, -1.0)]
                    .into_iter()
                    .enumerate()
                {
                    combine(&mut r[(4 * i + j) * c..][..c], d[a + j], d[b + j], sign);
                }
            }
            // ... then (B^T d) B along the rows, into the positions' rows.
            let r = &scratch.rows[..POSITIONS * c];
            let row = |p: usize| &r[p * c..(p + 1) * c];
            for i in 0..4 {
                for (j, (a, b, sign)) in [(0, 2, -1.0), (1, 2, 1.0), (2, 1, -1.0), (1, 3, -1.0)]
                    .into_iter()
                    .enumerate()
                {
                    let at = ((4 * i + j) * n + t) * c;
                    combine(
                        &mut scratch.transformed[at..at + c],
                        row(4 * i + a),
                        row(4 * i + b),
                        sign,
                    );
                }
            }
        }
        for (position, kernel) in self.kernels.iter().enumerate() {
            kernel.rows_into(
                &scratch.transformed[position * n * c..(position + 1) * n * c],
                n,
                Epilogue::Bias,
                None,
                &mut scratch.products[position * n * k..(position + 1) * n * k],
            )?;
        }
        for (t, &(ty, tx)) in tiles.iter().enumerate() {
            let m = |p: usize| &scratch.products[(p * n + t) * k..(p * n + t + 1) * k];
            // A^T m down the columns, into `rows`: two rows of four.
            let s = &mut scratch.rows[..8 * k];
            for j in 0..4 {
                let (first, second) = s.split_at_mut(4 * k);
                sum_of_three(&mut first[j * k..][..k], m(j), m(4 + j), m(8 + j), 1.0);
                sum_of_three(
                    &mut second[j * k..][..k],
                    m(4 + j),
                    m(8 + j),
                    m(12 + j),
                    -1.0,
                );
            }
            // ... then (A^T m) A along the rows: the 2x2 outputs.
            for (block, (i, second)) in [(0, false), (0, true), (1, false), (1, true)]
                .into_iter()
                .enumerate()
            {
                let (oy, ox) = (2 * ty + block / 2, 2 * tx + block % 2);
                if oy >= h || ox >= w {
                    continue;
                }
                let pixel = oy * w + ox;
                let s = &scratch.rows[4 * i * k..4 * (i + 1) * k];
                let (s0, s1, s2, s3) = (&s[..k], &s[k..2 * k], &s[2 * k..3 * k], &s[3 * k..]);
                let out = &mut dst[(pixel - first_pixel) * k..][..k];
                if second {
                    sum_of_three(out, s1, s2, s3, -1.0);
                } else {
                    sum_of_three(out, s0, s1, s2, 1.0);
                }
                for (o, b) in out.iter_mut().zip(&self.bias) {
                    *o += b;
                }
                if let Some(residual) = map.residual {
                    for (o, r) in out.iter_mut().zip(&residual[pixel * k..(pixel + 1) * k]) {
                        *o += r;
                    }
                }
                if map.relu {
                    for o in out.iter_mut() {
                        *o = o.max(0.0);
                    }
                }
            }
        }
        Ok(())
    }
}

/// `out = a + sign * b`, value by value.
#[inline(always)]
fn combine(out: &mut [f32], a: &[f32], b: &[f32], sign: f32) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = if sign > 0.0 { a + b } else { a - b };
    }
}

/// `out = a + sign * (b + c)`... as the output transform needs it: `a + b
/// + c` when `sign` is 1, `a - b - c` when it is -1.
#[inline(always)]
fn sum_of_three(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32], sign: f32) {
    for (((o, a), b), c) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = if sign > 0.0 { a + b + c } else { a - b - c };
    }
}

/// A thread's buffers for a block of tiles: the transformed tiles and the
/// products, position by position.
#[derive(Default)]
struct Scratch {
    transformed: Vec<f32>,
    products: Vec<f32>,
    /// Half-transformed rows of one tile.
    rows: Vec<f32>,
    /// A row of zeros, for the window outside the map.
    zeros: Vec<f32>,
}

/// The input map and what follows the convolution.
struct Map<'a> {
    /// `[h * w, in]`.
    input: &'a [f32],
    size: (usize, usize),
    /// `[h * w, out]`, added after the bias.
    residual: Option<&'a [f32]>,
    relu: bool,
}

/// `G g G^T` for one 3x3 kernel `g` (row by row): 4x4, row by row.
fn kernel_transform(g: &[f32]) -> [f32; POSITIONS] {
    // G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
    let apply = |a: f32, b: f32, c: f32| [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c];
    let columns: [[f32; 4]; 3] = std::array::from_fn(|j| apply(g[j], g[3 + j], g[6 + j]));
    let mut u = [0f32; POSITIONS];
    for i in 0..4 {
        let row = apply(columns[0][i], columns[1][i], columns[2][i]);
        u[4 * i..4 * i + 4].copy_from_slice(&row);
    }
    u
}
