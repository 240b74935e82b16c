//! The collected frames over the API: the queue waiting for labels, each frame's JPEG,
//! filing a frame under a label or discarding it, and the labelled dataset as a tar.
//! Requests name frames by id only; anything that is not an id is refused (400).

use std::io::Write;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::http::{ApiError, AppState};
use crate::stream::collect::{check_id, Queue, QueueError, Sidecar};

type Shared = Arc<AppState>;

/// `GET /v1/collected`: the frames waiting for a label, newest first (each with its
/// sidecar and the URL of its JPEG), and the labels frames were filed under.
pub async fn collected(State(st): State<Shared>) -> Result<Response, ApiError> {
    let queues = queues(&st)?.to_vec();
    let listed = blocking(move || {
        let mut frames: Vec<Sidecar> = Vec::new();
        let mut labels: Vec<String> = Vec::new();
        for q in &queues {
            frames.extend(q.waiting()?);
            labels.extend(q.labels());
        }
        frames.sort_unstable_by(|a, b| b.id.cmp(&a.id));
        labels.sort();
        labels.dedup();
        Ok((frames, labels))
    })
    .await?;
    let (frames, labels) = listed;
    let frames: Vec<_> = frames
        .into_iter()
        .map(|f| {
            let image = format!("/v1/collected/{}.jpg", f.id);
            let mut v = serde_json::to_value(f).unwrap_or_default();
            v["image"] = image.into();
            v
        })
        .collect();
    Ok(Json(json!({ "frames": frames, "labels": labels })).into_response())
}

/// `GET /v1/collected/<id>.jpg`: a waiting frame's JPEG.
pub async fn collected_image(
    State(st): State<Shared>,
    rest: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let rest = id_path(rest)?;
    let id = rest.strip_suffix(".jpg").unwrap_or(&rest).to_string();
    check_id(&id).map_err(queue_error)?;
    if !rest.ends_with(".jpg") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: the image of frame {id:?} is /v1/collected/{id}.jpg"),
        ));
    }
    let queues = queues(&st)?.to_vec();
    let jpeg = blocking(move || {
        let path = holder(&queues, &id)?.image(&id)?;
        std::fs::read(&path).map_err(|e| QueueError::Io(crate::Error::io("reading", &path)(e)))
    })
    .await?;
    let headers = [
        (header::CONTENT_TYPE, "image/jpeg"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    Ok((headers, jpeg).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelBody {
    label: String,
}

/// `POST /v1/collected/<id>/label` with `{"label": "..."}` files the frame under that
/// label (a new one or an existing one); `POST /v1/collected/<id>/discard` deletes it.
pub async fn collected_change(
    State(st): State<Shared>,
    rest: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let rest = id_path(rest)?;
    let (id, action) = rest.split_once('/').unwrap_or((&rest, ""));
    check_id(id).map_err(queue_error)?;
    let label = match action {
        "label" => Some(label_of(&body)?),
        "discard" => None,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no such endpoint: POST /v1/collected/{id}/label or /v1/collected/{id}/discard"
                ),
            ))
        }
    };
    let queues = queues(&st)?.to_vec();
    let id = id.to_string();
    let answer = json!({ "id": id, "label": label, "discarded": label.is_none() });
    blocking(move || {
        let queue = holder(&queues, &id)?;
        match &label {
            Some(label) => queue.label(&id, label).map(drop),
            None => queue.discard(&id),
        }
    })
    .await?;
    Ok(Json(answer).into_response())
}

/// What follows `/v1/collected/`, decoded; 400 when it does not decode (`%FF`).
fn id_path(rest: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    rest.map(|Path(rest)| rest).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_id",
            format!("expected a frame id: {}", e.body_text()),
        )
    })
}

/// The label of a `{"label": "..."}` body.
fn label_of(body: &[u8]) -> Result<String, ApiError> {
    serde_json::from_slice::<LabelBody>(body)
        .map(|b| b.label)
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected a JSON body {{\"label\": \"...\"}}: {e}"),
            )
        })
}

/// `GET /v1/dataset.tar`: every labelled frame as `<label>/<id>.jpg`, streamed as it is
/// read: extracted, it is a folder `glimpse-train train --data` reads.
pub async fn dataset_tar(State(st): State<Shared>) -> Result<Response, ApiError> {
    let queues = queues(&st)?.to_vec();
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        };
        if let Err(e) = write_tar(&queues, &mut out) {
            log::warn!("GET /v1/dataset.tar: {e}");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let headers = [
        (header::CONTENT_TYPE, "application/x-tar"),
        (
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"dataset.tar\"",
        ),
    ];
    Ok((headers, Body::from_stream(stream)).into_response())
}

fn write_tar(queues: &[Queue], out: &mut ChannelWriter) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    for queue in queues {
        for (label, path) in queue.labelled() {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            tar.append_path_with_name(&path, format!("{label}/{name}"))?;
        }
    }
    tar.into_inner()?.flush()
}

/// Sends what is written, in chunks, to the response body; fails once the client has
/// gone, which ends the tar early.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 64 << 10;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

/// The collect folders, or 404 when no camera collects.
fn queues(st: &AppState) -> Result<&[Queue], ApiError> {
    if st.queues.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_collecting",
            "no camera collects frames (start it with --collect DIR, or `collect` in its [[camera]] table)",
        ));
    }
    Ok(&st.queues)
}

/// The queue frame `id` waits in.
fn holder<'a>(queues: &'a [Queue], id: &str) -> Result<&'a Queue, QueueError> {
    queues
        .iter()
        .find(|q| q.image(id).is_ok())
        .ok_or_else(|| QueueError::NotFound(id.into()))
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(queue_error)
}

fn queue_error(e: QueueError) -> ApiError {
    let (status, kind) = match &e {
        QueueError::BadId(_) => (StatusCode::BAD_REQUEST, "bad_id"),
        QueueError::BadLabel(_) => (StatusCode::BAD_REQUEST, "bad_label"),
        QueueError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        QueueError::Io(_) => {
            log::error!("collected frames: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "storage")
        }
    };
    ApiError::new(status, kind, e.to_string())
}
