//! The HTTP layer: routes, handlers, streaming, the API-key check and graceful shutdown.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::BytesMut;
use futures_util::StreamExt;
use burn_phi3v::{FinishReason, GenerationOutput, GenerationParams, Phi3vError, ProcessedPrompt, RequestEvent, SamplingParams};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{ChatCompletionRequest, CommonParams, CompletionRequest, Stop, parse_body};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::prompt::{ImageSource, chat_prompt};
use crate::service::{Generation, ModelService};

/// What the HTTP layer needs to know besides the model.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model name clients must send (`model`), listed by `/v1/models`.
    pub served_model_name: String,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Accept local file paths (and `file://` URLs) as images.
    pub allow_local_images: bool,
    /// Largest request body in bytes (413 above it).
    pub max_body_bytes: usize,
    /// `max_tokens` when a request gives none (also capped by the context and the KV-cache pool).
    pub default_max_tokens: usize,
}

impl ServerConfig {
    /// Defaults for `service`: named after its folder, no API key, no local images, 32 MiB
    /// bodies, 256 tokens by default.
    pub fn for_model(service: &ModelService) -> Self {
        let name = service
            .model_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "phi3v".into());
        Self {
            served_model_name: name,
            api_key: None,
            allow_local_images: false,
            max_body_bytes: 32 << 20,
            default_max_tokens: 256,
        }
    }
}

/// Bytes of an oversized body read and dropped before answering 413 (beyond that the
/// connection is closed).
const DRAIN_LIMIT: usize = 64 << 20;

/// Shared by every handler.
struct AppState {
    service: Arc<ModelService>,
    config: ServerConfig,
    metrics: Metrics,
    /// Set when shutdown begins: new completion requests get 503.
    draining: AtomicBool,
    /// Completion requests being answered (a stream counts until its last event).
    in_flight: AtomicUsize,
    next_id: AtomicU64,
    started: u64,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Counts a completion request as in flight until dropped.
struct InFlight(Arc<AppState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AppState {
    /// Admits a completion request, or 503 while shutting down.
    fn begin(self: &Arc<Self>) -> Result<InFlight, ApiError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.clone());
        if self.draining.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        Ok(guard)
    }

    fn check_model(&self, asked: Option<&str>) -> Result<(), ApiError> {
        match asked {
            Some(m) if m != self.config.served_model_name => Err(ApiError::model_not_found(m, &self.config.served_model_name)),
            _ => Ok(()),
        }
    }

    /// Reads a request body of at most `max_body_bytes`. A larger one is read to its end (and
    /// dropped, up to [`DRAIN_LIMIT`] more bytes) before the 413 is sent, so that the client
    /// that is still sending gets the answer instead of a reset connection.
    async fn body(&self, body: Body) -> Result<Bytes, ApiError> {
        let limit = self.config.max_body_bytes;
        let mut stream = body.into_data_stream();
        let mut buf = BytesMut::new();
        let mut total = 0usize;
        while let Some(frame) = stream.next().await {
            let frame = frame.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            total = total.saturating_add(frame.len());
            if total <= limit {
                buf.extend_from_slice(&frame);
            } else if total > limit.saturating_add(DRAIN_LIMIT) {
                break;
            }
        }
        if total > limit {
            return Err(ApiError::too_large(limit));
        }
        Ok(buf.freeze())
    }

    /// A fresh sampler seed for requests that give none.
    fn fresh_seed(&self) -> u64 {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let mut z = nanos ^ self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // splitmix64's finaliser
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The engine's parameters for a request whose prompt has `prompt_len` tokens.
    fn generation_params(&self, p: &CommonParams, prompt_len: usize) -> Result<GenerationParams, ApiError> {
        let s = &self.service;
        // Bounded so that prompt + max_tokens cannot overflow; the engine refuses what exceeds
        // the context or the KV-cache pool.
        let clamp = |n: u64| n.min(u64::from(u32::MAX)) as usize;
        let max_new_tokens = match p.max_tokens() {
            Some(n) => clamp(n),
            None => self
                .config
                .default_max_tokens
                .min(s.max_model_len.saturating_sub(prompt_len))
                .min(s.capacity_tokens.saturating_sub(prompt_len))
                .max(1),
        };
        let params = GenerationParams {
            max_new_tokens,
            min_new_tokens: p.min_tokens.map_or(0, clamp),
            sampling: SamplingParams {
                temperature: p.temperature.unwrap_or(1.0),
                top_k: p.top_k.filter(|&k| k > 0).map_or(0, |k| clamp(k as u64)),
                top_p: p.top_p.unwrap_or(1.0),
                repetition_penalty: p.repetition_penalty.unwrap_or(1.0),
                seed: p.seed.map_or_else(|| self.fresh_seed(), |s| s as u64),
            },
            stop_token_ids: s.stop_token_ids.clone(),
            stop_strings: p.stop.clone().map(Stop::into_vec).unwrap_or_default(),
            ..Default::default()
        };
        params.validate()?;
        Ok(params)
    }
}

/// Which endpoint answers: decides the response and chunk formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

/// Id, timestamp and model of one response, and its JSON shapes.
struct Meta {
    endpoint: Endpoint,
    /// Add the generated ids to the choice (`return_token_ids`).
    token_ids: bool,
    id: String,
    created: u64,
    model: String,
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        _ => "abort",
    }
}

fn usage(out: &GenerationOutput) -> Value {
    let completion = out.token_ids.len();
    json!({
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": out.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "image_tokens": out.image_tokens},
    })
}

impl Meta {
    fn new(state: &AppState, endpoint: Endpoint, token_ids: bool) -> Self {
        let n = state.next_id.fetch_add(1, Ordering::Relaxed);
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        Self {
            endpoint,
            token_ids,
            id: format!("{prefix}-{:x}{n:06x}", state.started),
            created: unix_now(),
            model: state.config.served_model_name.clone(),
        }
    }

    /// The whole (non-streamed) response.
    fn response(&self, out: &GenerationOutput) -> Value {
        let mut choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": out.text},
                "logprobs": null,
                "finish_reason": finish_reason(out.finish_reason),
            }),
            Endpoint::Completion => json!({
                "index": 0,
                "text": out.text,
                "logprobs": null,
                "finish_reason": finish_reason(out.finish_reason),
            }),
        };
        if self.token_ids {
            choice["token_ids"] = json!(out.token_ids);
        }
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completion => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice], "usage": usage(out)})
    }

    /// A stream chunk: `text` (the assistant role when `None`), an optional finish reason;
    /// `usage` present (null) when the client asked for a usage chunk.
    fn chunk(&self, text: Option<&str>, finish: Option<&str>, with_usage_field: bool) -> Event {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let delta = match (text, finish) {
                    (_, Some(_)) => json!({}),
                    (None, None) => json!({"role": "assistant", "content": ""}),
                    (Some(t), None) => json!({"content": t}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Completion => json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}),
        };
        let mut v = json!({"id": self.id, "object": self.chunk_object(), "created": self.created, "model": self.model, "choices": [choice]});
        if with_usage_field {
            v["usage"] = Value::Null;
        }
        Event::default().data(v.to_string())
    }

    /// The last chunk of a stream whose client asked for the usage.
    fn usage_chunk(&self, out: &GenerationOutput) -> Event {
        let v = json!({"id": self.id, "object": self.chunk_object(), "created": self.created, "model": self.model, "choices": [], "usage": usage(out)});
        Event::default().data(v.to_string())
    }

    fn chunk_object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        }
    }
}

/// A request running in the engine: latency metrics as its tokens come, and the count of
/// aborted requests when it is dropped unfinished (the [`Generation`] then cancels it).
struct Running {
    state: Arc<AppState>,
    generation: Generation,
    arrived: Instant,
    last_token: Option<Instant>,
}

impl Running {
    fn token(&mut self, at: Instant) {
        let m = &self.state.metrics;
        match self.last_token {
            None => m.ttft.observe(at.saturating_duration_since(self.arrived)),
            Some(last) => m.itl.observe(at.saturating_duration_since(last)),
        }
        self.last_token = Some(at);
        m.generation_tokens.fetch_add(1, Ordering::Relaxed);
    }

    fn finished(&self, out: &GenerationOutput) {
        let m = &self.state.metrics;
        m.prompt_tokens.fetch_add(out.prompt_tokens as u64, Ordering::Relaxed);
        m.image_tokens.fetch_add(out.image_tokens as u64, Ordering::Relaxed);
        m.e2e.observe(self.last_token.unwrap_or_else(Instant::now).saturating_duration_since(self.arrived));
        match out.finish_reason {
            FinishReason::Stop => m.finished_stop.fetch_add(1, Ordering::Relaxed),
            FinishReason::Length => m.finished_length.fetch_add(1, Ordering::Relaxed),
            _ => m.aborted.fetch_add(1, Ordering::Relaxed),
        };
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.generation.is_finished() {
            self.state.metrics.aborted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Decodes the images and tokenises the prompt on a blocking thread.
async fn process(state: &Arc<AppState>, text: String, images: Vec<ImageSource>) -> Result<ProcessedPrompt, ApiError> {
    let service = state.service.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<ProcessedPrompt, Phi3vError> {
        let processor = &service.processor;
        let max_pixels = processor.image_config.max_pixels;
        let images = images.iter().map(|i| i.decode(max_pixels)).collect::<Result<Vec<_>, _>>()?;
        processor.process(&text, &images)
    })
    .await
    .map_err(|e| ApiError::internal(format!("prompt processing failed: {e}")))?;
    Ok(result?)
}

/// Submits and answers: one JSON response, or server-sent events.
async fn answer(
    state: Arc<AppState>,
    guard: InFlight,
    endpoint: Endpoint,
    params: &CommonParams,
    prompt: ProcessedPrompt,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let gen_params = state.generation_params(params, prompt.input_ids.len())?;
    let generation = state.service.start(prompt, gen_params)?;
    let meta = Meta::new(&state, endpoint, params.return_token_ids == Some(true));
    let mut running = Running {
        state: state.clone(),
        generation,
        arrived,
        last_token: None,
    };
    if params.stream() {
        return Ok(stream(running, guard, meta, params.include_usage()));
    }
    loop {
        match running.generation.next().await {
            Some(RequestEvent::Token { at, .. }) => running.token(at),
            Some(RequestEvent::Finished(Ok(out))) => {
                running.finished(&out);
                return Ok(Json(meta.response(&out)).into_response());
            }
            Some(RequestEvent::Finished(Err(e))) => return Err(e.into()),
            None => return Err(ApiError::unavailable("the serving engine stopped")),
        }
    }
}

/// The SSE response: chunks as tokens come, a final chunk with the finish reason, the usage
/// chunk when asked, then `[DONE]`. Dropping it (client gone) cancels the request.
fn stream(running: Running, guard: InFlight, meta: Meta, include_usage: bool) -> Response {
    struct S {
        running: Running,
        _guard: InFlight,
        meta: Meta,
        include_usage: bool,
        pending: VecDeque<Event>,
        done: bool,
    }
    let mut pending = VecDeque::new();
    if meta.endpoint == Endpoint::Chat {
        pending.push_back(meta.chunk(None, None, include_usage));
    }
    let s = S {
        running,
        _guard: guard,
        meta,
        include_usage,
        pending,
        done: false,
    };
    let events = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(e) = s.pending.pop_front() {
                return Some((Ok::<Event, Infallible>(e), s));
            }
            if s.done {
                return None;
            }
            let done = |s: &mut S| {
                s.pending.push_back(Event::default().data("[DONE]"));
                s.done = true;
            };
            match s.running.generation.next().await {
                Some(RequestEvent::Token { text_delta, at, .. }) => {
                    s.running.token(at);
                    if !text_delta.is_empty() {
                        let e = s.meta.chunk(Some(&text_delta), None, s.include_usage);
                        s.pending.push_back(e);
                    }
                }
                Some(RequestEvent::Finished(Ok(out))) => {
                    s.running.finished(&out);
                    let e = s.meta.chunk(Some(""), Some(finish_reason(out.finish_reason)), s.include_usage);
                    s.pending.push_back(e);
                    if s.include_usage {
                        let e = s.meta.usage_chunk(&out);
                        s.pending.push_back(e);
                    }
                    done(&mut s);
                }
                Some(RequestEvent::Finished(Err(e))) => {
                    s.running.state.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    s.pending.push_back(Event::default().data(ApiError::from(e).body().to_string()));
                    done(&mut s);
                }
                None => {
                    s.pending.push_back(Event::default().data(ApiError::unavailable("the serving engine stopped").body().to_string()));
                    done(&mut s);
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// Counts errors answered by the completion endpoints.
fn respond(state: &AppState, r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| {
        state.metrics.errors.fetch_add(1, Ordering::Relaxed);
        e.into_response()
    })
}

/// `POST /v1/chat/completions`.
async fn chat_completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let arrived = Instant::now();
    let r = async {
        let guard = state.begin()?;
        let req: ChatCompletionRequest = parse_body(&state.body(body).await?)?;
        state.check_model(req.params.model.as_deref())?;
        req.params.check_supported()?;
        let max_images = state.service.processor.image_config.max_images;
        let chat = chat_prompt(&req.messages, state.config.allow_local_images, max_images)?;
        let prompt = process(&state, chat.text, chat.images).await?;
        answer(state.clone(), guard, Endpoint::Chat, &req.params, prompt, arrived).await
    }
    .await;
    respond(&state, r)
}

/// `POST /v1/completions`: the prompt as given, no chat template.
async fn completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let arrived = Instant::now();
    let r = async {
        let guard = state.begin()?;
        let req: CompletionRequest = parse_body(&state.body(body).await?)?;
        state.check_model(req.params.model.as_deref())?;
        req.params.check_supported()?;
        let prompt = process(&state, req.prompt_text()?, Vec::new()).await?;
        answer(state.clone(), guard, Endpoint::Completion, &req.params, prompt, arrived).await
    }
    .await;
    respond(&state, r)
}

/// `GET /v1/models`.
async fn models(State(state): State<Arc<AppState>>) -> Response {
    let s = &state.service;
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.config.served_model_name,
            "object": "model",
            "created": state.started,
            "owned_by": "burn-phi3v",
            "root": s.model_dir.display().to_string(),
            "max_model_len": s.max_model_len,
        }],
    }))
    .into_response()
}

/// `GET /health`: 200 while serving, 503 while shutting down.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let s = &state.service;
    let draining = state.draining.load(Ordering::SeqCst);
    let status = if draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let label = if draining { "shutting_down" } else { "ok" };
    let body = json!({
        "status": label,
        "model": state.config.served_model_name,
        "device": s.device.spec,
        "device_name": s.device.name,
        "dtype": s.dtype,
    });
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&state.service.stats(), state.in_flight.load(Ordering::SeqCst));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn not_found(uri: Uri) -> Response {
    ApiError::no_route(uri.path()).into_response()
}

/// Compares without stopping at the first difference.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `/v1/*` needs `Authorization: Bearer <key>` when the server has a key.
async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            None => return ApiError::unauthorized("missing API key: send `Authorization: Bearer <key>`").into_response(),
            Some(k) if !same_key(k, key) => return ApiError::unauthorized("incorrect API key").into_response(),
            Some(_) => {}
        }
    }
    next.run(req).await
}

/// Starts shutdown: completion requests that arrive afterwards get 503, those in flight finish.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Begins the graceful shutdown (idempotent).
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// The OpenAI-compatible server over one [`ModelService`].
pub struct Server {
    state: Arc<AppState>,
    shutdown: ShutdownHandle,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("config", &self.state.config).field("service", &self.state.service).finish()
    }
}

impl Server {
    /// A server for `service` configured by `config`.
    pub fn new(service: Arc<ModelService>, config: ServerConfig) -> Self {
        let state = Arc::new(AppState {
            service,
            config,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            started: unix_now(),
        });
        Self {
            state,
            shutdown: ShutdownHandle(Arc::new(watch::Sender::new(false))),
        }
    }

    /// A handle that starts the graceful shutdown from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The axum router (routes and the API-key check; handlers read bodies up to the limit).
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let v1 = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions))
            .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
        Router::new()
            .merge(v1)
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .with_state(state)
    }

    /// Serves on `listener` until the shutdown handle or `signal` fires; then refuses new
    /// completion requests (503) until those in flight have finished, and returns.
    pub async fn serve(self, listener: TcpListener, signal: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let state = self.state.clone();
        let handle = self.shutdown.clone();
        let trigger = async move {
            let mut rx = handle.0.subscribe();
            tokio::select! {
                _ = rx.wait_for(|stop| *stop) => {}
                _ = signal => {}
            }
            state.draining.store(true, Ordering::SeqCst);
            while state.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drop(handle);
        };
        axum::serve(listener, self.router()).with_graceful_shutdown(trigger).await
    }
}
