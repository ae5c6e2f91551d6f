//! Drawing detections (labelled boxes) and segments (tinted masks) onto an
//! image. Pure CPU work: callers run it on a blocking thread.

use crate::font::{GLYPH, draw_text};
use crate::raster::{colour, decode, encode_png};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use hgpt_core::backend::MediaError;
use hgpt_core::output::{BoundingBox, Detection, Segment};
use hgpt_core::task::ResourceKind;
use image::imageops::{self, FilterType};
use image::{DynamicImage, Rgba, RgbaImage};

/// How the input image is named in errors.
const INPUT: &str = "input image";
/// Longest label drawn on a tag, in characters.
const MAX_LABEL_CHARS: usize = 40;

fn invalid(reference: impl Into<String>, message: impl Into<String>) -> MediaError {
    MediaError::Invalid {
        kind: ResourceKind::Image,
        reference: reference.into(),
        message: message.into(),
    }
}

/// Decode the input image to RGBA, remembering whether it had an alpha channel.
fn decode_input(bytes: &[u8]) -> Result<(RgbaImage, bool), MediaError> {
    let image = decode(bytes).map_err(|e| invalid(INPUT, e))?;
    let has_alpha = image.color().has_alpha();
    Ok((image.into_rgba8(), has_alpha))
}

/// Encode the result as PNG (RGB when the input had no alpha).
fn finish(image: RgbaImage, has_alpha: bool) -> Result<Vec<u8>, MediaError> {
    let image = DynamicImage::ImageRgba8(image);
    let image = if has_alpha {
        image
    } else {
        DynamicImage::ImageRgb8(image.into_rgb8())
    };
    encode_png(&image).map_err(|e| MediaError::Io {
        reference: "annotated image".into(),
        message: format!("cannot encode PNG: {e}"),
    })
}

/// A box in inclusive pixel coordinates, clamped to the image; `None` when it
/// is not finite or lies wholly outside.
fn clamp_box(bbox: &BoundingBox, width: u32, height: u32) -> Option<[u32; 4]> {
    let BoundingBox {
        xmin,
        ymin,
        xmax,
        ymax,
    } = *bbox;
    if ![xmin, ymin, xmax, ymax].iter().all(|v| v.is_finite()) {
        return None;
    }
    let (x0, x1) = (xmin.min(xmax), xmin.max(xmax));
    let (y0, y1) = (ymin.min(ymax), ymin.max(ymax));
    let (right, bottom) = (f64::from(width - 1), f64::from(height - 1));
    if x1 < 0.0 || y1 < 0.0 || x0 > right || y0 > bottom {
        return None;
    }
    let clamp = |v: f64, max: f64| v.clamp(0.0, max).floor() as u32;
    Some([
        clamp(x0, right),
        clamp(y0, bottom),
        clamp(x1, right),
        clamp(y1, bottom),
    ])
}

/// Fill the inclusive rectangle `[x0, y0, x1, y1]`, clipped to the image.
fn fill(image: &mut RgbaImage, [x0, y0, x1, y1]: [u32; 4], colour: Rgba<u8>) {
    let (width, height) = image.dimensions();
    for y in y0..=y1.min(height.saturating_sub(1)) {
        for x in x0..=x1.min(width.saturating_sub(1)) {
            image.put_pixel(x, y, colour);
        }
    }
}

/// Draw a rectangle outline `thickness` pixels wide, inside the box.
fn outline(image: &mut RgbaImage, [x0, y0, x1, y1]: [u32; 4], thickness: u32, colour: Rgba<u8>) {
    let t = thickness.saturating_sub(1);
    fill(image, [x0, y0, x1, (y0 + t).min(y1)], colour);
    fill(image, [x0, y1.saturating_sub(t).max(y0), x1, y1], colour);
    fill(image, [x0, y0, (x0 + t).min(x1), y1], colour);
    fill(image, [x1.saturating_sub(t).max(x0), y0, x1, y1], colour);
}

/// Draw the tag `text` above the box at (`x0`, `y0`), or inside it when there
/// is no room above.
fn tag(image: &mut RgbaImage, x0: u32, y0: u32, text: &str, scale: u32, rgb: [u8; 3]) {
    let (width, _) = image.dimensions();
    let pad = scale + 1;
    let chars = text.chars().count() as u32;
    let tag_w = chars * GLYPH * scale + 2 * pad;
    let tag_h = GLYPH * scale + 2 * pad;
    let x = x0.min(width.saturating_sub(tag_w));
    let y = if y0 >= tag_h { y0 - tag_h } else { y0 };
    fill(
        image,
        [x, y, x + tag_w - 1, y + tag_h - 1],
        Rgba([rgb[0], rgb[1], rgb[2], 255]),
    );
    let luma = 0.299 * f64::from(rgb[0]) + 0.587 * f64::from(rgb[1]) + 0.114 * f64::from(rgb[2]);
    let ink = if luma > 150.0 {
        Rgba([0, 0, 0, 255])
    } else {
        Rgba([255, 255, 255, 255])
    };
    draw_text(image, x + pad, y + pad, text, scale, ink);
}

/// Draw each detection as a coloured box (one colour per label) with a
/// `"{label} {score:.2}"` tag; returns PNG bytes.
pub(crate) fn detections(bytes: &[u8], detections: &[Detection]) -> Result<Vec<u8>, MediaError> {
    let (mut image, has_alpha) = decode_input(bytes)?;
    let (width, height) = image.dimensions();
    let thickness = if width.min(height) >= 400 { 3 } else { 2 };
    let scale = if width >= 320 && height >= 240 { 2 } else { 1 };
    let mut labels: Vec<&str> = Vec::new();
    let mut tags = Vec::new();
    for detection in detections {
        let Some(rect) = clamp_box(&detection.bbox, width, height) else {
            tracing::debug!(label = %detection.label, "skipping a box outside the image");
            continue;
        };
        let index = labels
            .iter()
            .position(|l| *l == detection.label)
            .unwrap_or_else(|| {
                labels.push(&detection.label);
                labels.len() - 1
            });
        let rgb = colour(index);
        outline(
            &mut image,
            rect,
            thickness,
            Rgba([rgb[0], rgb[1], rgb[2], 255]),
        );
        let label: String = detection.label.chars().take(MAX_LABEL_CHARS).collect();
        tags.push((rect, format!("{label} {:.2}", detection.score), rgb));
    }
    // Tags last, so that no later box is drawn across an earlier tag.
    for ([x0, y0, ..], text, rgb) in tags {
        tag(&mut image, x0, y0, &text, scale, rgb);
    }
    finish(image, has_alpha)
}

/// Base64 with or without padding, standard or URL-safe alphabet.
fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let text = text.trim();
    // Tolerate a data URL prefix.
    let text = match text.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => text,
    };
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(&compact)
        .or_else(|e| {
            GeneralPurpose::new(&base64::alphabet::URL_SAFE, config)
                .decode(&compact)
                .map_err(|_| e)
        })
}

/// Blend a distinct colour (alpha 0.5) over the pixels of each segment's mask
/// (luma > 127); masks of another size are resized (nearest). Returns PNG
/// bytes.
pub(crate) fn segments(bytes: &[u8], segments: &[Segment]) -> Result<Vec<u8>, MediaError> {
    let (mut image, has_alpha) = decode_input(bytes)?;
    let (width, height) = image.dimensions();
    for (index, segment) in segments.iter().enumerate() {
        let name = format!("mask of segment {:?}", segment.label);
        let mask_bytes =
            decode_base64(&segment.mask).map_err(|e| invalid(&name, format!("bad base64: {e}")))?;
        let mask = decode(&mask_bytes)
            .map_err(|e| invalid(&name, e))?
            .into_luma8();
        let mask = if mask.dimensions() == (width, height) {
            mask
        } else {
            imageops::resize(&mask, width, height, FilterType::Nearest)
        };
        let rgb = colour(index);
        for (pixel, m) in image.pixels_mut().zip(mask.pixels()) {
            if m.0[0] > 127 {
                for (channel, tint) in pixel.0.iter_mut().zip(rgb) {
                    *channel = (u16::from(*channel) + u16::from(tint)).div_ceil(2) as u8;
                }
            }
        }
    }
    finish(image, has_alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bbox(xmin: f64, ymin: f64, xmax: f64, ymax: f64) -> BoundingBox {
        BoundingBox {
            xmin,
            ymin,
            xmax,
            ymax,
        }
    }

    #[test]
    fn boxes_are_clamped_or_skipped() {
        assert_eq!(
            clamp_box(&bbox(-5.0, -5.0, 500.0, 500.0), 100, 50),
            Some([0, 0, 99, 49])
        );
        assert_eq!(
            clamp_box(&bbox(30.0, 20.0, 10.0, 5.0), 100, 50),
            Some([10, 5, 30, 20])
        );
        assert_eq!(clamp_box(&bbox(200.0, 0.0, 300.0, 10.0), 100, 50), None);
        assert_eq!(clamp_box(&bbox(-20.0, 0.0, -1.0, 10.0), 100, 50), None);
        assert_eq!(clamp_box(&bbox(f64::NAN, 0.0, 1.0, 1.0), 100, 50), None);
        assert_eq!(
            clamp_box(&bbox(0.0, 0.0, f64::INFINITY, 1.0), 100, 50),
            None
        );
    }

    #[test]
    fn base64_variants_decode() {
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64(" aG\nk= ").unwrap(), b"hi");
        assert_eq!(decode_base64("data:image/png;base64,aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("-_8").unwrap(), [0xfb, 0xff]);
        assert!(decode_base64("!!!").is_err());
    }

    #[test]
    fn outline_leaves_the_inside_alone() {
        let mut image = RgbaImage::from_pixel(20, 20, Rgba([0, 0, 0, 255]));
        outline(&mut image, [2, 2, 17, 17], 2, Rgba([255, 0, 0, 255]));
        assert_eq!(image.get_pixel(2, 10).0[0], 255);
        assert_eq!(image.get_pixel(3, 10).0[0], 255);
        assert_eq!(image.get_pixel(4, 10).0[0], 0);
        assert_eq!(image.get_pixel(17, 17).0[0], 255);
        assert_eq!(image.get_pixel(10, 10).0[0], 0);
        assert_eq!(image.get_pixel(1, 10).0[0], 0);
        // A one-pixel box does not underflow.
        outline(&mut image, [0, 0, 0, 0], 3, Rgba([0, 255, 0, 255]));
        assert_eq!(image.get_pixel(0, 0).0[1], 255);
    }
}
