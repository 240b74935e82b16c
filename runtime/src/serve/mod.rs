//! `glimpse serve`: a headless classification daemon. An HTTP API (`http`) with bearer
//! tokens (`auth`), limits and Prometheus metrics (`metrics`); camera loops (`camera`)
//! with debounced events over server-sent events, MQTT (`mqtt`) and actions; hot model
//! reload with a probe (`model`); systemd readiness and watchdog; graceful shutdown.
//! Without a token, only local `Host` names and same-origin requests are answered
//! (`origin`).

pub mod actions;
pub mod auth;
pub mod camera;
pub mod child_check;
mod collected;
pub mod conn;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod origin;
mod reload;
pub mod session;
pub mod tls;
mod view;
mod web;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, watch, Semaphore};

pub use actions::ActionConfig;
pub use auth::Token;
pub use camera::{CameraSetup, DEFAULT_CAMERA};
pub use model::{Loader, ModelSource};
pub use mqtt::MqttConfig;
pub use webhook::WebhookConfig;

use crate::stream::collect::Queue;
use camera::{Camera, CameraContext};
use http::AppState;
use metrics::Metrics;
use model::ModelSlot;

/// Everything `serve` needs, resolved from flags and the config file.
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub token: Option<Token>,
    /// Host names answered besides IP addresses, localhost and this machine's name, when
    /// there is no token (`origin`).
    pub allowed_hosts: Vec<String>,
    /// `max_bytes` bounds request bodies, `max_pixels`/`max_side` decoded images.
    pub limits: crate::Limits,
    /// Inferences at once.
    pub workers: usize,
    /// Requests that may wait for a worker; beyond, 503 with Retry-After.
    pub queue: usize,
    /// Bytes the whole daemon may use: what the loaded model leaves of it is the budget
    /// requests are admitted against (`memory::Budget`); 0: no budget.
    pub memory_budget: u64,
    /// Open connections at most, in all and from one peer address.
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// Server-sent event streams open at once (`GET /v1/events`).
    pub max_event_streams: usize,
    /// Live views (`stream.mjpeg`) open at once, and their frames per second at most.
    pub max_viewers: usize,
    pub view_fps: f64,
    /// A request body must arrive at this many bytes per second at least, after a grace
    /// period (0: no minimum).
    pub min_upload_rate: u64,
    /// TCP keepalive idle time (`conn::keepalive`); `None`: the kernel's defaults.
    pub tcp_keepalive: Option<Duration>,
    pub request_timeout: Duration,
    pub header_timeout: Duration,
    /// A connection whose client takes none of its answer for this long is closed.
    pub send_timeout: Duration,
    pub drain_timeout: Duration,
    pub default_top_k: usize,
    /// The model file, and how a new one is checked.
    pub model: Arc<ModelSource>,
    /// Poll the model file this often and reload when it changes.
    pub watch_model: Option<Duration>,
    /// The cameras classified continuously, each under its own name.
    pub cameras: Vec<CameraSetup>,
    pub mqtt: Option<MqttConfig>,
}

impl ServeOptions {
    /// What is attached besides the HTTP API, as the start-up line and `--check` say it:
    /// `, camera NAME: DESCRIPTION, ..., mqtt HOST:PORT topic TOPIC` (empty for neither).
    pub fn attachments(&self) -> String {
        let cameras = self
            .cameras
            .iter()
            .map(|c| format!(", camera {}: {}", c.name, c.describe));
        let mqtt = self
            .mqtt
            .as_ref()
            .map(|m| format!(", mqtt {}:{} topic {}", m.host, m.port, m.topic));
        cameras.chain(mqtt).collect()
    }
}

/// Runs the daemon until SIGTERM or SIGINT; returns once in-flight requests are answered
/// (or the drain timeout passed).
pub fn run(opts: ServeOptions) -> Result<()> {
    let started = Instant::now();
    memory::limit_allocator_arenas();
    // Taken before the first load: a file replaced while it loads is loaded again.
    let stamp = model::FileStamp::of(&opts.model.path);
    let first = opts.model.load()?;
    for camera in &opts.cameras {
        camera
            .debounce
            .check_labels(&first.classifier.labels)
            .with_context(|| format!("camera {}: watch or thresholds", camera.name))?;
    }
    log::info!(
        "loaded {} (sha256 {}) in {:.0} ms",
        first.path.display(),
        first.sha256,
        started.elapsed().as_secs_f64() * 1e3
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The async side only moves bytes; inference runs on the blocking pool, bounded
        // by the worker semaphore.
        .worker_threads(2)
        .max_blocking_threads(opts.workers + 2)
        .thread_name("glimpse-serve")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let previous = opts.model.previous();
    let loaded = Start {
        first,
        previous,
        stamp,
    };
    runtime.block_on(serve(opts, loaded, started))
}

/// The request budget of a `--memory-budget` of `total` bytes, measured against what the
/// daemon holds now that the model is loaded, and what `workers` inferences at once take.
fn request_memory(total: u64, workers: usize, slot: &ModelSlot) -> Result<Option<memory::Budget>> {
    /// Per inference where it cannot be measured (EfficientNet-Lite0 measures 11-15 MiB
    /// on x86_64).
    const UNMEASURED: u64 = 64 << 20;
    if total == 0 {
        return Ok(None);
    }
    let loaded = slot.get();
    let footprint = memory::inference_footprint(&loaded.classifier, &model::probe_pattern())
        .unwrap_or(UNMEASURED);
    let resident = memory::resident().unwrap_or(0);
    let reserved = footprint * workers as u64;
    let budget = memory::request_budget(total, resident, reserved).map_err(anyhow::Error::msg)?;
    log::info!(
        "memory budget {} MiB: {} MiB for requests ({} MiB in use with the model loaded, {} \
         MiB kept for {workers} inference(s) at once)",
        total >> 20,
        budget.bytes() >> 20,
        resident >> 20,
        reserved >> 20
    );
    Ok(Some(budget))
}

/// The model as the daemon starts with it.
struct Start {
    first: model::Loaded,
    /// The model kept for a rollback, if any.
    previous: Option<model::Previous>,
    /// The file as it was before `first` was loaded from it.
    stamp: Option<model::FileStamp>,
}

async fn serve(mut opts: ServeOptions, start: Start, started: Instant) -> Result<()> {
    let Start {
        first,
        previous,
        stamp,
    } = start;
    let metrics = Arc::new(Metrics::new());
    metrics.set_model(&first.path.display().to_string(), &first.sha256);
    let model_name = first
        .path
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let slot = Arc::new(ModelSlot::new(first, previous));
    let (changes_tx, changes_rx) = mpsc::channel(4);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;
    let attached = opts.attachments();
    let workers = Arc::new(Semaphore::new(opts.workers));
    let events = broadcast::channel(64).0;
    // Each camera runs on its own thread from now on.
    let context = CameraContext {
        model: slot.clone(),
        metrics: metrics.clone(),
        workers: workers.clone(),
        runtime: tokio::runtime::Handle::current(),
        events: events.clone(),
        mqtt: opts.mqtt.is_some(),
    };
    let mut queues: Vec<Queue> = Vec::new();
    for dir in opts
        .cameras
        .iter()
        .filter_map(|c| Some(c.collect.as_ref()?.dir.clone()))
    {
        if !queues.iter().any(|q| q.dir == dir) {
            queues.push(Queue::new(dir));
        }
    }
    let cameras = std::mem::take(&mut opts.cameras)
        .into_iter()
        .map(|setup| Camera::start(setup, &context))
        .collect::<Result<Vec<_>>>()?;
    let memory = request_memory(opts.memory_budget, opts.workers, &slot)?;
    let state = Arc::new(AppState {
        model: slot.clone(),
        metrics: metrics.clone(),
        token: opts.token.clone(),
        hosts: opts
            .token
            .is_none()
            .then(|| origin::HostPolicy::new(&hostname(), &opts.allowed_hosts)),
        limits: opts.limits,
        admission: Arc::new(Semaphore::new(opts.workers + opts.queue)),
        workers,
        memory,
        event_streams: Arc::new(Semaphore::new(opts.max_event_streams)),
        max_event_streams: opts.max_event_streams,
        min_upload_rate: opts.min_upload_rate,
        request_timeout: opts.request_timeout,
        default_top_k: opts.default_top_k,
        changes: changes_tx,
        max_model_bytes: opts.model.max_bytes,
        cameras: cameras.iter().map(|c| c.shared.clone()).collect(),
        queues,
        events,
        sessions: session::Sessions::default(),
        viewers: Arc::new(Semaphore::new(opts.max_viewers)),
        max_viewers: opts.max_viewers,
        view_interval: view::interval(opts.view_fps),
        ready: AtomicBool::new(false),
        shutdown: shutdown_rx.clone(),
        started,
    });
    let mqtt_task = opts.mqtt.clone().map(|cfg| {
        let st = state.clone();
        let status: mqtt::StatusFn = Arc::new(move || status_document(&st));
        let feeds = mqtt::Feeds {
            cameras: state.cameras.iter().map(|c| c.name.clone()).collect(),
            events: state.events.subscribe(),
            images: state
                .cameras
                .iter()
                .filter_map(|c| Some((c.name.clone(), c.image.as_ref()?.subscribe())))
                .collect(),
        };
        tokio::spawn(mqtt::run(
            cfg,
            metrics.clone(),
            feeds,
            status,
            model_name,
            shutdown_rx.clone(),
        ))
    });
    reload::spawn(
        opts.model.clone(),
        stamp,
        opts.watch_model,
        changes_rx,
        &slot,
        &metrics,
        &shutdown_rx,
    )?;
    tokio::spawn(watchdog(shutdown_rx.clone()));
    signals(shutdown_tx);

    state.ready.store(true, Ordering::Release);
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("serving on {local}")),
    ]);
    announce(local, &opts, &attached);
    let app = http::router(state.clone());
    let graceful = accept_loop(listener, app, &opts, &metrics, shutdown_rx).await;
    drain(graceful, &state, opts.drain_timeout).await;
    cameras.iter().for_each(Camera::stop);
    if let Some(t) = mqtt_task {
        let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for camera in cameras {
            camera.join();
        }
    })
    .await;
    log::info!("stopped after {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// This machine's host name (empty if unknown).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The line that says the daemon serves. Tests and scripts read the address from it
/// (with --listen ...:0 the port is chosen by the system).
fn announce(local: SocketAddr, opts: &ServeOptions, attached: &str) {
    let token = if opts.token.is_some() {
        ", bearer token required"
    } else {
        ""
    };
    log::info!(
        "listening on http://{local} (model {}{token}{attached})",
        opts.model.path.display()
    );
}

/// Draining: refuse readiness, answer what is in flight (up to `timeout`), close the rest.
async fn drain(
    graceful: hyper_util::server::graceful::GracefulShutdown,
    state: &AppState,
    timeout: Duration,
) {
    state.ready.store(false, Ordering::Release);
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    log::info!("shutting down: draining {} connection(s)", graceful.count());
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!(
            "drain timeout ({:.0} s) passed with connections still open; closing them",
            timeout.as_secs_f64()
        );
    }
}

/// How each HTTP/1 connection is served (the fuzz target for HTTP handling uses the same
/// settings; the accept loop adds the header timeout).
pub fn connection_builder() -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    // A client that shuts down its sending side after the request (`nc -N`, some
    // scripts) still gets the answer.
    http.half_close(true)
        // Request line and headers beyond 64 KiB are refused with 431 (hyper's default
        // buffer is ~400 KiB per connection, a lot on a small board).
        .max_buf_size(64 << 10);
    http
}

/// Accepts connections until shutdown; returns the watcher of the open ones.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    opts: &ServeOptions,
    metrics: &Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> hyper_util::server::graceful::GracefulShutdown {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let admission = conn::Admission::new(opts.max_connections, opts.max_connections_per_peer);
    let mut http = connection_builder();
    // Slow or silent clients (slowloris) lose their connection after the header timeout.
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    log::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let admitted = match admission.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(why) => {
                refused(peer, why, opts, metrics);
                conn::refuse(stream, why);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Err(e) = conn::keepalive(&stream, opts.tcp_keepalive) {
            log::debug!("{peer}: setting TCP keepalive: {e}");
        }
        let stream = conn::with_send_timeout(stream, opts.send_timeout);
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        let open = metrics.connections_open.clone();
        open.inc();
        let send_timeout = opts.send_timeout;
        tokio::spawn(async move {
            match conn.await {
                Err(e) if conn::is_send_timeout(&e) => log::info!(
                    "{peer}: closed, it took none of its answer for {:.0} s (--send-timeout)",
                    send_timeout.as_secs_f64()
                ),
                Err(e) => log::debug!("{peer}: {e}"),
                Ok(()) => {}
            }
            open.dec();
            drop(admitted);
        });
    }
    graceful
}

/// Counts a refused connection and says so in the log (at debug level after the first
/// few: a flood must not fill the journal).
fn refused(peer: SocketAddr, why: conn::Refusal, opts: &ServeOptions, metrics: &Metrics) {
    let counter = metrics
        .connections_refused
        .get_or_create(&metrics::ReasonLabels {
            reason: why.label(),
        });
    counter.inc();
    let cap = match why {
        conn::Refusal::PerPeer => format!("{} from {}", opts.max_connections_per_peer, peer.ip()),
        conn::Refusal::Total => opts.max_connections.to_string(),
    };
    if counter.get() <= 10 {
        log::warn!("{peer}: refused, {cap} connections open");
    } else {
        log::debug!("{peer}: refused, {cap} connections open");
    }
}

/// SIGTERM/SIGINT start the graceful shutdown; a second one ends the process at once.
/// (Must be called inside the runtime: the handlers are registered with it.)
fn signals(shutdown: watch::Sender<bool>) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot install the signal handlers");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: shutting down"),
            _ = int.recv() => log::info!("SIGINT: shutting down"),
        }
        let _ = shutdown.send(true);
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        log::warn!("second signal, exiting without draining");
        std::process::exit(130);
    });
}

/// Pings systemd's watchdog (`WatchdogSec=`) at half its period while the async runtime
/// is alive: a wedged event loop stops the pings and systemd restarts the service.
async fn watchdog(mut shutdown: watch::Receiver<bool>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    log::info!("systemd watchdog: pinging every {:?}", period / 2);
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => { let _ = sd_notify::notify(&[NotifyState::Watchdog]); }
            _ = shutdown.changed() => return,
        }
    }
}

/// The periodic MQTT status document.
fn status_document(st: &AppState) -> serde_json::Value {
    let model = st.model.get();
    let cameras: Vec<_> = st.cameras.iter().map(|c| c.document()).collect();
    serde_json::json!({
        "uptime_s": st.started.elapsed().as_secs(),
        "model": model.path.display().to_string(),
        "model_sha256": model.sha256,
        "cameras": cameras,
        "time": camera::unix_now(),
    })
}
