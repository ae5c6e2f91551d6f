//! Bounded image decoding, PNG encoding and the overlay palette.

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// Largest accepted width or height, in pixels.
pub(crate) const MAX_DIMENSION: u32 = 16_384;
/// Largest accepted number of pixels.
pub(crate) const MAX_PIXELS: u64 = 50_000_000;
/// Largest allocation the decoder may make.
const MAX_ALLOC: u64 = 512 * 1024 * 1024;

/// Decode an image (jpeg, png or webp) under size limits; the error is the
/// decoder's message.
pub(crate) fn decode(bytes: &[u8]) -> Result<DynamicImage, String> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("unrecognised image format".into());
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(format!("image has no pixels ({width}x{height})"));
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(format!(
            "image is too large ({width}x{height}, limit {MAX_PIXELS} pixels)"
        ));
    }
    DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())
}

/// Encode an image as PNG.
pub(crate) fn encode_png(image: &DynamicImage) -> Result<Vec<u8>, String> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

/// Well-separated colours, used in order of first appearance.
const PALETTE: [[u8; 3]; 12] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [255, 225, 25],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [0, 128, 128],
    [170, 110, 40],
    [128, 0, 0],
];

/// The `index`-th overlay colour: the palette, then hues spaced by the
/// golden angle.
pub(crate) fn colour(index: usize) -> [u8; 3] {
    if let Some(c) = PALETTE.get(index) {
        return *c;
    }
    let hue = (index as f64 * 137.507_764) % 360.0;
    hsv_to_rgb(hue, 0.85, 0.95)
}

fn hsv_to_rgb(hue: f64, saturation: f64, value: f64) -> [u8; 3] {
    let c = value * saturation;
    let h = hue / 60.0;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = value - c;
    let to_u8 = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    [to_u8(r), to_u8(g), to_u8(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_distinct() {
        let colours: Vec<_> = (0..40).map(colour).collect();
        for (i, a) in colours.iter().enumerate() {
            for b in &colours[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(decode(b"not an image at all").is_err());
        assert!(decode(b"").is_err());
        assert!(decode(b"\x89PNG\r\n\x1a\n\0\0").is_err());
    }
}
