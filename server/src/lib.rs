//! # phi3v-server
//!
//! An OpenAI-compatible HTTP server (axum + tokio) over burn-phi3v's serving engine
//! ([`burn_phi3v::Engine`]: continuous batching over a paged KV cache). The server holds no
//! model logic: it turns OpenAI requests into the library's prompts and
//! [`GenerationParams`](burn_phi3v::GenerationParams), submits them to the engine, and streams
//! the engine's events back.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/models` | the served model |
//! | `POST /v1/chat/completions` | chat with text and `image_url` parts (base64 data URLs; local paths with `allow_local_images`); `max_tokens`/`max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`, `n = 1`, `stream` (SSE, `[DONE]`), `stream_options.include_usage`; `usage` with `prompt_tokens_details.image_tokens` |
//! | `POST /v1/completions` | a raw prompt (no chat template), same parameters |
//! | `GET /health` | 200, or 503 while shutting down |
//! | `GET /metrics` | Prometheus text: requests running/waiting, KV-cache blocks used/free, tokens, TTFT and inter-token latency histograms |
//!
//! Errors are OpenAI's JSON error objects ([`ApiError`]) with their HTTP status: 400 for
//! malformed JSON, unsupported parameters, too many images, prompt + `max_tokens` over the
//! context, bad image data; 401 for a missing or wrong API key; 404 for an unknown model; 413
//! for a body over the limit; 503 while shutting down. A client that disconnects cancels its
//! request in the engine. Shutdown (a signal or a [`ShutdownHandle`]) lets requests in flight
//! finish and answers new ones with 503.
//!
//! ```no_run
//! use std::sync::Arc;
//! use phi3v_server::{ModelOptions, ModelService, ServerConfig, spawn};
//!
//! let service = Arc::new(ModelService::load(&ModelOptions::new("tests/fixtures/models/phi35v-tiny", "cpu"))?);
//! let config = ServerConfig::for_model(&service);
//! let server = spawn(service, config, "127.0.0.1:0".parse()?)?;
//! println!("listening on {}", server.url());
//! server.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod api;
pub mod error;
mod http;
pub mod metrics;
pub mod prompt;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use error::{ApiError, ServerError};
pub use http::{Server, ServerConfig, ShutdownHandle};
pub use service::{Generation, ModelOptions, ModelService};

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// The address `host:port` names (resolved; the first if several), checked before a model is
/// loaded.
pub fn listen_addr(host: &str, port: u16) -> Result<SocketAddr, ServerError> {
    error::parse_addr(host, port)
}

/// Serves `service` on `addr` until SIGINT or SIGTERM, then shuts down gracefully and stops the
/// engine. `on_listening` gets the bound address (port 0 picks a free one).
pub fn run(service: Arc<ModelService>, config: ServerConfig, addr: SocketAddr, on_listening: impl FnOnce(SocketAddr)) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("phi3v-http").build()?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        on_listening(listener.local_addr()?);
        Server::new(service.clone(), config).serve(listener, shutdown_signal()).await?;
        Ok::<(), ServerError>(())
    });
    service.stop();
    result
}

/// A server running on a thread of its own (for tests, benchmarks and embedding).
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    service: Arc<ModelService>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A handle that starts the graceful shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The engine's counters.
    pub fn stats(&self) -> burn_phi3v::EngineStats {
        self.service.stats()
    }

    /// The model service.
    pub fn service(&self) -> &Arc<ModelService> {
        &self.service
    }

    /// Shuts down gracefully and waits for the server thread.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        self.stop()
    }

    /// Waits for the server thread to end (after a shutdown started elsewhere).
    pub fn join(mut self) -> std::io::Result<()> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Ok(()),
        }
    }

    fn stop(&mut self) -> std::io::Result<()> {
        self.shutdown.shutdown();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("the server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Binds `addr` and serves on a new thread with its own tokio runtime until
/// [`RunningServer::shutdown`] (or drop).
pub fn spawn(service: Arc<ModelService>, config: ServerConfig, addr: SocketAddr) -> Result<RunningServer, ServerError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| ServerError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let server = Server::new(service.clone(), config);
    let shutdown = server.shutdown_handle();
    let thread = std::thread::Builder::new().name("phi3v-server".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            server.serve(listener, std::future::pending()).await
        })
    })?;
    Ok(RunningServer {
        addr,
        shutdown,
        service,
        thread: Some(thread),
    })
}
