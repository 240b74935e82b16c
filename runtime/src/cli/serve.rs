//! `glimpse serve`: the classification daemon's command line and config file (a TOML file
//! whose keys are the long options, so every setting is also a flag).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use glimpse_runtime::serve::{
    self, ActionConfig, CameraSetup, ModelSource, MqttConfig, ServeOptions, Token, WebhookConfig,
};
use glimpse_runtime::stream::LiveOptions;
use glimpse_runtime::{Classifier, Limits, OnnxFile};

use super::source_args::{CollectArgs, EventArgs, PaceArgs, SourceArgs};
use super::ModelArgs;

/// Environment variable read for the API token when neither --token nor --token-file is
/// given (keeps the secret out of `ps` and shell history).
pub(super) const TOKEN_ENV: &str = "GLIMPSE_TOKEN";
const MQTT_PASSWORD_ENV: &str = "GLIMPSE_MQTT_PASSWORD";
const WEBHOOK_SECRET_ENV: &str = "GLIMPSE_WEBHOOK_SECRET";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Settings file (TOML). Its keys are this command's long options without the dashes
    /// (`listen = "0.0.0.0:8080"`, `top-k = 3`, `loop = true`), and a table prefixes its
    /// keys (`[mqtt] host = "localhost"` is --mqtt-host). Options on the command line
    /// override the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the settings and the model (load and probe it), print what would be served,
    /// and exit.
    #[arg(long)]
    pub check: bool,
    /// Address to listen on. The default accepts only local connections; put a reverse
    /// proxy in front for TLS.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        help_heading = "HTTP"
    )]
    pub listen: SocketAddr,
    /// Bearer token required on every endpoint but /healthz and /readyz (at least 16
    /// characters). Prefer --token-file, $GLIMPSE_TOKEN or the systemd credential `token`
    /// (LoadCredential=token:FILE): arguments are visible in `ps`.
    #[arg(
        long,
        value_name = "SECRET",
        conflicts_with = "token_file",
        help_heading = "HTTP"
    )]
    pub token: Option<String>,
    /// Read the bearer token from this file (its first line).
    #[arg(long, value_name = "FILE", help_heading = "HTTP")]
    pub token_file: Option<PathBuf>,
    /// Serve without a token on an address beyond loopback (refused otherwise): anyone on
    /// the network can then classify, read the camera's state and its metrics.
    #[arg(long, help_heading = "HTTP")]
    pub allow_unauthenticated: bool,
    /// Host names this server answers to besides IP addresses, localhost and its own
    /// name, when it has no token (comma-separated): other `Host` names get 421, other
    /// `Origin`s 403 (DNS rebinding, cross-site requests from a browser).
    #[arg(
        long,
        value_name = "NAME,...",
        value_delimiter = ',',
        help_heading = "HTTP"
    )]
    pub allowed_hosts: Vec<String>,
    /// Largest request body accepted (413 beyond).
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20, help_heading = "HTTP")]
    pub max_body_bytes: u64,
    /// Largest decoded image accepted, in pixels (413 beyond).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 24_000_000,
        help_heading = "HTTP"
    )]
    pub max_pixels: u64,
    /// Inferences run at once (default: the number of CPU cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256), help_heading = "HTTP")]
    pub workers: Option<u64>,
    /// Requests that may wait for a worker; beyond that, 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 32, help_heading = "HTTP")]
    pub queue: usize,
    /// Bytes the daemon may use in all (default: three quarters of this service's cgroup
    /// memory.max, else of the RAM; 0: no budget). What the loaded model leaves is the
    /// budget requests are charged against (body, then decoded pixels from the image's
    /// header) before they allocate; beyond it a request waits, then gets 503.
    #[arg(long, value_name = "BYTES", help_heading = "HTTP")]
    pub memory_budget: Option<u64>,
    /// Open connections at most; further ones are closed at once.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..), help_heading = "HTTP")]
    pub max_connections: u64,
    /// Open connections from one address at most (the rest of --max-connections stays
    /// free for others: health checks, Prometheus, Home Assistant); further ones get a 503
    /// and are closed.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..), help_heading = "HTTP")]
    pub max_connections_per_peer: u64,
    /// Event streams (`GET /v1/events`) open at once; further ones get 503.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..), help_heading = "HTTP")]
    pub max_event_streams: u64,
    /// Live views (`GET /v1/cameras/<name>/stream.mjpeg`, the web page's video) open at
    /// once; further ones get 503.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64), help_heading = "HTTP")]
    pub max_viewers: u64,
    /// Frames per second a live view sends at most. Frames are JPEG-encoded only while
    /// someone watches, once per frame for all viewers.
    #[arg(long, value_name = "FPS", default_value_t = 5.0, value_parser = parse_view_fps, help_heading = "HTTP")]
    pub view_fps: f64,
    /// Bytes per second a request body must arrive at on average, after its first 5 s
    /// (408 below; 0 for no minimum).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 1024,
        help_heading = "HTTP"
    )]
    pub min_upload_rate: u64,
    /// Seconds of silence before TCP keepalive probes a connection; a client that
    /// vanished is cut off within about twice this, even while events are written to it
    /// (0: the kernel's defaults, hours).
    #[arg(long, value_name = "SECS", default_value_t = 30, help_heading = "HTTP")]
    pub tcp_keepalive: u64,
    /// Seconds a request may take to upload and be classified (408/503 beyond).
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = positive_secs, help_heading = "HTTP")]
    pub request_timeout: f64,
    /// Seconds a client may take to send the request headers.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_secs, help_heading = "HTTP")]
    pub header_timeout: f64,
    /// Seconds a client may take none of an answer or event stream before its connection
    /// is closed (one that stops reading cannot hold a connection slot).
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = positive_secs, help_heading = "HTTP")]
    pub send_timeout: f64,
    /// Seconds to wait for in-flight requests at shutdown (SIGTERM).
    #[arg(long, value_name = "SECS", default_value_t = 20.0, value_parser = positive_secs, help_heading = "HTTP")]
    pub drain_timeout: f64,
    /// Labels returned per image unless the request says `?top_k=N`.
    #[arg(short = 'k', long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..), help_heading = "HTTP")]
    pub top_k: u64,
    #[command(flatten)]
    pub model: ModelArgs,
    /// An image every new model must classify before it is served (default: a built-in
    /// test pattern). Reload on SIGHUP or when the model file changes.
    #[arg(long, value_name = "FILE", help_heading = "Reload")]
    pub probe_image: Option<PathBuf>,
    /// Seconds between checks of the model file for changes.
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = positive_secs, help_heading = "Reload")]
    pub watch_interval: f64,
    /// Reload only on SIGHUP, not when the file changes.
    #[arg(long, help_heading = "Reload")]
    pub no_watch: bool,
    /// Model files larger than this are refused, at start and on reload.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20, help_heading = "Reload")]
    pub max_model_bytes: u64,
    /// A new model is first loaded and probed by a child process with at most this much
    /// address space, so that a model that would exhaust memory is refused before the
    /// daemon loads it (default: half of this service's cgroup memory.max, else of the
    /// RAM; 0: load in-process only).
    #[arg(long, value_name = "BYTES", help_heading = "Reload")]
    pub reload_memory_limit: Option<u64>,
    /// Load and probe this model file with these settings, print its sha256 and exit
    /// (what the child process of a reload or push runs).
    #[arg(long, hide = true, value_name = "FILE")]
    pub check_model: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
    #[command(flatten)]
    pub events: EventArgs,
    #[command(flatten)]
    pub actions: ActionArgs,
    #[command(flatten)]
    pub collect: CollectArgs,
    /// Cameras of the config file's `[[camera]]` tables (not options: a table each).
    #[arg(skip)]
    pub cameras: Vec<CameraTable>,
    /// MQTT broker host: publishes state changes, status and Home Assistant discovery.
    #[arg(long, value_name = "HOST", help_heading = "MQTT")]
    pub mqtt_host: Option<String>,
    /// Broker port (default 1883, 8883 with --mqtt-tls).
    #[arg(long, value_name = "PORT", help_heading = "MQTT")]
    pub mqtt_port: Option<u16>,
    /// Connect over TLS (rustls), the broker's certificate checked against --mqtt-ca or
    /// else the system's CA store, and its name or address against the certificate.
    #[arg(long, help_heading = "MQTT")]
    pub mqtt_tls: bool,
    /// PEM file of the CA certificates the broker's certificate must chain to (a private CA).
    #[arg(
        long,
        value_name = "FILE",
        requires = "mqtt_tls",
        help_heading = "MQTT"
    )]
    pub mqtt_ca: Option<PathBuf>,
    /// PEM certificate chain this board presents, for a broker that requires client
    /// certificates (with --mqtt-client-key).
    #[arg(long, value_name = "FILE", requires_all = ["mqtt_tls", "mqtt_client_key"], help_heading = "MQTT")]
    pub mqtt_client_cert: Option<PathBuf>,
    /// PEM private key of --mqtt-client-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "mqtt_client_cert",
        help_heading = "MQTT"
    )]
    pub mqtt_client_key: Option<PathBuf>,
    /// Send the MQTT user name and password without TLS to a broker that is not on
    /// loopback (refused otherwise: anyone on the network could read them).
    #[arg(long, help_heading = "MQTT")]
    pub mqtt_allow_cleartext: bool,
    /// Base topic (default glimpse/<client id>): <topic>/<camera>/state (retained; the
    /// camera `default` also on <topic>/state), <topic>/status, <topic>/availability.
    #[arg(long, value_name = "TOPIC", help_heading = "MQTT")]
    pub mqtt_topic: Option<String>,
    /// Client id (default glimpse-<hostname>-<6 hex digits of /etc/machine-id>, unique per
    /// board).
    #[arg(long, value_name = "ID", help_heading = "MQTT")]
    pub mqtt_client_id: Option<String>,
    #[arg(long, value_name = "USER", help_heading = "MQTT")]
    pub mqtt_username: Option<String>,
    /// File holding the MQTT password (else $GLIMPSE_MQTT_PASSWORD, else the systemd
    /// credential `mqtt-password`).
    #[arg(long, value_name = "FILE", help_heading = "MQTT")]
    pub mqtt_password_file: Option<PathBuf>,
    /// Home Assistant discovery prefix.
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "homeassistant",
        help_heading = "MQTT"
    )]
    pub mqtt_discovery_prefix: String,
    /// Do not publish Home Assistant discovery messages.
    #[arg(long, help_heading = "MQTT")]
    pub mqtt_no_discovery: bool,
    /// Seconds between status messages.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = positive_secs, help_heading = "MQTT")]
    pub mqtt_status_interval: f64,
}

/// What to do on each state change of a camera (the command line's, or a `[[camera]]`
/// table's).
#[derive(Debug, Clone, clap::Args)]
pub struct ActionArgs {
    /// On each state change, write a JPEG of the frame that confirmed it to
    /// DIR/<camera>/<UTC time>-<state>.jpg (atomically; its path goes in the event).
    #[arg(long, value_name = "DIR", help_heading = "Actions")]
    pub snapshot_dir: Option<PathBuf>,
    /// Keep at most this many snapshots (the oldest are removed).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1000,
        requires = "snapshot_dir",
        help_heading = "Actions"
    )]
    pub snapshot_keep: usize,
    /// Keep at most this many MiB of snapshots.
    #[arg(
        long,
        value_name = "MIB",
        requires = "snapshot_dir",
        help_heading = "Actions"
    )]
    pub snapshot_max_mb: Option<u64>,
    /// On each state change, run this shell command (`sh -c`) with the event JSON on
    /// stdin and the state in $GLIMPSE_STATE; its exit status is logged.
    #[arg(long, value_name = "COMMAND", help_heading = "Actions")]
    pub exec: Option<String>,
    /// Seconds the --exec command may run before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_secs, requires = "exec", help_heading = "Actions")]
    pub exec_timeout: f64,
    /// On each state change, POST the event JSON to this http:// or https:// URL
    /// (retried with backoff after a network error, a timeout or a 5xx).
    #[arg(long, value_name = "URL", help_heading = "Actions")]
    pub webhook: Option<String>,
    /// File holding the key of the `X-Glimpse-Signature: sha256=<HMAC>` header (else
    /// $GLIMPSE_WEBHOOK_SECRET, else the systemd credential `webhook-secret`; none: unsigned).
    #[arg(
        long,
        value_name = "FILE",
        requires = "webhook",
        help_heading = "Actions"
    )]
    pub webhook_secret_file: Option<PathBuf>,
    /// Seconds one webhook attempt may take, connection to the end of the answer.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_secs, requires = "webhook", help_heading = "Actions")]
    pub webhook_timeout: f64,
}

/// One `[[camera]]` table of the config file: a camera's options, those of the command
/// line's camera, under a name.
#[derive(Debug, Parser)]
#[command(name = "[[camera]]", no_binary_name = true, args_override_self = true)]
pub struct CameraTable {
    /// The camera's name, in URLs, events, MQTT topics, metrics and snapshot folders.
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
    #[command(flatten)]
    pub events: EventArgs,
    #[command(flatten)]
    pub actions: ActionArgs,
    #[command(flatten)]
    pub collect: CollectArgs,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("expected a positive number of seconds, got {s:?}")),
    }
}

/// `serve`'s options alone, to parse the config file's settings and the command line.
#[derive(Debug, Parser)]
#[command(
    name = "glimpse serve",
    max_term_width = 100,
    args_override_self = true
)]
struct ServeCommand {
    #[command(flatten)]
    args: Args,
}

/// A config file in command-line form: `serve`'s options, and each `[[camera]]` table's.
#[derive(Debug)]
pub struct ConfigArgs {
    pub args: Vec<String>,
    pub cameras: Vec<CameraTable>,
}

/// The command-line form of a config file: `key = value` becomes `--key value`, a table
/// `[t]` prefixes its keys with `t-`, `true` is a bare flag and `false` leaves it out;
/// each `[[camera]]` table is a camera's options on their own.
pub fn config_to_args(path: &Path, text: &str) -> Result<ConfigArgs> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end())
    })?;
    let cameras = match table.remove("camera") {
        Some(v) => camera_tables(path, v)?,
        None => Vec::new(),
    };
    let mut args = Vec::new();
    flatten(
        &path.display().to_string(),
        "",
        &table,
        &Scope::serve(),
        &mut args,
    )?;
    Ok(ConfigArgs { args, cameras })
}

/// The settings a table may hold, and how to say so when a key is not one of them.
struct Scope {
    known: Vec<String>,
    hint: String,
}

impl Scope {
    fn of(cmd: clap::Command, hint: impl Into<String>) -> Scope {
        let known = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .filter(|l| !["config", "help"].contains(&l.as_str()))
            .collect();
        Scope {
            known,
            hint: hint.into(),
        }
    }

    fn serve() -> Scope {
        Scope::of(
            ServeCommand::command(),
            "settings are the long options of `glimpse serve --help`",
        )
    }

    fn camera() -> Scope {
        let mut scope = Scope::of(CameraTable::command(), "");
        scope.hint = format!("a [[camera]] table takes {}", scope.known.join(", "));
        scope
    }
}

/// The cameras of `camera = [...]` (`[[camera]]` tables), each parsed as its options.
fn camera_tables(path: &Path, value: toml::Value) -> Result<Vec<CameraTable>> {
    let toml::Value::Array(tables) = value else {
        bail!(
            "{}: `camera` must be [[camera]] tables (one per camera, each with a name and a \
             source), got {}",
            path.display(),
            value.type_str()
        );
    };
    let scope = Scope::camera();
    let mut cameras = Vec::new();
    for (n, table) in tables.iter().enumerate() {
        let which = match table.get("name").and_then(|v| v.as_str()) {
            Some(name) => format!("[[camera]] {name:?}"),
            None => format!("[[camera]] number {}", n + 1),
        };
        let toml::Value::Table(table) = table else {
            bail!(
                "{}: {which}: expected a table, got {}",
                path.display(),
                table.type_str()
            );
        };
        let mut args = Vec::new();
        let place = format!("{}: {which}", path.display());
        flatten(&place, "", table, &scope, &mut args)?;
        let camera = CameraTable::try_parse_from(args)
            .map_err(|e| anyhow::anyhow!("{place}: {}", clap_message(&e)))?;
        cameras.push(camera);
    }
    Ok(cameras)
}

/// A clap error as one message: without its `error: ` prefix, usage and `--help` hint,
/// which name a command line that a config file's table does not have.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let text = text.trim_start_matches("error: ");
    let end = ["\n\nUsage:", "\n\nFor more information"]
        .iter()
        .filter_map(|tail| text.find(tail))
        .min()
        .unwrap_or(text.len());
    text[..end].trim_end().to_string()
}

/// A table's settings as long options (`[mqtt] host` is `--mqtt-host`), each checked
/// against `scope`; errors name `place`, the file and table.
fn flatten(
    place: &str,
    prefix: &str,
    table: &toml::Table,
    scope: &Scope,
    out: &mut Vec<String>,
) -> Result<()> {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}-{key}")
        };
        if let (true, "thresholds", toml::Value::Table(t)) =
            (prefix.is_empty(), key.as_str(), value)
        {
            label_thresholds(place, t, out)?;
            continue;
        }
        if let toml::Value::Table(t) = value {
            flatten(place, &key, t, scope, out)?;
            continue;
        }
        if !scope.known.contains(&key) {
            bail!("{place}: unknown setting `{key}` ({})", scope.hint);
        }
        let scalar = |v: &toml::Value| -> Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!(
                    "{}: `{key}`: expected a string, number or boolean, got {}",
                    place,
                    other.type_str()
                ),
            })
        };
        match value {
            toml::Value::Boolean(true) => out.push(format!("--{key}")),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                let items: Vec<String> = items.iter().map(&scalar).collect::<Result<_>>()?;
                out.push(format!("--{key}={}", items.join(",")));
            }
            v => out.push(format!("--{key}={}", scalar(v)?)),
        }
    }
    Ok(())
}

/// `thresholds = { label = P, ... }` as `--label-threshold=label=P` options.
fn label_thresholds(place: &str, table: &toml::Table, out: &mut Vec<String>) -> Result<()> {
    for (label, p) in table {
        let p = match p {
            toml::Value::Float(f) => *f,
            toml::Value::Integer(i) => *i as f64,
            other => bail!(
                "{}: `thresholds.{label}`: expected a probability, got {}",
                place,
                other.type_str()
            ),
        };
        out.push(format!("--label-threshold={label}={p}"));
    }
    Ok(())
}

/// Re-reads the options with the config file's settings placed before the command line's
/// (so that the command line wins).
fn with_config(args: Args) -> Result<Args> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let ConfigArgs {
        args: from_file,
        cameras,
    } = config_to_args(&path, &text)?;
    let command_line: Vec<OsString> = std::env::args_os()
        .skip_while(|a| a != "serve")
        .skip(1)
        .collect();
    let argv = std::iter::once(OsString::from("glimpse serve"))
        .chain(from_file.into_iter().map(OsString::from))
        .chain(command_line);
    let matches = ServeCommand::command()
        .try_get_matches_from(argv)
        .map_err(|e| {
            anyhow::anyhow!(
                "{} (settings from {} included)",
                e.to_string().trim_end(),
                path.display()
            )
        })?;
    let mut args = ServeCommand::from_arg_matches(&matches)?.args;
    args.cameras = cameras;
    Ok(args)
}

/// The first line of a secret file; a file that group or others may read is used, with a
/// warning.
pub(super) fn read_secret_file(path: &Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} from {}", path.display()))?;
    warn_if_shared(path, what);
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        bail!("{}: the {what} file is empty", path.display());
    }
    Ok(line)
}

fn warn_if_shared(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(mode) = std::fs::metadata(path).map(|m| m.permissions().mode()) else {
        return;
    };
    if mode & 0o077 != 0 {
        log::warn!(
            "{}: the {what} file is readable by group or others (mode {:04o}): chmod 600 it",
            path.display(),
            mode & 0o7777
        );
    }
}

/// A secret from the environment variable `env` if it is set and not empty, else from the
/// systemd credential `name` of this service (`LoadCredential=NAME:...`: the drop-ins in
/// cross/packaging/ pass the token and the MQTT password this way).
fn env_or_credential(env: &str, name: &str, what: &str) -> Result<Option<String>> {
    if let Some(value) = std::env::var(env).ok().filter(|v| !v.is_empty()) {
        return Ok(Some(value));
    }
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
        return Ok(None);
    };
    let path = PathBuf::from(dir).join(name);
    if !path.is_file() {
        return Ok(None);
    }
    read_secret_file(&path, what).map(Some)
}

/// A topic glimpse publishes under: no MQTT wildcards, no empty levels at its ends, no NUL.
fn check_topic(option: &str, topic: &str) -> Result<()> {
    let problem = if topic.is_empty() {
        "is empty"
    } else if topic.contains(['+', '#']) {
        "holds a wildcard (+ or #), which a topic to publish to cannot"
    } else if topic.starts_with('/') || topic.ends_with('/') {
        "starts or ends with /"
    } else if topic.contains('\0') {
        "holds a NUL character"
    } else {
        return Ok(());
    };
    bail!("{option} {topic:?} {problem}")
}

/// The default MQTT client id, `glimpse-<hostname>-<6 hex digits of /etc/machine-id>`:
/// two boards left at the same host name (every Pi is `raspberrypi`) would otherwise
/// take turns kicking each other off the broker.
fn default_client_id() -> String {
    let host = Some(serve::hostname())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "device".into());
    let machine = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|id| id.trim().chars().take(6).collect::<String>())
        .filter(|id| id.len() == 6 && id.chars().all(|c| c.is_ascii_hexdigit()));
    match machine {
        Some(id) => format!("glimpse-{host}-{id}"),
        None => format!("glimpse-{host}"),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let args = with_config(args)?;
    let token = token(&args)?;
    let workers = args
        .workers
        .map(|w| w as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let limits = Limits {
        max_bytes: args.max_body_bytes,
        max_pixels: args.max_pixels,
        ..Limits::default()
    };
    let model_path = args.model.path()?;
    let overrides = args.model.overrides()?;
    glimpse_runtime::classifier::set_inference_threads(args.model.intra_threads as usize);
    let loader: serve::Loader = Arc::new(move |bytes: &[u8]| {
        let classifier = Classifier::new(OnnxFile::from_bytes(bytes)?, &overrides)?;
        super::model_args::warn_assumed(&classifier);
        Ok(classifier)
    });
    let model = Arc::new(ModelSource {
        loader,
        path: model_path,
        probe: args.probe_image.clone(),
        max_bytes: args.max_model_bytes,
        child: reload_check(&args),
    });
    if let Some(file) = &args.check_model {
        let loaded = model.check(file)?;
        super::print(&format!(
            "{}{}\n",
            serve::child_check::OK_PREFIX,
            loaded.sha256
        ))
        .context("writing output")?;
        return Ok(ExitCode::SUCCESS);
    }
    let opts = ServeOptions {
        listen: args.listen,
        token,
        allowed_hosts: args.allowed_hosts.clone(),
        limits,
        workers,
        queue: args.queue,
        memory_budget: args
            .memory_budget
            .unwrap_or_else(|| serve::memory::ceiling().map_or(0, serve::memory::default_budget)),
        max_connections: args.max_connections as usize,
        max_connections_per_peer: args.max_connections_per_peer as usize,
        max_event_streams: args.max_event_streams as usize,
        max_viewers: args.max_viewers as usize,
        view_fps: args.view_fps,
        min_upload_rate: args.min_upload_rate,
        tcp_keepalive: (args.tcp_keepalive > 0).then(|| Duration::from_secs(args.tcp_keepalive)),
        request_timeout: Duration::from_secs_f64(args.request_timeout),
        header_timeout: Duration::from_secs_f64(args.header_timeout),
        send_timeout: Duration::from_secs_f64(args.send_timeout),
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
        default_top_k: args.top_k as usize,
        model,
        watch_model: (!args.no_watch).then(|| Duration::from_secs_f64(args.watch_interval)),
        cameras: cameras(&args, limits)?,
        mqtt: mqtt(&args)?,
    };
    if args.check {
        return check(&opts);
    }
    serve::run(opts)?;
    Ok(ExitCode::SUCCESS)
}

/// The child process that checks a new model before a reload or push: this program
/// again, with this daemon's options and `--check-model=FILE`, under
/// --reload-memory-limit.
fn reload_check(args: &Args) -> Option<serve::child_check::ChildCheck> {
    let memory_limit = match args.reload_memory_limit {
        Some(0) => return None,
        Some(bytes) => bytes,
        None => serve::memory::ceiling().map_or(1 << 30, |b| b / 2),
    };
    // /proc/self/exe is this very binary even after a package upgrade replaced the file.
    let command = [OsString::from("/proc/self/exe"), "serve".into()]
        .into_iter()
        .chain(std::env::args_os().skip_while(|a| a != "serve").skip(1))
        .collect();
    Some(serve::child_check::ChildCheck {
        command,
        memory_limit,
        timeout: RELOAD_CHECK_TIMEOUT,
    })
}

/// A model check that takes longer is stopped (a large model on a Pi Zero loads in
/// tens of seconds).
const RELOAD_CHECK_TIMEOUT: Duration = Duration::from_secs(300);

/// The API token: --token, --token-file, the environment or the systemd credential. Without one, listening beyond
/// loopback needs --allow-unauthenticated.
fn token(args: &Args) -> Result<Option<Token>> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(read_secret_file(f, "API token")?),
        (None, None) => env_or_credential(TOKEN_ENV, "token", "API token")?,
    }
    .map(|t| Token::new(&t))
    .transpose()?;
    if token.is_none() && !args.listen.ip().is_loopback() {
        if !args.allow_unauthenticated {
            bail!(
                "refusing to listen on {} without a token: anyone who can reach this address could use the API. Set --token-file or ${TOKEN_ENV}, or pass --allow-unauthenticated (`allow-unauthenticated = true`) on a trusted network",
                args.listen
            );
        }
        log::warn!(
            "listening on {} without a token (--allow-unauthenticated): anyone who can reach this address can use the API",
            args.listen
        );
    }
    Ok(token)
}

/// The cameras to classify continuously: the command line's (named `default`), if it
/// names a source, then the config file's `[[camera]]` tables. Names are checked here:
/// each is unique and fit for URLs, MQTT topics and folder names.
fn cameras(args: &Args, limits: Limits) -> Result<Vec<CameraSetup>> {
    let command_line = CameraTable {
        name: serve::DEFAULT_CAMERA.into(),
        source: args.source.clone(),
        pace: args.pace.clone(),
        events: args.events.clone(),
        actions: args.actions.clone(),
        collect: args.collect.clone(),
    };
    let tables = args.cameras.iter().map(|t| (true, t));
    let mut cameras: Vec<CameraSetup> = Vec::new();
    for (is_table, table) in std::iter::once((false, &command_line)).chain(tables) {
        check_camera_name(&table.name)?;
        if cameras.iter().any(|c| c.name == table.name) {
            bail!(
                "two cameras are named {:?}: each needs a name of its own{}",
                table.name,
                match table.name.as_str() {
                    serve::DEFAULT_CAMERA => " (the command line's camera is named default)",
                    _ => "",
                }
            );
        }
        let setup = camera(table, limits).with_context(|| format!("camera {}", table.name))?;
        match setup {
            Some(setup) => cameras.push(setup),
            None if is_table => bail!(
                "camera {}: no source: say where its frames come from (`source = \"rtsp://...\"`)",
                table.name
            ),
            None => {}
        }
    }
    Ok(cameras)
}

/// A camera name: 1 to 64 letters, digits, `-` and `_`, as it goes into URLs, MQTT topics,
/// metric labels and folder names as it is.
fn check_camera_name(name: &str) -> Result<()> {
    let fits = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    anyhow::ensure!(
        (1..=64).contains(&name.len()) && name.chars().all(fits),
        "camera name {name:?}: use 1 to 64 letters, digits, '-' and '_' (it names the \
         camera's URLs, MQTT topics and snapshot folder)"
    );
    Ok(())
}

/// The camera of one set of camera options, if they name a source.
fn camera(table: &CameraTable, limits: Limits) -> Result<Option<CameraSetup>> {
    let Some(spec) = table.source.spec()? else {
        return Ok(None);
    };
    let crop = table.source.crop(&spec)?;
    let source = spec.open(limits, true).map_err(super::source_args::hint)?;
    let mut describe = match crop {
        Some(crop) => format!("{}, crop {crop}", source.describe),
        None => source.describe,
    };
    let collect = table.collect.config();
    if let Some(c) = &collect {
        describe.push_str(&format!(", collecting into {}", c.dir.display()));
    }
    let actions = &table.actions;
    Ok(Some(CameraSetup {
        name: table.name.clone(),
        open: source.opener,
        describe,
        live: LiveOptions {
            every: table.pace.every,
            max_fps: table.pace.max_fps,
            reopen: source.reopen,
            ..LiveOptions::default()
        },
        debounce: table.events.debounce(),
        limits,
        crop,
        actions: ActionConfig {
            snapshot_dir: actions.snapshot_dir.clone(),
            snapshot_keep: Some(actions.snapshot_keep),
            snapshot_max_bytes: actions.snapshot_max_mb.map(|m| m << 20),
            exec: actions.exec.clone(),
            exec_timeout: Duration::from_secs_f64(actions.exec_timeout),
            webhook: webhook(actions)?,
        },
        collect,
    }))
}

/// The webhook of --webhook, its URL checked and its secret read now.
fn webhook(args: &ActionArgs) -> Result<Option<WebhookConfig>> {
    let Some(url) = &args.webhook else {
        return Ok(None);
    };
    let secret = match &args.webhook_secret_file {
        Some(f) => Some(read_secret_file(f, "webhook secret")?),
        None => env_or_credential(WEBHOOK_SECRET_ENV, "webhook-secret", "webhook secret")?,
    };
    let timeout = Duration::from_secs_f64(args.webhook_timeout);
    Ok(Some(WebhookConfig::new(url, secret, timeout)?))
}

/// The MQTT connection, if --mqtt-host was given.
fn mqtt(args: &Args) -> Result<Option<MqttConfig>> {
    let Some(host) = &args.mqtt_host else {
        return Ok(None);
    };
    let client_id = args
        .mqtt_client_id
        .clone()
        .unwrap_or_else(default_client_id);
    let password = match &args.mqtt_password_file {
        Some(f) => Some(read_secret_file(f, "MQTT password")?),
        None => env_or_credential(MQTT_PASSWORD_ENV, "mqtt-password", "MQTT password")?,
    };
    let credentials = match (&args.mqtt_username, password) {
        (Some(u), p) => Some((u.clone(), p.unwrap_or_default())),
        (None, Some(_)) => bail!("an MQTT password was given without --mqtt-username"),
        (None, None) => None,
    };
    let tls = args.mqtt_tls.then(|| mqtt_tls(args)).transpose()?;
    if credentials.is_some() && tls.is_none() && !is_loopback(host) && !args.mqtt_allow_cleartext {
        bail!(
            "refusing to send the MQTT user name and password in clear to {host}, which is not \
             on loopback: add --mqtt-tls (and --mqtt-ca for a private CA), or \
             --mqtt-allow-cleartext on a network you trust"
        );
    }
    let topic = args
        .mqtt_topic
        .clone()
        .unwrap_or_else(|| format!("glimpse/{}", serve::mqtt::node_id(&client_id)));
    check_topic("--mqtt-topic", &topic)?;
    if !args.mqtt_no_discovery {
        check_topic("--mqtt-discovery-prefix", &args.mqtt_discovery_prefix)?;
    }
    Ok(Some(MqttConfig {
        host: host.clone(),
        port: args
            .mqtt_port
            .unwrap_or(if args.mqtt_tls { 8883 } else { 1883 }),
        topic,
        client_id,
        credentials,
        tls,
        discovery_prefix: (!args.mqtt_no_discovery).then(|| args.mqtt_discovery_prefix.clone()),
        status_interval: Duration::from_secs_f64(args.mqtt_status_interval),
    }))
}

/// The TLS settings of --mqtt-ca and --mqtt-client-cert/--mqtt-client-key, files checked now.
fn mqtt_tls(args: &Args) -> Result<Arc<rustls::ClientConfig>> {
    if let Some(key) = &args.mqtt_client_key {
        warn_if_shared(key, "MQTT client key");
    }
    let files = serve::tls::TlsFiles {
        ca: args.mqtt_ca.clone(),
        client: args
            .mqtt_client_cert
            .clone()
            .zip(args.mqtt_client_key.clone()),
    };
    Ok(serve::tls::client_config(&files)?)
}

/// `--view-fps`: more than 0, at most 30.
fn parse_view_fps(s: &str) -> Result<f64, String> {
    let fps: f64 = s
        .parse()
        .map_err(|_| format!("expected frames per second, got {s:?}"))?;
    if fps > 0.0 && fps <= 30.0 {
        Ok(fps)
    } else {
        Err(format!(
            "expected more than 0 and at most 30 frames per second, got {fps}"
        ))
    }
}

/// Whether `host` is this machine: `localhost` (or a name under it) or a loopback address.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `--check`: loads and probes the model and says what would be served.
fn check(opts: &ServeOptions) -> Result<ExitCode> {
    let loaded = opts.model.load()?;
    super::print(&format!(
        "ok: would serve {} (sha256 {}, {} classes) on http://{} with {} worker(s), queue {}, {}{}\n",
        opts.model.path.display(),
        loaded.sha256,
        loaded.classifier.labels.len(),
        opts.listen,
        opts.workers,
        opts.queue,
        if opts.token.is_some() { "bearer token required" } else { "no token" },
        opts.attachments(),
    ))
    .context("writing output")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_become_options() {
        let toml = r#"
            listen = "0.0.0.0:9000"
            top-k = 3
            loop = true
            no-watch = false
            watch = ["cat", "dog"]
            thresholds = { cat = 0.8, "tabby, tabby cat" = 0.25 }
            request-timeout = 2.5
            [mqtt]
            host = "localhost"
            port = 1884
        "#;
        let args = config_to_args(Path::new("g.toml"), toml).unwrap().args;
        assert_eq!(
            args,
            [
                "--listen=0.0.0.0:9000",
                "--loop",
                "--mqtt-host=localhost",
                "--mqtt-port=1884",
                "--request-timeout=2.5",
                "--label-threshold=cat=0.8",
                "--label-threshold=tabby, tabby cat=0.25",
                "--top-k=3",
                "--watch=cat,dog"
            ]
        );
        let parsed = ServeCommand::try_parse_from(
            std::iter::once("glimpse serve".to_string())
                .chain(args.into_iter().filter(|a| a != "--loop"))
                .chain(["--top-k".to_string(), "7".to_string()]),
        )
        .unwrap()
        .args;
        assert_eq!(parsed.listen.port(), 9000);
        assert_eq!(parsed.top_k, 7, "the command line wins over the file");
        assert_eq!(parsed.mqtt_port, Some(1884));
        assert_eq!(
            parsed.events.watch.as_deref(),
            Some(&["cat".to_string(), "dog".to_string()][..])
        );
        assert_eq!(
            parsed.events.label_thresholds,
            [
                ("cat".to_string(), 0.8),
                ("tabby, tabby cat".to_string(), 0.25)
            ]
        );
    }

    #[test]
    fn camera_tables_are_cameras_of_their_own() {
        let toml = r#"
            listen = "0.0.0.0:9000"
            [[camera]]
            name = "gate"
            source = "rtsp://10.0.0.2/stream"
            crop = "0.5,0,0.5,1"
            threshold = 0.7
            thresholds = { espresso = 0.8 }
            watch = ["espresso", "cup"]
            hold-frames = 5
            max-fps = 2
            snapshot-dir = "/var/lib/glimpse/snapshots"
            [[camera]]
            name = "door"
            source = "/run/door.yuyv"
            size = "320x240"
            format = "yuyv"
            exec = "logger door"
        "#;
        let config = config_to_args(Path::new("g.toml"), toml).unwrap();
        assert_eq!(config.args, ["--listen=0.0.0.0:9000"]);
        let [gate, door] = &config.cameras[..] else {
            panic!("{:?}", config.cameras)
        };
        assert_eq!(gate.name, "gate");
        assert_eq!(
            gate.source.source.as_deref(),
            Some("rtsp://10.0.0.2/stream")
        );
        assert_eq!(gate.source.crop.unwrap().to_string(), "0.5,0,0.5,1");
        assert_eq!(gate.events.threshold, 0.7);
        assert_eq!(
            gate.events.label_thresholds,
            [("espresso".to_string(), 0.8)]
        );
        assert_eq!(gate.events.hold_frames, 5);
        assert_eq!(gate.pace.max_fps, Some(2.0));
        assert!(gate.actions.snapshot_dir.is_some() && gate.actions.exec.is_none());
        assert_eq!(door.source.size, Some((320, 240)));
        assert_eq!(door.actions.exec.as_deref(), Some("logger door"));
        assert_eq!(door.events.threshold, 0.5, "each table has the defaults");
    }

    #[test]
    fn bad_camera_tables_are_refused_naming_the_table() {
        let refused = |toml: &str| {
            config_to_args(Path::new("g.toml"), toml)
                .unwrap_err()
                .to_string()
        };
        let e = refused("[[camera]]\nname = \"gate\"\nsorce = \"x\"");
        assert!(
            e.contains("g.toml: [[camera]] \"gate\"") && e.contains("unknown setting `sorce`"),
            "{e}"
        );
        assert!(e.contains("name, source"), "the keys it takes: {e}");
        let e = refused("[[camera]]\nsource = \"rtsp://x\"");
        assert!(
            e.contains("[[camera]] number 1") && e.contains("--name"),
            "{e}"
        );
        let e = refused("[camera]\nname = \"gate\"");
        assert!(e.contains("must be [[camera]] tables"), "{e}");
        let e = refused("[[camera]]\nname = \"gate\"\nmqtt-host = \"x\"");
        assert!(e.contains("unknown setting `mqtt-host`"), "{e}");
    }

    #[test]
    fn camera_names_must_fit_urls_and_topics() {
        check_camera_name("gate-1_b").unwrap();
        for bad in ["", "front door", "a/b", "+", "é", &"x".repeat(65)] {
            let e = check_camera_name(bad).unwrap_err().to_string();
            assert!(e.contains("letters, digits"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn unknown_and_malformed_settings_are_refused() {
        let e = config_to_args(Path::new("g.toml"), "lisen = \"x\"").unwrap_err();
        assert!(
            e.to_string().contains("g.toml: unknown setting `lisen`"),
            "{e}"
        );
        let e = config_to_args(Path::new("g.toml"), "config = \"other.toml\"").unwrap_err();
        assert!(e.to_string().contains("unknown setting `config`"), "{e}");
        let e = config_to_args(Path::new("g.toml"), "listen = ").unwrap_err();
        assert!(e.to_string().starts_with("g.toml: "), "{e}");
        let e = config_to_args(Path::new("g.toml"), "[mqtt]\nhost = { a = 1 }").unwrap_err();
        assert!(
            e.to_string().contains("unknown setting `mqtt-host-a`"),
            "{e}"
        );
    }
}
