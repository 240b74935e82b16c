//! The one task that changes the served model: reloads on SIGHUP and when the file
//! changes, pushes and rollbacks asked for over the API, one at a time.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

use super::metrics::{ChangeLabels, Metrics, ResultLabels};
use super::model::{Change, ChangeRequest, FileStamp, InstallError, ModelSlot, ModelSource};

/// Starts the task; changes asked for over the API go to `changes`. `stamp` is the
/// model file as it was when the served model was read from it: the watcher compares
/// with it from the start, so a file replaced before the task first runs is not missed.
pub fn spawn(
    source: Arc<ModelSource>,
    stamp: Option<FileStamp>,
    watch_every: Option<Duration>,
    changes: mpsc::Receiver<ChangeRequest>,
    slot: &Arc<ModelSlot>,
    metrics: &Arc<Metrics>,
    shutdown: &watch::Receiver<bool>,
) -> Result<()> {
    // Registered before READY: an early SIGHUP must not end the process (its default).
    let hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let task = Task {
        source,
        slot: slot.clone(),
        metrics: metrics.clone(),
    };
    tokio::spawn(task.run(hup, stamp, watch_every, changes, shutdown.clone()));
    Ok(())
}

struct Task {
    source: Arc<ModelSource>,
    slot: Arc<ModelSlot>,
    metrics: Arc<Metrics>,
}

impl Task {
    async fn run(
        self,
        mut hup: Signal,
        mut stamp: Option<FileStamp>,
        watch_every: Option<Duration>,
        mut changes: mpsc::Receiver<ChangeRequest>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let path = self.source.path.clone();
        let mut tick = tokio::time::interval(watch_every.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = hup.recv() => "SIGHUP",
                _ = tick.tick(), if watch_every.is_some() => {
                    let now = FileStamp::of(&path);
                    if now.is_none() || now == stamp {
                        continue;
                    }
                    "the file changed"
                }
                Some(request) = changes.recv() => {
                    self.change(request).await;
                    // The watcher is not to load again what was just installed.
                    stamp = FileStamp::of(&path);
                    continue;
                }
                _ = shutdown.changed() => return,
            };
            // Whatever the outcome, this version of the file has been tried.
            stamp = FileStamp::of(&path);
            self.reload(why).await;
        }
    }

    /// Loads the file as it is now; on failure the old model keeps serving.
    async fn reload(&self, why: &str) {
        let _ = sd_notify::notify(&[NotifyState::Reloading]);
        let path = &self.source.path;
        log::info!("reloading {} ({why})", path.display());
        let job = self.source.clone();
        let outcome = tokio::task::spawn_blocking(move || job.reload())
            .await
            .map_err(|e| anyhow::anyhow!("the model loader panicked: {e}"))
            .and_then(|r| r);
        let result = match outcome {
            Ok(loaded) => {
                let (old, new) = self.swap(loaded);
                log::info!(
                    "reloaded {} (sha256 {} -> {}, {} classes)",
                    path.display(),
                    &old[..12],
                    &new.sha256[..12],
                    new.classifier.labels.len()
                );
                "ok"
            }
            Err(e) => {
                self.metrics.error("reload");
                log::warn!(
                    "reload failed, still serving sha256 {}: {e:#}",
                    &self.slot.get().sha256[..12]
                );
                "failed"
            }
        };
        let labels = ResultLabels { result };
        self.metrics.reloads.get_or_create(&labels).inc();
        let _ = sd_notify::notify(&[NotifyState::Ready]);
    }

    /// A push or a rollback; the outcome goes back to the request that asked for it.
    async fn change(&self, request: ChangeRequest) {
        let ChangeRequest { change, reply } = request;
        let via = change.name();
        let _ = sd_notify::notify(&[NotifyState::Reloading]);
        let served = self.slot.get().sha256.clone();
        let job = self.source.clone();
        let outcome = tokio::task::spawn_blocking(move || match change {
            Change::Push(bytes) => job.install(bytes, &served),
            Change::Rollback => job.rollback(&served),
        })
        .await
        .unwrap_or_else(|e| {
            let panicked = anyhow::anyhow!("the model loader panicked: {e}");
            Err(InstallError::Refused(panicked))
        });
        let (result, answer) = match outcome {
            Ok((loaded, kept)) => {
                let (old, new) = self.swap(loaded);
                if kept.is_some() {
                    self.slot.set_previous(kept);
                }
                log::info!(
                    "{via}: now serving sha256 {} ({} classes), was {}",
                    &new.sha256[..12],
                    new.classifier.labels.len(),
                    &old[..12]
                );
                ("ok", Ok(new))
            }
            Err(e) => {
                let result = match &e {
                    InstallError::Storage(_) => "failed",
                    _ => "refused",
                };
                log::warn!(
                    "{via} refused, still serving sha256 {}: {e}",
                    &self.slot.get().sha256[..12]
                );
                (result, Err(e))
            }
        };
        let labels = ChangeLabels { via, result };
        self.metrics.changes.get_or_create(&labels).inc();
        let _ = reply.send(answer);
        let _ = sd_notify::notify(&[NotifyState::Ready]);
    }

    /// Serves `loaded` from now on; returns the sha256 served before, and the new model.
    fn swap(&self, loaded: super::model::Loaded) -> (String, Arc<super::model::Loaded>) {
        let old = self.slot.get().sha256.clone();
        let new = self.slot.replace(loaded);
        self.metrics
            .set_model(&new.path.display().to_string(), &new.sha256);
        (old, new)
    }
}
