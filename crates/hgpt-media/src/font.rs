//! Bitmap text from the `font8x8` glyphs (Basic Latin and Latin-1).

use font8x8::legacy::{BASIC_LEGACY, LATIN_LEGACY};
use image::{Rgba, RgbaImage};

/// Width and height of one unscaled glyph.
pub(crate) const GLYPH: u32 = 8;

/// The glyph of a character; characters without one are drawn as `?`.
fn glyph(c: char) -> [u8; 8] {
    let code = c as usize;
    match code {
        0x20..=0x7e => BASIC_LEGACY[code],
        0xa0..=0xff => LATIN_LEGACY[code - 0xa0],
        _ => BASIC_LEGACY[b'?' as usize],
    }
}

/// Draw `text` with its top-left corner at (`x`, `y`), each glyph pixel
/// `scale`×`scale`; pixels outside the image are skipped.
pub(crate) fn draw_text(
    image: &mut RgbaImage,
    x: u32,
    y: u32,
    text: &str,
    scale: u32,
    colour: Rgba<u8>,
) {
    let (width, height) = image.dimensions();
    for (i, c) in text.chars().enumerate() {
        let Some(origin) = u32::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(GLYPH * scale))
        else {
            return;
        };
        let left = x.saturating_add(origin);
        if left >= width {
            return;
        }
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH {
                // Bit 0 is the leftmost pixel of a row.
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = left.saturating_add(col * scale + dx);
                        let py = y.saturating_add(row as u32 * scale + dy);
                        if px < width && py < height {
                            image.put_pixel(px, py, colour);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_glyph_pixels_and_clips() {
        let mut image = RgbaImage::from_pixel(20, 10, Rgba([0, 0, 0, 255]));
        draw_text(&mut image, 0, 0, "A", 1, Rgba([255, 255, 255, 255]));
        let lit = image.pixels().filter(|p| p.0[0] == 255).count();
        let expected: u32 = glyph('A').iter().map(|b| b.count_ones()).sum();
        assert_eq!(lit as u32, expected);
        assert!(expected > 0);
        // Scaled and partly outside the image: no panic.
        draw_text(&mut image, 15, 5, "Wé€", 2, Rgba([255, 0, 0, 255]));
        draw_text(
            &mut image,
            u32::MAX,
            u32::MAX,
            "x",
            3,
            Rgba([255, 0, 0, 255]),
        );
    }

    #[test]
    fn unknown_characters_use_a_placeholder() {
        assert_eq!(glyph('€'), glyph('?'));
        assert_ne!(glyph('é'), glyph('?'));
    }
}
