//! The convolutional pieces the UNet and the autoencoder share on hgpt's
//! CPU kernels ([`super::unet_cpu`], [`super::vae_cpu`]).

use crate::kernels::{Dense, Epilogue};
use crate::vision::conv::{Conv, GroupNorm, Rows};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// A 3x3 convolution keeping the map's size.
pub(super) fn same_conv(vb: VarBuilder, inputs: usize, outputs: usize) -> Result<Conv> {
    Conv::load(vb, (inputs, outputs), 3, (1, 1), true)
}

/// A linear layer's weight `[outputs, inputs]` (and bias), stored as
/// `nn.Linear` or as a 1x1 convolution.
pub(super) fn linear(
    vb: VarBuilder,
    inputs: usize,
    outputs: usize,
    bias: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let weight = match vb.get((outputs, inputs), "weight") {
        Ok(weight) => weight,
        Err(_) => vb
            .get((outputs, inputs, 1, 1), "weight")?
            .reshape((outputs, inputs))?,
    };
    let bias = bias.then(|| vb.get(outputs, "bias")).transpose()?;
    Ok((weight, bias))
}

/// [`linear`] as a layer.
pub(super) fn dense(vb: VarBuilder, inputs: usize, outputs: usize, bias: bool) -> Result<Dense> {
    let (weight, bias) = linear(vb, inputs, outputs, bias)?;
    Dense::new(weight, bias)
}

/// `ResnetBlock2D`: `shortcut(x) + conv2(silu(norm2(h)))` over
/// `output_scale_factor`, where `h = conv1(silu(norm1(x)))` plus
/// `time_emb_proj(silu(emb))` per channel (the autoencoder's blocks have no
/// time embedding); the shortcut is a 1x1 convolution when the width
/// changes.
pub(super) struct Resnet {
    norm1: GroupNorm,
    conv1: Conv,
    time_emb_proj: Option<Dense>,
    norm2: GroupNorm,
    conv2: Conv,
    shortcut: Option<Conv>,
    output_scale: f64,
}

impl Resnet {
    /// The block under `vb`: its norms over `(groups, eps)`, a time
    /// embedding `time_dim` wide when given.
    pub(super) fn load(
        vb: VarBuilder,
        (inputs, outputs): (usize, usize),
        (groups, eps): (usize, f64),
        time_dim: Option<usize>,
        output_scale: f64,
    ) -> Result<Self> {
        let norm = |vb: VarBuilder, channels: usize| -> Result<GroupNorm> {
            Ok(GroupNorm::load(vb, channels, groups)?.with_eps(eps))
        };
        Ok(Self {
            norm1: norm(vb.pp("norm1"), inputs)?,
            conv1: same_conv(vb.pp("conv1"), inputs, outputs)?,
            time_emb_proj: time_dim
                .map(|dim| dense(vb.pp("time_emb_proj"), dim, outputs, true))
                .transpose()?,
            norm2: norm(vb.pp("norm2"), outputs)?,
            conv2: same_conv(vb.pp("conv2"), outputs, outputs)?,
            shortcut: (inputs != outputs)
                .then(|| Conv::load(vb.pp("conv_shortcut"), (inputs, outputs), 1, (1, 0), true))
                .transpose()?,
            output_scale,
        })
    }

    /// `emb` is `silu` of the row's embedding, `[1, time_dim]`, for a block
    /// with a time embedding.
    pub(super) fn forward(&self, x: &Rows, emb: Option<&Tensor>) -> Result<Rows> {
        let mut h = self
            .conv1
            .forward(&self.norm1.forward_silu(x)?, Epilogue::Bias)?;
        match (&self.time_emb_proj, emb) {
            (Some(projection), Some(emb)) => {
                let time = projection.forward(emb, Epilogue::Bias)?;
                h.pixels = h.pixels.broadcast_add(&time)?;
            }
            (None, None) => {}
            _ => candle_core::bail!("a ResNet block's time embedding is missing or unexpected"),
        }
        let h = self.norm2.forward_silu(&h)?;
        let shortcut = match &self.shortcut {
            Some(conv) => conv.forward(x, Epilogue::Bias)?,
            None => x.clone(),
        };
        let mut out = self
            .conv2
            .forward(&h, Epilogue::Residual(&shortcut.pixels))?;
        if self.output_scale != 1.0 {
            out.pixels = (out.pixels / self.output_scale)?;
        }
        Ok(out)
    }
}
