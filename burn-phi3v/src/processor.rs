//! Prompt processing (`Phi3VProcessor`): chat template, `<|image_N|>` tags, per-chunk
//! tokenisation with its own BOS, and image placeholder runs of `−k` (spec §5).

use std::path::Path;

use image::DynamicImage;
use tokenizers::Tokenizer;

use crate::config::{preprocessor_config_from_file, read_json};
use crate::error::{Phi3vError, Result};
use crate::image_processor::{ImageProcessorConfig, ProcessedImage, preprocess};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Text, possibly with `<|image_N|>` tags.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The Phi-3(-vision) chat template: `<|{role}|>\n{content}<|end|>\n` per message, then
/// `<|assistant|>\n` when a generation prompt is asked for and the last turn is not the
/// assistant's (tokenizer_config.json `chat_template`).
pub fn apply_chat_template(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str(&format!("<|{}|>\n{}<|end|>\n", m.role, m.content));
    }
    if add_generation_prompt && messages.last().is_none_or(|m| m.role != "assistant") {
        out.push_str("<|assistant|>\n");
    }
    out
}

/// A user message for `n_images` images: `<|image_1|>\n…<|image_n|>\n` before `text`, unless
/// `text` already places its own `<|image_k|>` tags (the model cards' multi-image format).
pub fn with_image_tags(text: &str, n_images: usize) -> String {
    if n_images == 0 || has_image_tags(&split_image_tags(text)) {
        return text.to_string();
    }
    let mut out: String = (1..=n_images).map(|k| format!("<|image_{k}|>\n")).collect();
    out.push_str(text);
    out
}

/// A piece of a prompt split at image tags.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    /// `<|image_k|>` with its number k (1-based).
    Image(usize),
}

fn has_image_tags(pieces: &[Piece<'_>]) -> bool {
    pieces.iter().any(|p| matches!(p, Piece::Image(_)))
}

/// Every tag numbered 1…`images`, each image tagged exactly once.
fn check_image_tags(pieces: &[Piece<'_>], images: usize) -> Result<()> {
    let mut seen = vec![false; images];
    for p in pieces {
        let Piece::Image(k) = *p else { continue };
        if k == 0 || k > images {
            return Err(Phi3vError::ImageTags(format!(
                "tag <|image_{k}|> but {images} image(s) given (tags are numbered from 1)"
            )));
        }
        if std::mem::replace(&mut seen[k - 1], true) {
            return Err(Phi3vError::ImageTags(format!("tag <|image_{k}|> appears more than once")));
        }
    }
    if let Some(k) = seen.iter().position(|s| !s) {
        return Err(Phi3vError::ImageTags(format!(
            "image {} is given but the prompt has no <|image_{}|> tag",
            k + 1,
            k + 1
        )));
    }
    Ok(())
}

/// Splits at every `<|image_N|>` (the reference's regex `<\|image_\d+\|>`).
fn split_image_tags(prompt: &str) -> Vec<Piece<'_>> {
    const OPEN: &str = "<|image_";
    let mut pieces = Vec::new();
    let mut rest = prompt;
    let mut text_start = 0;
    let mut offset = 0;
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with("|>") {
            let tag_start = offset + i;
            pieces.push(Piece::Text(&prompt[text_start..tag_start]));
            // An absurd number cannot match any image; usize::MAX keeps it an error later.
            pieces.push(Piece::Image(after[..digits].parse().unwrap_or(usize::MAX)));
            let tag_len = OPEN.len() + digits + 2;
            text_start = tag_start + tag_len;
            offset = text_start;
            rest = &prompt[text_start..];
        } else {
            offset += i + OPEN.len();
            rest = &prompt[offset..];
        }
    }
    pieces.push(Piece::Text(&prompt[text_start..]));
    pieces
}

/// Token ids and images of one prompt, ready for the model.
#[derive(Clone)]
pub struct ProcessedPrompt {
    /// Prompt ids; image k occupies `num_img_tokens` copies of `−k`.
    pub input_ids: Vec<i64>,
    /// The images, in the order their tags appear (= the order their features fill slots).
    pub images: Vec<ProcessedImage>,
}

impl std::fmt::Debug for ProcessedPrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessedPrompt")
            .field("tokens", &self.input_ids.len())
            .field("image_tokens", &self.num_image_tokens())
            .finish()
    }
}

impl ProcessedPrompt {
    /// Image tokens per image.
    pub fn num_image_tokens(&self) -> Vec<usize> {
        self.images.iter().map(|i| i.num_img_tokens).collect()
    }
}

/// Tokenizer plus image processor of one model folder.
#[derive(Clone)]
pub struct Phi3VProcessor {
    /// The `tokenizers` tokenizer from `tokenizer.json`.
    pub tokenizer: Tokenizer,
    /// Image preprocessing settings (`num_crops` from preprocessor_config.json).
    pub image_config: ImageProcessorConfig,
    /// EOS declared by tokenizer_config.json, if any.
    pub tokenizer_eos: Option<u32>,
}

impl std::fmt::Debug for Phi3VProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phi3VProcessor")
            .field("vocab", &self.tokenizer.get_vocab_size(true))
            .field("image_config", &self.image_config)
            .finish()
    }
}

impl Phi3VProcessor {
    /// Loads `tokenizer.json` (and `tokenizer_config.json`, `preprocessor_config.json` when
    /// present) from a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Phi3vError::io(&path, std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found")));
        }
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| Phi3vError::Tokenizer(format!("{}: {e}", path.display())))?;
        let pre = dir.join("preprocessor_config.json");
        let image_config = if pre.is_file() {
            preprocessor_config_from_file(&pre)?
        } else {
            // The reference class's defaults: one crop, CLIP mean/std.
            ImageProcessorConfig::with_num_crops(1)
        };
        let tc = dir.join("tokenizer_config.json");
        let tokenizer_eos = if tc.is_file() {
            let v = read_json(&tc)?;
            let eos = match v.get("eos_token") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
                _ => None,
            };
            eos.and_then(|s| tokenizer.token_to_id(&s))
        } else {
            None
        };
        Ok(Self {
            tokenizer,
            image_config,
            tokenizer_eos,
        })
    }

    /// Overrides `num_crops`.
    pub fn with_num_crops(mut self, num_crops: usize) -> Self {
        self.image_config.num_crops = num_crops;
        self
    }

    /// Id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Phi3vError::Tokenizer(format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Tokenises a prompt (already in chat format) with its images.
    ///
    /// Without images the text is encoded once with BOS. With images it is split at every
    /// `<|image_k|>` tag, every chunk is encoded with its own BOS, and tag k becomes
    /// `num_img_tokens(k)` copies of `−k` (spec §5.4). Every image must be referenced exactly
    /// once by tags numbered 1…n; images are returned in tag order. More than
    /// `image_config.max_images` images is [`Phi3vError::TooManyImages`].
    pub fn process(&self, prompt: &str, images: &[DynamicImage]) -> Result<ProcessedPrompt> {
        let Some(pieces) = self.checked_pieces(prompt, images.len())? else {
            return Ok(ProcessedPrompt {
                input_ids: self.encode(prompt)?,
                images: Vec::new(),
            });
        };
        let processed: Vec<ProcessedImage> = images
            .iter()
            .map(|img| preprocess(img, &self.image_config))
            .collect::<std::result::Result<_, _>>()?;
        let counts: Vec<usize> = processed.iter().map(|p| p.num_img_tokens).collect();
        let input_ids = self.layout(&pieces, &counts)?;
        // Images in tag order (the order their placeholders appear in `input_ids`).
        let mut processed: Vec<Option<ProcessedImage>> = processed.into_iter().map(Some).collect();
        let ordered = pieces
            .iter()
            .filter_map(|p| if let Piece::Image(k) = p { processed[k - 1].take() } else { None })
            .collect();
        Ok(ProcessedPrompt {
            input_ids,
            images: ordered,
        })
    }

    /// The token ids [`process`](Self::process) gives for `prompt` when image k takes
    /// `num_img_tokens[k − 1]` tokens, without any image: the same tag checks (typed errors) and
    /// layout. For counting tokens before decoding images (e.g. against a context limit); the
    /// counts come from [`hd_resize_target`](crate::image_processor::hd_resize_target).
    pub fn tokenize_with_image_tokens(&self, prompt: &str, num_img_tokens: &[usize]) -> Result<Vec<i64>> {
        match self.checked_pieces(prompt, num_img_tokens.len())? {
            Some(pieces) => self.layout(&pieces, num_img_tokens),
            None => self.encode(prompt),
        }
    }

    /// The checks [`process`](Self::process) and
    /// [`tokenize_with_image_tokens`](Self::tokenize_with_image_tokens) share, before any image is
    /// touched: at most `max_images` images, and tags numbered 1…`images` naming each image once.
    /// The prompt's pieces, or `None` for a plain-text prompt (no tags, no images).
    fn checked_pieces<'p>(&self, prompt: &'p str, images: usize) -> Result<Option<Vec<Piece<'p>>>> {
        if images > self.image_config.max_images {
            return Err(Phi3vError::TooManyImages {
                count: images,
                max: self.image_config.max_images,
            });
        }
        let pieces = split_image_tags(prompt);
        if !has_image_tags(&pieces) {
            if images > 0 {
                return Err(Phi3vError::ImageTags(format!(
                    "{images} image(s) given but the prompt has no <|image_N|> tag"
                )));
            }
            return Ok(None);
        }
        check_image_tags(&pieces, images)?;
        Ok(Some(pieces))
    }

    /// Text chunks encoded (each with BOS), tag k replaced by `counts[k − 1]` copies of `−k`.
    /// The tags must have passed [`check_image_tags`].
    fn layout(&self, pieces: &[Piece<'_>], counts: &[usize]) -> Result<Vec<i64>> {
        let mut input_ids = Vec::new();
        for piece in pieces {
            match *piece {
                Piece::Text(t) => input_ids.extend(self.encode(t)?),
                Piece::Image(k) => input_ids.extend(std::iter::repeat_n(-(k as i64), counts[k - 1])),
            }
        }
        Ok(input_ids)
    }

    /// Decodes generated ids to text, skipping special tokens (the MMMU/HF convention).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| Phi3vError::Tokenizer(format!("cannot decode {ids:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_tags_only() {
        let p = split_image_tags("<|user|>\n<|image_1|>\nhi <|image_x|> <|image_12|>");
        assert_eq!(
            p,
            vec![
                Piece::Text("<|user|>\n"),
                Piece::Image(1),
                Piece::Text("\nhi <|image_x|> "),
                Piece::Image(12),
                Piece::Text(""),
            ]
        );
        assert_eq!(split_image_tags("plain"), vec![Piece::Text("plain")]);
    }

    #[test]
    fn image_tags_are_prepended_once() {
        assert_eq!(with_image_tags("Compare.", 2), "<|image_1|>\n<|image_2|>\nCompare.");
        assert_eq!(with_image_tags("See <|image_1|> here", 1), "See <|image_1|> here");
        assert_eq!(with_image_tags("No images", 0), "No images");
    }

    #[test]
    fn chat_template_matches_the_reference() {
        let m = [Message::new("user", "<|image_1|>\nWhat?"), Message::new("assistant", "A cat."), Message::new("user", "More?")];
        assert_eq!(
            apply_chat_template(&m, true),
            "<|user|>\n<|image_1|>\nWhat?<|end|>\n<|assistant|>\nA cat.<|end|>\n<|user|>\nMore?<|end|>\n<|assistant|>\n"
        );
        assert_eq!(apply_chat_template(&m[..2], true), "<|user|>\n<|image_1|>\nWhat?<|end|>\n<|assistant|>\nA cat.<|end|>\n");
    }

    /// `tokenize_with_image_tokens` gives `process`'s ids from the images' token counts alone,
    /// and the same typed errors for tags that do not match.
    #[test]
    fn tokenize_with_image_tokens_equals_process() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/phi3v-tiny");
        let p = Phi3VProcessor::from_dir(&dir).expect("tiny tokenizer").with_num_crops(2);
        let images = vec![DynamicImage::new_rgb8(40, 90), DynamicImage::new_rgb8(300, 20)];
        let counts: Vec<usize> = images
            .iter()
            .map(|i| crate::image_processor::hd_resize_target(i.width(), i.height(), 2).num_img_tokens())
            .collect();
        for prompt in ["<|image_2|> then <|image_1|>\nWhat differs?", "<|user|>\n<|image_1|>\n<|image_2|>\nHi<|end|>\n<|assistant|>\n"] {
            let processed = p.process(prompt, &images).expect("process");
            assert_eq!(p.tokenize_with_image_tokens(prompt, &counts).expect("tokenize"), processed.input_ids, "{prompt}");
        }
        assert_eq!(p.tokenize_with_image_tokens("plain text", &[]).unwrap(), p.process("plain text", &[]).unwrap().input_ids);
        for (prompt, n) in [("<|image_1|><|image_1|>", 1), ("<|image_3|>", 2), ("no tags", 1), ("<|image_1|>", 2)] {
            let a = p.tokenize_with_image_tokens(prompt, &counts[..n]).unwrap_err().to_string();
            let b = p.process(prompt, &images[..n]).unwrap_err().to_string();
            assert_eq!(a, b, "{prompt}");
        }
    }

    /// More images than `max_images` are refused before any is preprocessed; the limit is
    /// configurable.
    #[test]
    fn too_many_images_is_a_typed_error() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/phi3v-tiny");
        let mut p = Phi3VProcessor::from_dir(&dir).expect("tiny tokenizer").with_num_crops(1);
        assert_eq!(p.image_config.max_images, crate::image_processor::DEFAULT_MAX_IMAGES);
        p.image_config.max_images = 2;
        let images = vec![DynamicImage::new_rgb8(4, 4); 3];
        let prompt = with_image_tags("Compare.", 3);
        match p.process(&prompt, &images) {
            Err(Phi3vError::TooManyImages { count: 3, max: 2 }) => {}
            other => panic!("expected TooManyImages, got {other:?}"),
        }
        let two = p.process(&with_image_tags("Compare.", 2), &images[..2]).expect("two images fit");
        assert_eq!(two.images.len(), 2);
    }
}
