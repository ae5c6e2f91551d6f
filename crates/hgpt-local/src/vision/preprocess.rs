//! Image preprocessing as the transformers image processors do it with their
//! PIL backend: decode (EXIF orientation applied, converted to RGB), resize
//! with Pillow's resampling filters (bit-exact fixed-point arithmetic),
//! optional centre crop, rescale, normalise, optional padding.
//!
//! The settings come from the model's `preprocessor_config.json`.

use crate::error::{LocalError, bad_input};
use crate::files::ModelFiles;
use candle_core::{Device, Tensor};
use hgpt_core::task::TaskKind;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use serde::Deserialize;
use serde_json::Value;
use std::io::Cursor;

/// The most pixels an input image may have (a 64-megapixel photo; its RGB
/// bytes alone are 192 MB).
pub const MAX_PIXELS: u64 = 64_000_000;

/// Decode PNG, JPEG or WebP bytes into an RGB image, applying the EXIF
/// orientation (as `transformers.image_utils.load_image` does with
/// `ImageOps.exif_transpose` and `convert("RGB")`). Alpha is dropped.
pub fn decode_image(task: TaskKind, bytes: &[u8]) -> Result<RgbImage, LocalError> {
    let undecodable =
        |e: &dyn std::fmt::Display| bad_input(task, format!("cannot decode the image: {e}"));
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(&e))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| undecodable(&e))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(bad_input(
            task,
            format!(
                "the image is {width}x{height} pixels; at most {} million pixels are accepted",
                MAX_PIXELS / 1_000_000
            ),
        ));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| undecodable(&e))?;
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err(bad_input(task, "the image is empty (0 pixels)"));
    }
    Ok(image.to_rgb8())
}

/// A Pillow resampling filter (`PIL.Image.Resampling`, the `resample` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// 0: nearest neighbour.
    Nearest,
    /// 4: box.
    Box,
    /// 2: bilinear (triangle).
    Bilinear,
    /// 5: Hamming-windowed.
    Hamming,
    /// 3: bicubic (a = -0.5).
    Bicubic,
    /// 1: Lanczos-3.
    Lanczos,
}

impl Resample {
    /// The filter with Pillow's numeric code.
    pub fn from_pil(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }

    fn support(self) -> f64 {
        match self {
            Self::Nearest => 0.0,
            Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    /// The filter kernel, as Pillow's `Resample.c` writes it.
    fn weight(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            Self::Nearest => 0.0,
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point precision of Pillow's 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The taps of one output sample: first input index and fixed-point weights.
struct Taps {
    start: usize,
    weights: Vec<i64>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
fn coefficients(in_size: usize, out_size: usize, filter: Resample) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    let one = f64::from(1u32 << PRECISION_BITS);
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C `(int)` casts truncate toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let count = (xmax - xmin).max(0);
            let raw: Vec<f64> = (0..count)
                .map(|x| filter.weight(((x + xmin) as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let k = if total != 0.0 { w / total } else { w };
                    if k < 0.0 {
                        (-0.5 + k * one) as i64
                    } else {
                        (0.5 + k * one) as i64
                    }
                })
                .collect();
            Taps {
                start: xmin as usize,
                weights,
            }
        })
        .collect()
}

fn clip8(value: i64) -> u8 {
    if value >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if value <= 0 {
        0
    } else {
        (value >> PRECISION_BITS) as u8
    }
}

/// Resize as Pillow's `Image.resize(size, resample)` does on an RGB image:
/// two separable 8-bit passes with fixed-point weights, rounded to `u8` in
/// between, antialiased when downscaling; nearest neighbour by Pillow's
/// affine scaling.
///
/// Pass order: horizontal first, except when the height shrinks by more
/// than twice as many pixels as the width does, where Pillow 13 runs the
/// vertical pass first (`ImagingResampleInner`). Older Pillow releases
/// always go horizontal first, which can differ by 1 on a few pixels.
pub fn resize_like_pil(image: &RgbImage, width: u32, height: u32, filter: Resample) -> RgbImage {
    let (in_w, in_h) = image.dimensions();
    if (in_w, in_h) == (width, height) {
        return image.clone();
    }
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    if filter == Resample::Nearest {
        return nearest(image, width, height);
    }
    let shrunk_rows = i64::from(in_h) - i64::from(height);
    let shrunk_columns = i64::from(in_w) - i64::from(width);
    let vertical_first = shrunk_rows > 0 && shrunk_rows > shrunk_columns * 2;
    let horizontal = |img: &RgbImage| {
        if img.width() == width {
            img.clone()
        } else {
            horizontal_pass(img, width, filter)
        }
    };
    let vertical = |img: &RgbImage| {
        if img.height() == height {
            img.clone()
        } else {
            vertical_pass(img, height, filter)
        }
    };
    if vertical_first {
        horizontal(&vertical(image))
    } else {
        vertical(&horizontal(image))
    }
}

/// Pillow's `ImagingResampleHorizontal_8bpc`.
fn horizontal_pass(image: &RgbImage, width: u32, filter: Resample) -> RgbImage {
    let taps = coefficients(image.width() as usize, width as usize, filter);
    let mut out = RgbImage::new(width, image.height());
    for y in 0..image.height() {
        for (x, tap) in taps.iter().enumerate() {
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (i, &k) in tap.weights.iter().enumerate() {
                let p = image.get_pixel((tap.start + i) as u32, y);
                for c in 0..3 {
                    acc[c] += i64::from(p[c]) * k;
                }
            }
            out.put_pixel(x as u32, y, image::Rgb(acc.map(clip8)));
        }
    }
    out
}

/// Pillow's `ImagingResampleVertical_8bpc`.
fn vertical_pass(image: &RgbImage, height: u32, filter: Resample) -> RgbImage {
    let taps = coefficients(image.height() as usize, height as usize, filter);
    let mut out = RgbImage::new(image.width(), height);
    for (y, tap) in taps.iter().enumerate() {
        for x in 0..image.width() {
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (i, &k) in tap.weights.iter().enumerate() {
                let p = image.get_pixel(x, (tap.start + i) as u32);
                for c in 0..3 {
                    acc[c] += i64::from(p[c]) * k;
                }
            }
            out.put_pixel(x, y as u32, image::Rgb(acc.map(clip8)));
        }
    }
    out
}

/// Pillow's `ImagingScaleAffine`: source positions accumulate in `f64`.
fn nearest(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = image.dimensions();
    let positions = |in_size: u32, out_size: u32| -> Vec<Option<u32>> {
        let step = f64::from(in_size) / f64::from(out_size);
        let mut pos = step * 0.5;
        (0..out_size)
            .map(|_| {
                let index = if pos < 0.0 { -1 } else { pos as i64 };
                pos += step;
                (0..i64::from(in_size))
                    .contains(&index)
                    .then_some(index as u32)
            })
            .collect()
    };
    let xs = positions(in_w, width);
    let ys = positions(in_h, height);
    let mut out = RgbImage::new(width, height);
    for (y, sy) in ys.iter().enumerate() {
        let Some(sy) = sy else { continue };
        for (x, sx) in xs.iter().enumerate() {
            if let Some(sx) = sx {
                out.put_pixel(x as u32, y as u32, *image.get_pixel(*sx, *sy));
            }
        }
    }
    out
}

/// Which image processor's conventions apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessorKind {
    /// `ViTImageProcessor` (and image-classification processors like it): an
    /// integer `size` is a square; default 224x224 and mean/std 0.5.
    Classification,
    /// `YolosImageProcessor`: aspect-preserving resize to `shortest_edge`
    /// capped by `longest_edge`, sides rounded down to multiples of 16;
    /// default 800/1333 and ImageNet mean/std.
    Detection,
    /// `DetrImageProcessor`: as YOLOS's, without the rounding to multiples
    /// of 16.
    Detr,
    /// `ViltImageProcessor`: shortest edge to `shortest_edge`, longest at
    /// most `int(1333 / 800 * shortest_edge)`, sides rounded half up then
    /// floored to multiples of `size_divisor`; bicubic, mean/std 0.5.
    Vilt,
    /// `DPTImageProcessor` (DPT, Depth Anything): `size` height x width, or,
    /// with `keep_aspect_ratio`, the aspect kept by the side that scales
    /// least; sides rounded (half to even) to multiples of
    /// `ensure_multiple_of`; bicubic, mean/std 0.5; with `do_pad`, zeros
    /// around the normalised image up to multiples of `size_divisor`.
    Dpt,
}

/// The target size rule of a processor (`size` in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// Exactly `height` x `width`, aspect ratio not kept.
    Exact {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
    /// Shortest edge to `shortest`, longest edge at most `longest`.
    Shortest {
        /// Target shortest edge.
        shortest: u32,
        /// Cap on the longest edge.
        longest: Option<u32>,
    },
    /// Largest size that fits in `max_height` x `max_width`, aspect kept.
    MaxBox {
        /// Maximum height.
        max_height: u32,
        /// Maximum width.
        max_width: u32,
    },
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    do_resize: Option<bool>,
    size: Option<Value>,
    max_size: Option<u32>,
    resample: Option<u64>,
    do_center_crop: Option<bool>,
    crop_size: Option<Value>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Value>,
    image_std: Option<Value>,
    do_pad: Option<bool>,
    pad_size: Option<Value>,
    size_divisor: Option<u32>,
    keep_aspect_ratio: Option<bool>,
    ensure_multiple_of: Option<u32>,
}

/// Preprocessing settings of one model, from `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// The conventions followed.
    pub kind: ProcessorKind,
    /// `None` when `do_resize` is false.
    pub size: Option<SizeRule>,
    /// The resampling filter.
    pub resample: Resample,
    /// Centre crop to `(height, width)` after the resize, when enabled.
    pub crop: Option<(u32, u32)>,
    /// `rescale_factor` when `do_rescale`.
    pub rescale: Option<f64>,
    /// Per-channel `(mean, std)` when `do_normalize`.
    pub normalize: Option<([f32; 3], [f32; 3])>,
    /// Pad (bottom/right, zeros after normalisation) to `(height, width)`.
    pub pad_to: Option<(u32, u32)>,
    /// ViLT: output sides are multiples of this.
    pub size_divisor: u32,
    /// DPT: keep the aspect ratio when resizing to `size`.
    pub keep_aspect_ratio: bool,
    /// DPT: resized sides are multiples of this.
    pub ensure_multiple_of: u32,
    /// DPT: pad (centred, zeros after normalisation) to multiples of this.
    pub pad_to_multiple: Option<u32>,
}

const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

impl ImageProcessor {
    /// Read `preprocessor_config.json` of a model.
    pub fn load(files: &ModelFiles, kind: ProcessorKind) -> Result<Self, LocalError> {
        let raw: Value = files.json("preprocessor_config.json")?;
        Self::from_json(&raw, kind)
            .map_err(|e| files.load_error(format!("preprocessor_config.json: {e}")))
    }

    /// Parse a processor config, applying the processor's defaults.
    pub fn from_json(value: &Value, kind: ProcessorKind) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        let size = if raw.do_resize.unwrap_or(true) {
            Some(size_rule(raw.size.as_ref(), raw.max_size, kind)?)
        } else {
            None
        };
        if matches!(kind, ProcessorKind::Detection | ProcessorKind::Detr)
            && let Some(SizeRule::Shortest { longest: None, .. }) = size
        {
            return Err("a detection processor needs `longest_edge` with `shortest_edge`".into());
        }
        let resample = match raw.resample {
            None if matches!(kind, ProcessorKind::Vilt | ProcessorKind::Dpt) => Resample::Bicubic,
            None => Resample::Bilinear,
            Some(code) => Resample::from_pil(code)
                .ok_or_else(|| format!("unknown PIL resample filter {code}"))?,
        };
        let crop = if raw.do_center_crop.unwrap_or(false) {
            match raw.crop_size.as_ref() {
                Some(v) => match size_rule(Some(v), None, ProcessorKind::Classification)? {
                    SizeRule::Exact { height, width } => Some((height, width)),
                    _ => return Err("crop_size must be a size with height and width".into()),
                },
                None => Some((224, 224)),
            }
        } else {
            None
        };
        let rescale = if raw.do_rescale.unwrap_or(true) {
            Some(raw.rescale_factor.unwrap_or(1.0 / 255.0))
        } else {
            None
        };
        let (default_mean, default_std) = match kind {
            ProcessorKind::Classification | ProcessorKind::Vilt | ProcessorKind::Dpt => {
                ([0.5; 3], [0.5; 3])
            }
            ProcessorKind::Detection | ProcessorKind::Detr => (IMAGENET_MEAN, IMAGENET_STD),
        };
        let normalize = if raw.do_normalize.unwrap_or(true) {
            let mean = channels(raw.image_mean.as_ref(), default_mean, "image_mean")?;
            let std = channels(raw.image_std.as_ref(), default_std, "image_std")?;
            if std.contains(&0.0) {
                return Err("image_std contains 0".into());
            }
            Some((mean, std))
        } else {
            None
        };
        let pad_to = match (kind, raw.do_pad.unwrap_or(true), raw.pad_size.as_ref()) {
            (ProcessorKind::Detection | ProcessorKind::Detr, true, Some(v)) if !v.is_null() => {
                match size_rule(Some(v), None, ProcessorKind::Classification)? {
                    SizeRule::Exact { height, width } => Some((height, width)),
                    _ => return Err("pad_size must have height and width".into()),
                }
            }
            _ => None,
        };
        let size_divisor = raw.size_divisor.unwrap_or(32);
        if size_divisor == 0 {
            return Err("size_divisor must be positive".into());
        }
        if kind == ProcessorKind::Vilt && !matches!(size, Some(SizeRule::Shortest { .. }) | None) {
            return Err("a ViLT processor's size must be a shortest edge".into());
        }
        if kind == ProcessorKind::Dpt && !matches!(size, Some(SizeRule::Exact { .. }) | None) {
            return Err("a DPT processor's size must have height and width".into());
        }
        let ensure_multiple_of = raw.ensure_multiple_of.unwrap_or(1);
        if ensure_multiple_of == 0 {
            return Err("ensure_multiple_of must be positive".into());
        }
        let pad_to_multiple = match (kind, raw.do_pad) {
            (ProcessorKind::Dpt, Some(true)) => Some(
                raw.size_divisor
                    .ok_or("do_pad needs size_divisor in a DPT processor")?,
            ),
            _ => None,
        };
        Ok(Self {
            kind,
            size,
            resample,
            crop,
            rescale,
            normalize,
            pad_to,
            size_divisor,
            keep_aspect_ratio: kind == ProcessorKind::Dpt && raw.keep_aspect_ratio.unwrap_or(false),
            ensure_multiple_of,
            pad_to_multiple,
        })
    }

    /// The `(height, width)` an image of `(height, width)` is resized to
    /// (before any crop), as the processor computes it.
    pub fn resized_size(&self, height: u32, width: u32) -> (u32, u32) {
        match self.size {
            None => (height, width),
            Some(SizeRule::Exact {
                height: out_h,
                width: out_w,
            }) if self.kind == ProcessorKind::Dpt => dpt_size(
                (height, width),
                (out_h, out_w),
                self.keep_aspect_ratio,
                self.ensure_multiple_of,
            ),
            Some(SizeRule::Exact { height, width }) => (height, width),
            Some(SizeRule::MaxBox {
                max_height,
                max_width,
            }) => {
                let scale = (f64::from(max_height) / f64::from(height))
                    .min(f64::from(max_width) / f64::from(width));
                (
                    (f64::from(height) * scale) as u32,
                    (f64::from(width) * scale) as u32,
                )
            }
            Some(SizeRule::Shortest { shortest, longest }) => match self.kind {
                ProcessorKind::Detection => {
                    detection_size(height, width, shortest, longest.unwrap_or(1333), true)
                }
                ProcessorKind::Detr => {
                    detection_size(height, width, shortest, longest.unwrap_or(1333), false)
                }
                ProcessorKind::Vilt => vilt_size(height, width, shortest, self.size_divisor),
                ProcessorKind::Classification | ProcessorKind::Dpt => {
                    classification_size(height, width, shortest, longest)
                }
            },
        }
    }

    /// The fixed `(height, width)` of every processed image, if it does not
    /// depend on the input.
    pub fn fixed_output(&self) -> Option<(u32, u32)> {
        if self.keep_aspect_ratio || self.pad_to_multiple.is_some() {
            return None;
        }
        self.pad_to.or(self.crop).or(match self.size {
            Some(SizeRule::Exact { height, width }) => Some((height, width)),
            _ => None,
        })
    }

    /// Resize (and centre-crop) an RGB image in `u8`, as the processor does
    /// before rescaling.
    pub fn resize(&self, task: TaskKind, image: &RgbImage) -> Result<RgbImage, LocalError> {
        let (height, width) = self.resized_size(image.height(), image.width());
        if height == 0 || width == 0 {
            return Err(bad_input(
                task,
                format!(
                    "the image ({}x{}) is too small or too narrow to resize",
                    image.width(),
                    image.height()
                ),
            ));
        }
        let resized = resize_like_pil(image, width, height, self.resample);
        Ok(match self.crop {
            Some((crop_h, crop_w)) => center_crop(&resized, crop_h, crop_w),
            None => resized,
        })
    }

    /// Rescale and normalise a resized image into `[3, H, W]` floats
    /// (float32 arithmetic as numpy does it), then pad if configured.
    pub fn pixel_values(
        &self,
        task: TaskKind,
        image: &RgbImage,
    ) -> Result<(Vec<f32>, (usize, usize)), LocalError> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut values = vec![0f32; 3 * h * w];
        for (x, y, pixel) in image.enumerate_pixels() {
            for c in 0..3 {
                let mut v = match self.rescale {
                    Some(factor) => (f64::from(pixel[c]) * factor) as f32,
                    None => f32::from(pixel[c]),
                };
                if let Some((mean, std)) = &self.normalize {
                    v = (v - mean[c]) / std[c];
                }
                values[c * h * w + y as usize * w + x as usize] = v;
            }
        }
        if let Some(multiple) = self.pad_to_multiple {
            return Ok(pad_centred(&values, (h, w), multiple as usize));
        }
        match self.pad_to {
            None => Ok((values, (h, w))),
            Some((ph, pw)) => {
                let (ph, pw) = (ph as usize, pw as usize);
                if ph < h || pw < w {
                    return Err(bad_input(
                        task,
                        format!("the resized image ({w}x{h}) is larger than pad_size ({pw}x{ph})"),
                    ));
                }
                let mut padded = vec![0f32; 3 * ph * pw];
                for c in 0..3 {
                    for y in 0..h {
                        let src = c * h * w + y * w;
                        let dst = c * ph * pw + y * pw;
                        padded[dst..dst + w].copy_from_slice(&values[src..src + w]);
                    }
                }
                Ok((padded, (ph, pw)))
            }
        }
    }

    /// The whole preprocessing: a `[1, 3, H, W]` tensor on `device`.
    pub fn preprocess(
        &self,
        task: TaskKind,
        image: &RgbImage,
        device: &Device,
    ) -> Result<Tensor, LocalError> {
        let resized = self.resize(task, image)?;
        let (values, (h, w)) = self.pixel_values(task, &resized)?;
        Ok(Tensor::from_vec(values, (1, 3, h, w), device)?)
    }
}

/// `image_transforms.center_crop` on `u8`: a window centred with floor
/// division, zero-filled where it leaves the image.
fn center_crop(image: &RgbImage, height: u32, width: u32) -> RgbImage {
    let top = (i64::from(image.height()) - i64::from(height)).div_euclid(2);
    let left = (i64::from(image.width()) - i64::from(width)).div_euclid(2);
    let mut out = RgbImage::new(width, height);
    for y in 0..height {
        let sy = i64::from(y) + top;
        if sy < 0 || sy >= i64::from(image.height()) {
            continue;
        }
        for x in 0..width {
            let sx = i64::from(x) + left;
            if sx >= 0 && sx < i64::from(image.width()) {
                out.put_pixel(x, y, *image.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

/// `image_transforms.get_resize_output_image_size` with
/// `default_to_square=False`: shortest edge to `shortest`, `int()` for the
/// other, optionally capped by `max_size`. Returns `(height, width)`.
fn classification_size(
    height: u32,
    width: u32,
    shortest: u32,
    max_size: Option<u32>,
) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let mut new_short = shortest;
    let mut new_long = (f64::from(shortest) * f64::from(long) / f64::from(short)) as u32;
    if let Some(max) = max_size
        && max > shortest
        && new_long > max
    {
        new_short = (f64::from(max) * f64::from(new_short) / f64::from(new_long)) as u32;
        new_long = max;
    }
    if width <= height {
        (new_long, new_short)
    } else {
        (new_short, new_long)
    }
}

/// YOLOS `get_size_with_aspect_ratio` (mod 16). Returns `(height, width)`.
fn detection_size(height: u32, width: u32, shortest: u32, longest: u32, yolos: bool) -> (u32, u32) {
    const MOD: u32 = 16;
    let (h, w) = (f64::from(height), f64::from(width));
    let mut size = shortest;
    let mut raw_size = None;
    let (min_side, max_side) = (h.min(w), h.max(w));
    if max_side / min_side * f64::from(shortest) > f64::from(longest) {
        let raw = f64::from(longest) * min_side / max_side;
        raw_size = Some(raw);
        // Python's round(): half to even.
        size = raw.round_ties_even() as u32;
    }
    let unchanged = (height <= width && height == size) || (width <= height && width == size);
    // DETR tests for an unchanged size first, YOLOS for a portrait image.
    let (oh, ow) = if unchanged && !yolos {
        (height, width)
    } else if width < height {
        let oh = match raw_size {
            Some(raw) => (raw * h / w) as u32,
            None => (f64::from(size) * h / w) as u32,
        };
        (oh, size)
    } else if unchanged {
        (height, width)
    } else {
        let ow = match raw_size {
            Some(raw) => (raw * w / h) as u32,
            None => (f64::from(size) * w / h) as u32,
        };
        (size, ow)
    };
    if yolos {
        (oh - oh % MOD, ow - ow % MOD)
    } else {
        (oh, ow)
    }
}

/// `ViltImageProcessor`'s `get_resize_output_image_size`, in Python's
/// float arithmetic. Returns `(height, width)`.
fn vilt_size(height: u32, width: u32, shorter: u32, divisor: u32) -> (u32, u32) {
    let longer = (1333.0 / 800.0 * f64::from(shorter)) as u32;
    let (h, w) = (f64::from(height), f64::from(width));
    let scale = f64::from(shorter) / h.min(w);
    let (mut new_h, mut new_w) = if height < width {
        (f64::from(shorter), scale * w)
    } else {
        (scale * h, f64::from(shorter))
    };
    if new_h.max(new_w) > f64::from(longer) {
        let scale = f64::from(longer) / new_h.max(new_w);
        new_h *= scale;
        new_w *= scale;
    }
    let (new_h, new_w) = ((new_h + 0.5) as u32, (new_w + 0.5) as u32);
    (new_h / divisor * divisor, new_w / divisor * divisor)
}

fn dimension(value: &Value, key: &str) -> Result<u32, String> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{key} must be a positive integer, not {value}"))
}

/// `get_size_dict`: an integer, a `[height, width]` list or a dict.
/// `DPTImageProcessor`'s output size: each side scaled to `size`, or with
/// `keep_aspect_ratio` both by the scale closer to 1, then rounded (half to
/// even, as Python's `round`) to a multiple of `multiple`.
fn dpt_size(
    (height, width): (u32, u32),
    (out_h, out_w): (u32, u32),
    keep_aspect_ratio: bool,
    multiple: u32,
) -> (u32, u32) {
    let (mut scale_h, mut scale_w) = (
        f64::from(out_h) / f64::from(height),
        f64::from(out_w) / f64::from(width),
    );
    if keep_aspect_ratio {
        if (1.0 - scale_w).abs() < (1.0 - scale_h).abs() {
            scale_h = scale_w;
        } else {
            scale_w = scale_h;
        }
    }
    let multiple = f64::from(multiple);
    let constrain = |value: f64| ((value / multiple).round_ties_even() * multiple) as u32;
    (
        constrain(scale_h * f64::from(height)),
        constrain(scale_w * f64::from(width)),
    )
}

/// Zeros around `[3, h, w]` values up to the next multiples of `multiple`
/// (DPT's `pad_image`: the smaller half before, the rest after).
fn pad_centred(
    values: &[f32],
    (h, w): (usize, usize),
    multiple: usize,
) -> (Vec<f32>, (usize, usize)) {
    let (ph, pw) = (h.next_multiple_of(multiple), w.next_multiple_of(multiple));
    let (top, left) = ((ph - h) / 2, (pw - w) / 2);
    let mut padded = vec![0f32; 3 * ph * pw];
    for c in 0..3 {
        for y in 0..h {
            let src = c * h * w + y * w;
            let dst = c * ph * pw + (y + top) * pw + left;
            padded[dst..dst + w].copy_from_slice(&values[src..src + w]);
        }
    }
    (padded, (ph, pw))
}

fn size_rule(
    value: Option<&Value>,
    max_size: Option<u32>,
    kind: ProcessorKind,
) -> Result<SizeRule, String> {
    let value = match value {
        None | Some(Value::Null) => {
            return Ok(match kind {
                ProcessorKind::Classification => SizeRule::Exact {
                    height: 224,
                    width: 224,
                },
                ProcessorKind::Dpt => SizeRule::Exact {
                    height: 384,
                    width: 384,
                },
                ProcessorKind::Detection | ProcessorKind::Detr => SizeRule::Shortest {
                    shortest: 800,
                    longest: Some(1333),
                },
                ProcessorKind::Vilt => SizeRule::Shortest {
                    shortest: 384,
                    longest: None,
                },
            });
        }
        Some(v) => v,
    };
    match value {
        Value::Number(_) => {
            let n = dimension(value, "size")?;
            Ok(match kind {
                ProcessorKind::Classification | ProcessorKind::Dpt => SizeRule::Exact {
                    height: n,
                    width: n,
                },
                ProcessorKind::Detection | ProcessorKind::Detr => SizeRule::Shortest {
                    shortest: n,
                    longest: Some(max_size.unwrap_or(1333)),
                },
                ProcessorKind::Vilt => SizeRule::Shortest {
                    shortest: n,
                    longest: None,
                },
            })
        }
        Value::Array(items) if items.len() == 2 => Ok(SizeRule::Exact {
            height: dimension(&items[0], "size[0]")?,
            width: dimension(&items[1], "size[1]")?,
        }),
        Value::Object(map) => {
            let get = |key: &str| {
                map.get(key)
                    .filter(|v| !v.is_null())
                    .map(|v| dimension(v, key))
                    .transpose()
            };
            match (
                get("height")?,
                get("width")?,
                get("shortest_edge")?,
                get("longest_edge")?,
                get("max_height")?,
                get("max_width")?,
            ) {
                (Some(height), Some(width), ..) => Ok(SizeRule::Exact { height, width }),
                (_, _, Some(shortest), longest, ..) => Ok(SizeRule::Shortest { shortest, longest }),
                (.., Some(max_height), Some(max_width)) => Ok(SizeRule::MaxBox {
                    max_height,
                    max_width,
                }),
                _ => Err(format!("unsupported size {value}")),
            }
        }
        _ => Err(format!("unsupported size {value}")),
    }
}

fn channels(value: Option<&Value>, default: [f64; 3], key: &str) -> Result<[f32; 3], String> {
    let values: [f64; 3] = match value {
        None | Some(Value::Null) => default,
        Some(Value::Number(n)) => [n.as_f64().unwrap_or(0.0); 3],
        Some(Value::Array(items)) if items.len() == 3 => {
            let mut out = [0.0; 3];
            for (slot, item) in out.iter_mut().zip(items) {
                *slot = item
                    .as_f64()
                    .ok_or_else(|| format!("{key} must hold numbers"))?;
            }
            out
        }
        Some(other) => return Err(format!("{key} must be a number or 3 numbers, not {other}")),
    };
    Ok(values.map(|v| v as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yolos_sizes_follow_the_processor() {
        // (h, w) -> (h, w), shortest 48 longest 80.
        assert_eq!(detection_size(30, 40, 48, 80, true), (48, 64));
        assert_eq!(detection_size(48, 64, 48, 80, true), (48, 64));
        assert_eq!(detection_size(52, 36, 48, 80, true), (64, 48));
        // Capped by the longest edge: 100x20 -> raw 16 -> (16, 80).
        assert_eq!(detection_size(20, 100, 48, 80, true), (16, 80));
    }

    #[test]
    fn vilt_sizes_are_multiples_of_the_divisor() {
        assert_eq!(vilt_size(30, 40, 48, 8), (48, 64));
        assert_eq!(vilt_size(52, 36, 48, 8), (64, 48));
        assert_eq!(vilt_size(480, 640, 384, 32), (384, 512));
        // Capped: 1000x100 -> longest int(1333 / 800 * 384) = 639.
        assert_eq!(vilt_size(100, 1000, 384, 32), (64, 608));
    }

    #[test]
    fn dpt_sizes_follow_the_processor() {
        // Checked against transformers' get_resize_output_image_size.
        assert_eq!(dpt_size((480, 640), (518, 518), true, 14), (518, 686));
        assert_eq!(dpt_size((30, 40), (35, 35), false, 14), (28, 28));
        assert_eq!(dpt_size((30, 40), (35, 35), true, 7), (28, 35));
        assert_eq!(dpt_size((52, 36), (35, 35), true, 7), (49, 35));
        assert_eq!(dpt_size((1000, 10), (384, 384), true, 32), (384, 0));
    }

    #[test]
    fn dpt_padding_is_centred() {
        let values: Vec<f32> = (1..=3 * 2 * 3).map(|v| v as f32).collect();
        let (padded, (h, w)) = pad_centred(&values, (2, 3), 4);
        assert_eq!((h, w), (4, 4));
        // One row above, one below; no column before (1 / 2 = 0), one after.
        assert_eq!(&padded[..8], &[0., 0., 0., 0., 1., 2., 3., 0.]);
        assert_eq!(&padded[8..16], &[4., 5., 6., 0., 0., 0., 0., 0.]);
    }

    #[test]
    fn detr_sizes_are_not_rounded() {
        assert_eq!(detection_size(30, 40, 48, 80, false), (48, 64));
        assert_eq!(detection_size(52, 36, 48, 80, false), (69, 48));
        assert_eq!(detection_size(20, 100, 48, 80, false), (16, 80));
        assert_eq!(detection_size(480, 640, 800, 1333, false), (800, 1066));
    }

    #[test]
    fn classification_shortest_edge_keeps_aspect() {
        assert_eq!(classification_size(100, 200, 50, None), (50, 100));
        assert_eq!(classification_size(300, 100, 50, None), (150, 50));
        assert_eq!(classification_size(100, 400, 50, Some(100)), (25, 100));
    }

    #[test]
    fn center_crop_pads_with_zeros() {
        let image = RgbImage::from_pixel(2, 2, image::Rgb([9, 9, 9]));
        let cropped = center_crop(&image, 4, 1);
        assert_eq!(cropped.dimensions(), (1, 4));
        let column: Vec<u8> = cropped.pixels().map(|p| p[0]).collect();
        assert_eq!(column, vec![0, 9, 9, 0]);
    }

    #[test]
    fn nearest_picks_pixel_centres() {
        let image = RgbImage::from_fn(4, 1, |x, _| image::Rgb([x as u8; 3]));
        let out = resize_like_pil(&image, 2, 1, Resample::Nearest);
        let row: Vec<u8> = out.pixels().map(|p| p[0]).collect();
        assert_eq!(row, vec![1, 3]);
    }

    #[test]
    fn bilinear_downscale_averages() {
        let image = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 0 } else { 255 }; 3]));
        let out = resize_like_pil(&image, 1, 1, Resample::Bilinear);
        assert_eq!(out.get_pixel(0, 0)[0], 128);
    }
}
