//! What runs on each state change besides SSE and the MQTT state: a JPEG snapshot of the
//! frame that confirmed the state (to a folder, and to MQTT as an image), a command given
//! the event, a webhook. They run on threads of their own behind bounded queues, so a
//! slow disk, command or receiver never slows classification; what does not fit in a
//! queue is dropped and counted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;

use super::camera::StateEvent;
use super::metrics::Metrics;
use super::webhook::{Webhook, WebhookConfig};
use crate::fsutil::{atomic_write, prune_jpegs, safe_name};
use crate::stream::Frame;
use crate::Limits;

/// State changes waiting for their actions; more are dropped (and counted).
const QUEUE: usize = 16;

/// What to do on each state change.
#[derive(Debug, Clone, Default)]
pub struct ActionConfig {
    /// Snapshots go to `<dir>/<camera>/<time>-<state>.jpg`.
    pub snapshot_dir: Option<PathBuf>,
    /// Keep at most this many snapshots per camera (the oldest go first).
    pub snapshot_keep: Option<usize>,
    /// Keep at most this many bytes of snapshots per camera.
    pub snapshot_max_bytes: Option<u64>,
    /// A shell command run with the event JSON on stdin.
    pub exec: Option<String>,
    /// How long the command may run before it is killed.
    pub exec_timeout: Duration,
    /// Where each event is POSTed.
    pub webhook: Option<WebhookConfig>,
}

impl ActionConfig {
    /// Whether the snapshot and exec thread has work.
    fn local(&self) -> bool {
        self.snapshot_dir.is_some() || self.exec.is_some()
    }
}

struct Job {
    event: StateEvent,
    frame: Frame,
}

/// A state's snapshot, JPEG-encoded.
pub type Jpeg = Arc<Vec<u8>>;

/// Where the newest snapshot goes for MQTT to publish (`None` until the first).
pub type ImageSender = watch::Sender<Option<Jpeg>>;

/// The queues into the actions threads.
pub struct Actions {
    cfg: ActionConfig,
    camera: String,
    tx: Option<SyncSender<Job>>,
    webhook: Option<Webhook>,
    metrics: Arc<Metrics>,
}

impl Actions {
    /// Starts the actions thread of `camera`; `None` when there is nothing to do.
    pub fn start(
        cfg: ActionConfig,
        camera: &str,
        limits: Limits,
        metrics: Arc<Metrics>,
        image: Option<ImageSender>,
    ) -> Result<Option<Actions>> {
        let local = cfg.local() || image.is_some();
        if !local && cfg.webhook.is_none() {
            return Ok(None);
        }
        let tx = match local {
            true => Some(Worker::start(&cfg, limits, &metrics, image)?),
            false => None,
        };
        let webhook = match &cfg.webhook {
            Some(w) => Some(Webhook::start(w.clone(), metrics.clone())?),
            None => None,
        };
        Ok(Some(Actions {
            cfg,
            camera: safe_name(camera),
            tx,
            webhook,
            metrics,
        }))
    }

    /// Where the snapshot of `event` will be written (known before it is, so that the
    /// event can carry it).
    pub fn snapshot_path(&self, event: &StateEvent) -> Option<PathBuf> {
        let dir = self.cfg.snapshot_dir.as_ref()?.join(&self.camera);
        let ms = (event.time * 1e3) as i64;
        let time = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let name = format!(
            "{}.{:03}Z-{}.jpg",
            time.strftime("%Y%m%dT%H%M%S"),
            ms.rem_euclid(1000),
            safe_name(&event.state)
        );
        Some(dir.join(name))
    }

    /// Queues the actions of `event`, never waiting: a full queue drops it.
    pub fn submit(&self, event: StateEvent, frame: &Frame) {
        if let Some(webhook) = &self.webhook {
            webhook.submit(serde_json::to_vec(&event).expect("an event serializes"));
        }
        let Some(tx) = &self.tx else {
            return;
        };
        let job = Job {
            event,
            frame: frame.clone(),
        };
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = tx.try_send(job) {
            self.metrics.error("action_dropped");
            log::warn!(
                "actions of the state change to {} dropped: {QUEUE} still waiting",
                job.event.state
            );
        }
    }
}

/// The actions thread's side.
struct Worker {
    cfg: ActionConfig,
    limits: Limits,
    metrics: Arc<Metrics>,
    image: Option<ImageSender>,
}

impl Worker {
    /// Starts the thread; returns its queue.
    fn start(
        cfg: &ActionConfig,
        limits: Limits,
        metrics: &Arc<Metrics>,
        image: Option<ImageSender>,
    ) -> Result<SyncSender<Job>> {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let worker = Worker {
            cfg: cfg.clone(),
            limits,
            metrics: metrics.clone(),
            image,
        };
        std::thread::Builder::new()
            .name("actions".into())
            .spawn(move || rx.iter().for_each(|job| worker.run(job)))
            .context("starting the actions thread")?;
        Ok(tx)
    }

    fn run(&self, job: Job) {
        let path = job.event.snapshot.as_deref().map(Path::new);
        if path.is_some() || self.image.is_some() {
            if let Err(e) = self.snapshot(path, &job.frame) {
                self.metrics.error("snapshot");
                match path {
                    Some(path) => log::warn!("snapshot {}: {e:#}", path.display()),
                    None => log::warn!("snapshot of {}: {e:#}", job.event.state),
                }
            }
        }
        if let Some(command) = &self.cfg.exec {
            let json = serde_json::to_vec(&job.event).expect("an event serializes");
            match run_command(command, &json, &job.event.state, self.cfg.exec_timeout) {
                Ok(status) if status.success() => log::info!("exec: {command}: {status}"),
                Ok(status) => {
                    self.metrics.error("exec");
                    log::warn!("exec: {command}: {status}");
                }
                Err(e) => {
                    self.metrics.error("exec");
                    log::warn!("exec: {command}: {e:#}");
                }
            }
        }
    }

    /// The frame as JPEG: written atomically to `path` (then the retention applied), and
    /// handed to MQTT.
    fn snapshot(&self, path: Option<&Path>, frame: &Frame) -> Result<()> {
        let jpeg = Arc::new(frame.to_jpeg(&self.limits)?);
        if let Some(image) = &self.image {
            image.send_replace(Some(jpeg.clone()));
        }
        let Some(path) = path else {
            return Ok(());
        };
        atomic_write(path, &jpeg)?;
        log::info!("snapshot {}", path.display());
        if let Some(dir) = path.parent() {
            prune_jpegs(dir, self.cfg.snapshot_keep, self.cfg.snapshot_max_bytes)
                .with_context(|| format!("pruning {}", dir.display()))?;
        }
        Ok(())
    }
}

/// Runs `command` with `sh -c`, the event on stdin and the state in `GLIMPSE_STATE`;
/// killed after `timeout`.
fn run_command(command: &str, event: &[u8], state: &str, timeout: Duration) -> Result<ExitStatus> {
    let mut child = Command::new("/bin/sh")
        .args(["-c", command])
        .env("GLIMPSE_STATE", state)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting /bin/sh")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is not an error.
        let _ = stdin.write_all(event).and_then(|_| stdin.write_all(b"\n"));
    }
    let until = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the command")? {
            return Ok(status);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("still running after {} s: killed", timeout.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for (i, size) in [100usize, 200, 300, 400].iter().enumerate() {
            std::fs::write(dir.path().join(format!("2026120{i}-x.jpg")), vec![0; *size]).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"kept").unwrap();
        let names = || {
            let mut n: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        prune_jpegs(dir.path(), Some(3), None).unwrap();
        assert_eq!(
            names(),
            [
                "20261201-x.jpg",
                "20261202-x.jpg",
                "20261203-x.jpg",
                "notes.txt"
            ]
        );
        prune_jpegs(dir.path(), None, Some(750)).unwrap();
        assert_eq!(names(), ["20261202-x.jpg", "20261203-x.jpg", "notes.txt"]);
        prune_jpegs(dir.path(), None, Some(10)).unwrap();
        assert_eq!(
            names(),
            ["20261203-x.jpg", "notes.txt"],
            "the newest always stays"
        );
    }

    #[test]
    fn a_command_that_hangs_is_killed() {
        let t0 = Instant::now();
        let e = run_command("sleep 30", b"{}", "cat", Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("killed"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10));
        let status = run_command(
            "read line; test \"$GLIMPSE_STATE\" = cat",
            b"{}",
            "cat",
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(status.success());
    }
}
