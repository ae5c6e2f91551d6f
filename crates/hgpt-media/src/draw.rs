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

/// Whether two inclusive rectangles share a pixel.
fn overlaps(a: [u32; 4], b: [u32; 4]) -> bool {
    a[0] <= b[2] && b[0] <= a[2] && a[1] <= b[3] && b[1] <= a[3]
}

/// Where each box's tag goes, given the tags' sizes: inside the image, and
/// clear of the tags placed before it whenever the image has room. A tag
/// sits above its box, else inside the box's top edge, else below the box,
/// else inside its bottom edge; when all four are taken it goes to the free
/// height nearest the box, and only when there is none does it overlap.
fn place_tags(boxes: &[([u32; 4], (u32, u32))], width: u32, height: u32) -> Vec<[u32; 4]> {
    let mut placed: Vec<[u32; 4]> = Vec::with_capacity(boxes.len());
    for &([x0, y0, _, y1], (w, h)) in boxes {
        let x = x0.min(width.saturating_sub(w));
        let rect = |y: u32| [x, y, x + w - 1, y + h - 1];
        let lowest = height.saturating_sub(h);
        let preferred = [
            y0.checked_sub(h),
            Some(y0),
            Some(y1 + 1),
            (y1 + 1).checked_sub(h),
        ];
        let fits = |y: &u32| *y <= lowest;
        let free = |y: &u32| !placed.iter().any(|p| overlaps(*p, rect(*y)));
        let chosen = preferred
            .iter()
            .flatten()
            .copied()
            .filter(fits)
            .find(free)
            .or_else(|| {
                let mut heights: Vec<u32> = (0..=lowest).collect();
                heights.sort_by_key(|y| y.abs_diff(y0));
                heights.into_iter().find(free)
            })
            .or_else(|| preferred.iter().flatten().copied().find(fits))
            .unwrap_or(0);
        placed.push(rect(chosen));
    }
    placed
}

/// Draw `text` on a tag filling `rect`.
fn tag(image: &mut RgbaImage, rect: [u32; 4], text: &str, scale: u32, rgb: [u8; 3]) {
    let pad = scale + 1;
    fill(image, rect, Rgba([rgb[0], rgb[1], rgb[2], 255]));
    let luma = 0.299 * f64::from(rgb[0]) + 0.587 * f64::from(rgb[1]) + 0.114 * f64::from(rgb[2]);
    let ink = if luma > 150.0 {
        Rgba([0, 0, 0, 255])
    } else {
        Rgba([255, 255, 255, 255])
    };
    draw_text(image, rect[0] + pad, rect[1] + pad, text, scale, ink);
}

/// The text of a detection's tag, `"{label} {score:.2}"`, the label cut so
/// that the tag fits `width` pixels; and the tag's size.
fn tag_text(label: &str, score: f64, width: u32, scale: u32) -> (String, (u32, u32)) {
    let pad = scale + 1;
    let room = (width.saturating_sub(2 * pad) / (GLYPH * scale)) as usize;
    let score = format!(" {score:.2}");
    let label_room = room
        .saturating_sub(score.chars().count())
        .min(MAX_LABEL_CHARS);
    let mut text: String = label.chars().take(label_room).collect();
    text.push_str(&score);
    let text: String = text.chars().take(room.max(1)).collect();
    let chars = text.chars().count() as u32;
    (
        text,
        (chars * GLYPH * scale + 2 * pad, GLYPH * scale + 2 * pad),
    )
}

/// Draw each detection as a coloured box (one colour per label) with a
/// `"{label} {score:.2}"` tag; returns PNG bytes. Every tag lies inside the
/// image and, where the image has room, clear of the others.
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
        let (text, size) = tag_text(&detection.label, detection.score, width, scale);
        tags.push((rect, size, text, rgb));
    }
    // Tags last, so that no later box is drawn across an earlier tag.
    let boxes: Vec<_> = tags.iter().map(|(rect, size, ..)| (*rect, *size)).collect();
    for (place, (_, _, text, rgb)) in place_tags(&boxes, width, height).into_iter().zip(tags) {
        tag(&mut image, place, &text, scale, rgb);
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

    #[test]
    fn tags_stay_inside_the_image_and_clear_of_each_other() {
        let (width, height) = (120, 80);
        let size = (60, 10);
        // Three boxes at the top edge, one spanning the whole image, one at
        // the bottom edge.
        let boxes = [
            ([0, 0, 50, 30], size),
            ([2, 0, 52, 30], size),
            ([1, 1, 40, 20], size),
            ([0, 0, 119, 79], size),
            ([70, 70, 119, 79], size),
        ];
        let places = place_tags(&boxes, width, height);
        for (i, p) in places.iter().enumerate() {
            assert!(p[2] < width && p[3] < height, "tag {i} at {p:?}");
            assert_eq!((p[2] - p[0] + 1, p[3] - p[1] + 1), size);
            for (j, q) in places.iter().enumerate().skip(i + 1) {
                assert!(!overlaps(*p, *q), "tags {i} {p:?} and {j} {q:?} overlap");
            }
        }
        // Room above the box: the tag goes there.
        assert_eq!(
            place_tags(&[([10, 40, 50, 60], size)], width, height),
            [[10, 30, 69, 39]]
        );
        // No room anywhere: inside the image all the same.
        let crowded = [([0, 0, 9, 9], (20, 20)); 3];
        assert!(
            place_tags(&crowded, 20, 20)
                .iter()
                .all(|p| *p == [0, 0, 19, 19])
        );
    }

    #[test]
    fn long_labels_are_cut_to_the_image_width() {
        let (text, (w, h)) = tag_text("a very long label indeed", 0.5, 100, 1);
        assert!(w <= 100, "{w}");
        assert_eq!(h, GLYPH + 4);
        assert!(
            text.ends_with(" 0.50") && text.starts_with("a very"),
            "{text}"
        );
        let (text, _) = tag_text("cat", 0.987, 400, 2);
        assert_eq!(text, "cat 0.99");
    }

    #[test]
    fn every_tag_is_drawn_when_boxes_coincide() {
        let mut png = Vec::new();
        DynamicImage::ImageRgb8(image::RgbImage::from_pixel(160, 90, image::Rgb([0, 0, 0])))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let detection = |label: &str| Detection {
            label: label.into(),
            score: 0.9,
            bbox: bbox(0.0, 0.0, 60.0, 40.0),
        };
        let out = detections(&png, &[detection("a"), detection("b"), detection("c")]).unwrap();
        let drawn = decode(&out).unwrap().into_rgb8();
        for index in 0..3 {
            let rgb = colour(index);
            // A tag is a solid run of its colour at least a glyph wide.
            let solid = drawn.rows().any(|row| {
                row.collect::<Vec<_>>()
                    .windows(GLYPH as usize + 4)
                    .any(|w| w.iter().all(|p| p.0 == rgb))
            });
            assert!(solid, "no tag of colour {index}");
        }
    }
}
