//! The HTTP API: routes, authentication, limits, and JSON errors for every refusal.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use super::auth::Token;
use super::camera::{CameraShared, StateEvent};
use super::collected::{collected, collected_change, collected_image, dataset_tar};
use super::memory::{Budget, Charge, Shortfall};
use super::metrics::{self, Metrics, RequestLabels, RouteLabels, SourceLabels};
use super::model::{Change, ChangeRequest, InstallError, Loaded, ModelSlot, Previous};
use super::origin::{Foreign, HostPolicy};
use super::session::{self, Sessions};
use super::{view, web};
use crate::classifier::{accepted, TimingsMs};
use crate::decode;
use crate::stream::collect::Queue;
use crate::{Limits, Ranked};

/// Everything a request handler may touch.
pub struct AppState {
    pub model: Arc<ModelSlot>,
    pub metrics: Arc<Metrics>,
    pub token: Option<Token>,
    /// The `Host`/`Origin` check of a daemon without a token (`None` with a token).
    pub hosts: Option<HostPolicy>,
    /// `max_bytes` is the request body limit; `max_pixels`/`max_side` the image limits.
    pub limits: Limits,
    /// Requests admitted (running or waiting for a worker): workers + queue.
    pub admission: Arc<Semaphore>,
    /// Inferences running at once.
    pub workers: Arc<Semaphore>,
    /// The bytes requests may hold at once, charged before bodies and pixels are
    /// allocated (`None`: --memory-budget 0).
    pub memory: Option<Budget>,
    /// Event streams open at once, and at most.
    pub event_streams: Arc<Semaphore>,
    pub max_event_streams: usize,
    /// Bytes per second a request body must arrive at, after [`UPLOAD_GRACE`] (0: none).
    pub min_upload_rate: u64,
    pub request_timeout: Duration,
    pub default_top_k: usize,
    /// Where pushes and rollbacks go (`reload`), and the largest model accepted.
    pub changes: mpsc::Sender<ChangeRequest>,
    pub max_model_bytes: u64,
    /// The cameras, in the order they were configured.
    pub cameras: Vec<Arc<CameraShared>>,
    /// The folders the cameras collect frames into (`--collect`), each once.
    pub queues: Vec<Queue>,
    /// Every camera's state changes.
    pub events: broadcast::Sender<StateEvent>,
    /// The web page's logins (with a token).
    pub sessions: Sessions,
    /// Live views open at once, and at most; the time between their frames.
    pub viewers: Arc<Semaphore>,
    pub max_viewers: usize,
    pub view_interval: Duration,
    /// False until the model is loaded, and again while draining for shutdown.
    pub ready: AtomicBool,
    pub shutdown: watch::Receiver<bool>,
    pub started: Instant,
}

type Shared = Arc<AppState>;

/// A refusal, always answered as `{"error": "...", "kind": "..."}`.
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 503 `busy` with a `Retry-After`: a capped kind of stream is at its cap.
    pub(super) fn busy(message: String) -> Self {
        ApiError {
            retry_after: Some(5),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"error": self.message, "kind": self.kind})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Handlers do not see the metrics middleware's bookkeeping; the kind is counted
        // there from this extension.
        resp.extensions_mut().insert(ErrorKind(self.kind));
        resp
    }
}

#[derive(Clone, Copy)]
struct ErrorKind(&'static str);

pub fn router(state: Shared) -> Router {
    let body_limit = state.limits.max_bytes as usize;
    let api = Router::new()
        .route("/v1/classify", post(classify))
        .route("/v1/model", get(model_info).put(push_model))
        .route("/v1/model/rollback", post(rollback_model))
        .route("/v1/latest", get(latest))
        .route("/v1/cameras", get(cameras))
        .route("/v1/cameras/{name}/latest", get(camera_latest))
        .route("/v1/cameras/{name}/latest.jpg", get(camera_jpeg))
        .route("/v1/cameras/{name}/stream.mjpeg", get(view::stream_mjpeg))
        .route("/v1/events", get(events))
        .route("/v1/collected", get(collected))
        .route(
            "/v1/collected/{*rest}",
            get(collected_image).post(collected_change),
        )
        .route("/v1/dataset.tar", get(dataset_tar))
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let page = web::asset_paths().fold(Router::new(), |r, path| r.route(path, get(web::asset)));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/session", get(web::session_info))
        .route("/login", post(web::login))
        .route("/logout", post(web::logout))
        .merge(page)
        .merge(api)
        .fallback(|req: Request| async {
            linger(req).await;
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|req: Request| async {
            linger(req).await;
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        // Multipart parsing reads this limit from the request; the body was already
        // bounded by the same number when it was read.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(limit_headers))
        .layer(middleware::from_fn_with_state(state.clone(), check_origin))
        .layer(middleware::from_fn(web::security_headers))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The label under which a path is counted (a fixed set, so that scanners probing
/// random paths cannot create unbounded metric series).
fn route_name(path: &str) -> &'static str {
    if path.starts_with("/v1/collected/") {
        return "/v1/collected/*";
    }
    if path.starts_with("/v1/cameras/") && path.ends_with("/stream.mjpeg") {
        return "/v1/cameras/*/stream.mjpeg";
    }
    if web::asset_paths().any(|p| p == path) {
        return "page";
    }
    match path {
        "/v1/classify" => "/v1/classify",
        "/v1/model" => "/v1/model",
        "/v1/model/rollback" => "/v1/model/rollback",
        "/v1/latest" => "/v1/latest",
        "/v1/events" => "/v1/events",
        "/v1/collected" => "/v1/collected",
        "/v1/dataset.tar" => "/v1/dataset.tar",
        "/metrics" => "/metrics",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/session" => "/session",
        "/login" => "/login",
        "/logout" => "/logout",
        _ => "other",
    }
}

/// Counts every request by route and status, its latency, and error kinds.
async fn observe(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let route = route_name(req.uri().path());
    let t0 = Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: resp.status().as_u16().to_string(),
        })
        .inc();
    if route != "/v1/events" && route != "/v1/cameras/*/stream.mjpeg" {
        st.metrics
            .request_seconds
            .get_or_create(&RouteLabels { route })
            .observe(t0.elapsed().as_secs_f64());
    }
    if let Some(ErrorKind(kind)) = resp.extensions().get::<ErrorKind>() {
        st.metrics.error(kind);
    }
    resp
}

/// Request line and headers together beyond this are refused (431). hyper's buffer limit
/// alone lets a large head through when it arrives in one read.
const MAX_HEAD_BYTES: usize = 32 << 10;

async fn limit_headers(req: Request, next: Next) -> Response {
    let head = req.uri().to_string().len()
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head > MAX_HEAD_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request line and headers are {head} bytes, the limit is {MAX_HEAD_BYTES}"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Without a token: a `Host` name the daemon does not answer to gets 421, a foreign
/// `Origin` 403 (DNS rebinding and cross-site requests; see `origin`).
async fn check_origin(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let Some(policy) = &st.hosts else {
        return next.run(req).await;
    };
    let verdict = {
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        // An absolute-form request line (`POST http://host/...`) names the host in the URI.
        let host = header(header::HOST).or_else(|| req.uri().authority().map(|a| a.as_str()));
        policy.check(host, header(header::ORIGIN))
    };
    let Err(foreign) = verdict else {
        return next.run(req).await;
    };
    let (status, kind) = match foreign {
        Foreign::Host(_) => (StatusCode::MISDIRECTED_REQUEST, "foreign_host"),
        Foreign::Origin(_) => (StatusCode::FORBIDDEN, "foreign_origin"),
    };
    linger(req).await;
    ApiError::new(status, kind, foreign.message()).into_response()
}

/// With a token, a request needs it as a bearer token, or the web page's session cookie
/// (and then, to change anything, this server's own `Origin`: the CSRF check).
async fn authorize(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let Some(token) = &st.token else {
        return next.run(req).await;
    };
    let headers = req.headers();
    let bearer = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let refusal = match token.check(bearer) {
        Ok(()) => return next.run(req).await,
        Err(refusal) => refusal,
    };
    let error = if bearer.is_none() && st.sessions.check(headers) {
        match session::changes_state(req.method())
            .then(|| session::same_origin(headers))
            .transpose()
        {
            Ok(_) => return next.run(req).await,
            Err(why) => ApiError::new(StatusCode::FORBIDDEN, "foreign_origin", why),
        }
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", refusal.message())
    };
    linger(req).await;
    error.into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<Shared>) -> Response {
    if st.ready.load(Ordering::Acquire) {
        Json(json!({"status": "ready", "model_sha256": st.model.get().sha256})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "not ready (starting or shutting down)",
        )
        .into_response()
    }
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), else the Prometheus
/// text format 0.0.4 (`promtool check metrics`, curl, older scrapers).
async fn metrics_text(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    for camera in &st.cameras {
        camera.account();
    }
    let (content_type, text) = if openmetrics {
        (metrics::CONTENT_TYPE, st.metrics.encode())
    } else {
        (
            metrics::PROMETHEUS_CONTENT_TYPE,
            st.metrics.encode_prometheus(),
        )
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::VARY, "Accept"),
        ],
        text,
    )
        .into_response()
}

async fn model_info(State(st): State<Shared>) -> Json<serde_json::Value> {
    Json(model_document(&st.model.get(), st.model.previous()))
}

/// `GET /v1/model`, also the answer to a push or rollback: the model served, and the
/// one kept for a rollback (`null` if none).
fn model_document(m: &Loaded, previous: Option<Previous>) -> serde_json::Value {
    let c = &m.classifier;
    let input = c.file.inputs.first().map(|i| i.to_string());
    let meta = &c.file.meta;
    json!({
        "name": meta.name,
        "version": meta.version,
        "license": meta.license,
        "source": meta.source,
        // "None of the above" (`glimpse.reject`), as `glimpse info` describes it.
        "reject": meta.reject.as_ref().map(|r| r.to_string()),
        // The bundle's other `glimpse.*` entries: the trainer's accuracy figures.
        "metrics": meta.extra,
        "path": m.path.display().to_string(),
        "sha256": m.sha256,
        "size_bytes": m.size_bytes,
        "loaded_at": m.loaded_at,
        "input": input,
        "preprocess": c.preprocess.to_string(),
        "classes": c.labels.len(),
        "labels": c.labels,
        "previous": previous,
    })
}

/// `PUT /v1/model`: the body is an ONNX file (with a `Content-Length`, at most
/// `--max-model-bytes`; an `X-Model-Sha256` header, if sent, must match it). It is
/// written beside the served model, checked as a reload checks a file, and only then
/// served; the model it replaces is kept for `POST /v1/model/rollback`.
async fn push_model(State(st): State<Shared>, req: Request) -> Result<Response, ApiError> {
    let declared = match push_allowed(&st, req.headers()) {
        Ok(declared) => declared,
        Err(e) => return refuse(req, e).await,
    };
    let expected = match expected_sha256(req.headers()) {
        Ok(expected) => expected,
        Err(e) => return refuse(req, e).await,
    };
    let deadline = tokio::time::Instant::now() + st.request_timeout;
    let _held = charge(&st, declared, deadline, "model").await?;
    let read = read_body(
        req.into_body(),
        declared,
        st.max_model_bytes,
        st.min_upload_rate,
    );
    let body = tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "timed out reading the model",
            )
        })??;
    let sha256 = crate::fsutil::sha256_hex(&body);
    if let Some(expected) = expected.filter(|e| *e != sha256) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "sha256_mismatch",
            format!(
                "the model received has sha256 {sha256}, X-Model-Sha256 says {expected}: the upload was damaged or is not the file meant; nothing changed"
            ),
        ));
    }
    change_model(&st, Change::Push(body.into())).await
}

/// The declared length of a pushed model, if this daemon takes pushes and the length is
/// within its limit.
fn push_allowed(st: &AppState, headers: &HeaderMap) -> Result<u64, ApiError> {
    changes_allowed(st)?;
    let declared = content_length(headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send the model with a Content-Length",
        )
    })?;
    if declared == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "empty body: send the ONNX file as the request body",
        ));
    }
    if declared > st.max_model_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the model is {declared} bytes, over this daemon's limit of {} bytes (--max-model-bytes)",
                st.max_model_bytes
            ),
        ));
    }
    Ok(declared)
}

/// The `X-Model-Sha256` header, in lower case, if sent.
fn expected_sha256(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("x-model-sha256") else {
        return Ok(None);
    };
    let hex = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("X-Model-Sha256 must be 64 hex digits, got {value:?}"),
        ));
    }
    Ok(Some(hex))
}

/// `POST /v1/model/rollback`: the model served before the last push (or rollback) is
/// checked and served again; the one it replaces becomes the previous one.
async fn rollback_model(State(st): State<Shared>, req: Request) -> Result<Response, ApiError> {
    if let Err(e) = changes_allowed(&st) {
        return refuse(req, e).await;
    }
    linger(req).await;
    change_model(&st, Change::Rollback).await
}

/// Changing the model over the API needs a token, whatever the address: without one,
/// anyone who can reach the port could replace what the board recognizes.
fn changes_allowed(st: &AppState) -> Result<(), ApiError> {
    if st.token.is_some() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "token_required",
        "changing the model over the API needs a token: start the daemon with --token-file (or $GLIMPSE_TOKEN)",
    ))
}

/// Hands `change` to the task that changes models, one at a time, and answers with the
/// model then served.
async fn change_model(st: &AppState, change: Change) -> Result<Response, ApiError> {
    let shutting_down = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "shutting down",
        )
    };
    let (reply, answer) = oneshot::channel();
    let request = ChangeRequest { change, reply };
    st.changes
        .send(request)
        .await
        .map_err(|_| shutting_down())?;
    let loaded = answer
        .await
        .map_err(|_| shutting_down())?
        .map_err(install_error)?;
    Ok(Json(model_document(&loaded, st.model.previous())).into_response())
}

fn install_error(e: InstallError) -> ApiError {
    let message = format!("{e}; the model served is unchanged");
    match e {
        InstallError::Refused(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_model", message)
        }
        InstallError::NoPrevious(_) => {
            ApiError::new(StatusCode::CONFLICT, "no_previous_model", message)
        }
        InstallError::Storage(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
        }
    }
}

/// Refuses a request after reading what it sends ([`linger`]).
async fn refuse(req: Request, e: ApiError) -> Result<Response, ApiError> {
    linger(req).await;
    Err(e)
}

/// `/v1/latest`: the latest frame of the first camera.
async fn latest(State(st): State<Shared>) -> Result<Response, ApiError> {
    let cam = st.cameras.first().ok_or_else(no_camera)?;
    latest_of(cam)
}

/// `/v1/cameras/<name>/latest`: what `/v1/latest` says, for the camera named.
async fn camera_latest(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    latest_of(camera_named(&st, &name)?)
}

fn latest_of(cam: &CameraShared) -> Result<Response, ApiError> {
    let latest = cam.latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
    latest.map(|l| Json(l).into_response()).ok_or_else(no_frame)
}

fn no_frame() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_frame",
        "no frame has been classified yet",
    )
}

/// The attached cameras: name, source, crop, state, the latest label and the counters.
async fn cameras(State(st): State<Shared>) -> Json<serde_json::Value> {
    let list: Vec<_> = st.cameras.iter().map(|cam| cam.document()).collect();
    Json(json!({ "cameras": list }))
}

/// `/v1/cameras/<name>/latest.jpg`: the whole frame last classified, as JPEG.
async fn camera_jpeg(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let cam = camera_named(&st, &name)?;
    // Encoding is an image's worth of memory and CPU: admitted, charged to the memory
    // budget and run on a worker like a classification.
    let Ok(admitted) = st.admission.clone().try_acquire_owned() else {
        return Err(overloaded());
    };
    let deadline = tokio::time::Instant::now() + st.request_timeout;
    let cost = {
        let frame = cam.frame.lock().unwrap_or_else(|e| e.into_inner());
        let frame = frame.as_ref().ok_or_else(no_frame)?;
        frame.data.len() as u64 + frame.width as u64 * frame.height as u64 * 3
    };
    let held = charge(&st, cost, deadline, "frame").await?;
    let worker = acquire_worker(&st, deadline).await?;
    let (cam, limits) = (cam.clone(), st.limits);
    // The live view's encoding of the same frame, if a viewer asked for it first.
    let encoded = tokio::task::spawn_blocking(move || {
        let _permits = (admitted, held, worker);
        cam.jpeg(&limits)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "frame", format!("{e:#}")))?;
    let (_, jpeg) = encoded.ok_or_else(no_frame)?;
    let headers = [
        (header::CONTENT_TYPE, "image/jpeg"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    Ok((headers, jpeg).into_response())
}

/// The attached camera called `name`, or a 404 that names it.
pub(super) fn camera_named<'a>(
    st: &'a AppState,
    name: &str,
) -> Result<&'a Arc<CameraShared>, ApiError> {
    let cam = st.cameras.iter().find(|c| c.name == name);
    cam.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_camera",
            format!("no camera named {name:?} is attached (GET /v1/cameras lists them)"),
        )
    })
}

fn no_camera() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_camera",
        "no camera is attached to this server (start it with --source or [[camera]] tables in its --config)",
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    camera: Option<String>,
}

/// Server-sent events: a `current` event per camera that has a state when the client
/// connects, then one `state` event per debounced change of state, each naming its
/// camera (`?camera=NAME`: that camera's only). Ends when the server shuts down.
async fn events(
    State(st): State<Shared>,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("bad query: {}", e.body_text()),
        )
    })?;
    if st.cameras.is_empty() {
        return Err(no_camera());
    }
    let only = params.camera;
    if let Some(name) = &only {
        camera_named(&st, name)?;
    }
    // Held by the stream: the slot comes back when the client goes (or is cut off by
    // the TCP user timeout, `conn::keepalive`).
    let slot = st.event_streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::busy(format!(
            "{} event streams are open, the most this server keeps (--max-event-streams)",
            st.max_event_streams
        ))
    })?;
    let rx = st.events.subscribe();
    let wanted = move |camera: &str| only.as_deref().is_none_or(|o| o == camera);
    let current: Vec<_> = st
        .cameras
        .iter()
        .filter(|c| wanted(&c.name))
        .filter_map(|c| {
            let latest = c.latest.lock().unwrap_or_else(|e| e.into_inner());
            let state = latest.as_ref()?.state.clone()?;
            let data = json!({"camera": c.name, "state": state}).to_string();
            Some(Ok::<_, Infallible>(
                SseEvent::default().event("current").data(data),
            ))
        })
        .collect();
    let shutdown = st.shutdown.clone();
    let changes = futures_util::stream::unfold((rx, shutdown), move |(mut rx, mut sd)| {
        let wanted = wanted.clone();
        async move {
            loop {
                if *sd.borrow() {
                    return None;
                }
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(ev) if !wanted(&ev.camera) => continue,
                        Ok(ev) => {
                            let data = serde_json::to_string(&ev).unwrap_or_default();
                            return Some((Ok(SseEvent::default().event("state").data(data)), (rx, sd)));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    changed = sd.changed() => if changed.is_err() { return None },
                }
            }
        }
    });
    let stream = futures_util::stream::iter(current)
        .chain(changes)
        .map(move |event| {
            let _ = &slot;
            event
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyParams {
    top_k: Option<usize>,
    threshold: Option<f32>,
}

/// `top_k` and `threshold`, checked.
fn check_params(p: ClassifyParams, default_top_k: usize) -> Result<(usize, f32), ApiError> {
    let top_k = p.top_k.unwrap_or(default_top_k);
    if top_k == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "top_k must be at least 1",
        ));
    }
    let threshold = p.threshold.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&threshold) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("threshold must be between 0 and 1, got {threshold}"),
        ));
    }
    Ok((top_k, threshold))
}

/// Keeps the in-flight gauge right however the handler ends (including a client that
/// hangs up, which drops the handler's future).
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

/// `POST /v1/classify`: the body is the image (any content type), or a multipart form
/// whose `image` field (or first file) is.
async fn classify(
    State(st): State<Shared>,
    params: Result<Query<ClassifyParams>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let checked = params
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("bad query: {}", e.body_text()),
            )
        })
        .and_then(|Query(p)| check_params(p, st.default_top_k));
    let (top_k, threshold) = match checked {
        Ok(v) => v,
        Err(e) => {
            linger(req).await;
            return Err(e);
        }
    };
    // A declared body over the limit is refused before it is stored (a client sending
    // `Expect: 100-continue` gets the 413 at once, and does not send it).
    if let Err(e) = check_length(req.headers(), st.limits.max_bytes) {
        linger(req).await;
        return Err(e);
    }
    let Ok(admitted) = st.admission.clone().try_acquire_owned() else {
        linger(req).await;
        return Err(overloaded());
    };
    st.metrics.inflight.inc();
    let _inflight = InFlight(&st.metrics);
    let deadline = tokio::time::Instant::now() + st.request_timeout;
    // The body is charged as declared (twice for a form, parsed from a copy) before it
    // is read, then as it came; the pixels from the image's header before decoding.
    let declared = content_length(req.headers());
    let multipart = is_multipart(req.headers());
    let charged = declared.unwrap_or(st.limits.max_bytes);
    let copies = if multipart { 2 } else { 1 };
    let mut body_charge = charge(
        &st,
        charged.saturating_mul(copies),
        deadline,
        "request body",
    )
    .await?;
    let body = Upload {
        multipart,
        declared: declared.unwrap_or(0),
        limit: st.limits.max_bytes,
        min_rate: st.min_upload_rate,
    };
    let image = read_image(req, &body, deadline).await?;
    body_charge.shrink_to(image.len() as u64);
    let decode_cost =
        decode::decode_cost(&image, &st.limits).map_err(|e| classify_error(e.into()))?;
    let pixels_charge = charge(&st, decode_cost, deadline, "decoded image").await?;
    let worker = acquire_worker(&st, deadline).await?;
    let loaded = st.model.get();
    let limits = st.limits;
    let job = tokio::task::spawn_blocking(move || {
        // The permits travel with the work: a client that hangs up does not free a
        // worker, nor the memory, that is still busy with its image.
        let _permits = (worker, admitted, body_charge, pixels_charge);
        let result = loaded.classifier.classify_bytes(&image, &limits);
        (loaded, result)
    });
    let (loaded, (scores, timings)) = match job.await {
        Ok((loaded, Ok(r))) => (loaded, r),
        Ok((_, Err(e))) => return Err(classify_error(e)),
        Err(e) => {
            log::error!("inference panicked: {e}");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference",
                "the model failed on this image",
            ));
        }
    };
    st.metrics
        .inference_seconds
        .get_or_create(&SourceLabels::http())
        .observe(timings.total().as_secs_f64());
    let top = loaded.classifier.top_k(&scores.probs, top_k);
    Ok(Json(Classified {
        label: accepted(&top, threshold, scores.rejected),
        rejected: scores.rejected,
        top: &top,
        timings: timings.millis(t0.elapsed()),
        model_sha256: &loaded.sha256,
    })
    .into_response())
}

/// The answer to `POST /v1/classify`.
#[derive(Serialize)]
struct Classified<'a> {
    /// `null` when the best probability is below the threshold or the image is rejected.
    label: Option<&'a str>,
    /// Present (`true`) when the model's "none of the above" refused the image.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    rejected: bool,
    top: &'a [Ranked<'a>],
    #[serde(flatten)]
    timings: TimingsMs,
    model_sha256: &'a str,
}

/// The declared `Content-Length`, if any.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// 413 for a Content-Length over `limit`.
fn check_length(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    match content_length(headers) {
        Some(len) if len > limit => Err(too_large_body(len, limit)),
        _ => Ok(()),
    }
}

/// 503 when the admission queue (workers + queue) is full: admission before reading
/// the body bounds memory to that many bodies.
fn overloaded() -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in progress; retry later",
        )
    }
}

/// `bytes` of the memory budget for `what`, waited for until `deadline`: 413 when it is
/// more than the whole budget, 503 when other requests hold it until then.
async fn charge(
    st: &AppState,
    bytes: u64,
    deadline: tokio::time::Instant,
    what: &str,
) -> Result<Charge, ApiError> {
    let Some(budget) = &st.memory else {
        return Ok(Charge::none());
    };
    let mib = |b: u64| b.div_ceil(1 << 20);
    budget.charge(bytes, deadline).await.map_err(|short| match short {
        Shortfall::Never { need, budget } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the {what} needs {} MiB, more than the daemon's memory budget for requests ({} MiB)",
                mib(need),
                mib(budget)
            ),
        ),
        Shortfall::Timeout { need } => {
            st.metrics.error("memory_budget");
            ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    format!(
                        "the {what} needs {} MiB of the memory budget, which other requests hold; retry later",
                        mib(need)
                    ),
                )
            }
        }
    })
}

/// Whether the request is a multipart form.
fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

/// How a classify request's body is to be read, from its headers and the limits.
struct Upload {
    /// A multipart form (the image is its `image` field or first file).
    multipart: bool,
    /// The declared Content-Length (0 when chunked), already checked against `limit`.
    declared: u64,
    limit: u64,
    /// Bytes per second the body must arrive at, after [`UPLOAD_GRACE`].
    min_rate: u64,
}

/// The image of a classify request: its body, or the image of its multipart form.
async fn read_image(
    req: Request,
    body: &Upload,
    deadline: tokio::time::Instant,
) -> Result<Bytes, ApiError> {
    let (parts, stream) = req.into_parts();
    let read = read_body(stream, body.declared, body.limit, body.min_rate);
    let bytes = tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "timed out reading the request body",
            )
        })??;
    let image = if body.multipart {
        multipart_image(Request::from_parts(parts, Body::from(bytes))).await?
    } else {
        bytes
    };
    if image.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "empty body: send the image as the request body",
        ));
    }
    Ok(image)
}

/// A free worker, waited for until `deadline` (then 503).
async fn acquire_worker(
    st: &AppState,
    deadline: tokio::time::Instant,
) -> Result<OwnedSemaphorePermit, ApiError> {
    tokio::time::timeout_at(deadline, st.workers.clone().acquire_owned())
        .await
        .map_err(|_| ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "timed out waiting for a free worker",
            )
        })?
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "shutting down",
            )
        })
}

/// The answer to an image the classifier refused: 413 for its size, 400 for its content,
/// 500 when the model failed on it.
fn classify_error(e: crate::Error) -> ApiError {
    match e {
        crate::Error::Decode(e) if e.is_too_large() => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        crate::Error::Decode(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_image", e.to_string())
        }
        e => {
            log::error!("inference failed: {e}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference",
                e.to_string(),
            )
        }
    }
}

fn too_large_body(len: u64, limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("request body too large: {len} bytes (limit {limit} bytes)"),
    )
}

/// At most this much of a refused body is read and dropped before the answer...
const LINGER_BYTES: u64 = 64 << 20;
/// ...for at most this long (a LAN client sends 64 MiB in well under that).
const LINGER_TIME: Duration = Duration::from_secs(10);

/// Reads and drops the body of a refused request before the answer goes out, as nginx's
/// lingering close does: a client that sends its whole body before it reads (Python's
/// urllib and requests, many embedded clients) would otherwise get a connection reset
/// instead of the 413, 401 or 400. A client that sent `Expect: 100-continue` is waiting
/// for permission and will not send the body, and a body declared beyond
/// [`LINGER_BYTES`] is not worth receiving: nothing is read for either.
pub(super) async fn linger(req: Request) {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue || content_length(req.headers()).is_some_and(|n| n > LINGER_BYTES) {
        return;
    }
    drain(req.into_body().into_data_stream()).await;
}

/// Reads and drops the rest of a body, within [`LINGER_BYTES`] and [`LINGER_TIME`].
async fn drain(mut stream: axum::body::BodyDataStream) {
    let mut seen = 0u64;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

/// A body's first bytes may take this long before the minimum upload rate applies (a
/// phone waking its radio, TCP slow start): Kestrel's grace period.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(5);

/// Reads the body, refusing it as soon as it grows past `limit` (and draining the rest,
/// so that the client reads the 413), or once it arrives slower than `min_rate` bytes per
/// second on average after [`UPLOAD_GRACE`] (408): a trickling upload must not hold a
/// connection and a queue slot for the whole request timeout.
async fn read_body(
    body: Body,
    capacity: u64,
    limit: u64,
    min_rate: u64,
) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(capacity.min(limit) as usize);
    let start = tokio::time::Instant::now();
    loop {
        let next = match upload_due(start, buf.len() as u64, min_rate) {
            Some(due) => tokio::time::timeout_at(due, stream.next())
                .await
                .map_err(|_| too_slow(buf.len(), start, min_rate))?,
            None => stream.next().await,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading the request body: {e}"),
            )
        })?;
        if (buf.len() + chunk.len()) as u64 > limit {
            let seen = (buf.len() + chunk.len()) as u64;
            drop(buf);
            drain(stream).await;
            return Err(too_large_body(seen, limit));
        }
        buf.extend_from_slice(&chunk);
    }
    // Grown by doubling (a chunked body), the buffer could hold twice the body for as
    // long as the image is decoded; the memory budget charged the body alone.
    if buf.capacity() > buf.len() + buf.len() / 8 {
        buf.shrink_to_fit();
    }
    Ok(Bytes::from(buf))
}

/// When more of a body must have arrived, `seen` bytes in: the time `min_rate` would take
/// for them, after the grace period (`None`: no minimum).
fn upload_due(
    start: tokio::time::Instant,
    seen: u64,
    min_rate: u64,
) -> Option<tokio::time::Instant> {
    (min_rate > 0)
        .then(|| start + UPLOAD_GRACE + Duration::from_secs_f64(seen as f64 / min_rate as f64))
}

fn too_slow(seen: usize, start: tokio::time::Instant, min_rate: u64) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "timeout",
        format!(
            "the request body arrived too slowly: {seen} bytes in {:.1} s, below {min_rate} bytes/s (--min-upload-rate)",
            start.elapsed().as_secs_f64()
        ),
    )
}

/// The image in a multipart form: the field named `image`, else the first file.
async fn multipart_image(req: Request) -> Result<Bytes, ApiError> {
    let bad = |msg: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg);
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| bad(format!("bad multipart form: {}", e.body_text())))?;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| bad(format!("bad multipart form: {}", e.body_text())))?
    {
        if field.name() == Some("image") || field.file_name().is_some() {
            return field
                .bytes()
                .await
                .map_err(|e| bad(format!("bad multipart form: {}", e.body_text())));
        }
    }
    Err(bad(
        "the multipart form has no `image` field and no file".into()
    ))
}
