//! `GET /v1/cameras/<name>/stream.mjpeg`: a camera's live view as an MJPEG stream
//! (`multipart/x-mixed-replace`, which an `<img>` plays), at most `--view-fps` frames a
//! second and `--max-viewers` streams at once. Frames are encoded only while someone
//! watches, once per frame however many watch.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::MissedTickBehavior;

use super::camera::CameraShared;
use super::http::{camera_named, ApiError, AppState};

const BOUNDARY: &str = "glimpseframe";

/// What one viewer's stream holds.
struct Viewer {
    camera: Arc<CameraShared>,
    state: Arc<AppState>,
    tick: tokio::time::Interval,
    /// The number of the frame sent last.
    sent: Option<u64>,
    /// The viewer's place among `--max-viewers`, given back when the stream ends.
    _slot: OwnedSemaphorePermit,
}

pub async fn stream_mjpeg(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let camera = camera_named(&st, &name)?.clone();
    let slot = st.viewers.clone().try_acquire_owned().map_err(|_| {
        ApiError::busy(format!(
            "{} viewers are watching, the most this server serves (--max-viewers)",
            st.max_viewers
        ))
    })?;
    st.metrics.viewers.inc();
    let mut tick = tokio::time::interval(st.view_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let viewer = Viewer {
        camera,
        state: st.clone(),
        tick,
        sent: None,
        _slot: slot,
    };
    let parts = stream::unfold(viewer, |mut v| async move {
        let part = next_part(&mut v).await?;
        Some((Ok::<_, std::io::Error>(part), v))
    });
    let headers = [
        (
            header::CONTENT_TYPE,
            format!("multipart/x-mixed-replace; boundary={BOUNDARY}"),
        ),
        (header::CACHE_CONTROL, "no-store".to_string()),
    ];
    Ok((StatusCode::OK, headers, Body::from_stream(parts)).into_response())
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.state.metrics.viewers.dec();
    }
}

/// Waits for the next tick with a frame not sent yet, and returns it as a part; `None`
/// ends the stream (shutdown, or a frame that cannot be encoded).
async fn next_part(v: &mut Viewer) -> Option<Bytes> {
    let mut shutdown = v.state.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return None;
        }
        tokio::select! {
            _ = v.tick.tick() => {}
            _ = shutdown.changed() => return None,
        }
        let (camera, limits) = (v.camera.clone(), v.state.limits);
        let encoded = tokio::task::spawn_blocking(move || camera.jpeg(&limits)).await;
        let (seq, jpeg) = match encoded {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                log::warn!("camera {}: live view: {e:#}", v.camera.name);
                return None;
            }
            Err(_) => return None,
        };
        if v.sent == Some(seq) {
            continue;
        }
        v.sent = Some(seq);
        v.state.metrics.view_frames.inc();
        return Some(part(&jpeg));
    }
}

/// One JPEG as a part of the multipart stream.
fn part(jpeg: &[u8]) -> Bytes {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        jpeg.len()
    );
    let mut out = Vec::with_capacity(head.len() + jpeg.len() + 2);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(jpeg);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// The interval between frames of `--view-fps`.
pub fn interval(fps: f64) -> Duration {
    Duration::from_secs_f64(1.0 / fps)
}
