//! From OpenAI chat messages to the model's prompt: the Phi-3 chat template
//! ([`burn_phi3v::apply_chat_template`]) over the messages, with `<|image_k|>` tags for the
//! images of each user message, and the images themselves from `image_url` parts.
//!
//! A user message's images get their tags before its text, numbered across the conversation
//! (`<|image_1|>\n` for the first image, as `phi3v generate` and
//! [`burn_phi3v::with_image_tags`] do), unless its text places its own tags. Its text parts are
//! joined with newlines.
//!
//! Images: `data:image/{png,jpeg,webp};base64,…` URLs always; local paths (`/x.png`,
//! `file:///x.png`) only when the server allows them; `http(s)://` URLs never (the server does
//! not fetch anything).

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use burn_phi3v::image::DynamicImage;
use burn_phi3v::image_processor::{decode_image, load_image};
use burn_phi3v::{Message, Phi3vError, apply_chat_template, with_image_tags};
use serde_json::Value;

use crate::api::ChatMessage;
use crate::error::ApiError;

/// Where an image comes from, checked but not decoded yet.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// Bytes from a data URL.
    Bytes {
        /// The encoded image.
        data: Vec<u8>,
        /// How errors name it (`image 2 (messages[1].content[0])`).
        label: String,
    },
    /// A local file (only with `--allow-local-images`).
    File(PathBuf),
}

impl ImageSource {
    /// Decodes the image (refusing more than `max_pixels` pixels before allocating them).
    pub fn decode(&self, max_pixels: u64) -> Result<DynamicImage, Phi3vError> {
        Ok(match self {
            ImageSource::Bytes { data, label } => decode_image(data, label, max_pixels)?,
            ImageSource::File(path) => load_image(path, max_pixels)?,
        })
    }
}

/// A chat turned into the model's prompt text and its images, in tag order.
#[derive(Debug, Clone)]
pub struct ChatPrompt {
    /// The prompt in the Phi-3 chat format, ending with `<|assistant|>\n`.
    pub text: String,
    /// The images, `<|image_k|>` being the k-th.
    pub images: Vec<ImageSource>,
}

/// base64 as data URLs carry it; padding optional.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Reads an `image_url` part's URL.
fn image_source(url: &str, where_: &str, number: usize, allow_local: bool) -> Result<ImageSource, ApiError> {
    let bad = |msg: String| Err(ApiError::bad_request(msg).param(where_.to_string()).code("invalid_image"));
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, payload)) = rest.split_once(',') else {
            return bad(format!("{where_}: a data URL needs a comma before its data"));
        };
        let mut meta = meta.split(';');
        let mime = meta.next().unwrap_or_default().trim().to_ascii_lowercase();
        if !matches!(mime.as_str(), "image/png" | "image/jpeg" | "image/jpg" | "image/webp") {
            return bad(format!("{where_}: unsupported image type {mime:?} (PNG, JPEG or WebP data URLs)"));
        }
        if !meta.any(|m| m.trim().eq_ignore_ascii_case("base64")) {
            return bad(format!("{where_}: the data URL must be base64 (data:{mime};base64,…)"));
        }
        let payload: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let data = match BASE64.decode(payload.as_bytes()) {
            Ok(d) => d,
            Err(e) => return bad(format!("{where_}: invalid base64 in the data URL: {e}")),
        };
        return Ok(ImageSource::Bytes {
            data,
            label: format!("image {number} ({where_})"),
        });
    }
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return bad(format!(
            "{where_}: remote image URLs are not fetched by this server; send the image as a base64 data URL (data:image/png;base64,…)"
        ));
    }
    let path = if let Some(p) = url.strip_prefix("file://") {
        p
    } else if url.contains("://") {
        return bad(format!("{where_}: unsupported image URL scheme in {url:?} (use a base64 data URL)"));
    } else {
        url
    };
    if !allow_local {
        return bad(format!(
            "{where_}: local image paths are refused unless the server runs with --allow-local-images; send a base64 data URL"
        ));
    }
    if path.is_empty() {
        return bad(format!("{where_}: empty image path"));
    }
    Ok(ImageSource::File(PathBuf::from(path)))
}

/// The text and images of one message's content (a string, a list of parts, or null).
fn read_content(content: &Value, at: &str, first_image: usize, allow_local: bool) -> Result<(String, Vec<ImageSource>), ApiError> {
    match content {
        Value::Null => Ok((String::new(), Vec::new())),
        Value::String(s) => Ok((s.clone(), Vec::new())),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            let mut images = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let where_ = format!("{at}.content[{j}]");
                let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
                match kind {
                    "text" => match part.get("text").and_then(Value::as_str) {
                        Some(t) => texts.push(t.to_string()),
                        None => return Err(ApiError::bad_request(format!("{where_}: a text part needs a string `text`")).param(where_)),
                    },
                    "image_url" => {
                        let url = match part.get("image_url") {
                            Some(Value::String(u)) => u.as_str(),
                            Some(obj) => obj.get("url").and_then(Value::as_str).unwrap_or_default(),
                            None => "",
                        };
                        if url.is_empty() {
                            return Err(ApiError::bad_request(format!("{where_}: an image_url part needs `image_url.url`")).param(where_));
                        }
                        images.push(image_source(url, &where_, first_image + images.len() + 1, allow_local)?);
                    }
                    other => {
                        return Err(ApiError::unsupported(&where_, format!("{where_}: content parts of type {other:?} are not supported (text and image_url are)")));
                    }
                }
            }
            Ok((texts.join("\n"), images))
        }
        _ => Err(ApiError::bad_request(format!("{at}.content must be a string, a list of parts or null")).param(format!("{at}.content"))),
    }
}

/// `n` tags numbered from `first + 1` before `text`, unless `text` has its own tags.
fn tag_images(text: &str, first: usize, n: usize) -> String {
    if n == 0 {
        return text.to_string();
    }
    if first == 0 {
        return with_image_tags(text, n);
    }
    if with_image_tags(text, 1) == text {
        return text.to_string(); // it places its own tags
    }
    let mut out: String = (first + 1..=first + n).map(|k| format!("<|image_{k}|>\n")).collect();
    out.push_str(text);
    out
}

/// Turns the messages into the model's prompt, refusing more than `max_images` images before
/// any is decoded.
pub fn chat_prompt(messages: &[ChatMessage], allow_local: bool, max_images: usize) -> Result<ChatPrompt, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").param("messages"));
    }
    let mut turns = Vec::with_capacity(messages.len());
    let mut images = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::unsupported(
                    &format!("{at}.role"),
                    format!("{at}: role {other:?} is not supported (system, user, assistant)"),
                ));
            }
        };
        let (text, new_images) = read_content(&m.content, &at, images.len(), allow_local)?;
        if role != "user" && !new_images.is_empty() {
            return Err(ApiError::bad_request(format!("{at}: images are only accepted in user messages")).param(at));
        }
        let count = images.len() + new_images.len();
        if count > max_images {
            return Err(Phi3vError::TooManyImages { count, max: max_images }.into());
        }
        turns.push(Message::new(role, tag_images(&text, images.len(), new_images.len())));
        images.extend(new_images);
    }
    Ok(ChatPrompt {
        text: apply_chat_template(&turns, true),
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: Value) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content,
        }
    }

    #[test]
    fn one_image_gives_the_cli_prompt() {
        let png = "data:image/png;base64,iVBORw0KGgo=";
        let m = [msg(
            "user",
            serde_json::json!([{"type": "text", "text": "What animal is this?"}, {"type": "image_url", "image_url": {"url": png}}]),
        )];
        let p = chat_prompt(&m, false, 4).unwrap();
        let expected = apply_chat_template(&[Message::new("user", with_image_tags("What animal is this?", 1))], true);
        assert_eq!(p.text, expected);
        assert_eq!(p.images.len(), 1);
    }

    #[test]
    fn images_are_numbered_across_messages() {
        let img = serde_json::json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}});
        let m = [
            msg("user", serde_json::json!([img.clone(), {"type": "text", "text": "A"}])),
            msg("assistant", Value::String("ok".into())),
            msg("user", serde_json::json!([img.clone(), img, {"type": "text", "text": "B"}])),
        ];
        let p = chat_prompt(&m, false, 8).unwrap();
        assert!(p.text.contains("<|user|>\n<|image_1|>\nA<|end|>"), "{}", p.text);
        assert!(p.text.contains("<|user|>\n<|image_2|>\n<|image_3|>\nB<|end|>"), "{}", p.text);
        assert_eq!(p.images.len(), 3);
        let err = chat_prompt(&m, false, 2).unwrap_err();
        assert_eq!(err.code, Some("too_many_images"));
    }

    #[test]
    fn urls_are_checked() {
        let at = |url: &str, local| image_source(url, "messages[0].content[0]", 1, local);
        assert!(at("https://example.com/a.png", true).unwrap_err().message.contains("not fetched"));
        assert!(at("/tmp/a.png", false).unwrap_err().message.contains("--allow-local-images"));
        assert!(matches!(at("file:///tmp/a.png", true), Ok(ImageSource::File(p)) if p == std::path::Path::new("/tmp/a.png")));
        assert!(at("data:image/png;base64,@@@", false).unwrap_err().message.contains("invalid base64"));
        assert!(at("data:image/tiff;base64,AAAA", false).unwrap_err().message.contains("unsupported image type"));
        assert!(matches!(at("data:image/jpeg;base64,AAA", false), Ok(ImageSource::Bytes { data, .. }) if data.len() == 2));
    }
}
