//! Image preprocessing of Phi-3-vision / Phi-3.5-vision (`Phi3VImageProcessor`), bit-exact to the
//! Python reference (PIL + torchvision + PyTorch, float32).
//!
//! Pipeline for one image (spec §4, fixtures README "3. Image preprocessing"):
//!
//! 1. Colour conversion as PIL's `convert("RGB")` does it ([`to_rgb8`]): grey is replicated, alpha is
//!    dropped (never composited on white).
//! 2. HD resize ([`hd_resize_target`]): portrait images (W < H) are transposed (x and y swapped, not
//!    rotated) so the work happens in a landscape frame; with `ratio = W / H` (f64) the scale `s` is the
//!    largest integer with `s * ceil(s / ratio) <= num_crops`; the image is resized to
//!    `(336 s, int(336 s / ratio))` with Pillow's antialiased bilinear filter ([`pil_resize_bilinear`],
//!    a re-implementation of Pillow's 8-bit fixed-point `ImagingResample`).
//! 3. The height is padded with white to a multiple of 336 (`floor` of the excess on top, the rest at the
//!    bottom), then the image is transposed back when step 2 transposed it, so portrait images are padded
//!    left and right.
//! 4. `ToTensor` + `Normalize` in f32: `(u8 as f32 / 255 - mean) / std`, per channel.
//! 5. Global view: the normalised HD tensor resized to 336 × 336 with PyTorch's bicubic interpolation
//!    ([`torch_bicubic_resize`]: A = −0.75, `align_corners = false`, no antialiasing, no clamping).
//! 6. Tiles: the HD tensor cut into 336 × 336 crops, row-major.
//!
//! The output ([`ProcessedImage`]) holds only the used crops (global + tiles); the reference pads every
//! image with all-zero crops up to `num_crops + 1`, which never influence the model output
//! ([`ProcessedImage::pixel_values_padded`] reproduces that layout when wanted).
//!
//! Decoding ([`decode_image`], [`load_image`]) uses the `image` crate (PNG, JPEG, WebP, GIF first frame)
//! and refuses images whose header announces more than `max_pixels` pixels before any pixel buffer is
//! allocated. JPEG decoders are not bit-identical: the `image` crate's decoder (zune-jpeg) can differ from
//! the libjpeg build that PIL uses by a few 8-bit levels on some pixels (see the tests for the measured
//! size of that difference on the fixture image).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader, Limits, RgbImage};

/// Side of one crop (the CLIP ViT-L/14-336 input size).
pub const CROP_SIZE: usize = 336;

/// CLIP image mean, as the f32 values PyTorch uses (the Python float64 literals rounded to f32).
pub const CLIP_MEAN: [f32; 3] = [
    0.48145466_f64 as f32,
    0.4578275_f64 as f32,
    0.40821073_f64 as f32,
];

/// CLIP image standard deviation, as the f32 values PyTorch uses.
pub const CLIP_STD: [f32; 3] = [
    0.26862954_f64 as f32,
    0.26130258_f64 as f32,
    0.27577711_f64 as f32,
];

/// Default maximum decoded pixel count (decompression-bomb guard): PIL's hard limit
/// `2 * Image.MAX_IMAGE_PIXELS` = 178,956,970 pixels, above which PIL refuses to open an image.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Default maximum number of images in one prompt ([`ImageProcessorConfig::max_images`]). MMMU uses
/// at most 7 and the model cards' multi-frame examples about 20; each image costs up to
/// `num_crops + 1` crops of 1.35 MB of f32 pixels plus its image tokens (757 with 4 crops).
pub const DEFAULT_MAX_IMAGES: usize = 32;

/// Largest accepted `num_crops`. The real checkpoints use 4 or 16; the cap keeps the HD image bounded
/// (at most a 16 × 16 grid of 336-pixel tiles, i.e. 5376 × 5376 pixels, for a square image).
pub const MAX_NUM_CROPS: usize = 256;

/// Number of image tokens per crop after the 2×2 merge (12 × 12).
const TOKENS_PER_CROP: usize = 144;

/// Fixed-point fractional bits of Pillow's 8-bit resampler (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// PyTorch's cubic convolution coefficient.
const CUBIC_A: f32 = -0.75;

/// Preprocessing settings (the relevant part of `preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// Maximum number of 336 × 336 tiles (the global view comes on top). Phi-3-vision's
    /// `preprocessor_config.json` says 16, Phi-3.5-vision's says 4. (The Python class itself defaults to
    /// 1 when the config omits it; both real configs set it, so the default here is Phi-3-vision's 16.)
    pub num_crops: usize,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub image_std: [f32; 3],
    /// Decompression-bomb guard used by the loading helpers: the largest accepted `width * height`.
    pub max_pixels: u64,
    /// Most images accepted in one prompt (`Phi3VProcessor::process` refuses more with
    /// `Phi3vError::TooManyImages` before preprocessing any of them).
    pub max_images: usize,
}

impl Default for ImageProcessorConfig {
    /// Phi-3-vision's settings: `num_crops` 16, CLIP mean/std, [`DEFAULT_MAX_PIXELS`],
    /// [`DEFAULT_MAX_IMAGES`].
    fn default() -> Self {
        Self {
            num_crops: 16,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_images: DEFAULT_MAX_IMAGES,
        }
    }
}

impl ImageProcessorConfig {
    /// The default configuration with another `num_crops` (4 for Phi-3.5-vision).
    pub fn with_num_crops(num_crops: usize) -> Self {
        Self {
            num_crops,
            ..Self::default()
        }
    }
}

/// Errors of decoding and preprocessing. Every variant names the image: `what` is the file path or a
/// label given by the caller.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("{}: cannot read image file: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not an image in a supported format (PNG, JPEG, WebP, GIF), or are corrupt.
    #[error("{what}: cannot decode image: {source}")]
    Decode {
        /// The image: its path, or a label given by the caller.
        what: String,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// The image announces more pixels than allowed (decompression-bomb guard).
    #[error("{what}: image is {width}x{height} pixels, more than the limit of {max_pixels} pixels")]
    TooLarge {
        /// The image.
        what: String,
        /// Its width in pixels.
        width: u64,
        /// Its height in pixels.
        height: u64,
        /// The limit.
        max_pixels: u64,
    },
    /// The image has zero width or zero height.
    #[error("{what}: image is empty ({width}x{height} pixels)")]
    Empty {
        /// The image.
        what: String,
        /// Its width in pixels.
        width: u64,
        /// Its height in pixels.
        height: u64,
    },
    /// `num_crops` is 0 or above [`MAX_NUM_CROPS`].
    #[error("{what}: num_crops must be between 1 and {MAX_NUM_CROPS}, got {num_crops}")]
    InvalidNumCrops {
        /// The image.
        what: String,
        /// The value given.
        num_crops: usize,
    },
    /// The configuration cannot be applied (e.g. a zero or non-finite standard deviation).
    #[error("{what}: invalid image processor configuration: {reason}")]
    InvalidConfig {
        /// The image.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The aspect ratio is so extreme that the HD resize would produce zero rows (the reference's PIL
    /// resize fails on such images too).
    #[error(
        "{what}: aspect ratio of {width}x{height} is too extreme for num_crops {num_crops} \
         (the HD resize would have zero rows)"
    )]
    DegenerateAspect {
        /// The image.
        what: String,
        /// Its width in pixels.
        width: u64,
        /// Its height in pixels.
        height: u64,
        /// The number of crops asked for.
        num_crops: usize,
    },
}

/// One preprocessed image.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImage {
    /// `[num_used_crops, 3, 336, 336]` row-major f32: index 0 = global view, then the tiles row-major.
    /// No zero padding crops.
    pub pixel_values: Vec<f32>,
    /// `1 + hc * wc`.
    pub num_used_crops: usize,
    /// `[H, W]` of the HD image (multiples of 336), equal to the reference's `image_sizes` row.
    pub hd_size: [usize; 2],
    /// `[hc, wc]` = `[H / 336, W / 336]`.
    pub crop_grid: [usize; 2],
    /// Number of image tokens this image occupies in the prompt ([`num_image_tokens`]).
    pub num_img_tokens: usize,
}

impl ProcessedImage {
    /// Number of f32 values in one crop (`3 * 336 * 336`).
    pub const CROP_LEN: usize = 3 * CROP_SIZE * CROP_SIZE;

    /// The reference's per-image `pixel_values` layout: the used crops followed by all-zero crops up to
    /// `max(num_crops + 1, num_used_crops)` crops, `[n, 3, 336, 336]` row-major.
    pub fn pixel_values_padded(&self, num_crops: usize) -> Vec<f32> {
        let n = (num_crops + 1).max(self.num_used_crops);
        let mut out = Vec::with_capacity(n * Self::CROP_LEN);
        out.extend_from_slice(&self.pixel_values);
        out.resize(n * Self::CROP_LEN, 0.0);
        out
    }

    /// The values of crop `index` (0 = global view), `[3, 336, 336]` row-major, or `None` when out of
    /// range.
    pub fn crop(&self, index: usize) -> Option<&[f32]> {
        self.pixel_values
            .get(index * Self::CROP_LEN..(index + 1) * Self::CROP_LEN)
    }
}

/// Number of image tokens for an `hc × wc` tile grid:
/// `144 (hc wc + 1) + 12 (hc + 1) + 1` = local tokens with one separator per row, the global-local
/// separator, and the global view's 12 rows of 12 + 1 tokens.
pub fn num_image_tokens(hc: usize, wc: usize) -> usize {
    TOKENS_PER_CROP * (hc * wc + 1) + 12 * (hc + 1) + 1
}

/// The geometry of the HD transform of one image (spec §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HdTarget {
    /// Whether the image was transposed (portrait input, W < H) for the resize.
    pub transposed: bool,
    /// The scale `s`: the resized width in the landscape frame is `336 s`.
    pub scale: usize,
    /// Resize target width in the landscape (possibly transposed) frame: `336 s`.
    pub new_w: u32,
    /// Resize target height in the landscape frame: `int(new_w / ratio)`.
    pub new_h: u32,
    /// White rows added above the resized image in the landscape frame (`floor` of half the excess).
    pub pad_top: u32,
    /// White rows added below the resized image in the landscape frame.
    pub pad_bottom: u32,
    /// `[H, W]` of the HD image in the original orientation (both multiples of 336).
    pub hd_size: [usize; 2],
    /// `[hc, wc]` tile grid in the original orientation.
    pub crop_grid: [usize; 2],
}

impl HdTarget {
    const DEGENERATE: HdTarget = HdTarget {
        transposed: false,
        scale: 0,
        new_w: 0,
        new_h: 0,
        pad_top: 0,
        pad_bottom: 0,
        hd_size: [0, 0],
        crop_grid: [0, 0],
    };

    /// Whether this target describes a usable (non-empty) HD image.
    pub fn is_valid(&self) -> bool {
        self.new_w > 0 && self.new_h > 0
    }

    /// Number of image tokens of this target's crop grid.
    pub fn num_img_tokens(&self) -> usize {
        num_image_tokens(self.crop_grid[0], self.crop_grid[1])
    }
}

/// HD transform geometry for an image of `width × height` pixels (spec §4.2, computed in f64 exactly as
/// the Python code does).
///
/// Inputs outside the valid domain (zero width or height, `num_crops` 0 or above [`MAX_NUM_CROPS`])
/// give a target whose sizes are all zero, as does an aspect ratio so extreme that the resized height
/// truncates to 0 (then `new_w` is set but `new_h`, `hd_size` and `crop_grid` hold zeros). Check
/// [`HdTarget::is_valid`]; [`preprocess`] reports these cases as errors.
pub fn hd_resize_target(width: u32, height: u32, num_crops: usize) -> HdTarget {
    if width == 0 || height == 0 || num_crops == 0 || num_crops > MAX_NUM_CROPS {
        return HdTarget::DEGENERATE;
    }
    let transposed = width < height;
    let (w, h) = if transposed {
        (height, width)
    } else {
        (width, height)
    };
    let ratio = f64::from(w) / f64::from(h);
    let budget = num_crops as f64;
    // Python: scale = 1; while scale * np.ceil(scale / ratio) <= hd_num: scale += 1; scale -= 1.
    // ratio >= 1 so ceil(s / ratio) >= 1 and the loop ends after at most num_crops + 1 steps.
    let mut s: usize = 1;
    while (s as f64) * ((s as f64) / ratio).ceil() <= budget {
        s += 1;
    }
    s -= 1;
    let new_w = s * CROP_SIZE;
    let new_h_f = new_w as f64 / ratio;
    // int() truncates toward zero; new_h <= new_w because ratio >= 1.
    let new_h = new_h_f as usize;
    if s == 0 || new_h == 0 {
        return HdTarget {
            transposed,
            scale: s,
            new_w: new_w as u32,
            ..HdTarget::DEGENERATE
        };
    }
    let padded_h = new_h.div_ceil(CROP_SIZE) * CROP_SIZE;
    let pad_top = (padded_h - new_h) / 2;
    let pad_bottom = padded_h - new_h - pad_top;
    let (hd_size, crop_grid) = if transposed {
        ([new_w, padded_h], [new_w / CROP_SIZE, padded_h / CROP_SIZE])
    } else {
        ([padded_h, new_w], [padded_h / CROP_SIZE, new_w / CROP_SIZE])
    };
    HdTarget {
        transposed,
        scale: s,
        new_w: new_w as u32,
        new_h: new_h as u32,
        pad_top: pad_top as u32,
        pad_bottom: pad_bottom as u32,
        hd_size,
        crop_grid,
    }
}

/// Decodes an image from memory (format guessed from the content: PNG, JPEG, WebP, or the first frame
/// of a GIF). The dimensions are read from the header first and images with zero size or more than
/// `max_pixels` pixels are refused before any pixel buffer is allocated. `what` names the image in
/// errors.
///
/// EXIF orientation is not applied (PIL's `Image.open` does not apply it either).
pub fn decode_image(bytes: &[u8], what: &str, max_pixels: u64) -> Result<DynamicImage, ImageError> {
    let decode_err = |source: image::ImageError| ImageError::Decode {
        what: what.to_string(),
        source,
    };
    let reader = || -> Result<ImageReader<Cursor<&[u8]>>, ImageError> {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| decode_err(image::ImageError::IoError(e)))
    };
    // Header only: no pixel data is decoded or allocated here (and no allocation limit applies, so
    // that an oversized header is reported as `TooLarge`, not as a decoder limit error).
    let mut probe = reader()?;
    probe.limits(Limits::no_limits());
    let (width, height) = probe.into_dimensions().map_err(decode_err)?;
    let (w, h) = (u64::from(width), u64::from(height));
    if w == 0 || h == 0 {
        return Err(ImageError::Empty {
            what: what.to_string(),
            width: w,
            height: h,
        });
    }
    if w * h > max_pixels {
        return Err(ImageError::TooLarge {
            what: what.to_string(),
            width: w,
            height: h,
            max_pixels,
        });
    }
    let mut reader = reader()?;
    // Second line of defence: the decoder itself refuses anything larger than the header said,
    // and everything it allocates is bounded by what an image of the header's size needs (at most
    // 16 bytes a pixel, twice over, plus 64 MiB): a GIF frame may declare a size far beyond its
    // logical screen, which the decoder would otherwise allocate (found by fuzzing).
    let mut limits = Limits::no_limits();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(decoder_memory_budget(w, h));
    reader.limits(limits);
    let img = reader.decode().map_err(decode_err)?;
    if img.width() == 0 || img.height() == 0 {
        return Err(ImageError::Empty {
            what: what.to_string(),
            width: u64::from(img.width()),
            height: u64::from(img.height()),
        });
    }
    Ok(img)
}

/// Bytes a decoder may allocate for an image of `width × height` pixels (see [`decode_image`]).
fn decoder_memory_budget(width: u64, height: u64) -> u64 {
    width.saturating_mul(height).saturating_mul(32).saturating_add(64 << 20)
}

/// Reads and decodes an image file (see [`decode_image`]); errors name the path.
pub fn load_image(path: &Path, max_pixels: u64) -> Result<DynamicImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes, &path.display().to_string(), max_pixels)
}

/// Converts to 8-bit RGB with the semantics of PIL's `convert("RGB")` on the image PIL would have
/// opened from the same file:
///
/// * L → (L, L, L); LA / RGBA → alpha dropped, **not** composited on any background.
/// * 16-bit grey (PIL mode `I;16`): PIL's `I;16 → RGB` conversion **clips** to 255 (it does not scale),
///   so a value v becomes min(v, 255).
/// * 16-bit grey+alpha, RGB and RGBA: PIL's PNG decoder keeps only the high byte of each sample when it
///   opens these (as `RGBA` / `RGB`), so v becomes v >> 8, alpha dropped.
/// * 32-bit float RGB(A) (no PIL counterpart; none of the enabled decoders produces it):
///   round(clamp(v, 0, 1) · 255).
///
/// Palette images are expanded by the decoder to RGB(A), which gives the same colours as PIL's
/// `P → RGB`.
pub fn to_rgb8(img: &DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let map = |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    match img {
        DynamicImage::ImageRgb8(im) => im.clone(),
        DynamicImage::ImageLuma8(im) => map(&|x, y| {
            let v = im.get_pixel(x, y).0[0];
            [v, v, v]
        }),
        DynamicImage::ImageLumaA8(im) => map(&|x, y| {
            let v = im.get_pixel(x, y).0[0];
            [v, v, v]
        }),
        DynamicImage::ImageRgba8(im) => map(&|x, y| {
            let p = im.get_pixel(x, y).0;
            [p[0], p[1], p[2]]
        }),
        DynamicImage::ImageLuma16(im) => map(&|x, y| {
            let v = im.get_pixel(x, y).0[0].min(255) as u8;
            [v, v, v]
        }),
        DynamicImage::ImageLumaA16(im) => map(&|x, y| {
            let v = (im.get_pixel(x, y).0[0] >> 8) as u8;
            [v, v, v]
        }),
        DynamicImage::ImageRgb16(im) => map(&|x, y| {
            let p = im.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        DynamicImage::ImageRgba16(im) => map(&|x, y| {
            let p = im.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        DynamicImage::ImageRgb32F(im) => map(&|x, y| {
            let p = im.get_pixel(x, y).0;
            [f32_to_u8(p[0]), f32_to_u8(p[1]), f32_to_u8(p[2])]
        }),
        DynamicImage::ImageRgba32F(im) => map(&|x, y| {
            let p = im.get_pixel(x, y).0;
            [f32_to_u8(p[0]), f32_to_u8(p[1]), f32_to_u8(p[2])]
        }),
        // `DynamicImage` is non-exhaustive; future variants use the crate's own conversion.
        other => other.to_rgb8(),
    }
}

fn f32_to_u8(v: f32) -> u8 {
    // NaN maps to 0 through the saturating cast.
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// PIL's `Image.TRANSPOSE`: pixel (x, y) moves to (y, x).
fn transpose_rgb(src: &RgbImage) -> RgbImage {
    let (w, h) = src.dimensions();
    let s = src.as_raw();
    let mut out = vec![0u8; s.len()];
    for y in 0..h as usize {
        for x in 0..w as usize {
            let si = (y * w as usize + x) * 3;
            let di = (x * h as usize + y) * 3;
            out[di..di + 3].copy_from_slice(&s[si..si + 3]);
        }
    }
    // The buffer length matches h × w × 3 by construction.
    RgbImage::from_raw(h, w, out).unwrap_or_else(|| RgbImage::new(h, w))
}

/// Pillow's resampling coefficients for one axis: per output index, the first input index, the number
/// of taps, and `ksize` fixed-point weights (22 fractional bits).
struct AxisCoeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's triangle (bilinear) filter.
fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Pillow's `precompute_coeffs` (BILINEAR, box = whole axis) followed by `normalize_coeffs_8bpc`:
/// weights computed and normalised in f64, then rounded half away from zero to 22-bit fixed point.
fn pillow_axis_coeffs(in_size: u32, out_size: u32) -> AxisCoeffs {
    const SUPPORT: f64 = 1.0; // bilinear filter support
    // The box edges are C floats in Pillow: in0 = 0, in1 = in_size.
    let in0 = 0.0_f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / f64::from(out_size);
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let out_n = out_size as usize;
    let mut bounds = Vec::with_capacity(out_n);
    let mut weights = vec![0i32; out_n * ksize];
    let mut k = vec![0f64; ksize];
    let inv_filterscale = 1.0 / filterscale;
    for xx in 0..out_n {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        // `(int)` casts in C truncate toward zero; negative starts are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
        let taps = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let xmin = xmin as usize;
        let mut ww = 0.0_f64;
        for (x, kx) in k.iter_mut().enumerate().take(taps) {
            let w = bilinear_filter((((x + xmin) as f64) - center + 0.5) * inv_filterscale);
            *kx = w;
            ww += w;
        }
        for (x, &kx) in k.iter().enumerate().take(taps) {
            let v = if ww != 0.0 { kx / ww } else { kx };
            let fixed = v * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if v < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, taps));
    }
    AxisCoeffs {
        ksize,
        bounds,
        weights,
    }
}

/// Pillow's `clip8`: drop the fractional bits and saturate to 0..=255.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Bit-exact re-implementation of Pillow's `Image.resize((width, height), Image.BILINEAR)` on an 8-bit
/// RGB image (`ImagingResample`): a separable triangle filter whose support widens with the
/// down-scaling factor (antialiased), f64 weights normalised per output sample and rounded to 22-bit
/// fixed point, i32 accumulation starting from a half-unit bias, and a clip to 0..=255 after each pass.
/// The horizontal pass runs first (on the rows the vertical pass needs), then the vertical pass; a pass
/// whose size is unchanged is skipped, and an unchanged size returns a copy.
///
/// Zero target sizes give an empty image; an empty source gives a black image of the target size.
pub fn pil_resize_bilinear(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = src.dimensions();
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    let need_horizontal = width != in_w;
    let need_vertical = height != in_h;
    if !need_horizontal && !need_vertical {
        return src.clone();
    }
    let horiz = pillow_axis_coeffs(in_w, width);
    let vert = pillow_axis_coeffs(in_h, height);
    let bias: i32 = 1 << (PRECISION_BITS - 1);

    // Horizontal pass over the source rows the vertical pass reads: [first_row, last_row).
    let (tmp, tmp_w, tmp_h, row_offset) = if need_horizontal {
        let first_row = vert.bounds[0].0;
        let (lmin, ltaps) = vert.bounds[vert.bounds.len() - 1];
        let last_row = if need_vertical {
            lmin + ltaps
        } else {
            in_h as usize
        };
        let first_row = if need_vertical { first_row } else { 0 };
        let rows = last_row.saturating_sub(first_row);
        let w_out = width as usize;
        let in_row_len = in_w as usize * 3;
        let s = src.as_raw();
        let mut out = vec![0u8; rows * w_out * 3];
        for yy in 0..rows {
            let row = &s[(yy + first_row) * in_row_len..(yy + first_row + 1) * in_row_len];
            let out_row = &mut out[yy * w_out * 3..(yy + 1) * w_out * 3];
            for xx in 0..w_out {
                let (xmin, taps) = horiz.bounds[xx];
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + taps];
                let (mut s0, mut s1, mut s2) = (bias, bias, bias);
                for (x, &kx) in k.iter().enumerate() {
                    let p = (xmin + x) * 3;
                    s0 += i32::from(row[p]) * kx;
                    s1 += i32::from(row[p + 1]) * kx;
                    s2 += i32::from(row[p + 2]) * kx;
                }
                out_row[xx * 3] = clip8(s0);
                out_row[xx * 3 + 1] = clip8(s1);
                out_row[xx * 3 + 2] = clip8(s2);
            }
        }
        (out, w_out, rows, first_row)
    } else {
        (src.as_raw().clone(), in_w as usize, in_h as usize, 0)
    };

    if !need_vertical {
        return RgbImage::from_raw(width, height, tmp)
            .unwrap_or_else(|| RgbImage::new(width, height));
    }

    // Vertical pass.
    let h_out = height as usize;
    let row_len = tmp_w * 3;
    let mut out = vec![0u8; h_out * row_len];
    let mut acc = vec![0i32; row_len];
    for yy in 0..h_out {
        let (ymin, taps) = vert.bounds[yy];
        let ymin = ymin - row_offset;
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + taps];
        acc.fill(bias);
        for (y, &ky) in k.iter().enumerate() {
            let r = ymin + y;
            if r >= tmp_h {
                continue; // cannot happen: the horizontal pass covered every row used here
            }
            let row = &tmp[r * row_len..(r + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * ky;
            }
        }
        for (o, &a) in out[yy * row_len..(yy + 1) * row_len].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage::from_raw(tmp_w as u32, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

// PyTorch's CPU kernels are built for AVX2 with GCC, which contracts `a * b + c` into fused
// multiply-adds. The helpers below spell those contractions out with `mul_add`, so that the results
// match the reference bit for bit (plain multiply-then-add leaves 1-ulp differences on about a third of
// the global-view pixels; with the fused form the fixtures' samples match exactly).

/// PyTorch's cubic convolution for |x| <= 1: `((A + 2) x - (A + 3)) x x + 1`, contracted.
#[inline]
fn cubic_convolution1(x: f32, a: f32) -> f32 {
    (((a + 2.0).mul_add(x, -(a + 3.0))) * x).mul_add(x, 1.0)
}

/// PyTorch's cubic convolution for 1 < |x| < 2: `((A x - 5A) x + 8A) x - 4A`, contracted.
#[inline]
fn cubic_convolution2(x: f32, a: f32) -> f32 {
    a.mul_add(x, -(5.0 * a))
        .mul_add(x, 8.0 * a)
        .mul_add(x, -(4.0 * a))
}

/// The 4-tap weighted sum of PyTorch's `Interpolate` struct, `o = v0 w0; o += v1 w1; o += v2 w2;
/// o += v3 w3`, as GCC contracts it after inlining: `fma(v3, w3, fma(v2, w2, fma(v0, w0, v1 w1)))`.
#[inline]
fn torch_dot4(v: [f32; 4], w: &[f32; 4]) -> f32 {
    v[3].mul_add(w[3], v[2].mul_add(w[2], v[0].mul_add(w[0], v[1] * w[1])))
}

/// Per output index along one axis: the 4 clamped source indices and their f32 weights, computed as
/// PyTorch's `upsample_bicubic2d` CPU kernel does (`align_corners = false`, no explicit scale factor).
fn torch_cubic_axis(in_size: usize, out_size: usize) -> Vec<([usize; 4], [f32; 4])> {
    // area_pixel_compute_scale: (float)input_size / output_size, in f32.
    let scale = in_size as f32 / out_size as f32;
    let last = in_size as i64 - 1;
    (0..out_size)
        .map(|i| {
            // area_pixel_compute_source_index(cubic = true): no clamp at 0 (contracted like the rest).
            let real = scale.mul_add(i as f32 + 0.5, -0.5);
            // guard_index_and_lambda
            let idx = (real.floor() as i64).min(last);
            let t = (real - idx as f32).clamp(0.0, 1.0);
            let w = [
                cubic_convolution2(t + 1.0, CUBIC_A),
                cubic_convolution1(t, CUBIC_A),
                cubic_convolution1(1.0 - t, CUBIC_A),
                cubic_convolution2((1.0 - t) + 1.0, CUBIC_A),
            ];
            let ids = std::array::from_fn(|j| (idx - 1 + j as i64).clamp(0, last) as usize);
            (ids, w)
        })
        .collect()
}

/// PyTorch `F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False,
/// antialias=False)` on a `[channels, in_h, in_w]` row-major f32 tensor, reproducing the CPU kernel's
/// f32 arithmetic (`upsample_generic_Nd_kernel_impl` with `HelperInterpCubic`): A = −0.75, half-pixel
/// source mapping, edge-clamped taps, and for each output pixel `Σ_j wy_j · (Σ_i wx_i · in[y_j, x_i])`
/// (rows outer, columns inner) with the fused multiply-adds of PyTorch's x86-64 AVX2 build (see
/// `torch_dot4`); no clamping of the result. Returns `[channels, out_h, out_w]`.
///
/// An empty input (in_h or in_w = 0) gives zeros.
///
/// # Panics
/// If `chw.len() != channels * in_h * in_w` (a caller bug, not a property of image data).
pub fn torch_bicubic_resize(
    chw: &[f32],
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(
        chw.len(),
        channels * in_h * in_w,
        "torch_bicubic_resize: input length does not match its shape"
    );
    let mut out = vec![0f32; channels * out_h * out_w];
    if in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
        return out;
    }
    let ys = torch_cubic_axis(in_h, out_h);
    let xs = torch_cubic_axis(in_w, out_w);
    for c in 0..channels {
        let plane = &chw[c * in_h * in_w..(c + 1) * in_h * in_w];
        let out_plane = &mut out[c * out_h * out_w..(c + 1) * out_h * out_w];
        for (oy, (yi, yw)) in ys.iter().enumerate() {
            let rows: [&[f32]; 4] =
                std::array::from_fn(|j| &plane[yi[j] * in_w..(yi[j] + 1) * in_w]);
            for (ox, (xi, xw)) in xs.iter().enumerate() {
                let t: [f32; 4] = std::array::from_fn(|j| {
                    let r = rows[j];
                    torch_dot4([r[xi[0]], r[xi[1]], r[xi[2]], r[xi[3]]], xw)
                });
                out_plane[oy * out_w + ox] = torch_dot4(t, yw);
            }
        }
    }
    out
}

/// Preprocesses one image (see the module documentation); errors are labelled "image". Use
/// [`preprocess_named`] to name the image in errors.
pub fn preprocess(
    img: &DynamicImage,
    cfg: &ImageProcessorConfig,
) -> Result<ProcessedImage, ImageError> {
    preprocess_named(img, "image", cfg)
}

/// Loads, decodes (with `cfg.max_pixels` as the bomb guard) and preprocesses an image file.
pub fn load_and_preprocess(
    path: &Path,
    cfg: &ImageProcessorConfig,
) -> Result<ProcessedImage, ImageError> {
    let img = load_image(path, cfg.max_pixels)?;
    preprocess_named(&img, &path.display().to_string(), cfg)
}

/// [`preprocess`] with a label (file name, URL, …) used in errors.
pub fn preprocess_named(
    img: &DynamicImage,
    what: &str,
    cfg: &ImageProcessorConfig,
) -> Result<ProcessedImage, ImageError> {
    if cfg.num_crops == 0 || cfg.num_crops > MAX_NUM_CROPS {
        return Err(ImageError::InvalidNumCrops {
            what: what.to_string(),
            num_crops: cfg.num_crops,
        });
    }
    if cfg.image_std.iter().any(|s| *s == 0.0 || !s.is_finite())
        || cfg.image_mean.iter().any(|m| !m.is_finite())
    {
        return Err(ImageError::InvalidConfig {
            what: what.to_string(),
            reason: format!(
                "image_mean {:?} / image_std {:?} must be finite, std non-zero",
                cfg.image_mean, cfg.image_std
            ),
        });
    }
    let (width, height) = (img.width(), img.height());
    if width == 0 || height == 0 {
        return Err(ImageError::Empty {
            what: what.to_string(),
            width: u64::from(width),
            height: u64::from(height),
        });
    }
    let target = hd_resize_target(width, height, cfg.num_crops);
    if !target.is_valid() {
        return Err(ImageError::DegenerateAspect {
            what: what.to_string(),
            width: u64::from(width),
            height: u64::from(height),
            num_crops: cfg.num_crops,
        });
    }

    // 1-2. RGB, landscape frame, Pillow bilinear resize.
    let rgb = to_rgb8(img);
    let landscape = if target.transposed {
        transpose_rgb(&rgb)
    } else {
        rgb
    };
    let resized = pil_resize_bilinear(&landscape, target.new_w, target.new_h);

    // 4. ToTensor + Normalize as a per-channel lookup table (identical f32 operations per u8 value).
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f32 / 255.0 - cfg.image_mean[c]) / cfg.image_std[c])
    });

    // 3. White padding (landscape frame) and transpose back, written straight into the CHW tensor.
    let [hd_h, hd_w] = target.hd_size;
    let plane = hd_h * hd_w;
    let mut hd = vec![0f32; 3 * plane];
    let (new_w, new_h, top) = (
        target.new_w as usize,
        target.new_h as usize,
        target.pad_top as usize,
    );
    let px = resized.as_raw();
    for y in 0..hd_h {
        for x in 0..hd_w {
            // (row, col) in the padded landscape frame.
            let (lr, lc) = if target.transposed { (x, y) } else { (y, x) };
            let i = y * hd_w + x;
            if lr >= top && lr < top + new_h {
                let p = ((lr - top) * new_w + lc) * 3;
                for c in 0..3 {
                    hd[c * plane + i] = lut[c][px[p + c] as usize];
                }
            } else {
                for c in 0..3 {
                    hd[c * plane + i] = lut[c][255];
                }
            }
        }
    }

    // 5-6. Global view, then tiles row-major.
    let [hc, wc] = target.crop_grid;
    let num_used_crops = 1 + hc * wc;
    let crop_len = ProcessedImage::CROP_LEN;
    let mut pixel_values = Vec::with_capacity(num_used_crops * crop_len);
    pixel_values.extend(torch_bicubic_resize(
        &hd, 3, hd_h, hd_w, CROP_SIZE, CROP_SIZE,
    ));
    for a in 0..hc {
        for b in 0..wc {
            for c in 0..3 {
                for r in 0..CROP_SIZE {
                    let start = c * plane + (a * CROP_SIZE + r) * hd_w + b * CROP_SIZE;
                    pixel_values.extend_from_slice(&hd[start..start + CROP_SIZE]);
                }
            }
        }
    }

    Ok(ProcessedImage {
        pixel_values,
        num_used_crops,
        hd_size: target.hd_size,
        crop_grid: target.crop_grid,
        num_img_tokens: num_image_tokens(hc, wc),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::{Dtype, SafeTensors};
    use serde_json::Value;
    use std::path::PathBuf;

    /// Max |error| allowed against the reference for bit-exact 8-bit pixels (fixtures README).
    const EXACT_PIXEL_TOL: f32 = 1e-5;
    /// One 8-bit level after normalisation: 1 / (255 · min std) ≈ 0.0146.
    const ONE_LEVEL: f32 = 1.0 / (255.0 * CLIP_STD[1]);
    /// Max |error| allowed on camera_gray_jpeg's crops when the image crate's JPEG decoder (zune-jpeg)
    /// replaces PIL's libjpeg. Measured: the decoders disagree by exactly one level on 1606 of the
    /// 262,144 pixels (0.6 %) and agree elsewhere (`jpeg_decoder_difference`); through the pipeline
    /// that gives strided max 1.50e-2 (≈ 1 level, mean 1.0e-4) and pooled max 4.7e-4. Bound: 3 levels.
    const JPEG_DECODER_TOL: f32 = 3.0 * ONE_LEVEL;
    /// Max level difference allowed between the image crate's and PIL's decode of camera_gray.jpg.
    const JPEG_MAX_LEVEL_DIFF: u8 = 3;
    /// |error| allowed when a constant image is resized bicubically: the f32 cubic weights sum to 1 only
    /// up to a few ulp (measured up to 1.1e-6 on a value of 1.25).
    const BICUBIC_CONSTANT_TOL: f32 = 4e-6;

    fn fixtures() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"))
    }

    fn read_json(path: &Path) -> Value {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn tensor_f32(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), v)
    }

    fn tensor_i64(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<i64>) {
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        let v = t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), v)
    }

    /// (pooled16, strided16) of the used crops, each `[n, 3, 21, 21]`, as the fixtures define them.
    fn pooled_and_strided(p: &ProcessedImage) -> (Vec<f32>, Vec<f32>) {
        const G: usize = CROP_SIZE / 16;
        let mut pooled = Vec::new();
        let mut strided = Vec::new();
        for n in 0..p.num_used_crops {
            let crop = p.crop(n).expect("crop in range");
            for ch in 0..3 {
                let pl = &crop[ch * CROP_SIZE * CROP_SIZE..(ch + 1) * CROP_SIZE * CROP_SIZE];
                for a in 0..G {
                    for b in 0..G {
                        // Summed in f32 in row-major window order, then divided by 256, as the
                        // reference's pooling did: this ordering reproduces its pooled values to
                        // 2.4e-7, where an exact (f64) mean differs from them by up to 8e-6.
                        let mut s = 0f32;
                        for y in 0..16 {
                            for x in 0..16 {
                                s += pl[(16 * a + y) * CROP_SIZE + 16 * b + x];
                            }
                        }
                        pooled.push(s / 256.0);
                        strided.push(pl[(8 + 16 * a) * CROP_SIZE + 8 + 16 * b]);
                    }
                }
            }
        }
        (pooled, strided)
    }

    /// (max, mean) absolute difference.
    fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
        assert_eq!(a.len(), b.len());
        let mut max = 0f32;
        let mut sum = 0f64;
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs();
            max = max.max(d);
            sum += f64::from(d);
        }
        (max, (sum / a.len() as f64) as f32)
    }

    fn model_num_crops(model: &str) -> usize {
        let cfg = read_json(
            &fixtures()
                .join("models")
                .join(model)
                .join("preprocessor_config.json"),
        );
        cfg["num_crops"].as_u64().expect("num_crops") as usize
    }

    /// Preprocesses `file` and compares with the case's tensors; returns (pooled max, strided max,
    /// pooled mean, strided mean).
    fn check_image(
        case: &str,
        st: &SafeTensors,
        i: usize,
        img: &Value,
        file: &str,
        num_crops: usize,
    ) -> (f32, f32, f32, f32) {
        let path = fixtures().join("images").join(file);
        let cfg = ImageProcessorConfig::with_num_crops(num_crops);
        let p = load_and_preprocess(&path, &cfg).unwrap_or_else(|e| panic!("{case}: {e}"));
        let (_, sizes) = tensor_i64(st, "image_sizes");
        assert_eq!(
            p.hd_size,
            [sizes[2 * i] as usize, sizes[2 * i + 1] as usize],
            "{case} image {i} hd_size"
        );
        assert_eq!(
            p.hd_size,
            [
                img["hd_height"].as_u64().unwrap() as usize,
                img["hd_width"].as_u64().unwrap() as usize
            ]
        );
        assert_eq!(
            p.crop_grid,
            [
                img["crops_h"].as_u64().unwrap() as usize,
                img["crops_w"].as_u64().unwrap() as usize
            ],
            "{case} image {i} crop grid"
        );
        assert_eq!(
            p.num_img_tokens,
            img["num_img_tokens"].as_u64().unwrap() as usize,
            "{case} image {i} tokens"
        );
        assert_eq!(
            p.num_used_crops,
            img["used_crops"].as_u64().unwrap() as usize
        );
        assert_eq!(
            p.pixel_values.len(),
            p.num_used_crops * ProcessedImage::CROP_LEN
        );
        let (pooled, strided) = pooled_and_strided(&p);
        let (pshape, pref) = tensor_f32(st, &format!("crops_pooled16.{i}"));
        let (sshape, sref) = tensor_f32(st, &format!("crops_strided16.{i}"));
        assert_eq!(pshape, vec![p.num_used_crops, 3, 21, 21]);
        assert_eq!(sshape, pshape);
        let (pmax, pmean) = diff(&pooled, &pref);
        let (smax, smean) = diff(&strided, &sref);
        eprintln!(
            "{case} image {i} ({file}, num_crops {num_crops}): pooled max {pmax:.3e} mean {pmean:.3e}; \
             strided max {smax:.3e} mean {smean:.3e}"
        );
        (pmax, smax, pmean, smean)
    }

    /// Every image of every case: geometry, token counts and pixel samples against the reference.
    ///
    /// Measured (printed with `--nocapture`): for every PNG input (and camera_gray.decoded.png) the
    /// pooled and strided samples are bit-identical to the reference (max error 0), i.e. the Pillow
    /// resize, the normalisation and PyTorch's bicubic (with its fused multiply-adds) are reproduced
    /// exactly; the assertion still uses the README tolerance `EXACT_PIXEL_TOL`. camera_gray.jpg
    /// decoded by the image crate: pooled max 4.7e-4 (mean 6.7e-5), strided max 1.50e-2 (mean
    /// 1.0e-4), i.e. one 8-bit level on some pixels (see `JPEG_DECODER_TOL`).
    #[test]
    fn case_crops_match_reference() {
        let index = read_json(&fixtures().join("cases").join("index.json"));
        let cases = index["cases"].as_object().expect("cases");
        let mut checked = 0;
        for (case, _) in cases {
            let meta = read_json(&fixtures().join("cases").join(format!("{case}.json")));
            let images = meta["images"].as_array().expect("images");
            if images.is_empty() {
                continue;
            }
            let num_crops = model_num_crops(meta["model"].as_str().expect("model"));
            let bytes = std::fs::read(fixtures().join("cases").join(format!("{case}.safetensors")))
                .unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            for (i, img) in images.iter().enumerate() {
                let file = img["file"].as_str().expect("file");
                if file.ends_with(".jpg") {
                    // The reference's decoded pixels: the pipeline must be exact on them.
                    let png = file.replace(".jpg", ".decoded.png");
                    let (pm, sm, _, _) = check_image(case, &st, i, img, &png, num_crops);
                    assert!(
                        pm <= EXACT_PIXEL_TOL && sm <= EXACT_PIXEL_TOL,
                        "{case} {png}: {pm} {sm}"
                    );
                    // Our own JPEG decoder: a few levels on some pixels.
                    let (pm, sm, _, _) = check_image(case, &st, i, img, file, num_crops);
                    assert!(
                        pm <= JPEG_DECODER_TOL && sm <= JPEG_DECODER_TOL,
                        "{case} {file}: {pm} {sm}"
                    );
                } else {
                    let (pm, sm, _, _) = check_image(case, &st, i, img, file, num_crops);
                    assert!(
                        pm <= EXACT_PIXEL_TOL && sm <= EXACT_PIXEL_TOL,
                        "{case} {file}: {pm} {sm}"
                    );
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 10, "number of case images checked");
    }

    /// Spec §3.7 worked examples: (W, H, num_crops) → scale, resized (landscape frame), padding, HD size
    /// (W × H), grid (hc × wc), tokens.
    #[test]
    fn worked_examples_table() {
        /// (W, H, num_crops, s, resized (w, h), pad (top, bottom), HD (W, H), grid (hc, wc), tokens,
        /// transposed)
        type Row = (
            u32,
            u32,
            usize,
            usize,
            (u32, u32),
            (u32, u32),
            (usize, usize),
            (usize, usize),
            usize,
            bool,
        );
        #[rustfmt::skip]
        let table: &[Row] = &[
            (336, 336, 4, 2, (672, 672), (0, 0), (672, 672), (2, 2), 757, false),
            (336, 336, 16, 4, (1344, 1344), (0, 0), (1344, 1344), (4, 4), 2509, false),
            (640, 480, 4, 2, (672, 504), (84, 84), (672, 672), (2, 2), 757, false),
            (640, 480, 16, 4, (1344, 1008), (0, 0), (1344, 1008), (3, 4), 1921, false),
            (1300, 876, 16, 4, (1344, 905), (51, 52), (1344, 1008), (3, 4), 1921, false),
            (1920, 1080, 16, 5, (1680, 945), (31, 32), (1680, 1008), (3, 5), 2353, false),
            (480, 640, 16, 4, (1344, 1008), (0, 0), (1008, 1344), (4, 3), 1933, true),
            (2000, 500, 4, 4, (1344, 336), (0, 0), (1344, 336), (1, 4), 745, false),
            (500, 2000, 4, 4, (1344, 336), (0, 0), (336, 1344), (4, 1), 781, true),
            (8000, 50, 16, 16, (5376, 33), (151, 152), (5376, 336), (1, 16), 2473, false),
            (50, 8000, 16, 16, (5376, 33), (151, 152), (336, 5376), (16, 1), 2653, true),
        ];
        for &(w, h, n, s, (rw, rh), (top, bottom), (hw, hh), (hc, wc), tokens, transposed) in table
        {
            let t = hd_resize_target(w, h, n);
            let ctx = format!("{w}x{h} num_crops {n}: {t:?}");
            assert!(t.is_valid(), "{ctx}");
            assert_eq!(t.scale, s, "{ctx}");
            assert_eq!((t.new_w, t.new_h), (rw, rh), "{ctx}");
            assert_eq!((t.pad_top, t.pad_bottom), (top, bottom), "{ctx}");
            assert_eq!(t.hd_size, [hh, hw], "{ctx}");
            assert_eq!(t.crop_grid, [hc, wc], "{ctx}");
            assert_eq!(t.transposed, transposed, "{ctx}");
            assert_eq!(num_image_tokens(hc, wc), tokens, "{ctx}");
            assert_eq!(t.num_img_tokens(), tokens, "{ctx}");
            assert!(hc * wc <= n, "{ctx}");
        }
        assert_eq!(num_image_tokens(1, 1), 313);
        assert_eq!(hd_resize_target(336, 336, 1).crop_grid, [1, 1]);
        // Invalid domains give degenerate targets instead of panicking or looping.
        assert!(!hd_resize_target(0, 10, 4).is_valid());
        assert!(!hd_resize_target(10, 0, 4).is_valid());
        assert!(!hd_resize_target(10, 10, 0).is_valid());
        assert!(!hd_resize_target(10, 10, MAX_NUM_CROPS + 1).is_valid());
        assert!(!hd_resize_target(100_000, 1, 16).is_valid()); // 5376 / 100000 truncates to 0 rows
    }

    /// The f64 -> f32 spelling of the constants (what PyTorch does with the Python floats) equals the
    /// plain f32 literals.
    #[test]
    #[allow(clippy::excessive_precision)]
    fn clip_constants_match_literals() {
        assert_eq!(CLIP_MEAN, [0.48145466_f32, 0.4578275, 0.40821073]);
        assert_eq!(CLIP_STD, [0.26862954_f32, 0.26130258, 0.27577711]);
    }

    /// A PNG with an IHDR chunk claiming `width × height`, then an IDAT chunk with a few bytes of
    /// (invalid) data and IEND: a header a decoder accepts, without the pixel data.
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        fn crc32(data: &[u8]) -> u32 {
            let mut crc = 0xFFFF_FFFFu32;
            for &b in data {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for chunk in [ihdr, b"IDAT\x78\x9c\x00\x00".to_vec(), b"IEND".to_vec()] {
            out.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
            out.extend_from_slice(&chunk);
            out.extend_from_slice(&crc32(&chunk).to_be_bytes());
        }
        out
    }

    #[test]
    fn error_paths() {
        // Not an image.
        let err =
            decode_image(b"definitely not an image", "notes.txt", DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(
            matches!(&err, ImageError::Decode { what, .. } if what == "notes.txt"),
            "{err:?}"
        );
        assert!(err.to_string().contains("notes.txt"));
        // Truncated PNG (valid header, no data).
        let err = decode_image(&png_header(4, 4), "trunc.png", DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(
            matches!(&err, ImageError::Decode { what, .. } if what == "trunc.png"),
            "{err:?}"
        );
        // Decompression bomb: header claims 100000 x 100000 (30 GB of RGB) — refused from the header.
        let err = decode_image(
            &png_header(100_000, 100_000),
            "bomb.png",
            DEFAULT_MAX_PIXELS,
        )
        .unwrap_err();
        match &err {
            ImageError::TooLarge {
                what,
                width,
                height,
                max_pixels,
            } => {
                assert_eq!(
                    (what.as_str(), *width, *height, *max_pixels),
                    ("bomb.png", 100_000, 100_000, DEFAULT_MAX_PIXELS)
                );
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // GIF whose logical screen is 5 × 3 but whose frame declares 65513 × 65535 pixels (17 GB
        // of RGBA): found by the `image` fuzz target (an out-of-memory abort before the decoder
        // memory budget). The decoder now refuses the frame's allocation.
        // (The fuzzer's input minus its first byte, which picks num_crops.)
        let gif: &[u8] = b"GIF87a\x05\x00\x03\x00\x81\x00\x00\x00\xff\x00\xc8\x0a\x1e\x00\x00\x00\x00\x00\x00,\x00\x00\x00\x00\xe9\xff\xff\xff\x00\x08\x0b\x00\x03\x08\x1c\x08\x03\x89PNG\x0d\x0a\x1a\x0a\x00;\x00\x0dIHDR\x00\x00\x00\x04\x00\x00\x00\x04\x10\x00\x00\x00\x00\xdc\x0a\x1d\xe1\x00\x00b`\xc0\xc5\x00\x00\x06\xaf\x004\xac\x88\x92J\x00\x00\x00\x00IEND\xaeB`\x82";
        let err = decode_image(gif, "frame-bomb.gif", DEFAULT_MAX_PIXELS).unwrap_err();
        match &err {
            ImageError::Decode { what, source: image::ImageError::Limits(_) } => assert_eq!(what, "frame-bomb.gif"),
            other => panic!("expected a decoder limit error, got {other:?}"),
        }
        assert_eq!(decoder_memory_budget(5, 3), 15 * 32 + (64 << 20));
        // A configurable limit.
        let err = decode_image(&png_header(20, 20), "small.png", 399).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { .. }), "{err:?}");
        // Missing file.
        let err = load_image(Path::new("/nonexistent/x.png"), DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(
            matches!(&err, ImageError::Io { path, .. } if path == Path::new("/nonexistent/x.png"))
        );
        // num_crops out of range.
        let img = DynamicImage::ImageRgb8(RgbImage::new(8, 8));
        for n in [0, MAX_NUM_CROPS + 1] {
            let err = preprocess_named(&img, "cat.png", &ImageProcessorConfig::with_num_crops(n))
                .unwrap_err();
            assert!(
                matches!(&err, ImageError::InvalidNumCrops { what, num_crops } if what == "cat.png" && *num_crops == n)
            );
        }
        // Zero-size image.
        let empty = DynamicImage::ImageRgb8(RgbImage::new(0, 5));
        let err =
            preprocess_named(&empty, "empty.png", &ImageProcessorConfig::default()).unwrap_err();
        assert!(
            matches!(&err, ImageError::Empty { what, .. } if what == "empty.png"),
            "{err:?}"
        );
        // Zero standard deviation.
        let cfg = ImageProcessorConfig {
            image_std: [1.0, 0.0, 1.0],
            ..Default::default()
        };
        assert!(matches!(
            preprocess(&img, &cfg),
            Err(ImageError::InvalidConfig { .. })
        ));
        // Aspect ratio so extreme that the resize has no rows.
        let thin = DynamicImage::ImageRgb8(RgbImage::new(20_000, 1));
        let err =
            preprocess_named(&thin, "thin.png", &ImageProcessorConfig::default()).unwrap_err();
        assert!(
            matches!(&err, ImageError::DegenerateAspect { what, .. } if what == "thin.png"),
            "{err:?}"
        );
    }

    /// How far the image crate's JPEG decoder is from the pixels PIL decoded (camera_gray.decoded.png).
    #[test]
    fn jpeg_decoder_difference() {
        let dir = fixtures().join("images");
        let ours = load_image(&dir.join("camera_gray.jpg"), DEFAULT_MAX_PIXELS).expect("jpg");
        let pil =
            load_image(&dir.join("camera_gray.decoded.png"), DEFAULT_MAX_PIXELS).expect("png");
        assert!(
            matches!(ours, DynamicImage::ImageLuma8(_)),
            "grayscale JPEG decodes as L"
        );
        assert!(matches!(pil, DynamicImage::ImageLuma8(_)));
        let (a, b) = (ours.to_luma8(), pil.to_luma8());
        assert_eq!(a.dimensions(), (512, 512));
        assert_eq!(a.dimensions(), b.dimensions());
        let diffs: Vec<u8> = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        let n = diffs.iter().filter(|d| **d != 0).count();
        eprintln!(
            "camera_gray.jpg: image crate vs PIL decode: {n} of {} pixels differ, max {max} levels",
            diffs.len()
        );
        assert!(max <= JPEG_MAX_LEVEL_DIFF);
    }

    #[test]
    fn rgb_conversion_follows_pil() {
        let la = DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_pixel(
            2,
            1,
            image::LumaA([77, 0]),
        ));
        assert!(to_rgb8(&la).pixels().all(|p| p.0 == [77, 77, 77]));
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            1,
            1,
            image::Rgba([1, 2, 3, 0]),
        ));
        assert_eq!(to_rgb8(&rgba).get_pixel(0, 0).0, [1, 2, 3]); // alpha dropped, not composited
        let l16 = DynamicImage::ImageLuma16(
            image::ImageBuffer::from_raw(3, 1, vec![100u16, 256, 65535]).unwrap(),
        );
        let got: Vec<u8> = to_rgb8(&l16).pixels().map(|p| p.0[0]).collect();
        assert_eq!(got, [100, 255, 255]); // PIL I;16 -> RGB clips
        let rgb16 = DynamicImage::ImageRgb16(
            image::ImageBuffer::from_raw(1, 1, vec![0x01FFu16, 0x7F80, 0xFFFF]).unwrap(),
        );
        assert_eq!(to_rgb8(&rgb16).get_pixel(0, 0).0, [1, 127, 255]); // high byte
    }

    /// Portrait images are transposed for the resize and padded left/right.
    #[test]
    fn portrait_padding_is_horizontal() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(300, 451, image::Rgb([0, 0, 0])));
        let p = preprocess(&img, &ImageProcessorConfig::with_num_crops(16)).expect("preprocess");
        assert_eq!(
            (p.hd_size, p.crop_grid, p.num_img_tokens),
            ([1344, 1008], [4, 3], 1933)
        );
        // Tile (0, 0): the left columns are white padding, then black.
        let t = p.crop(1).expect("tile");
        let white = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        let black = (0.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        let left_pad = hd_resize_target(300, 451, 16).pad_top as usize;
        assert!(left_pad > 0);
        assert_eq!(t[0], white);
        assert_eq!(t[left_pad - 1], white);
        assert_eq!(t[left_pad], black);
        assert_eq!(t[335 * CROP_SIZE + left_pad], black);
        assert_eq!(
            p.pixel_values_padded(16).len(),
            17 * ProcessedImage::CROP_LEN
        );
    }

    fn test_image(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 37 + y * 11) as u8,
                (x * x + 3 * y) as u8,
                ((x ^ y) * 29) as u8,
            ])
        })
    }

    #[test]
    fn pil_resize_identity_and_constant() {
        let img = test_image(31, 17);
        assert_eq!(pil_resize_bilinear(&img, 31, 17), img);
        // Constant images stay constant (weights sum to 1 in fixed point up to rounding).
        for &(w, h) in &[(5, 3), (31, 17), (100, 60), (300, 7), (1, 1)] {
            let c = RgbImage::from_pixel(31, 17, image::Rgb([0, 128, 255]));
            let r = pil_resize_bilinear(&c, w, h);
            assert_eq!(r.dimensions(), (w, h));
            assert!(r.pixels().all(|p| p.0 == [0, 128, 255]), "{w}x{h}");
        }
        // Degenerate sizes do not panic.
        assert_eq!(pil_resize_bilinear(&img, 0, 5).dimensions(), (0, 5));
        assert_eq!(
            pil_resize_bilinear(&RgbImage::new(0, 0), 3, 2).dimensions(),
            (3, 2)
        );
    }

    /// Exact Pillow 13.0 outputs (`Image.resize(..., Image.BILINEAR)`) on small hand-made images.
    #[test]
    fn pil_resize_matches_pillow_samples() {
        // 2x downscale of a horizontal ramp: [0, 10, 20, ..., 70] -> width 4, height 1.
        let ramp = RgbImage::from_fn(8, 1, |x, _| image::Rgb([(x * 10) as u8, 0, 255]));
        let down = pil_resize_bilinear(&ramp, 4, 1);
        let got: Vec<u8> = down.pixels().map(|p| p.0[0]).collect();
        assert_eq!(got, PILLOW_RAMP_DOWN_8_TO_4);
        // Upscale of the same ramp to width 13.
        let up = pil_resize_bilinear(&ramp, 13, 1);
        let got: Vec<u8> = up.pixels().map(|p| p.0[0]).collect();
        assert_eq!(got, PILLOW_RAMP_UP_8_TO_13);
        // 2D: 5x4 pattern to 3x7 (horizontal down, vertical up).
        let img = test_image(5, 4);
        let r = pil_resize_bilinear(&img, 3, 7);
        assert_eq!(r.as_raw().as_slice(), PILLOW_5X4_TO_3X7);
    }

    // Produced with Pillow 13.0.0:
    //   Image.frombytes("RGB", (8,1), bytes(sum(([10*x,0,255] for x in range(8)), []))).resize((4,1), Image.BILINEAR)
    const PILLOW_RAMP_DOWN_8_TO_4: [u8; 4] = [7, 25, 45, 63];
    const PILLOW_RAMP_UP_8_TO_13: [u8; 13] = [0, 4, 10, 17, 23, 29, 35, 41, 47, 53, 60, 66, 70];
    //   5x4 image with pixel (x, y) = [(37x + 11y) % 256, x² + 3y, 29 (x xor y)], resized to (3, 7).
    #[rustfmt::skip]
    const PILLOW_5X4_TO_3X7: &[u8] = &[
        16, 0, 12, 74, 4, 58, 132, 13, 104, 20, 1, 14, 78, 5, 59, 136, 14, 105, 26, 3, 17, 84, 7, 61, 142, 16,
        108, 33, 5, 44, 91, 9, 44, 149, 18, 110, 39, 6, 70, 97, 10, 26, 155, 19, 112, 45, 8, 73, 103, 12, 28,
        161, 21, 115, 49, 9, 75, 107, 13, 29, 165, 22, 116,
    ];

    #[test]
    fn torch_bicubic_identity_and_constant() {
        let (c, h, w) = (2, 7, 9);
        let data: Vec<f32> = (0..c * h * w)
            .map(|i| ((i * 7919) % 101) as f32 / 13.0 - 3.0)
            .collect();
        assert_eq!(torch_bicubic_resize(&data, c, h, w, h, w), data);
        let constant = vec![-1.25f32; c * h * w];
        for &(oh, ow) in &[(3, 4), (7, 9), (20, 5), (336, 336)] {
            let r = torch_bicubic_resize(&constant, c, h, w, oh, ow);
            assert_eq!(r.len(), c * oh * ow);
            // Cubic weights sum to 1 up to f32 rounding.
            assert!(
                r.iter().all(|v| (v + 1.25).abs() <= BICUBIC_CONSTANT_TOL),
                "{oh}x{ow}"
            );
        }
        assert!(
            torch_bicubic_resize(&[], 3, 0, 0, 4, 4)
                .iter()
                .all(|v| *v == 0.0)
        );
    }
}
