//! Image decoding with hard limits: bytes in, upright RGB8 pixels out, or an error that
//! says what is wrong with the file.
//!
//! Every input is hostile until decoded: the declared dimensions are checked against the
//! limits *before* any pixel buffer is allocated, so a 100k × 100k PNG of a few hundred
//! bytes (a decompression bomb) is refused instead of exhausting memory.

use std::io::Cursor;
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

/// Formats glimpse decodes (the `image` crate features the runtime is built with).
pub const SUPPORTED: &[ImageFormat] = &[
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::Bmp,
    ImageFormat::WebP,
    ImageFormat::Gif,
];

/// File extensions picked up when walking a folder.
pub const EXTENSIONS: &[&str] = &["jpg", "jpeg", "jpe", "png", "bmp", "webp", "gif"];

/// Whether `path` ends in one of [`EXTENSIONS`] (case-insensitive): what folder walks pick up.
pub fn has_image_extension(path: &std::path::Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The image files under `dir` (in sub-folders too when `recursive`), in name order,
/// leaving out hidden files and folders (names starting with `.`) and following symbolic
/// links: the one rule of every folder glimpse reads. A folder that cannot be read (or a
/// link loop) is an `Err` item naming it, and the walk goes on.
pub fn image_files(
    dir: &std::path::Path,
    recursive: bool,
) -> impl Iterator<Item = Result<std::path::PathBuf, walkdir::Error>> {
    let walk = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .follow_links(true);
    let walk = if recursive { walk } else { walk.max_depth(1) };
    walk.into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|entry| match entry {
            Ok(e) if e.file_type().is_file() && has_image_extension(e.path()) => {
                Some(Ok(e.into_path()))
            }
            Ok(_) => None,
            Err(err) => Some(Err(err)),
        })
}

/// The image files directly inside `dir` (not in sub-folders), by `image_files`' rule.
pub fn image_files_in(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    image_files(dir, false)
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// Bounds on what one input may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded file accepted, in bytes.
    pub max_bytes: u64,
    /// Largest decoded image accepted, in pixels (width × height).
    pub max_pixels: u64,
    /// Largest accepted width or height.
    pub max_side: u32,
}

impl Default for Limits {
    /// 64 MiB files, 40 megapixels (a 7,700 × 5,200 photo; 120 MB as RGB8) and 20,000
    /// pixels on a side: larger than any camera frame, small enough for a 1 GB board.
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 20,
            max_pixels: 40_000_000,
            max_side: 20_000,
        }
    }
}

/// Why an input could not be turned into pixels.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    #[error("file too large: {size} bytes (limit {limit} bytes)")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("not an image: {hint}unrecognized format (expected JPEG, PNG, BMP, WebP or GIF)")]
    NotAnImage { hint: &'static str },
    #[error("unsupported image format {0:?} (expected JPEG, PNG, BMP, WebP or GIF)")]
    Unsupported(ImageFormat),
    #[error("image too large: {width}x{height} pixels (limit {max_pixels} pixels and {max_side} per side)")]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
        max_side: u32,
    },
    #[error("corrupt or truncated {format}: {reason}")]
    Corrupt {
        format: &'static str,
        reason: String,
    },
    #[error("not a regular file ({0}): only image files are read")]
    NotRegularFile(&'static str),
    #[error("reading input: {0}")]
    Io(#[from] std::io::Error),
}

impl DecodeError {
    /// Whether the input was refused for its size (HTTP 413) rather than its content.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            DecodeError::FileTooLarge { .. } | DecodeError::TooLarge { .. }
        )
    }
}

/// Reads an image file's bytes for [`decode`], refusing before any read what is not a
/// regular file (a FIFO would block, `/dev/zero` never ends) and files over
/// `limits.max_bytes`. The check is made on the opened file, so a path swapped after it
/// was listed cannot slip through.
pub fn read_image_file(path: &Path, limits: &Limits) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // O_NONBLOCK: opening a FIFO with no writer would otherwise wait for one.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    };
    if let Some(what) = what {
        return Err(DecodeError::NotRegularFile(what));
    }
    if meta.len() > limits.max_bytes {
        return Err(DecodeError::FileTooLarge {
            size: meta.len(),
            limit: limits.max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limits.max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(DecodeError::FileTooLarge {
            size: bytes.len() as u64,
            limit: limits.max_bytes,
        });
    }
    Ok(bytes)
}

/// Decodes an encoded image (first frame of an animation), applies its EXIF orientation
/// and returns RGB8 pixels. Alpha is dropped.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<RgbImage, DecodeError> {
    let (img, orientation) = decode_unoriented(bytes, limits)?;
    if orientation == Orientation::NoTransforms {
        return Ok(img);
    }
    let mut img = DynamicImage::ImageRgb8(img);
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// [`decode`] without turning the picture upright: the EXIF orientation is returned for
/// the caller to apply. One that shrinks the image first turns the small result
/// (`Preprocess::fit_oriented`), which saves a full-size copy (72 MB for a 24 MP photo).
pub fn decode_unoriented(
    bytes: &[u8],
    limits: &Limits,
) -> Result<(RgbImage, Orientation), DecodeError> {
    let (mut decoder, format) = open(bytes, limits)?;
    let name = format_name(format);
    let (w, h) = decoder.dimensions();
    // A broken EXIF block must not make a good photo undecodable: fall back to upright.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes)?;
    }
    let img = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(limits, (w, h)),
        e => corrupt(name, e),
    })?;
    let rgb = match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    };
    Ok((rgb, orientation))
}

/// The most memory [`decode_unoriented`] allocates for these bytes at once, besides the
/// bytes themselves, estimated from the header alone (no pixel is decoded): the
/// decoder's output, the RGB8 copy when the output is another layout, and the
/// coefficients a progressive JPEG keeps. Refuses what decoding would refuse for its
/// format or size.
pub fn decode_cost(bytes: &[u8], limits: &Limits) -> Result<u64, DecodeError> {
    let (decoder, format) = open(bytes, limits)?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    let color = decoder.color_type();
    let output = pixels * u64::from(color.bytes_per_pixel());
    let to_rgb8 = if color == image::ColorType::Rgb8 {
        0
    } else {
        pixels * 3
    };
    let working = match format {
        // i16 coefficients of every block of every component, kept until the last scan.
        ImageFormat::Jpeg if jpeg_is_progressive(bytes) => pixels * 6,
        // The frame's palette indices and the RGBA canvas they are drawn onto.
        ImageFormat::Gif => pixels * 5,
        _ => 0,
    };
    Ok(output + to_rgb8 + working)
}

/// A decoder for `bytes` whose header passed the checks: a supported format, and a
/// declared size within the limits (before any pixel buffer exists).
fn open<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<(impl ImageDecoder + 'a, ImageFormat), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(DecodeError::FileTooLarge {
            size: bytes.len() as u64,
            limit: limits.max_bytes,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let format = match reader.format() {
        Some(f) if SUPPORTED.contains(&f) => f,
        Some(f) => return Err(DecodeError::Unsupported(f)),
        None => return Err(DecodeError::NotAnImage { hint: sniff(bytes) }),
    };
    // The decoders' own allocation cap is a second line of defence behind our pixel check.
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(4).saturating_add(64 << 20));
    reader.limits(decoder_limits);
    let decoder = match reader.into_decoder() {
        Ok(d) => d,
        // A header over the side limit is refused by the decoder itself; report the size.
        Err(image::ImageError::Limits(_)) => {
            let dims = ImageReader::with_format(Cursor::new(bytes), format)
                .into_dimensions()
                .unwrap_or((0, 0));
            return Err(too_large(limits, dims));
        }
        Err(e) => return Err(corrupt(format_name(format), e)),
    };
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(DecodeError::Corrupt {
            format: format_name(format),
            reason: format!("image has no pixels ({w}x{h})"),
        });
    }
    if w > limits.max_side || h > limits.max_side || u64::from(w) * u64::from(h) > limits.max_pixels
    {
        return Err(too_large(limits, (w, h)));
    }
    Ok((decoder, format))
}

fn too_large(limits: &Limits, (width, height): (u32, u32)) -> DecodeError {
    DecodeError::TooLarge {
        width,
        height,
        max_pixels: limits.max_pixels,
        max_side: limits.max_side,
    }
}

fn corrupt(format: &'static str, e: image::ImageError) -> DecodeError {
    DecodeError::Corrupt {
        format,
        reason: lowercase_first(&e.to_string()),
    }
}

/// Whether a JPEG's frame header (the first SOF marker) is progressive: SOF2, SOF6, SOF10
/// or SOF14. Walks the marker segments from SOI; anything malformed counts as not.
fn jpeg_is_progressive(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        match marker {
            // Fill bytes before a marker.
            0xFF => i += 1,
            0xC2 | 0xC6 | 0xCA | 0xCE => return true,
            0xC0 | 0xC1 | 0xC3 | 0xC5 | 0xC7 | 0xC9 | 0xCB | 0xCD | 0xCF | 0xDA => return false,
            _ => i += 2 + usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]])),
        }
    }
    false
}

/// A JPEG cut short still decodes (libjpeg and zune fill the missing rows with grey),
/// which would classify a half-grey picture as if it were whole. A complete baseline or
/// progressive JPEG ends with the EOI marker `FF D9`, possibly followed by padding.
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), DecodeError> {
    // Cameras and editors sometimes append a few KB (thumbnails, vendor trailers) after EOI.
    let tail = &bytes[bytes.len().saturating_sub(64 << 10)..];
    if tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(DecodeError::Corrupt {
            format: "JPEG",
            reason: "no end-of-image marker (the file is cut short)".into(),
        })
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Bmp => "BMP",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        _ => "image",
    }
}

/// A hint for the most common non-image inputs, so the message says what the file is.
fn sniff(bytes: &[u8]) -> &'static str {
    let head = &bytes[..bytes.len().min(512)];
    if head.starts_with(b"%PDF") {
        "a PDF document, "
    } else if head.starts_with(b"PK\x03\x04") {
        "a ZIP archive, "
    } else if std::str::from_utf8(head)
        .is_ok_and(|s| s.chars().all(|c| !c.is_control() || c.is_whitespace()))
    {
        "looks like text, "
    } else {
        ""
    }
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::default();
        let fifo = dir.path().join("frames");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, what) in [
            (fifo.as_path(), "a FIFO"),
            (Path::new("/dev/zero"), "a character device"),
            (dir.path(), "a directory"),
        ] {
            let e = read_image_file(path, &limits).unwrap_err();
            assert!(
                matches!(e, DecodeError::NotRegularFile(w) if w == what),
                "{}: {e}",
                path.display()
            );
        }
        let file = dir.path().join("x.png");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_image_file(&file, &limits).unwrap(), b"12345");
        let small = Limits {
            max_bytes: 4,
            ..limits
        };
        assert!(matches!(
            read_image_file(&file, &small),
            Err(DecodeError::FileTooLarge { size: 5, limit: 4 })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn folder_walks_skip_hidden_names_and_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "b.jpg",
            "a.png",
            ".hidden.jpg",
            "notes.txt",
            "sub/c.jpg",
            ".git/d.jpg",
        ] {
            std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink(d.join("a.png"), d.join("link.png")).unwrap();
        let names = |recursive| -> Vec<String> {
            image_files(d, recursive)
                .map(|p| p.unwrap().strip_prefix(d).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(names(false), ["a.png", "b.jpg", "link.png"]);
        assert_eq!(names(true), ["a.png", "b.jpg", "link.png", "sub/c.jpg"]);
    }

    fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn gradient() -> RgbImage {
        RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128]))
    }

    #[test]
    fn decodes_every_supported_format() {
        for format in [
            ImageFormat::Jpeg,
            ImageFormat::Png,
            ImageFormat::Bmp,
            ImageFormat::WebP,
            ImageFormat::Gif,
        ] {
            let img = decode(&encode(&gradient(), format), &Limits::default())
                .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!(img.dimensions(), (64, 48), "{format:?}");
        }
    }

    #[test]
    fn refuses_bad_inputs_with_reasons() {
        let limits = Limits::default();
        assert!(matches!(decode(b"", &limits), Err(DecodeError::Empty)));
        let text = decode(b"hello, this is not a picture\n", &limits).unwrap_err();
        assert!(text.to_string().contains("looks like text"), "{text}");
        let jpeg = encode(&gradient(), ImageFormat::Jpeg);
        let cut = decode(&jpeg[..jpeg.len() / 2], &limits).unwrap_err();
        assert!(
            matches!(cut, DecodeError::Corrupt { format: "JPEG", .. }),
            "{cut}"
        );
        let png = encode(&gradient(), ImageFormat::Png);
        let cut = decode(&png[..png.len() / 2], &limits).unwrap_err();
        assert!(
            matches!(cut, DecodeError::Corrupt { format: "PNG", .. }),
            "{cut}"
        );
        let small = Limits {
            max_bytes: 100,
            ..limits
        };
        assert!(decode(&png, &small).unwrap_err().is_too_large());
    }

    #[test]
    fn decode_cost_reads_the_header_alone() {
        let limits = Limits::default();
        let png8 = encode(&gradient(), ImageFormat::Png);
        assert_eq!(decode_cost(&png8, &limits).unwrap(), 64 * 48 * 3);
        // 16-bit RGB: the decoder's 6 bytes a pixel, then the RGB8 copy.
        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            64,
            48,
            image::Rgb([1u16, 2, 3]),
        ));
        let mut png16 = Cursor::new(Vec::new());
        deep.write_to(&mut png16, ImageFormat::Png).unwrap();
        assert_eq!(decode_cost(png16.get_ref(), &limits).unwrap(), 64 * 48 * 9);
        let jpeg = encode(&gradient(), ImageFormat::Jpeg);
        assert!(!jpeg_is_progressive(&jpeg));
        assert_eq!(decode_cost(&jpeg, &limits).unwrap(), 64 * 48 * 3);
        // SOF2 after an APP0 segment; a SOF2 byte pair inside a segment is skipped.
        assert!(jpeg_is_progressive(&[
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2, 0xFF, 0xC2, 0, 11
        ]));
        assert!(!jpeg_is_progressive(&[
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0xFF, 0xC2, 0xFF, 0xC0, 0, 11
        ]));
        // What decoding refuses for its size, the estimate refuses too.
        let tiny = Limits {
            max_pixels: 100,
            ..limits
        };
        assert!(decode_cost(&png8, &tiny).unwrap_err().is_too_large());
    }

    #[test]
    fn applies_exif_orientation() {
        // A JPEG 64 wide x 48 high tagged "rotate 90 CW" (orientation 6) is shown 48 x 64.
        let jpeg = encode(&gradient(), ImageFormat::Jpeg);
        let exif: &[u8] = &[
            b'E', b'x', b'i', b'f', 0, 0, // header
            b'I', b'I', 42, 0, 8, 0, 0, 0, // TIFF little-endian, IFD at 8
            1, 0, // one entry
            0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, // Orientation (SHORT) = 6
            0, 0, 0, 0, // no next IFD
        ];
        let mut tagged = jpeg[..2].to_vec(); // SOI
        tagged.extend_from_slice(&[0xFF, 0xE1]);
        tagged.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
        tagged.extend_from_slice(exif);
        tagged.extend_from_slice(&jpeg[2..]);
        let img = decode(&tagged, &Limits::default()).unwrap();
        assert_eq!(img.dimensions(), (48, 64));
    }
}
