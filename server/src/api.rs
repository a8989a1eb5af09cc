//! OpenAI's request bodies as this server reads them, and the checks of what it does not do.
//!
//! Fields that are accepted but ignored: `user`, `metadata`, `store`, `service_tier`,
//! `parallel_tool_calls` and any field this server does not know. Fields refused with a 400
//! when they ask for something not implemented: `n` ≠ 1, `logprobs`, `top_logprobs`, `echo`,
//! `best_of` ≠ 1, `suffix`, `tools`, `tool_choice` other than `none`, `functions`,
//! `function_call`, `response_format` other than `text`, a non-empty `logit_bias`, and non-zero
//! `presence_penalty` / `frequency_penalty`.

use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage (and `"usage": null` on the others).
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling, length and streaming fields shared by `/v1/chat/completions` and `/v1/completions`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonParams {
    /// The model name (must be the served one; the served one when absent).
    pub model: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<u64>,
    /// Newer name of `max_tokens` (takes precedence).
    pub max_completion_tokens: Option<u64>,
    /// Fewest tokens to generate (vLLM's extension).
    pub min_tokens: Option<u64>,
    /// Sampling temperature (OpenAI's default 1; 0 is greedy).
    pub temperature: Option<f32>,
    /// Nucleus sampling threshold.
    pub top_p: Option<f32>,
    /// Top-k (vLLM's extension; 0 or negative = off).
    pub top_k: Option<i64>,
    /// Repetition penalty (vLLM's extension; 1 = off).
    pub repetition_penalty: Option<f32>,
    /// Sampler seed (a fresh one per request when absent).
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Choices per request: only 1.
    pub n: Option<u64>,
    /// Server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Refused unless null/false/0.
    pub logprobs: Option<Value>,
    /// Refused unless null/0.
    pub top_logprobs: Option<Value>,
    /// Refused unless null/0.
    pub presence_penalty: Option<f32>,
    /// Refused unless null/0.
    pub frequency_penalty: Option<f32>,
    /// Refused unless empty.
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// Refused unless empty.
    pub tools: Option<Value>,
    /// Refused unless `none`.
    pub tool_choice: Option<Value>,
    /// Refused.
    pub functions: Option<Value>,
    /// Refused.
    pub function_call: Option<Value>,
    /// Refused unless `{"type": "text"}`.
    pub response_format: Option<Value>,
    /// Refused unless false.
    pub echo: Option<bool>,
    /// Refused unless 1.
    pub best_of: Option<u64>,
    /// Refused.
    pub suffix: Option<String>,
    /// Extension (as vLLM's): the generated token ids in each choice (`token_ids`).
    pub return_token_ids: Option<bool>,
}

/// Whether a JSON value asks for nothing (absent, null, false, 0, empty).
fn is_off(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

impl CommonParams {
    /// Refuses what this server does not implement, naming the parameter.
    pub fn check_supported(&self) -> Result<(), ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::unsupported("n", format!("n = {n}: this server returns one choice per request (n = 1)")));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::unsupported("best_of", "best_of is not supported"));
        }
        let refuse = |param: &str, what: &str| Err(ApiError::unsupported(param, format!("{what} is not supported by this server")));
        if self.logprobs.as_ref().is_some_and(|v| !is_off(v)) {
            return refuse("logprobs", "logprobs");
        }
        if self.top_logprobs.as_ref().is_some_and(|v| !is_off(v)) {
            return refuse("top_logprobs", "top_logprobs");
        }
        if self.echo == Some(true) {
            return refuse("echo", "echo");
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return refuse("suffix", "suffix");
        }
        if self.tools.as_ref().is_some_and(|v| !is_off(v)) {
            return refuse("tools", "tool calling");
        }
        if self.tool_choice.as_ref().is_some_and(|v| !is_off(v) && v.as_str() != Some("none")) {
            return refuse("tool_choice", "tool calling");
        }
        if self.functions.as_ref().is_some_and(|v| !is_off(v)) {
            return refuse("functions", "function calling");
        }
        if self.function_call.as_ref().is_some_and(|v| !is_off(v) && v.as_str() != Some("none")) {
            return refuse("function_call", "function calling");
        }
        if let Some(f) = &self.response_format
            && !is_off(f)
            && f.get("type").and_then(Value::as_str) != Some("text")
        {
            return refuse("response_format", "response_format other than text");
        }
        if self.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
            return refuse("logit_bias", "logit_bias");
        }
        if self.presence_penalty.is_some_and(|p| p != 0.0) {
            return refuse("presence_penalty", "presence_penalty");
        }
        if self.frequency_penalty.is_some_and(|p| p != 0.0) {
            return refuse("frequency_penalty", "frequency_penalty");
        }
        Ok(())
    }

    /// `max_completion_tokens`, else `max_tokens`.
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether the answer is streamed.
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether a streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// One chat message, content kept as JSON and read by [`crate::prompt`].
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system` (or `developer`), `user`, `assistant`.
    pub role: String,
    /// A string, a list of parts, or null.
    #[serde(default)]
    pub content: Value,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Everything else.
    #[serde(flatten)]
    pub params: CommonParams,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The raw prompt: a string or a list of exactly one string.
    pub prompt: Value,
    /// Everything else.
    #[serde(flatten)]
    pub params: CommonParams,
}

impl CompletionRequest {
    /// The prompt text, or a 400 for batches and token-id prompts.
    pub fn prompt_text(&self) -> Result<String, ApiError> {
        match &self.prompt {
            Value::String(s) => Ok(s.clone()),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => Ok(a[0].as_str().unwrap_or_default().to_string()),
            Value::Array(a) if a.len() > 1 => Err(ApiError::unsupported("prompt", "a list of several prompts is not supported (send one request per prompt)")),
            _ => Err(ApiError::bad_request("prompt must be a string (token-id prompts are not supported)").param("prompt")),
        }
    }
}

/// Parses a JSON body: 400 for malformed JSON or fields of the wrong type.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => "malformed JSON in the request body",
            Category::Data => "invalid request body",
        };
        ApiError::bad_request(format!("{what}: {e}")).code("invalid_request_body")
    })
}
