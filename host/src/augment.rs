//! Augmentation that moves the face box.
//!
//! The old model reached 0.32 mean IoU on real photos because every training face was a
//! centred LFW crop of the same size. Here each face is cut out with a random margin,
//! scaled to a random size (a face 8% to 70% of the frame wide) and pasted with feathered
//! edges at a random place onto a no-face scene, on a canvas of random aspect ratio (real
//! photos are 3:2 or 2:3 and get stretched to a square at inference). No-face samples get
//! a pasted patch of another scene, so that "a pasted rectangle" never predicts "face".
//! Then flips, colour, blur. The box follows every step.
//!
//! All randomness comes from the `rng` argument, so a seeded generator gives the same
//! images on every run (the training cache relies on it).

use image::{imageops, RgbImage};
use rand::Rng;
use shared::geometry::BBox;

/// An image with its label.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// The pixels.
    pub image: RgbImage,
    /// Whether a face is in the image.
    pub face: bool,
    /// The face box, normalised; meaningless when `face` is false.
    pub bbox: BBox,
}

/// How far augmentation departs from the source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strength {
    /// Keeps the framing: flip and colour only (the held-out seed images look like this).
    Mild,
    /// Re-frames: faces pasted onto scenes at any size and place, aspect changes, blur.
    Strong,
}

/// Longest side of a composed canvas. The model sees it stretched to 224x224.
const CANVAS_LONG_SIDE: f32 = 288.0;

/// Mirrors horizontally; the box maps `x1, x2 -> 1 - x2, 1 - x1`.
pub fn flip(img: &RgbImage, bbox: BBox) -> (RgbImage, BBox) {
    let out = imageops::flip_horizontal(img);
    (out, BBox::new(1.0 - bbox.x2, bbox.y1, 1.0 - bbox.x1, bbox.y2))
}

/// A pixel rectangle `[x, y, width, height]` inside an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    /// Left edge in pixels.
    pub x: f32,
    /// Top edge in pixels.
    pub y: f32,
    /// Width in pixels.
    pub w: f32,
    /// Height in pixels.
    pub h: f32,
}

/// Maps a box normalised to a `width` x `height` image into a box normalised to `rect`
/// of that image (the crop), without clamping.
pub fn box_into_rect(bbox: BBox, width: u32, height: u32, rect: Rect) -> BBox {
    let (w, h) = (width as f32, height as f32);
    let fx = |x: f32| (x * w - rect.x) / rect.w;
    let fy = |y: f32| (y * h - rect.y) / rect.h;
    BBox::new(fx(bbox.x1), fy(bbox.y1), fx(bbox.x2), fy(bbox.y2))
}

/// Pastes `patch` onto `canvas` with its top-left corner at `(x, y)` (may lie partly
/// outside), blending linearly over `feather` pixels at the patch's edges so that no hard
/// seam marks where it was pasted.
pub fn paste_feathered(canvas: &mut RgbImage, patch: &RgbImage, x: i64, y: i64, feather: f32) {
    let (cw, ch) = (i64::from(canvas.width()), i64::from(canvas.height()));
    let (pw, ph) = (i64::from(patch.width()), i64::from(patch.height()));
    for py in 0..ph {
        let cy = y + py;
        if cy < 0 || cy >= ch {
            continue;
        }
        let dy = py.min(ph - 1 - py) as f32;
        for px in 0..pw {
            let cx = x + px;
            if cx < 0 || cx >= cw {
                continue;
            }
            let d = (px.min(pw - 1 - px) as f32).min(dy);
            let a = if feather > 0.0 { ((d + 1.0) / feather).min(1.0) } else { 1.0 };
            let src = patch.get_pixel(px as u32, py as u32).0;
            let dst = canvas.get_pixel_mut(cx as u32, cy as u32);
            for (d, s) in dst.0.iter_mut().zip(src) {
                let v = a * f32::from(s) + (1.0 - a) * f32::from(*d);
                *d = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Scales brightness and contrast and moves saturation, in place.
pub fn jitter_colour(img: &mut RgbImage, brightness: f32, contrast: f32, saturation: f32) {
    let n = (img.width() * img.height()).max(1) as f32;
    let mean = img.pixels().map(|p| luma(p.0)).sum::<f32>() / n;
    for p in img.pixels_mut() {
        let l = luma(p.0);
        for c in 0..3 {
            let v = l + (f32::from(p.0[c]) - l) * saturation;
            let v = (v * brightness - mean) * contrast + mean;
            p.0[c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

fn luma(p: [u8; 3]) -> f32 {
    0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
}

/// A random canvas size whose aspect ratio (width / height) lies between 0.6 and 1.7.
fn canvas_size(rng: &mut impl Rng) -> (u32, u32) {
    let aspect = rng.gen_range(0.6f32.ln()..1.7f32.ln()).exp();
    if aspect >= 1.0 {
        (CANVAS_LONG_SIDE as u32, (CANVAS_LONG_SIDE / aspect).round() as u32)
    } else {
        ((CANVAS_LONG_SIDE * aspect).round() as u32, CANVAS_LONG_SIDE as u32)
    }
}

/// A random part of `scene` (at least half of each side) stretched to `w` x `h`.
fn scene_background(scene: &RgbImage, w: u32, h: u32, rng: &mut impl Rng) -> RgbImage {
    let (sw, sh) = (scene.width(), scene.height());
    let cw = ((sw as f32 * rng.gen_range(0.5..=1.0)) as u32).clamp(1, sw);
    let ch = ((sh as f32 * rng.gen_range(0.5..=1.0)) as u32).clamp(1, sh);
    let x = rng.gen_range(0..=sw - cw);
    let y = rng.gen_range(0..=sh - ch);
    let crop = imageops::crop_imm(scene, x, y, cw, ch).to_image();
    imageops::resize(&crop, w, h, imageops::FilterType::Triangle)
}

/// Cuts `src` around `bbox` with a margin of `margin` box sizes (clipped to the image).
fn cut_around(src: &RgbImage, bbox: BBox, margin: f32) -> (RgbImage, BBox) {
    let (w, h) = (src.width() as f32, src.height() as f32);
    let [x1, y1, x2, y2] = bbox.to_pixels(src.width(), src.height());
    let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
    let (hw, hh) = ((x2 - x1) * margin / 2.0, (y2 - y1) * margin / 2.0);
    let left = (cx - hw).clamp(0.0, w - 1.0).floor();
    let top = (cy - hh).clamp(0.0, h - 1.0).floor();
    let right = (cx + hw).clamp(left + 1.0, w).ceil();
    let bottom = (cy + hh).clamp(top + 1.0, h).ceil();
    let rect = Rect { x: left, y: top, w: right - left, h: bottom - top };
    let cut = imageops::crop_imm(src, left as u32, top as u32, rect.w as u32, rect.h as u32);
    (cut.to_image(), box_into_rect(bbox, src.width(), src.height(), rect))
}

/// Pastes a cut of `src` around `bbox` onto `canvas` so that the box ends up `face_w` of
/// the canvas wide, at a random place with the whole box inside. Returns the new box.
fn paste_random(
    canvas: &mut RgbImage,
    src: &RgbImage,
    bbox: BBox,
    face_w: f32,
    rng: &mut impl Rng,
) -> BBox {
    let (cw, ch) = (canvas.width() as f32, canvas.height() as f32);
    let (cut, inner) = cut_around(src, bbox, rng.gen_range(1.2..3.0));
    // One scale for both axes keeps the face's own proportions; the canvas aspect then
    // distorts it the way stretching a real photo to a square does.
    let box_px_w = (inner.width() * cut.width() as f32).max(1.0);
    let box_px_h = inner.height() * cut.height() as f32;
    let scale = (face_w * cw / box_px_w).min(0.95 * ch / box_px_h.max(1.0));
    let pw = ((cut.width() as f32 * scale).round() as u32).max(1);
    let ph = ((cut.height() as f32 * scale).round() as u32).max(1);
    let patch = imageops::resize(&cut, pw, ph, imageops::FilterType::Triangle);
    let (bw, bh) = (inner.width() * pw as f32, inner.height() * ph as f32);
    let bx = rng.gen_range(0.0..=(cw - bw).max(0.0));
    let by = rng.gen_range(0.0..=(ch - bh).max(0.0));
    let x = (bx - inner.x1 * pw as f32).round();
    let y = (by - inner.y1 * ph as f32).round();
    let feather = (pw.min(ph) as f32 * 0.12).max(1.0);
    paste_feathered(canvas, &patch, x as i64, y as i64, feather);
    let map = |v: f32, off: f32, size: f32, full: f32| ((off + v * size) / full).clamp(0.0, 1.0);
    BBox::new(
        map(inner.x1, x, pw as f32, cw),
        map(inner.y1, y, ph as f32, ch),
        map(inner.x2, x, pw as f32, cw),
        map(inner.y2, y, ph as f32, ch),
    )
}

/// Composes a face sample: the face of `face` (which must have `face == true`) on a part of
/// `scene`, or (Mild) only flips and colours it.
pub fn augment_face(
    face: &Labelled,
    scene: &RgbImage,
    s: Strength,
    rng: &mut impl Rng,
) -> Labelled {
    let (image, bbox) = match s {
        Strength::Mild => (face.image.clone(), face.bbox),
        Strength::Strong => {
            let (w, h) = canvas_size(rng);
            let mut canvas = scene_background(scene, w, h, rng);
            let face_w = rng.gen_range(0.08f32.ln()..0.7f32.ln()).exp();
            let bbox = paste_random(&mut canvas, &face.image, face.bbox, face_w, rng);
            (canvas, bbox)
        }
    };
    finish(Labelled { image, face: true, bbox }, s, rng)
}

/// Composes a no-face sample from `scene`; Strong also pastes a patch of `other` so that
/// pasting itself carries no label.
pub fn augment_scene(
    scene: &RgbImage,
    other: &RgbImage,
    s: Strength,
    rng: &mut impl Rng,
) -> Labelled {
    let none = BBox::new(0.0, 0.0, 0.0, 0.0);
    let image = match s {
        Strength::Mild => scene.clone(),
        Strength::Strong => {
            let (w, h) = canvas_size(rng);
            let mut canvas = scene_background(scene, w, h, rng);
            if rng.gen_bool(0.5) {
                let (pw, ph) = (rng.gen_range(0.15..0.5), rng.gen_range(0.15..0.5));
                let x = rng.gen_range(0.0..1.0 - pw);
                let y = rng.gen_range(0.0..1.0 - ph);
                let fake = BBox::new(x, y, x + pw, y + ph);
                paste_random(&mut canvas, other, fake, rng.gen_range(0.08..0.5), rng);
            }
            canvas
        }
    };
    finish(Labelled { image, face: false, bbox: none }, s, rng)
}

/// Flip, colour, and for Strong also blur and the occasional grey frame.
fn finish(mut l: Labelled, s: Strength, rng: &mut impl Rng) -> Labelled {
    if rng.gen_bool(0.5) {
        let (img, bbox) = flip(&l.image, l.bbox);
        l.image = img;
        if l.face {
            l.bbox = bbox;
        }
    }
    let (b, c, sat) = match s {
        Strength::Mild => {
            (rng.gen_range(0.85..1.15), rng.gen_range(0.85..1.15), rng.gen_range(0.85..1.15))
        }
        Strength::Strong => {
            (rng.gen_range(0.6..1.4), rng.gen_range(0.7..1.3), rng.gen_range(0.6..1.4))
        }
    };
    let sat = if s == Strength::Strong && rng.gen_bool(0.05) { 0.0 } else { sat };
    jitter_colour(&mut l.image, b, c, sat);
    if s == Strength::Strong && rng.gen_bool(0.25) {
        l.image = imageops::blur(&l.image, rng.gen_range(0.5..2.0));
    }
    l
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests {
    use super::*;
    use image::Rgb;
    use rand::SeedableRng;

    fn rng(seed: u64) -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    /// A grey image with a pure red rectangle where `bbox` says the face is.
    fn marked(w: u32, h: u32, bbox: BBox) -> Labelled {
        let mut image = RgbImage::from_pixel(w, h, Rgb([90, 90, 90]));
        let [x1, y1, x2, y2] = bbox.to_pixels(w, h);
        for y in y1 as u32..y2 as u32 {
            for x in x1 as u32..x2 as u32 {
                image.put_pixel(x, y, Rgb([250, 0, 0]));
            }
        }
        Labelled { image, face: true, bbox }
    }

    /// The bounding box of strongly red pixels, normalised.
    fn red_extent(img: &RgbImage) -> BBox {
        let (mut x1, mut y1, mut x2, mut y2) = (u32::MAX, u32::MAX, 0, 0);
        for (x, y, p) in img.enumerate_pixels() {
            if p.0[0] > 150 && p.0[1] < 90 && p.0[2] < 90 {
                (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1));
            }
        }
        BBox::from_pixels([x1 as f32, y1 as f32, x2 as f32, y2 as f32], img.width(), img.height())
    }

    #[test]
    fn flip_maps_x_to_one_minus_x() {
        let l = marked(100, 50, BBox::new(0.1, 0.2, 0.3, 0.8));
        let (img, b) = flip(&l.image, l.bbox);
        assert_eq!(b, BBox::new(0.7, 0.2, 0.9, 0.8));
        assert!(red_extent(&img).iou(b) > 0.95);
    }

    #[test]
    fn box_into_rect_is_a_crop() {
        let b = box_into_rect(
            BBox::new(0.5, 0.5, 1.0, 1.0),
            200,
            100,
            Rect { x: 100.0, y: 50.0, w: 100.0, h: 50.0 },
        );
        assert_eq!(b, BBox::new(0.0, 0.0, 1.0, 1.0));
    }

    #[test]
    fn pasted_box_is_where_the_pixels_are() {
        let face = marked(250, 250, BBox::new(0.3, 0.28, 0.68, 0.74));
        let scene = RgbImage::from_pixel(250, 250, Rgb([20, 120, 20]));
        for seed in 0..40 {
            let mut r = rng(seed);
            let (w, h) = canvas_size(&mut r);
            let mut canvas = scene_background(&scene, w, h, &mut r);
            let face_w = r.gen_range(0.08f32..0.7);
            let b = paste_random(&mut canvas, &face.image, face.bbox, face_w, &mut r);
            let seen = red_extent(&canvas);
            // Feathering softens one or two pixels at the edge of small pastes.
            assert!(seen.iou(b) > 0.8, "seed {seed}: box {b:?}, pixels {seen:?}");
            assert!(b.x1 >= 0.0 && b.y1 >= 0.0 && b.x2 <= 1.0 && b.y2 <= 1.0);
        }
    }

    #[test]
    fn strong_augmentation_moves_and_resizes_faces() {
        let face = marked(250, 250, BBox::new(0.32, 0.3, 0.68, 0.72));
        let scene = RgbImage::from_pixel(250, 250, Rgb([20, 20, 160]));
        let mut widths = Vec::new();
        let mut centres = Vec::new();
        for seed in 0..60 {
            let l = augment_face(&face, &scene, Strength::Strong, &mut rng(seed));
            assert!(l.face);
            widths.push(l.bbox.width());
            centres.push(l.bbox.centre().0);
        }
        let spread = |v: &[f32]| {
            v.iter().cloned().fold(f32::MIN, f32::max) - v.iter().cloned().fold(f32::MAX, f32::min)
        };
        assert!(spread(&widths) > 0.3, "face sizes vary: {widths:?}");
        assert!(spread(&centres) > 0.5, "face places vary: {centres:?}");
    }

    #[test]
    fn same_seed_same_sample() {
        let face = marked(250, 250, BBox::new(0.32, 0.3, 0.68, 0.72));
        let scene = RgbImage::from_pixel(250, 250, Rgb([20, 20, 160]));
        let a = augment_face(&face, &scene, Strength::Strong, &mut rng(7));
        let b = augment_face(&face, &scene, Strength::Strong, &mut rng(7));
        assert_eq!(a.bbox, b.bbox);
        assert_eq!(a.image, b.image);
    }

    #[test]
    fn scenes_stay_negative() {
        let scene = RgbImage::from_pixel(250, 250, Rgb([20, 20, 160]));
        let other = RgbImage::from_pixel(250, 250, Rgb([200, 200, 0]));
        for seed in 0..10 {
            let l = augment_scene(&scene, &other, Strength::Strong, &mut rng(seed));
            assert!(!l.face);
        }
    }

    #[test]
    fn colour_jitter_identity_keeps_pixels() {
        let mut img = RgbImage::from_pixel(4, 4, Rgb([10, 100, 200]));
        let before = img.clone();
        jitter_colour(&mut img, 1.0, 1.0, 1.0);
        assert_eq!(img, before);
        jitter_colour(&mut img, 1.3, 1.0, 1.0);
        assert!(img.get_pixel(0, 0).0[2] > 200);
    }
}
