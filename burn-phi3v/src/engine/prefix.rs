//! Block hashes for prefix caching: a block's keys and values depend on every token up to its
//! end, on the images whose tokens are among them, and on the LongRoPE factors the sequence
//! was prefilled with, so its hash chains all three: `hash(previous block's hash, regime, its
//! tokens)`, an image token standing for its image's content.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::image_processor::ProcessedImage;
use crate::model::RopeRegime;

/// What a request's image tokens stand for: each image's content hash and token count, in
/// prompt order. Computed where the request is submitted (hashing an image of 17 crops reads
/// 23 MB), not on the engine's thread.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImageKeys(Vec<(u64, usize)>);

impl ImageKeys {
    pub(crate) fn new(images: &[ProcessedImage]) -> Self {
        Self(
            images
                .iter()
                .map(|image| {
                    let mut h = DefaultHasher::new();
                    (image.crop_grid, image.hd_size, image.num_used_crops, image.num_img_tokens).hash(&mut h);
                    // The pixels as bytes, in slices (one hasher call per value is ~5× slower).
                    let mut bytes = Vec::with_capacity(4 * 4096);
                    for chunk in image.pixel_values.chunks(4096) {
                        bytes.clear();
                        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                        h.write(&bytes);
                    }
                    (h.finish(), image.num_img_tokens)
                })
                .collect(),
        )
    }

    /// The content hash of the image that the `slot`-th image token of the prompt belongs to.
    fn of_slot(&self, mut slot: usize) -> u64 {
        for &(key, tokens) in &self.0 {
            if slot < tokens {
                return key;
            }
            slot -= tokens;
        }
        u64::MAX // more slots than images: refused at submission, never reached
    }
}

/// Extends `hashes` (the hashes of the first `hashes.len()` full blocks of `ids`) to every full
/// block of `ids`.
pub(crate) fn extend_block_hashes(hashes: &mut Vec<u64>, ids: &[i64], images: &ImageKeys, regime: RopeRegime, block_size: usize) {
    let full = ids.len() / block_size;
    if hashes.len() >= full {
        return;
    }
    let start = hashes.len() * block_size;
    let mut slot = ids[..start].iter().filter(|&&i| i < 0).count();
    let mut previous = hashes.last().copied().unwrap_or(0);
    for block in ids[start..full * block_size].chunks(block_size) {
        let mut h = DefaultHasher::new();
        previous.hash(&mut h);
        matches!(regime, RopeRegime::Long).hash(&mut h);
        for &id in block {
            if id >= 0 {
                (0u8, id as u64).hash(&mut h);
            } else {
                (1u8, images.of_slot(slot)).hash(&mut h);
                slot += 1;
            }
        }
        previous = h.finish();
        hashes.push(previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(value: f32, tokens: usize) -> ProcessedImage {
        ProcessedImage {
            pixel_values: vec![value; ProcessedImage::CROP_LEN],
            num_used_crops: 1,
            hd_size: [336, 336],
            crop_grid: [1, 1],
            num_img_tokens: tokens,
        }
    }

    fn hashes(ids: &[i64], images: &ImageKeys, regime: RopeRegime) -> Vec<u64> {
        let mut h = Vec::new();
        extend_block_hashes(&mut h, ids, images, regime, 4);
        h
    }

    #[test]
    fn hashes_chain_tokens_images_and_the_rope_regime() {
        let none = ImageKeys::default();
        let ids: Vec<i64> = (0..10).collect();
        let h = hashes(&ids, &none, RopeRegime::Short);
        assert_eq!(h.len(), 2, "only full blocks");
        // Extending block by block gives the same chain.
        let mut step = Vec::new();
        for n in 1..=ids.len() {
            extend_block_hashes(&mut step, &ids[..n], &none, RopeRegime::Short, 4);
        }
        assert_eq!(step, h);
        // A change in the first block changes every hash after it; the regime changes all.
        let mut other = ids.clone();
        other[0] = 99;
        let o = hashes(&other, &none, RopeRegime::Short);
        assert!(o[0] != h[0] && o[1] != h[1]);
        let long = hashes(&ids, &none, RopeRegime::Long);
        assert!(long[0] != h[0] && long[1] != h[1]);
        // Image tokens stand for their image's content: same placeholders, other pixels, other
        // hashes; same pixels, same hashes.
        let with_image: Vec<i64> = [1, -1, -1, -1, -1, -1, 2, 3].to_vec();
        let a = hashes(&with_image, &ImageKeys::new(&[image(0.5, 5)]), RopeRegime::Short);
        let b = hashes(&with_image, &ImageKeys::new(&[image(0.25, 5)]), RopeRegime::Short);
        let c = hashes(&with_image, &ImageKeys::new(&[image(0.5, 5)]), RopeRegime::Short);
        assert!(a[0] != b[0] && a[1] != b[1]);
        assert_eq!(a, c);
        // Two images: the second block's slots belong to the second image.
        let two: Vec<i64> = [-1, -1, -2, -2, -2, -2, 5, 6].to_vec();
        let x = hashes(&two, &ImageKeys::new(&[image(0.5, 2), image(0.5, 4)]), RopeRegime::Short);
        let y = hashes(&two, &ImageKeys::new(&[image(0.5, 2), image(0.7, 4)]), RopeRegime::Short);
        assert!(x[0] != y[0], "block 0 holds two tokens of the second image");
        assert!(x[1] != y[1]);
    }
}
