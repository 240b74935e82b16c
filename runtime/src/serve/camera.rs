//! The daemon's camera loops: each camera's `stream::live` loop on its own thread,
//! classifying with whatever model is current on a worker shared with the HTTP requests,
//! keeping its latest result and broadcasting its debounced state changes to
//! `/v1/events` and MQTT.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::body::Bytes;
use image::RgbImage;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
use serde::Serialize;
use tokio::sync::{broadcast, watch, Semaphore};

use super::actions::{ActionConfig, Actions, ImageSender};
use super::metrics::{
    CameraErrorLabels, CameraLabels, CollectLabels, KindLabels, Metrics, SourceLabels,
};
use super::model::ModelSlot;
use crate::classifier::millis;
use crate::stream::collect::{Offer, Outcome};
use crate::stream::{
    live, Classified, CollectConfig, Collector, Counters, DebounceConfig, Debouncer, Frame,
    LiveOptions, Opener, Stats,
};
use crate::{Crop, Limits, Ranked};

/// A camera (or folder, or raw stream) to classify continuously.
pub struct CameraSetup {
    /// Its name in the API, events, topics, metrics and snapshot folders.
    pub name: String,
    pub open: Opener,
    pub describe: String,
    pub live: LiveOptions,
    pub debounce: DebounceConfig,
    pub limits: Limits,
    /// The region of each frame that is classified.
    pub crop: Option<Crop>,
    /// Snapshots and a command on each state change.
    pub actions: ActionConfig,
    /// Which frames to keep for labelling (`--collect`).
    pub collect: Option<CollectConfig>,
}

/// The latest classified frame, as `GET /v1/latest` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Latest {
    pub camera: String,
    pub frame: u64,
    /// The best class; `None` when the model rejected the frame (`glimpse.reject`).
    pub label: Option<String>,
    /// Present (`true`) when the model's "none of the above" refused the frame.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rejected: bool,
    pub index: usize,
    pub probability: f32,
    pub top: Vec<Ranked<'static>>,
    /// Seconds since the Unix epoch when the frame was classified.
    pub time: f64,
    pub latency_ms: f64,
    pub fps: f64,
    /// The debounced state at that frame (`None` until one is established).
    pub state: Option<String>,
    pub model_sha256: String,
    /// The region of the frame that was classified (`x,y,w,h`), if not the whole frame.
    pub crop: Option<String>,
}

/// A debounced change of state, as `/v1/events` and MQTT publish it.
#[derive(Debug, Clone, Serialize)]
pub struct StateEvent {
    pub camera: String,
    pub state: String,
    pub previous: Option<String>,
    pub confidence: f32,
    pub frame: u64,
    pub time: f64,
    pub held_frames: u32,
    pub held_ms: u64,
    /// Where the snapshot of the confirming frame is written (--snapshot-dir).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The name of the one camera the command-line options attach.
pub const DEFAULT_CAMERA: &str = "default";

/// What the camera thread shares with the server.
pub struct CameraShared {
    /// The camera's name in the API, events and topics (`default` for the one camera of
    /// the command-line options).
    pub name: String,
    pub latest: Mutex<Option<Latest>>,
    /// The region of each frame that is classified (`x,y,w,h`), if not the whole frame.
    pub crop: Option<String>,
    /// The frame `latest` describes, for `/v1/cameras/<name>/latest.jpg`.
    pub frame: Mutex<Option<Frame>>,
    /// That frame as JPEG once a viewer or `latest.jpg` asked for it, by frame number:
    /// they share one encoding per frame.
    view: Mutex<Option<(u64, Bytes)>>,
    /// The newest state's snapshot, for MQTT to publish (with --mqtt-host).
    pub image: Option<ImageSender>,
    pub describe: String,
    /// The live loop's counters, read while it runs.
    counters: Arc<Counters>,
    /// The camera's series of the daemon's metrics.
    metrics: CameraMetrics,
    /// The counters as last added to `metrics`.
    accounted: Mutex<Stats>,
}

impl CameraShared {
    /// The camera as `GET /v1/cameras` and the MQTT status show it: name, source, crop,
    /// state, the latest label and the counters.
    pub fn document(&self) -> serde_json::Value {
        let latest = self
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let stats = self.counters.snapshot();
        serde_json::json!({
            "name": self.name,
            "source": self.describe,
            "crop": self.crop,
            "state": latest.as_ref().and_then(|l| l.state.clone()),
            "label": latest.as_ref().and_then(|l| l.label.as_ref()),
            "rejected": latest.as_ref().is_some_and(|l| l.rejected),
            "probability": latest.as_ref().map(|l| l.probability),
            "fps": latest.as_ref().map(|l| l.fps),
            "frames": stats,
        })
    }

    /// The latest frame as JPEG and its number (`None` before the first frame), encoded
    /// at most once per frame. Blocking: run it off the async threads.
    pub fn jpeg(&self, limits: &Limits) -> Result<Option<(u64, Bytes)>> {
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let frame = {
            let frame = self.frame.lock().unwrap_or_else(|e| e.into_inner());
            let Some(frame) = &*frame else {
                return Ok(None);
            };
            match &*view {
                Some((seq, jpeg)) if *seq == frame.seq => return Ok(Some((*seq, jpeg.clone()))),
                _ => frame.clone(),
            }
        };
        let jpeg = Bytes::from(frame.to_jpeg(limits)?);
        *view = Some((frame.seq, jpeg.clone()));
        Ok(Some((frame.seq, jpeg)))
    }

    /// Adds what the loop counted since the last call to the metrics: at each frame, and
    /// before each scrape (a camera whose source keeps failing has no frames).
    pub fn account(&self) {
        let mut last = self.accounted.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.counters.snapshot();
        self.metrics.add(now, &last);
        *last = now;
    }
}

/// What the cameras of a daemon share.
#[derive(Clone)]
pub struct CameraContext {
    pub model: Arc<ModelSlot>,
    pub metrics: Arc<Metrics>,
    /// The inference workers, shared with the HTTP requests. Each camera holds at most one
    /// at a time and tokio's semaphore hands them out first come, first served, so a busy
    /// camera (or a flood of requests) delays another camera's next frame by at most one
    /// inference per other camera and worker, never starves it.
    pub workers: Arc<Semaphore>,
    /// The daemon's async runtime, for the camera threads to wait for a worker.
    pub runtime: tokio::runtime::Handle,
    /// Every camera's state changes, for `/v1/events` and MQTT.
    pub events: broadcast::Sender<StateEvent>,
    /// Whether each state's snapshot is also made for MQTT to publish.
    pub mqtt: bool,
}

/// A camera's thread and what it shares with the server.
pub struct Camera {
    pub shared: Arc<CameraShared>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Stats>,
}

impl Camera {
    /// Starts the camera's thread; it runs until [`Camera::stop`] (or a source that is not
    /// reopened ends).
    pub fn start(mut setup: CameraSetup, ctx: &CameraContext) -> Result<Camera> {
        setup.live.name = Some(setup.name.clone());
        let collector = match setup.collect.take() {
            Some(cfg) => Some(
                Collector::new(cfg, &setup.name)
                    .with_context(|| format!("camera {}: --collect", setup.name))?,
            ),
            None => None,
        };
        let shared = Arc::new(CameraShared {
            name: setup.name.clone(),
            crop: setup.crop.map(|c| c.to_string()),
            latest: Mutex::new(None),
            frame: Mutex::new(None),
            view: Mutex::new(None),
            image: ctx.mqtt.then(|| watch::channel(None).0),
            describe: setup.describe.clone(),
            metrics: CameraMetrics::new(&ctx.metrics, &setup.name),
            accounted: Mutex::new(Stats::default()),
            counters: setup.live.counters.clone(),
        });
        // Each camera its own flag: the live loop sets it when its source ends, which
        // must not stop the others.
        let stop = Arc::new(AtomicBool::new(false));
        let name = setup.name.clone();
        let thread = {
            let (ctx, shared, stop) = (ctx.clone(), shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("camera {name}"))
                .spawn(move || run(setup, collector, &ctx, &shared, stop))
                .with_context(|| format!("starting the thread of camera {name}"))?
        };
        Ok(Camera {
            shared,
            stop,
            thread,
        })
    }

    /// Asks the camera's loop to end (its source is closed, its ffmpeg killed).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the camera's thread to end.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Sends a change of state to the metrics, the log, the actions and the event stream.
fn announce(
    e: crate::stream::Event,
    frame: &Frame,
    time: f64,
    name: &str,
    actions: Option<&Actions>,
    ctx: &CameraContext,
) {
    let previous = e.previous.as_deref();
    ctx.metrics
        .set_state(name, previous, &e.label, e.confidence);
    let mut event = StateEvent {
        camera: name.to_string(),
        state: e.label,
        previous: e.previous,
        confidence: e.confidence,
        frame: frame.seq,
        time,
        held_frames: e.frames,
        held_ms: e.held_ms,
        snapshot: None,
    };
    log::info!(
        "camera {name}: state {} -> {} ({:.1}%)",
        event.previous.as_deref().unwrap_or("-"),
        event.state,
        event.confidence * 100.0
    );
    if let Some(actions) = actions {
        event.snapshot = actions
            .snapshot_path(&event)
            .map(|p| p.display().to_string());
        actions.submit(event.clone(), frame);
    }
    // No subscriber is not an error.
    let _ = ctx.events.send(event);
}

/// Offers a classified frame to the camera's collector, counting what became of it.
fn collect(
    collector: &mut Collector,
    latest: &Latest,
    image: &RgbImage,
    state_change: bool,
    shared: &CameraShared,
) {
    let offer = Offer {
        image,
        top: &latest.top,
        state_change,
        rejected: latest.rejected,
        frame: latest.frame,
        model_sha256: &latest.model_sha256,
        crop: latest.crop.clone(),
    };
    let outcome = match collector.offer(&offer, Instant::now()) {
        Ok(None) => return,
        Ok(Some(Outcome::Kept { id, reason })) => {
            log::debug!("camera {}: collected {id} ({reason:?})", shared.name);
            "kept"
        }
        Ok(Some(Outcome::Duplicate)) => "duplicate",
        Ok(Some(Outcome::RateLimited)) => "rate_limited",
        Err(e) => {
            log::warn!(
                "camera {}: collecting frame {}: {e}",
                shared.name,
                latest.frame
            );
            "failed"
        }
    };
    shared.metrics.collected(outcome).inc();
}

/// A camera's series of the daemon's metrics, looked up once.
struct CameraMetrics {
    captured: Counter,
    classified: Counter,
    dropped: Counter,
    reopens: Counter,
    frame_errors: [Counter; 2],
    source_errors: [Counter; 2],
    inference: Histogram,
    confidence: Gauge<f64, AtomicU64>,
    /// The daemon's metrics, for the rarer series.
    all: Arc<Metrics>,
    camera: String,
}

impl CameraMetrics {
    fn new(m: &Arc<Metrics>, camera: &str) -> Self {
        let labels = CameraLabels {
            camera: camera.to_string(),
        };
        let errors = |kind, total| {
            let label = CameraErrorLabels {
                camera: camera.to_string(),
                kind,
            };
            [
                m.camera_errors.get_or_create(&label).clone(),
                m.errors.get_or_create(&KindLabels { kind: total }).clone(),
            ]
        };
        CameraMetrics {
            captured: m.frames_captured.get_or_create(&labels).clone(),
            classified: m.frames_classified.get_or_create(&labels).clone(),
            dropped: m.frames_dropped.get_or_create(&labels).clone(),
            reopens: m.camera_reopens.get_or_create(&labels).clone(),
            frame_errors: errors("frame", "frame"),
            source_errors: errors("source", "camera"),
            inference: m
                .inference_seconds
                .get_or_create(&SourceLabels::camera(camera))
                .clone(),
            confidence: m.confidence.get_or_create(&labels).clone(),
            all: m.clone(),
            camera: camera.to_string(),
        }
    }

    /// The counter of collected frames with this outcome (`failed` is also an error).
    fn collected(&self, outcome: &'static str) -> Counter {
        if outcome == "failed" {
            self.all.error("collect");
        }
        let labels = CollectLabels {
            camera: self.camera.clone(),
            outcome,
        };
        self.all.collected.get_or_create(&labels).clone()
    }

    /// Adds what the loop did between `last` and `now`.
    fn add(&self, now: Stats, last: &Stats) {
        self.captured
            .inc_by(now.captured.saturating_sub(last.captured));
        self.classified
            .inc_by(now.classified.saturating_sub(last.classified));
        self.dropped
            .inc_by(now.dropped.saturating_sub(last.dropped));
        self.reopens
            .inc_by(now.reopened.saturating_sub(last.reopened));
        for c in &self.frame_errors {
            c.inc_by(now.errors.saturating_sub(last.errors));
        }
        for c in &self.source_errors {
            c.inc_by(now.source_errors.saturating_sub(last.source_errors));
        }
    }
}

/// The latest-frame record of one frame, and how long classifying it took. Each frame
/// uses the model current when it starts; a reload takes effect on the next frame.
fn classify(model: &ModelSlot, frame: &Frame, limits: &Limits, crop: Option<Crop>) -> Result<Seen> {
    let loaded = model.get();
    let c = &loaded.classifier;
    let t0 = Instant::now();
    let img = frame.to_rgb_within(limits, crop)?;
    let (scores, _) = c.classify(&img)?;
    let took = t0.elapsed();
    let top: Vec<Ranked<'static>> = c
        .top_k(&scores.probs, 5)
        .into_iter()
        .map(Ranked::into_owned)
        .collect();
    let best = top.first().context("the model gives no classes")?.clone();
    Ok(Seen {
        latest: Latest {
            camera: String::new(),
            frame: frame.seq,
            label: (!scores.rejected).then(|| best.label.into_owned()),
            rejected: scores.rejected,
            index: best.index,
            probability: best.probability,
            top,
            time: 0.0,
            latency_ms: 0.0,
            fps: 0.0,
            state: None,
            model_sha256: loaded.sha256.clone(),
            crop: crop.map(|c| c.to_string()),
        },
        took,
        image: img,
    })
}

/// What classifying one frame gave.
struct Seen {
    latest: Latest,
    /// Decoding, preprocessing and inference.
    took: Duration,
    /// What the model saw (the crop of the frame), for the collector.
    image: RgbImage,
}

/// Classifies `frame` on one of the shared workers, waiting for its turn.
fn classify_on_worker(
    ctx: &CameraContext,
    frame: &Frame,
    limits: &Limits,
    crop: Option<Crop>,
) -> Result<Seen> {
    // The semaphore is never closed; without a permit the frame is classified anyway.
    let _worker = ctx.runtime.block_on(ctx.workers.acquire()).ok();
    classify(&ctx.model, frame, limits, crop)
}

/// The actions of `camera`'s state changes (`None`: none configured, or they could not
/// start, which is logged and counted while the classification goes on without them).
fn start_actions(
    setup: &CameraSetup,
    ctx: &CameraContext,
    shared: &CameraShared,
) -> Option<Actions> {
    let started = Actions::start(
        setup.actions.clone(),
        &shared.name,
        setup.limits,
        ctx.metrics.clone(),
        shared.image.clone(),
    );
    started.unwrap_or_else(|e| {
        ctx.metrics.error("action_dropped");
        log::error!("camera {}: {e:#}", shared.name);
        None
    })
}

/// The camera loop: classifies frames until `stop`, keeping the latest frame, sending
/// state changes and counting into the metrics.
fn run(
    setup: CameraSetup,
    mut collector: Option<Collector>,
    ctx: &CameraContext,
    shared: &CameraShared,
    stop: Arc<AtomicBool>,
) -> Stats {
    let actions = start_actions(&setup, ctx, shared);
    let metrics = &shared.metrics;
    let mut debouncer = Debouncer::new(setup.debounce.clone());
    let (limits, crop, name) = (setup.limits, setup.crop, &shared.name);
    let classify = |frame: &Frame| classify_on_worker(ctx, frame, &limits, crop);
    let report = |c: Classified<Seen>| {
        let Seen {
            mut latest,
            took,
            image,
        } = c.result;
        metrics.inference.observe(took.as_secs_f64());
        let now = unix_now();
        let change = match &latest.label {
            Some(label) => debouncer.update(label, latest.probability, Instant::now()),
            None => debouncer.update_rejected(Instant::now()),
        };
        if let Some(collector) = &mut collector {
            collect(collector, &latest, &image, change.is_some(), shared);
        }
        if change.is_none()
            && latest.label.is_some()
            && debouncer.state() == latest.label.as_deref()
        {
            metrics.confidence.set(latest.probability as f64);
        }
        latest.time = now;
        latest.latency_ms = millis(c.latency);
        latest.fps = (c.fps * 100.0).round() / 100.0;
        latest.state = debouncer.state().map(str::to_string);
        latest.camera = name.clone();
        // Stored before the change goes out: a client that answers an event by asking
        // for the latest frame gets the frame of the event, not the one before.
        *shared.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(latest);
        *shared.frame.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.frame.clone());
        shared.account();
        if let Some(e) = change {
            announce(e, c.frame, now, name, actions.as_ref(), ctx);
        }
    };
    log::info!("camera {name}: classifying {}", setup.describe);
    let stats = live::run(setup.open, classify, report, &setup.live, stop);
    shared.account();
    log::info!(
        "camera {name} stopped: {} frames captured, {} classified, {} dropped, {} failed",
        stats.captured,
        stats.classified,
        stats.dropped,
        stats.errors
    );
    stats
}
