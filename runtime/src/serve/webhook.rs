//! The webhook action: each state change POSTed as JSON to a URL, signed with an HMAC
//! when a secret is set (`X-Glimpse-Signature: sha256=<hex>`, as GitHub signs its
//! webhooks), retried with backoff, from its own thread behind a bounded queue.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::metrics::Metrics;
use crate::stream::ffmpeg::redact;

/// Events waiting to be delivered; more are dropped (and counted).
const QUEUE: usize = 64;
/// Waits before the retries of a failed delivery.
const BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// Where and how to deliver.
#[derive(Clone)]
pub struct WebhookConfig {
    url: String,
    /// The URL as logged: its password, if any, replaced by `***`.
    shown: String,
    /// The HMAC-SHA256 key of the signature header.
    secret: Option<Vec<u8>>,
    /// One attempt's limit, connection to the last byte of the answer.
    timeout: Duration,
}

impl WebhookConfig {
    /// Checks that `url` is an http:// or https:// URL with a host.
    pub fn new(url: &str, secret: Option<String>, timeout: Duration) -> Result<WebhookConfig> {
        let shown = redact(url);
        let usable = url
            .parse::<ureq::http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !usable {
            anyhow::bail!("--webhook {shown:?}: expected an http:// or https:// URL with a host");
        }
        Ok(WebhookConfig {
            url: url.to_string(),
            shown,
            secret: secret.map(String::into_bytes),
            timeout,
        })
    }
}

/// Without the secret, and the URL's password hidden: settings get logged.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.shown)
            .field("signed", &self.secret.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The queue into the delivery thread.
pub struct Webhook {
    tx: SyncSender<Vec<u8>>,
    metrics: Arc<Metrics>,
}

impl Webhook {
    pub fn start(cfg: WebhookConfig, metrics: Arc<Metrics>) -> Result<Webhook> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || deliver_all(&cfg, &rx, &m))
            .context("starting the webhook thread")?;
        Ok(Webhook { tx, metrics })
    }

    /// Queues one event's JSON, never waiting: a full queue drops it.
    pub fn submit(&self, body: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(body) {
            self.metrics.error("webhook_dropped");
            log::warn!("webhook: event dropped, {QUEUE} still waiting to be delivered");
        }
    }
}

/// The `X-Glimpse-Signature` value of `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn deliver_all(cfg: &WebhookConfig, rx: &Receiver<Vec<u8>>, metrics: &Metrics) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(cfg.timeout))
        .http_status_as_error(false)
        .user_agent(concat!("glimpse/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    for body in rx {
        if let Err(e) = deliver(&agent, cfg, &body) {
            metrics.error("webhook");
            log::warn!("webhook {}: {e:#}", cfg.shown);
        }
    }
}

/// One event, retried after a network error, a timeout, a 5xx, 408 or 429; any other
/// answer is final (a 4xx will not change by asking again).
fn deliver(agent: &ureq::Agent, cfg: &WebhookConfig, body: &[u8]) -> Result<()> {
    let mut last = String::new();
    for (attempt, wait) in std::iter::once(Duration::ZERO).chain(BACKOFF).enumerate() {
        std::thread::sleep(wait);
        let mut request = agent
            .post(&cfg.url)
            .header("Content-Type", "application/json");
        if let Some(secret) = &cfg.secret {
            request = request.header("X-Glimpse-Signature", signature(secret, body));
        }
        match request.send(body) {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let status = r.status().as_u16();
                last = format!("answered {status}");
                if !(status >= 500 || status == 408 || status == 429) {
                    anyhow::bail!("{last}; not retried");
                }
            }
            Err(e) => last = e.to_string(),
        }
        log::debug!("webhook {}: attempt {}: {last}", cfg.shown, attempt + 1);
    }
    anyhow::bail!("{last}, {} attempts", BACKOFF.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_show_neither_the_secret_nor_the_password() {
        let cfg = WebhookConfig::new(
            "https://user:pa55@hooks.example/x",
            Some("k3y-value".into()),
            Duration::from_secs(1),
        )
        .unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("pa55") && !shown.contains("k3y"), "{shown}");
        assert!(shown.contains("user:***@hooks.example"), "{shown}");
        let e = WebhookConfig::new("hooks.example/x", None, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .contains("expected an http:// or https:// URL"),
            "{e}"
        );
    }

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
