//! TEMPORARY stand-in with the agreed API; replaced by the Pillow-exact implementation.
pub const CROP_SIZE: usize = 336;
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig { pub num_crops: usize, pub image_mean: [f32; 3], pub image_std: [f32; 3], pub max_pixels: u64 }
#[derive(Debug, thiserror::Error)]
pub enum ImageError { #[error("image {what}: not implemented")] Empty { what: String } }
pub struct ProcessedImage { pub pixel_values: Vec<f32>, pub num_used_crops: usize, pub hd_size: [usize; 2], pub crop_grid: [usize; 2], pub num_img_tokens: usize }
pub fn load_image(path: &std::path::Path, _max_pixels: u64) -> Result<image::DynamicImage, ImageError> { Err(ImageError::Empty { what: path.display().to_string() }) }
pub fn decode_image(_bytes: &[u8], what: &str, _max_pixels: u64) -> Result<image::DynamicImage, ImageError> { Err(ImageError::Empty { what: what.into() }) }
pub fn preprocess(_img: &image::DynamicImage, _cfg: &ImageProcessorConfig) -> Result<ProcessedImage, ImageError> { Err(ImageError::Empty { what: String::new() }) }
