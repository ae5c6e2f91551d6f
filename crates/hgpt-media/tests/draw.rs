//! Drawing detections and segment masks.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hgpt_core::backend::{MediaError, MediaStore};
use hgpt_core::output::{Blob, BoundingBox, Detection, Segment};
use hgpt_core::task::ResourceKind;
use hgpt_media::{LocalMedia, MediaConfig};
use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage, RgbaImage};
use std::io::Cursor;
use tempfile::TempDir;

const GREY: Rgb<u8> = Rgb([128, 128, 128]);

fn media() -> (TempDir, LocalMedia) {
    let dir = tempfile::tempdir().unwrap();
    let media = LocalMedia::new(MediaConfig {
        media_root: dir.path().to_path_buf(),
        out_dir: dir.path().join("out"),
        ..MediaConfig::default()
    })
    .unwrap();
    (dir, media)
}

fn encode(image: DynamicImage, format: ImageFormat) -> Bytes {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    Bytes::from(out.into_inner())
}

fn grey_image(width: u32, height: u32, format: ImageFormat) -> Blob {
    let image = RgbImage::from_pixel(width, height, GREY);
    Blob::sniffed(encode(DynamicImage::ImageRgb8(image), format))
}

fn decode(blob: &Blob) -> RgbaImage {
    assert_eq!(blob.mime.as_deref(), Some("image/png"));
    assert!(blob.bytes.starts_with(b"\x89PNG"));
    image::load_from_memory(&blob.bytes).unwrap().into_rgba8()
}

fn is_grey(image: &RgbaImage, x: u32, y: u32) -> bool {
    image.get_pixel(x, y).0[..3] == GREY.0
}

fn detection(label: &str, xmin: f64, ymin: f64, xmax: f64, ymax: f64) -> Detection {
    Detection {
        label: label.into(),
        score: 0.987,
        bbox: BoundingBox {
            xmin,
            ymin,
            xmax,
            ymax,
        },
    }
}

fn mask_base64(mask: GrayImage) -> String {
    STANDARD.encode(encode(DynamicImage::ImageLuma8(mask), ImageFormat::Png))
}

#[tokio::test]
async fn boxes_change_their_outline_only() {
    let (_dir, media) = media();
    let image = grey_image(200, 160, ImageFormat::Png);
    let out = media
        .draw_detections(&image, &[detection("cat", 40.0, 60.0, 120.0, 130.0)])
        .await
        .unwrap();
    let out = decode(&out);
    assert_eq!(out.dimensions(), (200, 160));
    // The outline: left, right and bottom edges.
    assert!(!is_grey(&out, 40, 100));
    assert!(!is_grey(&out, 41, 100));
    assert!(!is_grey(&out, 120, 100));
    assert!(!is_grey(&out, 80, 130));
    // The label tag sits above the box.
    let tag_pixels = (40..120).flat_map(|x| (40..60).map(move |y| (x, y)));
    assert!(tag_pixels.filter(|&(x, y)| !is_grey(&out, x, y)).count() > 100);
    // Inside the box and far from it: untouched.
    assert!(is_grey(&out, 80, 100));
    assert!(is_grey(&out, 180, 10));
    assert!(is_grey(&out, 10, 150));
}

#[tokio::test]
async fn a_box_at_the_top_keeps_its_tag_inside_the_image() {
    let (_dir, media) = media();
    let image = grey_image(200, 160, ImageFormat::Jpeg);
    let before = image::load_from_memory(&image.bytes).unwrap().into_rgba8();
    let out = media
        .draw_detections(&image, &[detection("dog", 50.0, 0.0, 150.0, 100.0)])
        .await
        .unwrap();
    let out = decode(&out);
    // The tag is drawn inside the box, just below its top edge.
    let changed = |x: u32, y: u32| out.get_pixel(x, y) != before.get_pixel(x, y);
    assert!((55..100).filter(|&x| changed(x, 6)).count() > 10);
    assert!(!changed(180, 150));
}

#[tokio::test]
async fn labels_get_distinct_colours() {
    let (_dir, media) = media();
    let image = grey_image(300, 300, ImageFormat::Png);
    let detections = [
        detection("cat", 50.0, 100.0, 100.0, 200.0),
        detection("dog", 150.0, 100.0, 200.0, 200.0),
        detection("cat", 220.0, 100.0, 280.0, 200.0),
    ];
    let out = decode(&media.draw_detections(&image, &detections).await.unwrap());
    let cat = out.get_pixel(50, 150);
    let dog = out.get_pixel(150, 150);
    let cat_again = out.get_pixel(220, 150);
    assert_ne!(cat, dog);
    assert_eq!(cat, cat_again);
}

#[tokio::test]
async fn out_of_bounds_boxes_are_clamped() {
    let (_dir, media) = media();
    let image = grey_image(64, 48, ImageFormat::Png);
    let detections = [
        detection("huge", -100.0, -100.0, 1e9, 1e9),
        detection("outside", 500.0, 500.0, 600.0, 600.0),
        detection("nan", f64::NAN, 0.0, 10.0, 10.0),
        detection("inverted", 30.0, 30.0, 20.0, 20.0),
        detection(&"long label ".repeat(50), 10.0, 40.0, 12.0, 47.0),
    ];
    let out = decode(&media.draw_detections(&image, &detections).await.unwrap());
    assert_eq!(out.dimensions(), (64, 48));
    // The huge box is drawn along the image border.
    assert!(!is_grey(&out, 0, 30));
    assert!(!is_grey(&out, 63, 30));
    assert!(!is_grey(&out, 30, 47));
    // The inverted box is normalised (drawn alone: with the others, tags
    // kept clear of each other may land inside it).
    let alone = [detection("inverted", 30.0, 30.0, 20.0, 20.0)];
    let out = decode(&media.draw_detections(&image, &alone).await.unwrap());
    assert!(!is_grey(&out, 20, 25));
    assert!(is_grey(&out, 25, 25));
}

#[tokio::test]
async fn no_detections_round_trip_the_image() {
    let (_dir, media) = media();
    let image = grey_image(20, 10, ImageFormat::WebP);
    let out = decode(&media.draw_detections(&image, &[]).await.unwrap());
    assert!(out.enumerate_pixels().all(|(x, y, _)| is_grey(&out, x, y)));
}

#[tokio::test]
async fn garbage_images_are_invalid() {
    let (_dir, media) = media();
    let truncated = grey_image(50, 50, ImageFormat::Png).bytes.slice(..40);
    for bytes in [
        Bytes::from_static(b"definitely not an image"),
        Bytes::new(),
        truncated,
    ] {
        let blob = Blob {
            bytes,
            mime: Some("image/png".into()),
        };
        let result = media
            .draw_detections(&blob, &[detection("x", 0.0, 0.0, 1.0, 1.0)])
            .await;
        assert!(
            matches!(
                result,
                Err(MediaError::Invalid {
                    kind: ResourceKind::Image,
                    ..
                })
            ),
            "{result:?}"
        );
        let result = media.draw_segments(&blob, &[]).await;
        assert!(
            matches!(result, Err(MediaError::Invalid { .. })),
            "{result:?}"
        );
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A PNG whose header claims `width`×`height` pixels (and holds none).
fn claimed_png(width: u32, height: u32) -> Bytes {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IEND", &[]));
    Bytes::from(png)
}

#[tokio::test]
async fn huge_and_empty_dimensions_are_invalid() {
    let (_dir, media) = media();
    for (width, height) in [(100_000, 100_000), (16_000, 16_000), (0, 10)] {
        let blob = Blob {
            bytes: claimed_png(width, height),
            mime: None,
        };
        let result = media.draw_detections(&blob, &[]).await;
        assert!(
            matches!(result, Err(MediaError::Invalid { .. })),
            "{width}x{height}: {result:?}"
        );
    }
}

fn half_mask(width: u32, height: u32) -> GrayImage {
    GrayImage::from_fn(width, height, |x, _| {
        Luma([if x < width / 2 { 255 } else { 0 }])
    })
}

#[tokio::test]
async fn masks_tint_masked_pixels_only() {
    let (_dir, media) = media();
    let image = grey_image(40, 30, ImageFormat::Png);
    let segment = Segment {
        label: "sky".into(),
        score: None,
        mask: mask_base64(half_mask(40, 30)),
    };
    let out = decode(&media.draw_segments(&image, &[segment]).await.unwrap());
    assert_eq!(out.dimensions(), (40, 30));
    for (x, y, _) in out.enumerate_pixels() {
        assert_eq!(is_grey(&out, x, y), x >= 20, "pixel ({x}, {y})");
    }
}

#[tokio::test]
async fn masks_of_another_size_are_resized() {
    let (_dir, media) = media();
    let image = grey_image(40, 30, ImageFormat::Png);
    let small = Segment {
        label: "a".into(),
        score: Some(0.9),
        mask: mask_base64(half_mask(10, 5)),
    };
    // A second segment with an RGBA mask covering the bottom row only.
    let rgba = RgbaImage::from_fn(80, 60, |_, y| {
        if y >= 58 {
            image::Rgba([255, 255, 255, 255])
        } else {
            image::Rgba([0, 0, 0, 255])
        }
    });
    let bottom = Segment {
        label: "b".into(),
        score: Some(0.5),
        mask: STANDARD.encode(encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png)),
    };
    let out = decode(&media.draw_segments(&image, &[small, bottom]).await.unwrap());
    assert!(!is_grey(&out, 5, 10));
    assert!(is_grey(&out, 30, 10));
    assert!(!is_grey(&out, 30, 29));
    // Distinct colours per segment.
    assert_ne!(out.get_pixel(5, 10), out.get_pixel(30, 29));
}

#[tokio::test]
async fn bad_masks_name_their_segment() {
    let (_dir, media) = media();
    let image = grey_image(10, 10, ImageFormat::Png);
    let good = Segment {
        label: "good".into(),
        score: None,
        mask: mask_base64(half_mask(10, 10)),
    };
    for (label, mask) in [
        ("broken-base64", "%%% not base64 %%%".to_string()),
        ("not-a-png", STANDARD.encode(b"hello, world")),
    ] {
        let bad = Segment {
            label: label.into(),
            score: None,
            mask,
        };
        let result = media.draw_segments(&image, &[good.clone(), bad]).await;
        match result {
            Err(err @ MediaError::Invalid { .. }) => {
                assert!(err.to_string().contains(label), "{err}")
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
}
