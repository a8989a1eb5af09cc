//! Prompts: the official MMMU text (`construct_prompt` with `configs/llava1.5.yaml`), the images
//! an item references, and the Phi-3-vision chat message around them.
//!
//! # Text
//! `construct_prompt` formats `multi_choice_example_format` with the question and
//! `example = "".join(f"({X}) {option}\n")`, or `short_ans_example_format` with the question. The
//! templates come from `configs/llava1.5.yaml`, whose values are double-quoted YAML scalars
//! written over several lines with blank lines between the parts; YAML folds each blank line to a
//! single `\n`, so the loaded templates are `"{}\n{}\nAnswer with the option's letter from the
//! given choices directly."` and `"{}\nAnswer the question using a single word or phrase."`
//! ([`PromptTemplates::official`]). With `example` ending in `\n` that leaves **two** newlines
//! before "Answer". The project spec (§6.2) reads the file literally, as `"{}\n\n{}\n\nAnswer…"`
//! (three newlines); that reading is available as [`PromptTemplates::spec_literal`].
//!
//! # Images
//! Every `<image k>` tag in the question and the option strings names `image_k`; the images passed
//! to the model are those, de-duplicated, in ascending `k` (what lmms-eval does). `<image k>` stays
//! literal text. The j-th passed image is `<|image_j|>` for Phi-3-vision (its processor requires
//! the numbers 1…n).
//!
//! # Chat
//! [`ImagePlacement::Prepended`] (default, lmms-eval's `phi3v` and VLMEvalKit's Phi-3.5 wrapper):
//! user content = `"<|image_1|>\n<|image_2|>\n…" + text`. [`ImagePlacement::Interleaved`] (closer
//! to the Phi-3 report's "interleave the images anywhere in the question or the answers"): each
//! `<image k>` in the text is replaced in place by its `<|image_j|>`, nothing is prepended; a tag
//! that occurs twice then inserts the image's tokens twice, as the Phi-3-V processor does for a
//! repeated placeholder. Either way the message is wrapped as
//! `<|user|>\n{content}<|end|>\n<|assistant|>\n` (the checkpoints' chat template with the
//! generation prompt; the tokenizer adds BOS).

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::parse::choice_letters;

/// The two format strings and the instruction prefix of a `construct_prompt` config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTemplates {
    /// A short name recorded in run summaries.
    pub name: String,
    /// `multi_choice_example_format`: `{}` = question, `{}` = the options block.
    pub multi_choice: String,
    /// `short_ans_example_format`: `{}` = question.
    pub short_answer: String,
    /// `task_instructions` (empty in the official config).
    pub task_instructions: String,
}

impl PromptTemplates {
    /// `configs/llava1.5.yaml` as `yaml.safe_load` returns it.
    pub fn official() -> Self {
        PromptTemplates {
            name: "official".into(),
            multi_choice:
                "{}\n{}\nAnswer with the option's letter from the given choices directly.".into(),
            short_answer: "{}\nAnswer the question using a single word or phrase.".into(),
            task_instructions: String::new(),
        }
    }

    /// The spec §6.2 reading of the same file (blank lines kept as `\n\n`).
    pub fn spec_literal() -> Self {
        PromptTemplates {
            name: "spec-literal".into(),
            multi_choice:
                "{}\n\n{}\n\nAnswer with the option's letter from the given choices directly."
                    .into(),
            short_answer: "{}\n\nAnswer the question using a single word or phrase.".into(),
            task_instructions: String::new(),
        }
    }
}

impl Default for PromptTemplates {
    fn default() -> Self {
        Self::official()
    }
}

/// Where the image placeholders go in the user message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImagePlacement {
    /// `<|image_1|>\n<|image_2|>\n…` before the text.
    #[default]
    Prepended,
    /// Each `<image k>` replaced in place by its `<|image_j|>`.
    Interleaved,
}

/// Everything the prompt side needs to know, recorded with a run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PromptOptions {
    pub templates: PromptTemplates,
    pub placement: ImagePlacement,
}

/// A built prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// `final_input_prompt` of `construct_prompt`.
    pub text: String,
    /// The user message content with the image placeholders.
    pub user_content: String,
    /// The full chat-formatted prompt to tokenize.
    pub chat: String,
    /// `k` of each image to pass, in order: the j-th entry is `<|image_{j+1}|>`.
    pub image_tags: Vec<u32>,
    /// `all_choices` (empty for open questions).
    pub all_choices: Vec<String>,
    /// `index2ans` in order (empty for open questions).
    pub index2ans: Vec<(String, String)>,
}

/// Python `str.format` with positional `{}` fields (and `{{`/`}}` escapes). Missing arguments
/// leave the field empty.
fn py_format(template: &str, args: &[&str]) -> String {
    let mut out =
        String::with_capacity(template.len() + args.iter().map(|a| a.len()).sum::<usize>());
    let mut next = 0;
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('{', Some('{')) | ('}', Some('}')) => {
                chars.next();
                out.push(c);
            }
            ('{', Some('}')) => {
                chars.next();
                out.push_str(args.get(next).copied().unwrap_or(""));
                next += 1;
            }
            _ => out.push(c),
        }
    }
    out
}

/// `construct_prompt`'s `final_input_prompt`, `all_choices` and `index2ans`.
pub fn construct_prompt(
    question: &str,
    options: &[String],
    multiple_choice: bool,
    templates: &PromptTemplates,
) -> (String, Vec<String>, Vec<(String, String)>) {
    let (empty_prompt, letters, index2ans) = if multiple_choice {
        let letters = choice_letters(options.len());
        let mut example = String::new();
        for (letter, option) in letters.iter().zip(options) {
            example.push_str(&format!("({letter}) {option}\n"));
        }
        let index2ans = letters
            .iter()
            .cloned()
            .zip(options.iter().cloned())
            .collect();
        (
            py_format(&templates.multi_choice, &[question, &example]),
            letters,
            index2ans,
        )
    } else {
        (
            py_format(&templates.short_answer, &[question]),
            Vec::new(),
            Vec::new(),
        )
    };
    let text = if templates.task_instructions.is_empty() {
        empty_prompt
    } else {
        format!(
            "{}\n\n{}",
            crate::pynum::strip(&templates.task_instructions),
            empty_prompt
        )
    };
    (text, letters, index2ans)
}

static IMAGE_TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"<image ([0-9]+)>").expect("static regex"));

/// The `k` of every `<image k>` tag in the question and options, ascending, de-duplicated.
/// Tags whose number does not fit a `u32` are ignored (they cannot name an image column).
pub fn image_tags<'a>(
    question: &'a str,
    options: impl IntoIterator<Item = &'a String>,
) -> Vec<u32> {
    let mut tags: Vec<u32> = std::iter::once(question)
        .chain(options.into_iter().map(String::as_str))
        .flat_map(|s| {
            IMAGE_TAG
                .captures_iter(s)
                .filter_map(|c| c[1].parse::<u32>().ok())
        })
        .collect();
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// `<|user|>\n{content}<|end|>\n<|assistant|>\n`.
pub fn chat_template(content: &str) -> String {
    format!("<|user|>\n{content}<|end|>\n<|assistant|>\n")
}

/// Builds the prompt of one item. Fails with [`Error::MissingImage`] when a tag names an image the
/// item does not have.
pub fn build(item: &crate::dataset::MmmuItem, options: &PromptOptions) -> Result<Prompt> {
    let mc = item.is_multiple_choice();
    let (text, all_choices, index2ans) =
        construct_prompt(&item.question, &item.options, mc, &options.templates);
    let image_tags = image_tags(&item.question, &item.options);
    for &k in &image_tags {
        if item.image(k).is_none() {
            return Err(Error::MissingImage {
                item: item.id.clone(),
                k,
            });
        }
    }
    let user_content = match options.placement {
        ImagePlacement::Prepended => {
            let mut s = String::new();
            for j in 1..=image_tags.len() {
                s.push_str(&format!("<|image_{j}|>\n"));
            }
            s + &text
        }
        ImagePlacement::Interleaved => IMAGE_TAG
            .replace_all(&text, |c: &regex::Captures<'_>| {
                let k = c[1].parse::<u32>().ok();
                match k.and_then(|k| image_tags.iter().position(|&t| t == k)) {
                    Some(j) => format!("<|image_{}|>", j + 1),
                    None => c[0].to_owned(),
                }
            })
            .into_owned(),
    };
    let chat = chat_template(&user_content);
    Ok(Prompt {
        text,
        user_content,
        chat,
        image_tags,
        all_choices,
        index2ans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{ItemImage, MmmuItem};
    use crate::parse::Gold;

    fn item(question: &str, options: &[&str], ks: &[u32]) -> MmmuItem {
        MmmuItem {
            id: "validation_Art_1".into(),
            subject: "Art".into(),
            question: question.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            answer: Gold::One("A".into()),
            question_type: if options.is_empty() {
                "open".into()
            } else {
                "multiple-choice".into()
            },
            images: ks
                .iter()
                .map(|&k| ItemImage {
                    k,
                    bytes: vec![k as u8],
                    path: None,
                })
                .collect(),
            ..MmmuItem::default()
        }
    }

    #[test]
    fn official_multiple_choice_text() {
        let it = item("What is shown in <image 1>?", &["A cat", "A dog"], &[1]);
        let p = build(&it, &PromptOptions::default()).unwrap();
        assert_eq!(
            p.text,
            "What is shown in <image 1>?\n(A) A cat\n(B) A dog\n\nAnswer with the option's letter from the given choices directly."
        );
        assert_eq!(p.all_choices, ["A", "B"]);
        assert_eq!(p.index2ans[1], ("B".to_string(), "A dog".to_string()));
        assert_eq!(p.image_tags, [1]);
        assert_eq!(
            p.chat,
            "<|user|>\n<|image_1|>\nWhat is shown in <image 1>?\n(A) A cat\n(B) A dog\n\nAnswer with the option's letter from the given choices directly.<|end|>\n<|assistant|>\n"
        );
    }

    #[test]
    fn spec_literal_and_open_text() {
        let templates = PromptTemplates::spec_literal();
        let (t, _, _) = construct_prompt("Q?", &["x".into()], true, &templates);
        assert_eq!(
            t,
            "Q?\n\n(A) x\n\n\nAnswer with the option's letter from the given choices directly."
        );
        let (t, letters, _) =
            construct_prompt("How many {cats}?", &[], false, &PromptTemplates::official());
        assert_eq!(
            t,
            "How many {cats}?\nAnswer the question using a single word or phrase."
        );
        assert!(letters.is_empty());
        let mut with_instr = PromptTemplates::official();
        with_instr.task_instructions = "  Be brief.\n".into();
        let (t, _, _) = construct_prompt("Q?", &[], false, &with_instr);
        assert_eq!(
            t,
            "Be brief.\n\nQ?\nAnswer the question using a single word or phrase."
        );
    }

    #[test]
    fn images_in_tag_order_from_question_and_options() {
        let it = item(
            "Compare <image 3> with <image 1>. Which option fits <image 3>?",
            &["<image 2>", "<image 4>", "neither"],
            &[1, 2, 3, 4, 5],
        );
        let p = build(&it, &PromptOptions::default()).unwrap();
        assert_eq!(p.image_tags, [1, 2, 3, 4]);
        assert!(
            p.user_content.starts_with(
                "<|image_1|>\n<|image_2|>\n<|image_3|>\n<|image_4|>\nCompare <image 3>"
            )
        );

        let inter = PromptOptions {
            placement: ImagePlacement::Interleaved,
            ..Default::default()
        };
        let p = build(&it, &inter).unwrap();
        assert_eq!(
            p.user_content,
            "Compare <|image_3|> with <|image_1|>. Which option fits <|image_3|>?\n(A) <|image_2|>\n(B) <|image_4|>\n(C) neither\n\nAnswer with the option's letter from the given choices directly."
        );

        // Only <image 2> referenced: it becomes <|image_1|>.
        let it = item("See <image 2>.", &[], &[1, 2]);
        let p = build(&it, &PromptOptions::default()).unwrap();
        assert_eq!(p.image_tags, [2]);
        assert!(p.user_content.starts_with("<|image_1|>\nSee <image 2>."));
    }

    #[test]
    fn missing_image_is_an_error() {
        let it = item("See <image 1> and <image 2>.", &[], &[1]);
        match build(&it, &PromptOptions::default()) {
            Err(Error::MissingImage { item, k }) => {
                assert_eq!((item.as_str(), k), ("validation_Art_1", 2))
            }
            other => panic!("{other:?}"),
        }
        // No tags, no images: a text-only prompt.
        let it = item("Plain?", &[], &[]);
        assert!(
            build(&it, &PromptOptions::default())
                .unwrap()
                .image_tags
                .is_empty()
        );
    }
}
