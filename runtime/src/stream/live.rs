//! The real-time loop: capture and classification run concurrently, and the classifier
//! always takes the newest frame. A one-frame mailbox sits between them: a frame that
//! arrives while the previous one still waits replaces it (counted as dropped), so there
//! is never a backlog and the latency is one capture plus one classification at most.
//!
//! The capture side owns the source; when it fails (camera unplugged) it is reopened with
//! exponential backoff while classification waits; a source that ends (end of stdin, last
//! image) ends the run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::frame::Frame;
use super::source::{FrameSource, Interrupter, SourceError};

/// The interrupter of the source the capture thread reads now, for `run` to wake it at
/// the end.
type WakeSlot = Mutex<Option<Interrupter>>;

/// Holds the capture thread's source's interrupter while it reads, clearing it before the
/// source is dropped.
struct Awake<'a>(&'a WakeSlot);

impl<'a> Awake<'a> {
    fn new(slot: &'a WakeSlot, source: &dyn FrameSource) -> Self {
        *slot.lock().expect("wake lock") = source.interrupter();
        Awake(slot)
    }
}

impl Drop for Awake<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("wake lock").take();
    }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Classify only every Nth captured frame (1: all).
    pub every: u64,
    /// Classify at most this many frames a second (saves power; newer frames replace
    /// waiting ones meanwhile).
    pub max_fps: Option<f64>,
    /// Stop after this many classified frames.
    pub frames: Option<u64>,
    /// First wait before reopening a failed source, doubled up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Reopen a failed source (a camera); otherwise a failure ends the stream (a pipe).
    pub reopen: bool,
    /// The camera's name, which starts the loop's log lines (a daemon has several).
    pub name: Option<String>,
    /// What the run counts into: keep a clone to read them while it runs (a source that
    /// keeps failing classifies nothing, so no report tells of it).
    pub counters: Arc<Counters>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            every: 1,
            max_fps: None,
            frames: None,
            backoff: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            reopen: true,
            name: None,
            counters: Arc::default(),
        }
    }
}

impl LiveOptions {
    /// What the loop's log lines start with: `camera NAME: ` for a named camera.
    fn log_prefix(&self) -> String {
        self.name
            .as_ref()
            .map(|n| format!("camera {n}: "))
            .unwrap_or_default()
    }
}

/// Counters of a run (also readable while it runs).
#[derive(Debug, Default)]
pub struct Counters {
    pub captured: AtomicU64,
    pub classified: AtomicU64,
    /// Replaced in the mailbox by a newer frame before being classified.
    pub dropped: AtomicU64,
    /// Left out by `every`.
    pub skipped: AtomicU64,
    /// Frames that failed to classify (a corrupt MJPEG frame, say).
    pub errors: AtomicU64,
    /// Source failures (each followed by a reopen attempt).
    pub source_errors: AtomicU64,
    pub reopened: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    pub captured: u64,
    pub classified: u64,
    pub dropped: u64,
    pub skipped: u64,
    pub errors: u64,
    pub source_errors: u64,
    pub reopened: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            captured: g(&self.captured),
            classified: g(&self.classified),
            dropped: g(&self.dropped),
            skipped: g(&self.skipped),
            errors: g(&self.errors),
            source_errors: g(&self.source_errors),
            reopened: g(&self.reopened),
        }
    }
}

/// One classified frame.
pub struct Classified<'a, P> {
    pub frame: &'a Frame,
    pub result: P,
    /// From capture to result.
    pub latency: Duration,
    /// Classified frames per second over the last few seconds.
    pub fps: f64,
    pub stats: Stats,
}

#[derive(Default)]
struct Slot {
    frame: Option<Frame>,
    ended: bool,
}

struct Mailbox {
    slot: Mutex<Slot>,
    ready: Condvar,
}

impl Mailbox {
    fn post(&self, frame: Frame, counters: &Counters) {
        let mut s = self.slot.lock().expect("mailbox lock");
        if s.frame.replace(frame).is_some() {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.ready.notify_all();
    }

    /// Waits until the slot is free (the classifier took the last frame) or `stop`.
    fn wait_free(&self, stop: &AtomicBool) {
        let mut s = self.slot.lock().expect("mailbox lock");
        while s.frame.is_some() && !stop.load(Ordering::Relaxed) {
            s = self
                .ready
                .wait_timeout(s, Duration::from_millis(100))
                .expect("mailbox lock")
                .0;
        }
    }

    fn end(&self) {
        self.slot.lock().expect("mailbox lock").ended = true;
        self.ready.notify_all();
    }

    /// The newest frame; `None` when the source has ended (and nothing waits) or `stop`.
    fn take(&self, stop: &AtomicBool) -> Option<Frame> {
        let mut s = self.slot.lock().expect("mailbox lock");
        loop {
            // A stop request wins over a waiting frame.
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(f) = s.frame.take() {
                // A lossless source's capture waits for the free slot.
                self.ready.notify_all();
                return Some(f);
            }
            if s.ended {
                return None;
            }
            // Timed, so a stop request is seen even when no frame comes.
            s = self
                .ready
                .wait_timeout(s, Duration::from_millis(100))
                .expect("mailbox lock")
                .0;
        }
    }
}

/// Sleeps up to `d`, waking early on `stop`.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

fn capture(
    mut open: impl FnMut() -> Result<Box<dyn FrameSource>>,
    opts: &LiveOptions,
    mailbox: &Mailbox,
    counters: &Counters,
    stop: &AtomicBool,
    wake: &WakeSlot,
) {
    let mut backoff = opts.backoff;
    let mut first = true;
    let at = opts.log_prefix();
    while !stop.load(Ordering::Relaxed) {
        if !first {
            counters.reopened.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        match open() {
            Ok(mut source) => {
                log::info!("{at}capturing from {}", source.describe());
                // Declared after `source`, so dropped before it.
                let _awake = Awake::new(wake, source.as_ref());
                loop {
                    if stop.load(Ordering::Relaxed) {
                        mailbox.end();
                        return;
                    }
                    match source.next_frame() {
                        Ok(frame) => {
                            backoff = opts.backoff;
                            let n = counters.captured.fetch_add(1, Ordering::Relaxed);
                            if n.is_multiple_of(opts.every.max(1)) {
                                if source.lossless() {
                                    mailbox.wait_free(stop);
                                }
                                mailbox.post(frame, counters);
                            } else {
                                counters.skipped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(SourceError::Ended) => {
                            mailbox.end();
                            return;
                        }
                        // Woken at the end of the run (ffmpeg killed): not an error.
                        Err(SourceError::Failed(_)) if stop.load(Ordering::Relaxed) => {
                            mailbox.end();
                            return;
                        }
                        Err(SourceError::Failed(e)) if !opts.reopen => {
                            counters.source_errors.fetch_add(1, Ordering::Relaxed);
                            log::error!("{at}{}: {e:#}", source.describe());
                            mailbox.end();
                            return;
                        }
                        Err(SourceError::Failed(e)) => {
                            counters.source_errors.fetch_add(1, Ordering::Relaxed);
                            log::warn!(
                                "{at}{}: {e:#}; reopening in {:.1} s",
                                source.describe(),
                                backoff.as_secs_f64()
                            );
                            break;
                        }
                    }
                }
            }
            Err(e) if !opts.reopen => {
                counters.source_errors.fetch_add(1, Ordering::Relaxed);
                log::error!("{at}{e:#}");
                break;
            }
            // A camera missing at start is waited for like one unplugged later.
            Err(e) => {
                counters.source_errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("{at}{e:#}; retrying in {:.1} s", backoff.as_secs_f64());
            }
        }
        sleep_unless(stop, backoff);
        backoff = (backoff * 2).min(opts.backoff_max);
    }
    mailbox.end();
}

/// Runs until the source ends, `stop` is set, or `opts.frames` frames are classified.
/// `open` (re)opens the source; `classify` runs on every frame taken; `report` sees
/// each result. Returns the final counters.
pub fn run<P>(
    open: impl FnMut() -> Result<Box<dyn FrameSource>> + Send + 'static,
    mut classify: impl FnMut(&Frame) -> Result<P>,
    mut report: impl FnMut(Classified<P>),
    opts: &LiveOptions,
    stop: Arc<AtomicBool>,
) -> Stats {
    let counters = opts.counters.clone();
    let at = opts.log_prefix();
    let mailbox = Arc::new(Mailbox {
        slot: Mutex::new(Slot::default()),
        ready: Condvar::new(),
    });
    let min_interval = opts
        .max_fps
        .filter(|f| *f > 0.0)
        .map(|f| Duration::from_secs_f64(1.0 / f));
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let wake: Arc<WakeSlot> = Arc::default();
    let capture_thread = {
        let wake = wake.clone();
        let (mailbox, counters, stop, opts) = (
            mailbox.clone(),
            counters.clone(),
            stop.clone(),
            opts.clone(),
        );
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture(open, &opts, &mailbox, &counters, &stop, &wake))
            .expect("spawning the capture thread")
    };
    let mut last_start: Option<Instant> = None;
    while let Some(frame) = mailbox.take(&stop) {
        if let (Some(min), Some(last)) = (min_interval, last_start) {
            let due = last + min;
            if Instant::now() < due {
                // Put it back: a newer frame may replace it while we wait.
                mailbox.post_back(frame);
                sleep_unless(&stop, due - Instant::now());
                continue;
            }
        }
        last_start = Some(Instant::now());
        match classify(&frame) {
            Ok(result) => {
                let done = Instant::now();
                let n = counters.classified.fetch_add(1, Ordering::Relaxed) + 1;
                recent.push_back(done);
                while recent.len() > 2 && done.duration_since(recent[0]) > Duration::from_secs(5) {
                    recent.pop_front();
                }
                let span = done.duration_since(recent[0]).as_secs_f64();
                let fps = if recent.len() > 1 && span > 0.0 {
                    (recent.len() - 1) as f64 / span
                } else {
                    0.0
                };
                report(Classified {
                    frame: &frame,
                    result,
                    latency: frame.captured.elapsed(),
                    fps,
                    stats: counters.snapshot(),
                });
                if opts.frames.is_some_and(|max| n >= max) {
                    // Leave now: a frame already waiting in the mailbox must not be
                    // classified and reported past the limit.
                    break;
                }
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("{at}frame {}: {e:#}", frame.seq);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    // Set before the lock: a source stored after it sees `stop` and is dropped at once.
    if let Some(interrupt) = wake.lock().expect("wake lock").as_ref() {
        interrupt();
    }
    // The capture thread ends, dropping (and so cleaning up) its source, unless it is
    // blocked in a read nothing can wake (stdin): that one is left to end with the process.
    let until = Instant::now() + Duration::from_secs(3);
    while !capture_thread.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    if capture_thread.is_finished() {
        let _ = capture_thread.join();
    }
    counters.snapshot()
}

impl Mailbox {
    /// Returns a frame taken too early, unless a newer one arrived meanwhile.
    fn post_back(&self, frame: Frame) {
        let mut s = self.slot.lock().expect("mailbox lock");
        if s.frame.is_none() {
            s.frame = Some(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::frame::PixelFormat;

    /// Frames every `period`, `n` of them, failing once after `fail_at` frames.
    struct Fake {
        seq: u64,
        n: u64,
        period: Duration,
        fail_at: Option<u64>,
    }

    /// Opens a source of `n` frames, one a millisecond, that never fails.
    fn every_ms(n: u64) -> impl FnMut() -> Result<Box<dyn FrameSource>> + Send + 'static {
        move || {
            Ok(Box::new(Fake {
                seq: 0,
                n,
                period: Duration::from_millis(1),
                fail_at: None,
            }) as Box<dyn FrameSource>)
        }
    }

    impl FrameSource for Fake {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn next_frame(&mut self) -> Result<Frame, SourceError> {
            if self.seq >= self.n {
                return Err(SourceError::Ended);
            }
            if self.fail_at == Some(self.seq) {
                self.fail_at = None;
                return Err(SourceError::Failed(anyhow::anyhow!("unplugged")));
            }
            std::thread::sleep(self.period);
            self.seq += 1;
            Ok(Frame::new(
                self.seq - 1,
                (2, 1),
                PixelFormat::Grey,
                vec![0, 0],
            ))
        }
    }

    #[test]
    fn the_classifier_takes_the_newest_frame_and_never_queues() {
        // 200 frames, one every 1 ms; the classifier needs 20 ms a frame.
        let stop = Arc::new(AtomicBool::new(false));
        let mut seen = Vec::new();
        let mut latencies = Vec::new();
        let stats = run(
            every_ms(200),
            |f| {
                std::thread::sleep(Duration::from_millis(20));
                Ok(f.seq)
            },
            |c| {
                seen.push(c.result);
                latencies.push(c.latency);
            },
            &LiveOptions::default(),
            stop,
        );
        assert_eq!(stats.captured, 200);
        assert!(stats.dropped > 100, "{stats:?}");
        // Every captured frame is classified or dropped, none waits at the end.
        assert_eq!(
            stats.classified + stats.dropped,
            stats.captured,
            "{stats:?}"
        );
        assert!(seen.windows(2).all(|w| w[1] > w[0]), "in order: {seen:?}");
        assert!(
            seen.windows(2).any(|w| w[1] - w[0] > 5),
            "stale frames skipped: {seen:?}"
        );
        // No backlog: each frame waited at most about one classification.
        let worst = latencies.iter().max().unwrap();
        assert!(*worst < Duration::from_millis(200), "latency {worst:?}");
    }

    /// A source whose every frame must be classified (a file decoded at full speed).
    struct Lossless(Box<dyn FrameSource>);

    impl FrameSource for Lossless {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn next_frame(&mut self) -> Result<Frame, SourceError> {
            self.0.next_frame()
        }
        fn lossless(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_lossless_source_waits_for_the_classifier() {
        let mut open = every_ms(30);
        let mut seen = Vec::new();
        let stats = run(
            move || Ok(Box::new(Lossless(open()?)) as Box<dyn FrameSource>),
            |f| {
                std::thread::sleep(Duration::from_millis(10));
                Ok(f.seq)
            },
            |c| seen.push(c.result),
            &LiveOptions::default(),
            Arc::new(AtomicBool::new(false)),
        );
        assert_eq!(stats.dropped, 0, "{stats:?}");
        assert_eq!(seen, (0..30).collect::<Vec<u64>>());
    }

    #[test]
    fn a_failing_source_is_reopened() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut opened = 0;
        let mut seen = 0;
        let stats = run(
            move || {
                opened += 1;
                if opened == 2 {
                    anyhow::bail!("no such device"); // still unplugged
                }
                Ok(Box::new(Fake {
                    seq: 0,
                    n: 5,
                    period: Duration::from_millis(2),
                    fail_at: (opened == 1).then_some(2),
                }) as Box<dyn FrameSource>)
            },
            |f| Ok(f.seq),
            |_| seen += 1,
            &LiveOptions {
                backoff: Duration::from_millis(10),
                ..LiveOptions::default()
            },
            stop,
        );
        assert_eq!(stats.source_errors, 2, "{stats:?}");
        assert_eq!(stats.reopened, 2, "{stats:?}");
        assert_eq!(stats.captured, 2 + 5, "{stats:?}");
        assert_eq!(seen as u64, stats.classified);
    }

    #[test]
    fn every_and_frame_limit() {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = run(
            every_ms(1000),
            |f| {
                assert_eq!(f.seq % 3, 0, "only every 3rd frame");
                Ok(())
            },
            |_| {},
            &LiveOptions {
                every: 3,
                frames: Some(10),
                ..LiveOptions::default()
            },
            stop,
        );
        assert_eq!(stats.classified, 10);
        assert!(stats.skipped >= 18, "{stats:?}");
        assert!(stats.captured < 1000, "stopped early: {stats:?}");
    }

    #[test]
    fn frame_limit_is_exact_when_frames_keep_arriving() {
        // A slow classifier and a fast source: a frame is always waiting when the limit
        // is reached, and it must not be reported.
        let mut reported = 0;
        let stats = run(
            every_ms(1000),
            |_| {
                std::thread::sleep(Duration::from_millis(15));
                Ok(())
            },
            |_| reported += 1,
            &LiveOptions {
                frames: Some(3),
                ..LiveOptions::default()
            },
            Arc::new(AtomicBool::new(false)),
        );
        assert_eq!(reported, 3);
        assert_eq!(stats.classified, 3);
    }
}
