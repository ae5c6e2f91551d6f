//! Object detection with YOLOS checkpoints (`YolosForObjectDetection`).
//!
//! Tokens are `[CLS]`, the patches (row-major), then the detection tokens.
//! The position embeddings (and the per-layer mid position embeddings) have
//! their patch part resized to the input's patch grid with torch's bicubic
//! interpolation (`align_corners=False`, A = -0.75, border clamp). Two
//! 3-layer MLP heads read the detection tokens after the final LayerNorm.

use super::conv::{Interpolation, taps};
use super::detection::{DetectionModel, Mlp, Predictions};
use super::encoder::{Encoder, PatchEmbeddings, VitConfig};
use crate::error::LocalError;
use crate::files::ModelFiles;
use candle_core::Tensor;
use candle_nn::{LayerNorm, VarBuilder, layer_norm};

/// YOLOS's default `image_size` (`[height, width]`).
const DEFAULT_IMAGE_SIZE: (usize, usize) = (512, 864);

/// Build the network of a YOLOS checkpoint and its labels (no-object
/// excluded).
pub(crate) fn load(
    files: &ModelFiles,
    vb: VarBuilder,
) -> Result<(YolosForObjectDetection, Vec<String>), LocalError> {
    let config: VitConfig = files.json("config.json")?;
    let grid = config
        .check(DEFAULT_IMAGE_SIZE)
        .map_err(|e| files.load_error(format!("config.json: {e}")))?;
    let num_labels = config.num_labels();
    let model = YolosForObjectDetection::load(&config, grid, num_labels, vb)
        .map_err(|e| files.load_error(format!("weights: {e}")))?;
    Ok((model, config.labels(num_labels)))
}

/// The YOLOS detection network.
#[derive(Debug, Clone)]
pub struct YolosForObjectDetection {
    cls_token: Tensor,
    detection_tokens: Tensor,
    position_embeddings: Tensor,
    mid_position_embeddings: Option<Tensor>,
    patches: PatchEmbeddings,
    encoder: Encoder,
    layernorm: LayerNorm,
    class_head: Mlp,
    box_head: Mlp,
    grid: (usize, usize),
    hidden: usize,
    detections: usize,
    layers: usize,
}

impl YolosForObjectDetection {
    /// Build from weights named as transformers saves them (`vit.*`,
    /// `class_labels_classifier.*`, `bbox_predictor.*`); `grid` is the patch
    /// grid of the configured image size.
    pub fn load(
        cfg: &VitConfig,
        grid: (usize, usize),
        num_labels: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let hidden = cfg.hidden_size;
        let detections = cfg.num_detection_tokens;
        let seq = 1 + grid.0 * grid.1 + detections;
        let vit = vb.pp("vit");
        let embeddings = vit.pp("embeddings");
        let layers = cfg.num_hidden_layers;
        let mid_position_embeddings = if cfg.use_mid_position_embeddings && layers > 1 {
            Some(
                vit.pp("encoder")
                    .get((layers - 1, 1, seq, hidden), "mid_position_embeddings")?
                    .reshape((layers - 1, seq, hidden))?,
            )
        } else {
            None
        };
        Ok(Self {
            cls_token: embeddings.get((1, 1, hidden), "cls_token")?,
            detection_tokens: embeddings.get((1, detections, hidden), "detection_tokens")?,
            position_embeddings: embeddings.get((1, seq, hidden), "position_embeddings")?,
            mid_position_embeddings,
            patches: PatchEmbeddings::load(cfg, embeddings.pp("patch_embeddings"))?,
            encoder: Encoder::load(cfg, vit.pp("encoder"))?,
            layernorm: layer_norm(hidden, cfg.layer_norm_eps, vit.pp("layernorm"))?,
            class_head: Mlp::load(
                hidden,
                hidden,
                num_labels + 1,
                3,
                vb.pp("class_labels_classifier"),
            )?,
            box_head: Mlp::load(hidden, hidden, 4, 3, vb.pp("bbox_predictor"))?,
            grid,
            hidden,
            detections,
            layers,
        })
    }

    /// `(logits [batch, tokens, labels + 1], boxes [batch, tokens, 4])` for
    /// pixel values `[batch, 3, H, W]`; boxes are `(cx, cy, w, h)` in 0..1.
    pub fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (batch, _, height, width) = pixel_values.dims4()?;
        let grid = self.patches.grid(height, width);
        if grid.0 == 0 || grid.1 == 0 {
            candle_core::bail!("a {width}x{height} input is smaller than one patch");
        }
        let patches = self.patches.forward(pixel_values)?;
        let cls = self
            .cls_token
            .broadcast_as((batch, 1, self.hidden))?
            .contiguous()?;
        let detection = self
            .detection_tokens
            .broadcast_as((batch, self.detections, self.hidden))?
            .contiguous()?;
        let position =
            resize_patch_positions(&self.position_embeddings, self.grid, grid, self.detections)?;
        let xs = Tensor::cat(&[&cls, &patches, &detection], 1)?.broadcast_add(&position)?;
        let mid = self
            .mid_position_embeddings
            .as_ref()
            .map(|m| resize_patch_positions(m, self.grid, grid, self.detections))
            .transpose()?;
        let last = self.layers - 1;
        let xs = self.encoder.forward_with(&xs, |i, hs| match &mid {
            Some(mid) if i < last => hs.broadcast_add(&mid.narrow(0, i, 1)?),
            _ => Ok(hs),
        })?;
        let xs = xs.apply(&self.layernorm)?;
        let seq = xs.dim(1)?;
        let tokens = xs.narrow(1, seq - self.detections, self.detections)?;
        let logits = self.class_head.forward(&tokens)?;
        let boxes = candle_nn::ops::sigmoid(&self.box_head.forward(&tokens)?)?;
        Ok((logits, boxes))
    }
}

/// The weights of torch's 1-D bicubic resize from `input` to `output`
/// samples (`align_corners=False`, A = -0.75, indices clamped to the
/// border), as a dense row-major `[output, input]` matrix. Computed in
/// float32 like torch's CPU kernel.
pub fn bicubic_weights(input: usize, output: usize) -> Vec<f32> {
    let mut matrix = vec![0f32; output * input];
    for (o, taps) in taps(Interpolation::Bicubic, input, output)
        .into_iter()
        .enumerate()
    {
        for (index, weight) in taps {
            matrix[o * input + index] += weight;
        }
    }
    matrix
}

/// Resize the patch part of position embeddings `[n, 1 + rows*cols + det,
/// hidden]` from grid `from` to grid `to`, keeping the `[CLS]` and
/// detection-token parts.
fn resize_patch_positions(
    positions: &Tensor,
    from: (usize, usize),
    to: (usize, usize),
    detections: usize,
) -> candle_core::Result<Tensor> {
    if from == to {
        return Ok(positions.clone());
    }
    let (n, _, hidden) = positions.dims3()?;
    let count = from.0 * from.1;
    let device = positions.device();
    let cls = positions.narrow(1, 0, 1)?;
    let det = positions.narrow(1, 1 + count, detections)?;
    // [n, count, hidden] -> [n * hidden * rows, cols]
    let grid = positions
        .narrow(1, 1, count)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n * hidden * from.0, from.1))?;
    let across = Tensor::from_vec(bicubic_weights(from.1, to.1), (to.1, from.1), device)?;
    let down = Tensor::from_vec(bicubic_weights(from.0, to.0), (to.0, from.0), device)?;
    // Along the columns: [n*hidden*rows, to.cols]
    let columns = grid.matmul(&across.t()?)?;
    // Along the rows: [n*hidden, to.cols, rows] x [rows, to.rows]
    let rows = columns
        .reshape((n * hidden, from.0, to.1))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n * hidden * to.1, from.0))?
        .matmul(&down.t()?)?;
    // [n*hidden, to.cols, to.rows] -> [n, to.rows*to.cols, hidden]
    let patches = rows
        .reshape((n * hidden, to.1, to.0))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n, hidden, to.0 * to.1))?
        .transpose(1, 2)?
        .contiguous()?;
    Tensor::cat(&[&cls, &patches, &det], 1)
}

impl DetectionModel for YolosForObjectDetection {
    fn predict(&self, pixel_values: &Tensor) -> Result<Predictions, LocalError> {
        let (logits, boxes) = self.forward(pixel_values)?;
        Predictions::first(&logits, &boxes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_bicubic_is_identity() {
        let m = bicubic_weights(3, 3);
        assert_eq!(m, vec![1., 0., 0., 0., 1., 0., 0., 0., 1.]);
    }

    #[test]
    fn bicubic_rows_sum_to_one() {
        for (i, o) in [(4, 6), (6, 4), (4, 8), (2, 7)] {
            let m = bicubic_weights(i, o);
            for row in m.chunks(i) {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-6, "{i}->{o}: {row:?}");
            }
        }
    }
}
