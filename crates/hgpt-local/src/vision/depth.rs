//! The depth-estimation pipeline, as transformers (4.57) runs it: the DPT
//! image processor, the network ([`super::dpt`]), the predicted depth
//! resized to the image (bicubic, `post_process_depth_estimation`) and the
//! depth image rendered from it (scaled to 0..255 between its minimum and
//! maximum, truncated to `u8`).

use super::conv::{Interpolation, resize_values};
use super::dpt::{DepthAnythingConfig, DptConfig, DptForDepthEstimation};
use super::image_bytes;
use super::preprocess::{ImageProcessor, ProcessorKind, decode_image};
use crate::error::LocalError;
use crate::files::{ModelFiles, WEIGHTS};
use crate::pipeline::Pipeline;
use candle_core::Device;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::TaskKind;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, GrayImage, ImageEncoder, RgbImage};
use serde_json::Value;

/// The depth of one image.
#[derive(Debug, Clone)]
pub struct DepthMap {
    /// Depth per pixel of the image, row-major (the pipeline's
    /// `predicted_depth`).
    pub depth: Vec<f32>,
    /// `(height, width)` of the image.
    pub size: (usize, usize),
}

impl DepthMap {
    /// The pipeline's depth image: `(d - min) / (max - min) * 255` in f32,
    /// truncated (all 0 for a constant depth).
    pub fn render(&self) -> Result<GrayImage, LocalError> {
        let (min, max) = self
            .depth
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &d| {
                (lo.min(d), hi.max(d))
            });
        let range = max - min;
        let pixels = self
            .depth
            .iter()
            .map(|&d| {
                let scaled = (d - min) / range * 255.0;
                // NaN (a constant map) and anything out of range saturate.
                scaled as u8
            })
            .collect();
        let (height, width) = self.size;
        GrayImage::from_raw(width as u32, height as u32, pixels)
            .ok_or_else(|| LocalError::Compute("the depth map does not fit the image".into()))
    }

    /// The depth as the wire protocol's nested list (`[height][width]`),
    /// each value the exact `f64` of its `f32`, as Python's `tolist()` of
    /// the tensor gives it.
    pub fn to_json(&self) -> Value {
        let width = self.size.1.max(1);
        Value::Array(
            self.depth
                .chunks(width)
                .map(|row| {
                    Value::Array(
                        row.iter()
                            .map(|&d| {
                                serde_json::Number::from_f64(f64::from(d))
                                    .map_or(Value::Null, Value::Number)
                            })
                            .collect(),
                    )
                })
                .collect(),
        )
    }
}

/// A loaded depth network with its image processor.
pub struct DepthEstimator {
    model: DptForDepthEstimation,
    processor: ImageProcessor,
    device: Device,
    weight_bytes: u64,
}

impl DepthEstimator {
    /// Load a `DPTForDepthEstimation` checkpoint.
    pub fn load_dpt(files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let config: DptConfig = files.json("config.json")?;
        Self::load_with(files, device, |vb| {
            DptForDepthEstimation::load_dpt(&config, vb)
        })
    }

    /// Load a `DepthAnythingForDepthEstimation` checkpoint.
    pub fn load_depth_anything(files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let config: DepthAnythingConfig = files.json("config.json")?;
        Self::load_with(files, device, |vb| {
            DptForDepthEstimation::load_depth_anything(&config, vb)
        })
    }

    fn load_with(
        files: &ModelFiles,
        device: &Device,
        build: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<DptForDepthEstimation>,
    ) -> Result<Self, LocalError> {
        let processor = ImageProcessor::load(files, ProcessorKind::Dpt)?;
        let weights = files.weights(device)?;
        let model =
            build(weights.vb).map_err(|e| files.load_error(format!("{}: {e}", weights.file)))?;
        Ok(Self {
            model,
            processor,
            device: device.clone(),
            weight_bytes: weights.bytes,
        })
    }

    /// The network.
    pub fn model(&self) -> &DptForDepthEstimation {
        &self.model
    }

    /// The network's own output for a decoded image: depth at the
    /// processed resolution, and its `(height, width)`.
    pub fn predicted_depth(
        &self,
        image: &RgbImage,
    ) -> Result<(Vec<f32>, (usize, usize)), LocalError> {
        let task = TaskKind::DepthEstimation;
        let pixel_values = self.processor.preprocess(task, image, &self.device)?;
        Ok(self.model.forward(&pixel_values)?)
    }

    /// The depth of every pixel of the image.
    pub fn estimate(&self, image: &RgbImage) -> Result<DepthMap, LocalError> {
        let (depth, size) = self.predicted_depth(image)?;
        let target = (image.height() as usize, image.width() as usize);
        Ok(DepthMap {
            depth: resize_values(&depth, 1, size, target, Interpolation::Bicubic),
            size: target,
        })
    }
}

/// A grey image as PNG bytes.
fn png(image: &GrayImage) -> Result<Vec<u8>, LocalError> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::L8,
        )
        .map_err(|e| LocalError::Compute(format!("cannot encode the depth image: {e}")))?;
    Ok(bytes)
}

impl Pipeline for DepthEstimator {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::DepthEstimation]
    }

    fn run(&self, task: TaskKind, args: &ResolvedArgs) -> Result<InferenceOutput, LocalError> {
        if task != TaskKind::DepthEstimation {
            return Err(LocalError::Unsupported(format!(
                "a depth estimator cannot do {task}"
            )));
        }
        let image = decode_image(task, image_bytes(task, args)?)?;
        let depth = self.estimate(&image)?;
        let rendered = png(&depth.render()?)?;
        Ok(InferenceOutput::Depth {
            image: Some(Blob {
                bytes: rendered.into(),
                mime: Some("image/png".into()),
            }),
            predicted: Some(depth.to_json()),
        })
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_spans_the_range_and_truncates() {
        let map = DepthMap {
            depth: vec![1.0, 2.0, 3.0, 1.5],
            size: (2, 2),
        };
        // (1.5 - 1) / 2 * 255 = 63.75 -> 63.
        assert_eq!(map.render().unwrap().into_raw(), vec![0, 127, 255, 63]);
    }

    #[test]
    fn a_constant_depth_renders_black() {
        let map = DepthMap {
            depth: vec![0.5; 6],
            size: (2, 3),
        };
        assert_eq!(map.render().unwrap().into_raw(), vec![0; 6]);
    }

    #[test]
    fn json_rows_hold_each_f32_exactly() {
        let map = DepthMap {
            depth: vec![0.1, 2.0, 3.25, 4.0],
            size: (2, 2),
        };
        let json = map.to_json();
        assert_eq!(json[0][0].as_f64(), Some(f64::from(0.1f32)));
        assert_eq!(json.to_string(), "[[0.10000000149011612,2.0],[3.25,4.0]]");
    }
}
