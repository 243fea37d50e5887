//! V4L2 cameras through the `v4l` crate: MJPEG or YUYV at a chosen size and rate.
//!
//! The device code is kept to [`V4l2Source::next_frame`] and `open_camera`; what the
//! camera sends is turned into pixels by [`decode_yuyv`] and [`decode_mjpeg`], which are
//! plain functions tested on byte streams the tests make.
//!
//! Not tested here: the machine that built this has no `/dev/video*` (and no V4L2
//! loopback support), so opening a device, negotiating the format and dequeuing
//! buffers has only run against the kernel's "no such device" answer.
//!
//! Troubleshooting: "Permission denied" on `/dev/video0` means the service user is not
//! in the `video` group; "camera gave YUYV, asked MJPG" means the camera cannot send
//! that format at that size: pick the other `format` or another size (`v4l2-ctl
//! --list-formats-ext` lists what it offers).

use std::io::Cursor;
use std::time::Duration;

use image::{ImageDecoder, RgbImage};
use serde::{Deserialize, Serialize};
use v4l::buffer::Type;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, Format, FourCC};

use super::{Frame, FrameSource, SourceConfig, SourceError};

/// The camera's pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Motion JPEG: each buffer is a JPEG, often without Huffman tables.
    Mjpeg,
    /// Packed 4:2:2 YUV, `Y0 U Y1 V` per two pixels (BT.601, limited range).
    Yuyv,
}

impl PixelFormat {
    fn fourcc(self) -> FourCC {
        match self {
            PixelFormat::Mjpeg => FourCC::new(b"MJPG"),
            PixelFormat::Yuyv => FourCC::new(b"YUYV"),
        }
    }
}

/// A V4L2 camera, opened on first use and reopened after it is lost.
pub struct V4l2Source {
    config: SourceConfig,
    camera: Option<Camera>,
    frames: u64,
}

struct Camera {
    // The stream holds its own handle to the device; the device is kept for clarity of
    // ownership (it closes after the stream's buffers are unmapped).
    stream: MmapStream<'static>,
    _device: Device,
    width: u32,
    height: u32,
    /// Bytes per row of a YUYV buffer; drivers may pad rows past `2 * width`.
    stride: u32,
}

impl V4l2Source {
    /// A source for the configured device; nothing is opened yet.
    pub fn new(config: &SourceConfig) -> Self {
        Self { config: config.clone(), camera: None, frames: 0 }
    }

    fn name(&self) -> String {
        self.config.path.display().to_string()
    }
}

fn open_camera(config: &SourceConfig) -> std::io::Result<Camera> {
    let device = Device::with_path(&config.path)?;
    let want = Format::new(config.width, config.height, config.format.fourcc());
    let got = device.set_format(&want)?;
    if got.fourcc != want.fourcc {
        let msg = format!("camera gave {}, asked {}", got.fourcc, want.fourcc);
        return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, msg));
    }
    if let Err(e) = device.set_params(&v4l::video::capture::Parameters::with_fps(config.fps)) {
        tracing::warn!(
            fps = config.fps,
            error = %e,
            "camera refused the frame rate; using its own"
        );
    }
    let mut stream = MmapStream::with_buffers(&device, Type::VideoCapture, 4)?;
    stream.set_timeout(Duration::from_secs_f32(config.timeout_s.max(0.1)));
    let stride = got.stride.max(got.width * 2);
    Ok(Camera { stream, _device: device, width: got.width, height: got.height, stride })
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        let camera = match &mut self.camera {
            Some(c) => c,
            None => {
                let c = open_camera(&self.config).map_err(|e| SourceError::Unavailable {
                    source_name: self.name(),
                    reason: e.to_string(),
                })?;
                self.camera.insert(c)
            }
        };
        let (width, height, stride) = (camera.width, camera.height, camera.stride);
        let decoded = match camera.stream.next() {
            Ok((buf, meta)) => {
                let used = (meta.bytesused as usize).min(buf.len());
                decode(self.config.format, &buf[..used], width, height, stride)
            }
            Err(e) => {
                // Unplugged or stalled: drop the stream so the next call reopens it.
                self.camera = None;
                let reason = format!("no frame received: {e}");
                return Err(SourceError::Unavailable { source_name: self.name(), reason });
            }
        };
        self.frames += 1;
        let origin = format!("frame {}", self.frames);
        match decoded {
            Ok(image) => Ok(Frame { image, origin }),
            Err(reason) => Err(SourceError::BadFrame { what: origin, reason }),
        }
    }

    fn describe(&self) -> String {
        let c = &self.config;
        let format = match c.format {
            PixelFormat::Mjpeg => "MJPEG",
            PixelFormat::Yuyv => "YUYV",
        };
        format!("{} {format} {}x{}@{}", c.path.display(), c.width, c.height, c.fps)
    }

    fn is_live(&self) -> bool {
        true
    }
}

/// Turns one camera buffer into pixels; `stride` is the YUYV row length in bytes.
pub fn decode(
    format: PixelFormat,
    data: &[u8],
    width: u32,
    height: u32,
    stride: u32,
) -> Result<RgbImage, String> {
    match format {
        PixelFormat::Yuyv => decode_yuyv(data, width, height, stride),
        PixelFormat::Mjpeg => decode_mjpeg(data),
    }
}

/// Converts packed YUYV (BT.601, limited range) to RGB. Rows are `stride` bytes apart
/// (at least `2 * width`; the bytes past a row's pixels are padding and skipped).
pub fn decode_yuyv(data: &[u8], width: u32, height: u32, stride: u32) -> Result<RgbImage, String> {
    if width == 0 || height == 0 || width % 2 != 0 {
        return Err(format!("YUYV needs an even, non-zero width; got {width}x{height}"));
    }
    let row = width as usize * 2;
    let stride = (stride as usize).max(row);
    let need = stride * (height as usize - 1) + row;
    if data.len() < need {
        return Err(format!("YUYV {width}x{height} needs {need} bytes, buffer has {}", data.len()));
    }
    let mut rgb = Vec::with_capacity(row / 2 * 3 * height as usize);
    let rows = data.chunks(stride).take(height as usize).map(|r| &r[..row]);
    for quad in rows.flat_map(|r| r.chunks_exact(4)) {
        let (u, v) = (i32::from(quad[1]) - 128, i32::from(quad[3]) - 128);
        for y in [quad[0], quad[2]] {
            let c = 298 * (i32::from(y) - 16);
            let px = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
            rgb.extend_from_slice(&[px(c + 409 * v), px(c - 100 * u - 208 * v), px(c + 516 * u)]);
        }
    }
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| "YUYV buffer size mismatch".into())
}

/// Decodes one MJPEG buffer. Many cameras leave out the Huffman tables (the AVI MJPEG
/// convention); the standard tables are put back in front of the scan then.
pub fn decode_mjpeg(data: &[u8]) -> Result<RgbImage, String> {
    let with_tables;
    let data = if needs_default_tables(data) {
        with_tables = insert_default_tables(data)?;
        &with_tables[..]
    } else {
        data
    };
    let decoder = image::codecs::jpeg::JpegDecoder::new(Cursor::new(data))
        .map_err(|e| format!("MJPEG frame does not decode: {e}"))?;
    let (w, h) = decoder.dimensions();
    let image = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("MJPEG frame does not decode: {e}"))?;
    if w == 0 || h == 0 {
        return Err("MJPEG frame has no pixels".into());
    }
    Ok(image.into_rgb8())
}

/// Positions of the JPEG markers before the first scan: (marker, offset of 0xFF).
fn header_markers(data: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut pos = 2; // after SOI
    while pos + 4 <= data.len() && data[pos] == 0xFF {
        let marker = data[pos + 1];
        out.push((marker, pos));
        if marker == 0xDA {
            break;
        }
        let len = usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
        pos += 2 + len;
    }
    out
}

fn needs_default_tables(data: &[u8]) -> bool {
    let markers = header_markers(data);
    let has_scan = markers.iter().any(|&(m, _)| m == 0xDA);
    has_scan && !markers.iter().any(|&(m, _)| m == 0xC4)
}

fn insert_default_tables(data: &[u8]) -> Result<Vec<u8>, String> {
    let sos = header_markers(data)
        .into_iter()
        .find(|&(m, _)| m == 0xDA)
        .map(|(_, at)| at)
        .ok_or("MJPEG frame has no scan")?;
    let mut out = Vec::with_capacity(data.len() + 432);
    out.extend_from_slice(&data[..sos]);
    out.extend_from_slice(&default_dht_segment());
    out.extend_from_slice(&data[sos..]);
    Ok(out)
}

/// The four Huffman tables of ITU-T T.81 Annex K.3 as one DHT segment: for each table,
/// class/id, the count of codes of each length 1..=16, then the symbols.
fn default_dht_segment() -> Vec<u8> {
    const DC_LUMA_COUNTS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const DC_CHROMA_COUNTS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    const AC_LUMA_COUNTS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
    const AC_CHROMA_COUNTS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
    // AC symbols are (zero run << 4 | size) bytes, in the order of code length.
    const AC_LUMA_SYMBOLS: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
        0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
        0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
        0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
        0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    const AC_CHROMA_SYMBOLS: [u8; 162] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33,
        0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18,
        0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4,
        0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
        0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7,
        0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    let digits: Vec<u8> = (0..12).collect();
    let (ac_luma, ac_chroma) = (AC_LUMA_SYMBOLS.to_vec(), AC_CHROMA_SYMBOLS.to_vec());

    let mut body = Vec::new();
    for (class_id, counts, symbols) in [
        (0x00u8, &DC_LUMA_COUNTS, &digits),
        (0x10, &AC_LUMA_COUNTS, &ac_luma),
        (0x01, &DC_CHROMA_COUNTS, &digits),
        (0x11, &AC_CHROMA_COUNTS, &ac_chroma),
    ] {
        body.push(class_id);
        body.extend_from_slice(counts);
        body.extend_from_slice(symbols);
    }
    let mut seg = vec![0xFF, 0xC4];
    seg.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
    seg.extend_from_slice(&body);
    seg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BT.601 limited-range RGB -> YUV, in floating point, as a camera would do it.
    fn yuv(rgb: [u8; 3]) -> [u8; 3] {
        let [r, g, b] = rgb.map(f64::from);
        let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
        let u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
        let v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
        [y, u, v].map(|c| c.round().clamp(0.0, 255.0) as u8)
    }

    fn yuyv_of(colours: &[[u8; 3]], width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..(width * height / 2) as usize {
            let [y, u, v] = yuv(colours[i % colours.len()]);
            out.extend_from_slice(&[y, u, y, v]);
        }
        out
    }

    #[test]
    fn yuyv_primaries_come_back_within_rounding() {
        let colours =
            [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [120, 60, 200]];
        let img = decode_yuyv(&yuyv_of(&colours, 12, 2), 12, 2, 24).unwrap();
        for (i, want) in colours.iter().enumerate() {
            let got = img.get_pixel(2 * i as u32, 0).0;
            for c in 0..3 {
                let diff = (i32::from(got[c]) - i32::from(want[c])).abs();
                assert!(diff <= 3, "colour {want:?} came back as {got:?}");
            }
            assert_eq!(img.get_pixel(2 * i as u32 + 1, 0), img.get_pixel(2 * i as u32, 0));
        }
    }

    #[test]
    fn short_or_odd_yuyv_buffers_are_errors() {
        assert!(decode_yuyv(&[0; 10], 4, 2, 8).unwrap_err().contains("needs 16 bytes"));
        assert!(decode_yuyv(&[0; 100], 5, 2, 10).is_err());
        assert!(decode_yuyv(&[16, 128, 16, 128], 2, 1, 4).is_ok());
        // Padded rows: the last row needs no padding after it.
        assert!(decode_yuyv(&[0; 40], 4, 2, 32).is_ok());
        assert!(decode_yuyv(&[0; 39], 4, 2, 32).unwrap_err().contains("needs 40 bytes"));
    }

    #[test]
    fn padded_yuyv_rows_skip_the_padding() {
        let colours = [[255, 0, 0], [0, 0, 255]];
        let tight = yuyv_of(&colours, 4, 2);
        // 8 pixel bytes per row, padded to 16 with bytes that would decode as green.
        let mut padded = Vec::new();
        for r in tight.chunks(8) {
            padded.extend_from_slice(r);
            padded.extend_from_slice(&[yuv([0, 255, 0])[0], 0, 0, 0].repeat(2));
        }
        let want = decode_yuyv(&tight, 4, 2, 8).unwrap();
        assert_eq!(decode_yuyv(&padded, 4, 2, 16).unwrap(), want);
    }

    fn test_jpeg() -> (RgbImage, Vec<u8>) {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 128]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&img)
            .unwrap();
        (img, jpeg)
    }

    /// A camera-style MJPEG buffer: the same JPEG with its DHT segments taken out.
    fn strip_tables(jpeg: &[u8]) -> Vec<u8> {
        let markers = header_markers(jpeg);
        let mut out = jpeg[..2].to_vec();
        for (i, &(m, at)) in markers.iter().enumerate() {
            let end = markers.get(i + 1).map_or(jpeg.len(), |&(_, next)| next);
            let end = if m == 0xDA { jpeg.len() } else { end };
            if m != 0xC4 {
                out.extend_from_slice(&jpeg[at..end]);
            }
        }
        out
    }

    #[test]
    fn mjpeg_with_tables_decodes() {
        let (img, jpeg) = test_jpeg();
        let got = decode_mjpeg(&jpeg).unwrap();
        assert_eq!(got.dimensions(), img.dimensions());
    }

    #[test]
    fn mjpeg_without_tables_decodes_with_the_standard_ones() {
        let (_, jpeg) = test_jpeg();
        let stripped = strip_tables(&jpeg);
        assert!(stripped.len() < jpeg.len() && needs_default_tables(&stripped));
        let want = decode_mjpeg(&jpeg).unwrap();
        let got = decode_mjpeg(&stripped).unwrap();
        assert_eq!(got, want, "the encoder's tables are the standard ones");
    }

    #[test]
    fn a_cut_mjpeg_frame_is_an_error() {
        let (_, jpeg) = test_jpeg();
        assert!(decode_mjpeg(&jpeg[..40]).is_err());
        assert!(decode_mjpeg(b"not a jpeg at all").is_err());
    }

    #[test]
    fn standard_tables_have_as_many_symbols_as_codes() {
        let seg = default_dht_segment();
        let mut pos = 4;
        let mut tables = 0;
        while pos < seg.len() {
            let count: usize = seg[pos + 1..pos + 17].iter().map(|&c| usize::from(c)).sum();
            pos += 17 + count;
            tables += 1;
        }
        assert_eq!((pos, tables), (seg.len(), 4));
        assert_eq!(usize::from(u16::from_be_bytes([seg[2], seg[3]])), seg.len() - 2);
    }
}
