//! The daemon's Prometheus metrics (OpenMetrics text at `GET /metrics`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct SourceLabels {
    /// `http` or `camera`.
    pub source: &'static str,
    /// The camera's name, for `camera` (no label for `http`).
    pub camera: Option<String>,
}

impl SourceLabels {
    pub fn http() -> Self {
        SourceLabels {
            source: "http",
            camera: None,
        }
    }

    pub fn camera(name: &str) -> Self {
        SourceLabels {
            source: "camera",
            camera: Some(name.to_string()),
        }
    }
}

// By hand: the derive would write `camera=""` on every HTTP series.
impl EncodeLabelSet for SourceLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("source", self.source).encode(encoder.encode_label())?;
        if let Some(camera) = &self.camera {
            ("camera", camera.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CameraLabels {
    pub camera: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CameraErrorLabels {
    pub camera: String,
    /// `frame` (a frame that could not be classified) or `source` (the source failed).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub path: String,
    pub sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub camera: String,
    pub label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `per_peer` or `total` (`serve::conn::Refusal`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectLabels {
    pub camera: String,
    /// `kept`, `duplicate`, `rate_limited` or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// `push` (`PUT /v1/model`) or `rollback`.
    pub via: &'static str,
    /// `ok`, `refused` (the model) or `failed` (the files).
    pub result: &'static str,
}

/// Every metric the daemon exports; cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram>,
    pub inference_seconds: Family<SourceLabels, Histogram>,
    pub errors: Family<KindLabels, Counter>,
    pub inflight: Gauge,
    pub connections_open: Gauge,
    pub connections_refused: Family<ReasonLabels, Counter>,
    pub frames_captured: Family<CameraLabels, Counter>,
    pub frames_classified: Family<CameraLabels, Counter>,
    pub frames_dropped: Family<CameraLabels, Counter>,
    pub camera_reopens: Family<CameraLabels, Counter>,
    pub camera_errors: Family<CameraErrorLabels, Counter>,
    pub state: Family<StateLabels, Gauge>,
    pub confidence: Family<CameraLabels, Gauge<f64, AtomicU64>>,
    pub model: Family<ModelLabels, Gauge>,
    pub reloads: Family<ResultLabels, Counter>,
    pub changes: Family<ChangeLabels, Counter>,
    pub collected: Family<CollectLabels, Counter>,
    pub mqtt_published: Counter,
    pub mqtt_connected: Gauge,
    pub viewers: Gauge,
    pub view_frames: Counter,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s: a 28x28 model on x86 to a large JPEG on a Pi Zero.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            inference_seconds: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            inflight: Gauge::default(),
            connections_open: Gauge::default(),
            connections_refused: Family::default(),
            frames_captured: Family::default(),
            frames_classified: Family::default(),
            frames_dropped: Family::default(),
            camera_reopens: Family::default(),
            camera_errors: Family::default(),
            state: Family::default(),
            confidence: Family::default(),
            model: Family::default(),
            reloads: Family::default(),
            changes: Family::default(),
            collected: Family::default(),
            mqtt_published: Counter::default(),
            mqtt_connected: Gauge::default(),
            viewers: Gauge::default(),
            view_frames: Counter::default(),
        };
        let mut r = m.registry;
        r.register(
            "glimpse_http_requests",
            "HTTP requests by route and status code",
            m.requests.clone(),
        );
        r.register(
            "glimpse_http_request_duration_seconds",
            "HTTP request latency, from the handler's start to the response",
            m.request_seconds.clone(),
        );
        r.register(
            "glimpse_inference_duration_seconds",
            "Decode + preprocess + model time of one image, by source (http, camera) and camera",
            m.inference_seconds.clone(),
        );
        r.register(
            "glimpse_errors",
            "Failures by kind: an HTTP error's `kind` (bad_request, bad_image, too_large, unauthorized, overloaded, busy, timeout, inference, ...), or frame, camera, reload, collect, mqtt, mqtt_dropped, snapshot, exec, action_dropped, webhook, webhook_dropped",
            m.errors.clone(),
        );
        r.register(
            "glimpse_inferences_in_flight",
            "Requests admitted and not yet answered (running or queued)",
            m.inflight.clone(),
        );
        r.register(
            "glimpse_http_connections_open",
            "HTTP connections open",
            m.connections_open.clone(),
        );
        r.register(
            "glimpse_http_connections_refused",
            "HTTP connections closed at once by reason: per_peer (--max-connections-per-peer) or total (--max-connections)",
            m.connections_refused.clone(),
        );
        r.register(
            "glimpse_frames_captured",
            "Frames read from each camera's source",
            m.frames_captured.clone(),
        );
        r.register(
            "glimpse_frames_classified",
            "Frames of each camera classified",
            m.frames_classified.clone(),
        );
        r.register(
            "glimpse_frames_dropped",
            "Frames of each camera replaced by a newer one before the classifier took them",
            m.frames_dropped.clone(),
        );
        r.register(
            "glimpse_camera_reopens",
            "Times each camera's source was opened again (after a drop, a stall or a failed attempt)",
            m.camera_reopens.clone(),
        );
        r.register(
            "glimpse_camera_errors",
            "Failures of each camera by kind: frame (a frame that could not be classified) or source (the source failed; it is reopened)",
            m.camera_errors.clone(),
        );
        r.register(
            "glimpse_state",
            "The debounced state of each camera: 1 for its current label",
            m.state.clone(),
        );
        r.register(
            "glimpse_state_confidence",
            "Probability of each camera's current state's label on its latest frame",
            m.confidence.clone(),
        );
        r.register(
            "glimpse_model_info",
            "The model being served (path and sha256 of the file)",
            m.model.clone(),
        );
        r.register(
            "glimpse_model_reloads",
            "Model reload attempts by result (ok, failed)",
            m.reloads.clone(),
        );
        r.register(
            "glimpse_model_changes",
            "Models pushed over the API and rollbacks, by result (ok, refused, failed)",
            m.changes.clone(),
        );
        r.register(
            "glimpse_collected_frames",
            "Frames worth labelling by camera and outcome: kept (--collect), duplicate or rate_limited (skipped), failed",
            m.collected.clone(),
        );
        r.register(
            "glimpse_mqtt_published",
            "MQTT messages handed to the client",
            m.mqtt_published.clone(),
        );
        r.register(
            "glimpse_mqtt_connected",
            "1 while connected to the MQTT broker",
            m.mqtt_connected.clone(),
        );
        r.register(
            "glimpse_viewers",
            "Live views open (GET /v1/cameras/<name>/stream.mjpeg)",
            m.viewers.clone(),
        );
        r.register(
            "glimpse_view_frames",
            "Frames sent to live views (each frame is encoded once, however many watch)",
            m.view_frames.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// Shows `path`/`sha256` as the model being served.
    pub fn set_model(&self, path: &str, sha256: &str) {
        self.model.clear();
        self.model
            .get_or_create(&ModelLabels {
                path: path.to_string(),
                sha256: sha256.to_string(),
            })
            .set(1);
    }

    /// Shows `label` as the state of `camera` in place of `previous`.
    pub fn set_state(&self, camera: &str, previous: Option<&str>, label: &str, confidence: f32) {
        let series = |label: &str| StateLabels {
            camera: camera.to_string(),
            label: label.to_string(),
        };
        if let Some(previous) = previous {
            self.state.remove(&series(previous));
        }
        self.state.get_or_create(&series(label)).set(1);
        self.set_confidence(camera, confidence);
    }

    /// The probability of the state's label of `camera` on its latest frame.
    pub fn set_confidence(&self, camera: &str, confidence: f32) {
        self.confidence
            .get_or_create(&CameraLabels {
                camera: camera.to_string(),
            })
            .set(confidence as f64);
    }

    /// The OpenMetrics text exposition (which Prometheus scrapes natively).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The same metrics in the Prometheus text format 0.0.4, for clients that do not ask
    /// for OpenMetrics (`promtool check metrics`, curl, older scrapers).
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
    }
}

/// OpenMetrics text as the Prometheus 0.0.4 format: a counter's HELP and TYPE lines name
/// its `_total` series (OpenMetrics names the family without the suffix, and 0.0.4 parsers
/// then see a series with no help), and the `# UNIT`/`# EOF` lines 0.0.4 lacks are left out.
/// Samples, label escaping and histograms read the same in both.
fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta.and_then(|(p, rest)| Some((p, rest.split_once(' ')?))) {
            Some((prefix, (name, tail))) if counters.contains(name) => {
                out.push_str(&format!("{prefix}{name}_total {tail}"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of [`Metrics::encode_prometheus`].
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_and_current_values() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                route: "/v1/classify",
                status: "200".into(),
            })
            .inc();
        m.error("too_large");
        m.set_model("/m.onnx", "abc");
        m.set_model("/n.onnx", "def");
        m.set_state("gate", None, "dog", 0.5);
        m.set_state("gate", Some("dog"), "cat", 0.75);
        m.set_state("door", None, "dog", 0.25);
        let text = m.encode();
        assert!(
            text.contains(r#"glimpse_http_requests_total{route="/v1/classify",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"glimpse_errors_total{kind="too_large"} 1"#),
            "{text}"
        );
        // The previous model's series is gone, not left at 1.
        assert!(!text.contains("abc"), "{text}");
        assert!(
            text.contains(r#"glimpse_model_info{path="/n.onnx",sha256="def"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"glimpse_state{camera="gate",label="cat"} 1"#)
                && text.contains(r#"glimpse_state{camera="door",label="dog"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"glimpse_state{camera="gate",label="dog"}"#),
            "the camera's previous state is gone: {text}"
        );
        assert!(
            text.contains(r#"glimpse_state_confidence{camera="gate"} 0.75"#),
            "{text}"
        );
        m.inference_seconds
            .get_or_create(&SourceLabels::http())
            .observe(0.01);
        m.inference_seconds
            .get_or_create(&SourceLabels::camera("gate"))
            .observe(0.01);
        let text = m.encode();
        assert!(
            text.contains(r#"glimpse_inference_duration_seconds_count{source="http"} 1"#)
                && text.contains(
                    r#"glimpse_inference_duration_seconds_count{source="camera",camera="gate"} 1"#
                ),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");

        m.frames_captured
            .get_or_create(&CameraLabels {
                camera: "gate".into(),
            })
            .inc();
        let text = m.encode();
        let old = m.encode_prometheus();
        assert!(
            old.contains("# HELP glimpse_http_requests_total HTTP requests")
                && old.contains("# TYPE glimpse_http_requests_total counter")
                && old
                    .contains("# HELP glimpse_frames_captured_total Frames read from each camera")
                && old.contains("# TYPE glimpse_state gauge"),
            "{old}"
        );
        assert!(!old.contains("# EOF") && !old.contains("# UNIT"), "{old}");
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(String::from)
                .collect()
        };
        assert_eq!(samples(&old), samples(&text), "the same samples");
    }
}
