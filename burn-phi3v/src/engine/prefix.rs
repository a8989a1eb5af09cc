//! Block hashes for prefix caching: a block's keys and values depend on every token up to its
//! end, on the images whose tokens are among them, and on the LongRoPE factors the sequence
//! was prefilled with, so its hash chains all three: `hash(previous block's hash, regime, its
//! tokens)`, an image token standing for its image's content.
//!
//! The hash is SHA-256 (vLLM's `prefix_caching_hash_algo = "sha256"`). Two blocks with the same
//! hash share their keys and values, so a collision hands one request another's cache: with a
//! 64-bit hash of known keys (std's `DefaultHasher`) a client can search for a prompt whose
//! blocks collide with a predictable one (a common system prompt) and poison or read what
//! other requests get (vLLM's CVE-2025-25183 was this with Python's `hash`). SHA-256 makes
//! finding such a prompt as hard as breaking it, and chance collisions impossible in practice.

use sha2::{Digest, Sha256};

use crate::image_processor::ProcessedImage;
use crate::model::RopeRegime;

/// A block's place in a prefix chain: the SHA-256 of the previous block's hash, the LongRoPE
/// regime and the block's tokens (an image token as its image's [`ImageKeys`] entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BlockHash([u8; 32]);

#[cfg(test)]
impl From<u64> for BlockHash {
    /// A distinct hash per number, for the allocator's and scheduler's tests.
    fn from(n: u64) -> Self {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&n.to_le_bytes());
        Self(h)
    }
}

/// What a request's image tokens stand for: each image's content hash (SHA-256 of its crop
/// layout and pixels) and token count, in prompt order. Computed where the request is submitted
/// (hashing an image of 17 crops reads 23 MB), not on the engine's thread.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImageKeys(Vec<([u8; 32], usize)>);

impl ImageKeys {
    pub(crate) fn new(images: &[ProcessedImage]) -> Self {
        Self(
            images
                .iter()
                .map(|image| {
                    let mut h = Sha256::new();
                    for v in [image.crop_grid[0], image.crop_grid[1], image.hd_size[0], image.hd_size[1], image.num_used_crops, image.num_img_tokens] {
                        h.update((v as u64).to_le_bytes());
                    }
                    // The pixels as bytes, in slices (one update per value is far slower).
                    let mut bytes = Vec::with_capacity(4 * 4096);
                    for chunk in image.pixel_values.chunks(4096) {
                        bytes.clear();
                        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                        h.update(&bytes);
                    }
                    (h.finalize().into(), image.num_img_tokens)
                })
                .collect(),
        )
    }

    /// The content hash of the image that the `slot`-th image token of the prompt belongs to.
    fn of_slot(&self, mut slot: usize) -> [u8; 32] {
        for &(key, tokens) in &self.0 {
            if slot < tokens {
                return key;
            }
            slot -= tokens;
        }
        [0xff; 32] // more slots than images: refused at submission, never reached
    }
}

/// Extends `hashes` (the hashes of the first `hashes.len()` full blocks of `ids`) to every full
/// block of `ids`.
pub(crate) fn extend_block_hashes(hashes: &mut Vec<BlockHash>, ids: &[i64], images: &ImageKeys, regime: RopeRegime, block_size: usize) {
    let full = ids.len() / block_size;
    if hashes.len() >= full {
        return;
    }
    let start = hashes.len() * block_size;
    let mut slot = ids[..start].iter().filter(|&&i| i < 0).count();
    let mut previous = hashes.last().copied().unwrap_or_default();
    for block in ids[start..full * block_size].chunks(block_size) {
        let mut h = Sha256::new();
        h.update(previous.0);
        h.update([u8::from(matches!(regime, RopeRegime::Long))]);
        for &id in block {
            // A tag byte keeps a token id and an image key apart whatever their bytes.
            if id >= 0 {
                h.update([0u8]);
                h.update((id as u64).to_le_bytes());
            } else {
                h.update([1u8]);
                h.update(images.of_slot(slot));
                slot += 1;
            }
        }
        previous = BlockHash(h.finalize().into());
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

    fn hashes(ids: &[i64], images: &ImageKeys, regime: RopeRegime) -> Vec<BlockHash> {
        let mut h = Vec::new();
        extend_block_hashes(&mut h, ids, images, regime, 4);
        h
    }

    /// The first block's hash is the SHA-256 of the documented bytes: 32 zero bytes (no
    /// previous block), the regime byte, then a tag byte and the little-endian id per token.
    #[test]
    fn a_block_hash_is_the_sha256_of_its_chain_regime_and_tokens() {
        let ids: Vec<i64> = vec![7, 300, 32000, 1];
        let got = hashes(&ids, &ImageKeys::default(), RopeRegime::Long);
        let mut bytes = vec![0u8; 32];
        bytes.push(1); // Long
        for id in &ids {
            bytes.push(0);
            bytes.extend((*id as u64).to_le_bytes());
        }
        let expected: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(got, vec![BlockHash(expected)]);
        // The next block chains this one's 32 bytes.
        let two = hashes(&[ids.clone(), ids.clone()].concat(), &ImageKeys::default(), RopeRegime::Long);
        bytes[..32].copy_from_slice(&expected);
        assert_eq!(two[1], BlockHash(Sha256::digest(&bytes).into()));
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
