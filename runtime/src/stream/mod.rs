//! Live classification of frame streams: cameras, image folders played as video, raw
//! frames on stdin or a FIFO. `frame` (pixel formats and conversion to RGB), `source` (where
//! frames come from), `fifo` (a named pipe that outlives its writers), `ffmpeg` (network
//! cameras and video files through a supervised ffmpeg), `open` (a source from
//! its description), `live` (the capture/classify loop
//! with the newest-frame policy and reconnection), `debounce` (state-change events),
//! `collect` (the frames worth labelling, and their queue), and
//! `v4l2` (the camera ioctl layer, behind the `camera` feature).

pub mod collect;
pub mod debounce;
pub mod ffmpeg;
pub mod fifo;
pub mod frame;
pub mod live;
pub mod open;
pub mod source;
#[cfg(feature = "camera")]
pub mod v4l2;

pub use collect::{CollectConfig, Collector};
pub use debounce::{DebounceConfig, Debouncer, Event};
pub use ffmpeg::FfmpegRequest;
pub use frame::{Frame, PixelFormat};
pub use live::{Classified, Counters, LiveOptions, Stats};
pub use open::{Named, OpenedSource, SourceSpec};
pub use source::{FolderSource, FrameSource, Interrupter, Opener, RawSource, SourceError};
