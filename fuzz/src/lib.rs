//! What each fuzz target does with its input, as plain functions: the cargo-fuzz targets in
//! `targets/fuzz_targets/` call them, and `tests/regressions.rs` replays the seed corpora and every
//! input that once crashed through them in an ordinary `cargo test`.
//!
//! Each function must return normally for any input: an `Err` is fine (that is glimpse
//! refusing bad input), a panic, abort, hang or runaway allocation is a bug.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use glimpse_runtime::bundle::{keys, BundleMeta};
use glimpse_runtime::classifier::resolve_preprocess;
use glimpse_runtime::serve::http::{router, AppState};
use glimpse_runtime::serve::metrics::Metrics;
use glimpse_runtime::serve::model::{Loaded, ModelSlot};
use glimpse_runtime::serve::origin::HostPolicy;
use glimpse_runtime::serve::session::Sessions;
use glimpse_runtime::serve::Token;
use glimpse_runtime::stream::collect::Queue;
use glimpse_runtime::stream::frame::Frame;
use glimpse_runtime::stream::{FrameSource, PixelFormat, RawSource};
use glimpse_runtime::{
    Channels, Classifier, Layout, Limits, OnnxFile, Overrides, Preprocess, Resize,
};
use image::RgbImage;

/// The tiny valid model of the bad-input corpus (mean colour → red/green/blue/grey).
pub const TINY_MODEL: &[u8] = include_bytes!("../../tests/corpus/models/ok-tiny.onnx");

/// Limits small enough that the fuzzer spends its time on parsing, not on big pixels.
fn limits() -> Limits {
    Limits {
        max_bytes: 1 << 20,
        max_pixels: 4_000_000,
        max_side: 4096,
    }
}

/// A small picture to run models on.
fn picture() -> RgbImage {
    RgbImage::from_fn(20, 14, |x, y| {
        image::Rgb([(x * 12) as u8, (y * 18) as u8, 90])
    })
}

/// Image decoding and preprocessing as the runtime does them: any bytes through
/// `decode` (format sniffing, header limits, EXIF orientation), then both resize modes
/// to a model input.
pub fn decode(data: &[u8]) {
    let Ok(img) = glimpse_runtime::decode(data, &limits()) else {
        return;
    };
    let mut resizer = fast_image_resize::Resizer::new();
    for (resize, channels) in [
        (Resize::CenterCrop { short_side: 36 }, Channels::Rgb),
        (Resize::Letterbox { fill: [114; 3] }, Channels::Gray),
    ] {
        let pre = Preprocess {
            width: 32,
            height: 24,
            resize,
            mean: vec![127.0; channels.count()],
            std: vec![64.0; channels.count()],
            channels,
            layout: Layout::Nchw,
        };
        let t = pre.to_tensor(&[&img], &mut resizer);
        assert_eq!(t.shape(), pre.shape(1), "tensor shape");
    }
}

/// Model loading: any bytes as an ONNX file (the fuzzer mutates the valid seed models),
/// its summary for `glimpse info`, then the tract plan and one inference.
pub fn model(data: &[u8]) {
    let Ok(file) = OnnxFile::from_bytes(data) else {
        return;
    };
    let _ = (file.op_counts(), file.parameter_count(), file.opsets());
    let _ = file.non_finite_weights();
    for io in file.inputs.iter().chain(&file.outputs) {
        let _ = io.to_string();
    }
    let Ok(classifier) = Classifier::new(file, &Overrides::default()) else {
        return;
    };
    if let Ok((scores, _)) = classifier.classify(&picture()) {
        assert_eq!(
            scores.probs.len(),
            classifier.labels.len(),
            "one probability per label"
        );
    }
}

#[derive(Arbitrary, Debug)]
struct Prop {
    key: u8,
    other_key: String,
    value: String,
}

/// The bundle metadata parser: arbitrary `metadata_props`. What parses must survive a
/// round trip through `to_props` unchanged, and resolve to a valid preprocessing or a
/// clear error.
pub fn bundle_meta(data: &[u8]) {
    let Ok(props) = Vec::<Prop>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let props: Vec<(String, String)> = props
        .into_iter()
        .map(|p| {
            // Most generated properties hit a real key.
            let key = match keys::ALL.get(p.key as usize) {
                Some(k) => k.to_string(),
                None => format!("glimpse.{}", p.other_key),
            };
            (key, p.value)
        })
        .collect();
    let Ok(meta) = BundleMeta::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    else {
        return;
    };
    let again = meta.to_props();
    let reread = BundleMeta::from_props(again.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .unwrap_or_else(|e| panic!("written metadata does not parse: {e}: {again:?}"));
    // A bundle without a format version is written with the current one.
    let mut meta = meta;
    if meta.format.is_none() {
        meta.format = reread.format;
    }
    assert!(
        same_meta(&meta, &reread),
        "round trip changed the metadata:\n{meta:?}\n{reread:?}"
    );
    let dims = [1usize, 3, 224, 224].map(|d| glimpse_runtime::onnx_file::Dim::Fixed(d as i64));
    if let Ok(pre) = resolve_preprocess(&meta, &Overrides::default(), &dims) {
        pre.validate().expect("resolved preprocessing is valid");
    }
}

/// Equality up to NaN (a NaN mean parses and is written back as NaN, and NaN != NaN).
fn same_meta(a: &BundleMeta, b: &BundleMeta) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[derive(Arbitrary, Debug)]
struct RawInput<'a> {
    width: u16,
    height: u16,
    format: u8,
    data: &'a [u8],
}

/// The raw frame stream reader and the pixel-format converters: one frame of any size,
/// format and length converted to RGB, then the same bytes read as a raw stream.
pub fn raw_frames(data: &[u8]) {
    let Ok(input) = RawInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let format = PixelFormat::ALL[input.format as usize % PixelFormat::ALL.len()];
    // Sizes up to 1024 a side keep each run fast; the arithmetic is the same.
    let size = (
        u32::from(input.width) % 1025,
        u32::from(input.height) % 1025,
    );
    let frame = Frame::new(0, size, format, input.data.to_vec());
    if let Ok(img) = frame.to_rgb(&limits()) {
        if format != PixelFormat::Mjpeg {
            assert_eq!(img.dimensions(), size, "converted frame size");
        }
    }
    let Ok(mut source) = RawSource::new("fuzz".into(), input.data, size, format, None, &limits())
    else {
        return;
    };
    while let Ok(frame) = source.next_frame() {
        let img = frame.to_rgb(&limits()).expect("a whole raw frame converts");
        assert_eq!(img.dimensions(), size);
    }
}

/// The bearer token of the locked daemon; the seed requests carry it.
pub const FUZZ_TOKEN: &str = "fuzz-token-0123456789abcdef";

struct Http {
    runtime: tokio::runtime::Runtime,
    /// Without a token (the `Host`/`Origin` checks, answering to `board`).
    open: axum::Router,
    /// With [`FUZZ_TOKEN`] (the bearer check).
    locked: axum::Router,
    /// Loopback TCP, the daemon's own transport. (Over tokio's in-memory `duplex` pipe,
    /// hyper stopped answering pipelined requests after about 64 KiB of answers, with a
    /// client reading and writing at once; the same inputs over TCP answer at once.)
    listener: tokio::net::TcpListener,
}

fn http_app() -> &'static Http {
    static APP: OnceLock<Http> = OnceLock::new();
    APP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback port");
        Http {
            runtime,
            open: router(http_state(None)),
            locked: router(http_state(Some(FUZZ_TOKEN))),
            listener,
        }
    })
}

/// The daemon's state around the tiny model, with or without a token.
fn http_state(token: Option<&str>) -> Arc<AppState> {
    let classifier = Classifier::new(
        OnnxFile::from_bytes(TINY_MODEL).expect("tiny model parses"),
        &Overrides::default(),
    )
    .expect("tiny model loads");
    let loaded = Loaded {
        classifier,
        path: "tiny.onnx".into(),
        sha256: "0".repeat(64),
        size_bytes: TINY_MODEL.len() as u64,
        loaded_at: 0,
    };
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    Arc::new(AppState {
        model: Arc::new(ModelSlot::new(loaded, None)),
        metrics: Arc::new(Metrics::new()),
        token: token.map(|t| Token::new(t).expect("a valid token")),
        hosts: token
            .is_none()
            .then(|| HostPolicy::new("", &["board".to_string()])),
        limits: limits(),
        admission: Arc::new(tokio::sync::Semaphore::new(4)),
        workers: Arc::new(tokio::sync::Semaphore::new(1)),
        // A budget, so that the charges of bodies and decoded images are fuzzed too.
        memory: Some(glimpse_runtime::serve::memory::Budget::new(256 << 20)),
        event_streams: Arc::new(tokio::sync::Semaphore::new(2)),
        max_event_streams: 2,
        min_upload_rate: 1024,
        request_timeout: Duration::from_secs(5),
        default_top_k: 3,
        // No task installs models: a push or rollback is answered 503.
        changes: tokio::sync::mpsc::channel(1).0,
        max_model_bytes: 1 << 20,
        cameras: Vec::new(),
        // A collect folder that does not exist (so holds no frame, and nothing is ever
        // written there): ids and labels in paths are fuzzed too.
        queues: vec![Queue::new("/nonexistent/glimpse-fuzz-collect".into())],
        events: tokio::sync::broadcast::channel(1).0,
        sessions: Sessions::default(),
        viewers: Arc::new(tokio::sync::Semaphore::new(1)),
        max_viewers: 1,
        view_interval: Duration::from_millis(200),
        ready: true.into(),
        shutdown,
        started: Instant::now(),
    })
}

/// The daemon's HTTP handling: any bytes as one client connection to the real router
/// (hyper's HTTP/1 parser, host and token checks, routing, limits, multipart, decoding,
/// the model), over an in-memory pipe, once to a daemon without a token and once to one
/// with [`FUZZ_TOKEN`]. The server must answer or close within a bounded time, and never
/// with a server error other than 503 (overload).
pub fn http(data: &[u8]) {
    for locked in [false, true] {
        let answer = http_answer(data, locked);
        if let Some(status) = answer.strip_prefix(b"HTTP/1.1 ").and_then(|r| r.get(..3)) {
            assert!(
                status[0] != b'5' || status == b"503",
                "server error: {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
}

/// Everything the server (`locked`: the one with a token) sends back on a connection
/// that carries `data`, then closes its sending side.
pub fn http_answer(data: &[u8], locked: bool) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = http_app();
    let router = if locked { &app.locked } else { &app.open };
    app.runtime.block_on(async {
        let addr = app.listener.local_addr().expect("the listener's address");
        let (client, server) = tokio::try_join!(tokio::net::TcpStream::connect(addr), async {
            app.listener.accept().await.map(|(s, _)| s)
        },)
        .expect("a loopback connection");
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = tokio::spawn(async move {
            let _ = glimpse_runtime::serve::connection_builder()
                .serve_connection(hyper_util::rt::TokioIo::new(server), service)
                .await;
        });
        // A client that reads while it sends: one that sends pipelined requests without
        // reading stalls itself once both directions' buffers are full (the daemon's send
        // timeout then closes it; not fuzzed here).
        let (mut reader, mut writer) = client.into_split();
        let exchange = async {
            let send = async {
                let _ = writer.write_all(data).await;
                let _ = writer.shutdown().await;
            };
            let mut answer = Vec::new();
            let ((), _) = tokio::join!(send, reader.read_to_end(&mut answer));
            answer
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the server answers or closes the connection within 10 s");
        let _ = conn.await;
        answer
    })
}
