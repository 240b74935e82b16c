//! The daemon's camera loop: the `stream::live` loop on its own thread, classifying with
//! whatever model is current, keeping the latest result and broadcasting debounced
//! state changes to `/v1/events` and MQTT.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::broadcast;

use super::actions::{ActionConfig, Actions, ImageSender};
use super::metrics::{Metrics, SourceLabels};
use super::model::ModelSlot;
use crate::classifier::millis;
use crate::stream::{
    live, Classified, DebounceConfig, Debouncer, Frame, LiveOptions, Opener, Stats,
};
use crate::{Crop, Limits, Ranked};

/// A camera (or folder, or raw stream) to classify continuously.
pub struct CameraSetup {
    pub open: Opener,
    pub describe: String,
    pub live: LiveOptions,
    pub debounce: DebounceConfig,
    pub limits: Limits,
    /// The region of each frame that is classified.
    pub crop: Option<Crop>,
    /// Snapshots and a command on each state change.
    pub actions: ActionConfig,
}

/// The latest classified frame, as `GET /v1/latest` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Latest {
    pub camera: String,
    pub frame: u64,
    pub label: String,
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
    pub events: broadcast::Sender<StateEvent>,
    /// The newest state's snapshot, for MQTT to publish (with --mqtt-host).
    pub image: Option<ImageSender>,
    pub stats: Mutex<Stats>,
    pub describe: String,
}

/// Starts the camera thread; it runs until `stop` is set (or a non-reopening source ends).
pub fn spawn(
    setup: CameraSetup,
    model: Arc<ModelSlot>,
    metrics: Arc<Metrics>,
    shared: Arc<CameraShared>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Stats>> {
    std::thread::Builder::new()
        .name("camera".into())
        .spawn(move || run(setup, &model, metrics, &shared, stop))
        .context("starting the camera thread")
}

/// Adds what the loop did since `last` to the metrics and the shared stats.
fn account(metrics: &Metrics, shared: &CameraShared, now: Stats, last: &mut Stats) {
    metrics
        .frames_captured
        .inc_by(now.captured.saturating_sub(last.captured));
    metrics
        .frames_classified
        .inc_by(now.classified.saturating_sub(last.classified));
    metrics
        .frames_dropped
        .inc_by(now.dropped.saturating_sub(last.dropped));
    metrics
        .camera_reopens
        .inc_by(now.reopened.saturating_sub(last.reopened));
    for _ in last.errors..now.errors {
        metrics.error("frame");
    }
    for _ in last.source_errors..now.source_errors {
        metrics.error("camera");
    }
    *shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = now;
    *last = now;
}

/// The latest-frame record of one frame, and how long classifying it took. Each frame
/// uses the model current when it starts; a reload takes effect on the next frame.
fn classify(
    model: &ModelSlot,
    frame: &Frame,
    limits: &Limits,
    crop: Option<Crop>,
) -> Result<(Latest, Duration)> {
    let loaded = model.get();
    let c = &loaded.classifier;
    let t0 = Instant::now();
    let img = frame.to_rgb_within(limits, crop)?;
    let (probs, _) = c.classify(&img)?;
    let took = t0.elapsed();
    let top: Vec<Ranked<'static>> = c
        .top_k(&probs, 5)
        .into_iter()
        .map(Ranked::into_owned)
        .collect();
    let best = top.first().context("the model gives no classes")?.clone();
    Ok((
        Latest {
            camera: String::new(),
            frame: frame.seq,
            label: best.label.into_owned(),
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
    ))
}

/// The camera loop: classifies frames until `stop`, keeping the latest frame, sending
/// state changes and counting into the metrics.
fn run(
    setup: CameraSetup,
    model: &ModelSlot,
    metrics: Arc<Metrics>,
    shared: &CameraShared,
    stop: Arc<AtomicBool>,
) -> Stats {
    let actions = match Actions::start(
        setup.actions.clone(),
        &shared.name,
        setup.limits,
        metrics.clone(),
        shared.image.clone(),
    ) {
        Ok(a) => a,
        Err(e) => {
            // The classification goes on without them.
            metrics.error("action_dropped");
            log::error!("{e:#}");
            None
        }
    };
    let metrics = &*metrics;
    let mut debouncer = Debouncer::new(setup.debounce.clone());
    let mut last = Stats::default();
    let account = |now: Stats, last: &mut Stats| account(metrics, shared, now, last);
    let limits = setup.limits;
    let crop = setup.crop;
    let classify = |frame: &Frame| classify(model, frame, &limits, crop);
    let report = |c: Classified<(Latest, Duration)>| {
        let (mut latest, took) = c.result;
        metrics
            .inference_seconds
            .get_or_create(&SourceLabels { source: "camera" })
            .observe(took.as_secs_f64());
        let now = unix_now();
        if let Some(e) = debouncer.update(&latest.label, latest.probability, Instant::now()) {
            metrics.set_state(Some(&e.label), e.confidence);
            let mut event = StateEvent {
                camera: shared.name.clone(),
                state: e.label,
                previous: e.previous,
                confidence: e.confidence,
                frame: c.frame.seq,
                time: now,
                held_frames: e.frames,
                held_ms: e.held_ms,
                snapshot: None,
            };
            log::info!(
                "state: {} -> {} ({:.1}%)",
                event.previous.as_deref().unwrap_or("-"),
                event.state,
                event.confidence * 100.0
            );
            if let Some(actions) = &actions {
                event.snapshot = actions
                    .snapshot_path(&event)
                    .map(|p| p.display().to_string());
                actions.submit(event.clone(), c.frame);
            }
            // No subscriber is not an error.
            let _ = shared.events.send(event);
        } else if debouncer.state() == Some(latest.label.as_str()) {
            metrics.confidence.set(latest.probability as f64);
        }
        latest.time = now;
        latest.latency_ms = millis(c.latency);
        latest.fps = (c.fps * 100.0).round() / 100.0;
        latest.state = debouncer.state().map(str::to_string);
        latest.camera = shared.name.clone();
        *shared.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(latest);
        *shared.frame.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.frame.clone());
        account(c.stats, &mut last);
    };
    log::info!("camera: classifying {}", setup.describe);
    let stats = live::run(setup.open, classify, report, &setup.live, stop);
    account(stats, &mut last);
    log::info!(
        "camera stopped: {} frames captured, {} classified, {} dropped, {} failed",
        stats.captured,
        stats.classified,
        stats.dropped,
        stats.errors
    );
    stats
}
