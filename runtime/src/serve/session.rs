//! The web page's sessions: `POST /login` trades the API token for a random session id in
//! an `HttpOnly`, `SameSite=Strict` cookie, which then authorizes the page's requests.
//!
//! Why a cookie and not the token in `sessionStorage`: the page's `<img>` MJPEG view and
//! its `EventSource` cannot send an `Authorization` header, and a cookie the page's
//! script cannot read cannot be stolen by a script either. The price is CSRF, answered
//! by `SameSite=Strict` and by [`same_origin`] on every state-changing request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, Method};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "glimpse_session";

/// How long a session lasts after its login.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most; a login beyond ends the oldest (a phone, a laptop and a few
/// forgotten tabs fit, and a flood of logins cannot grow the daemon's memory).
pub const MAX_SESSIONS: usize = 32;

/// The live sessions, by the digest of their id (the ids themselves are not kept).
#[derive(Default)]
pub struct Sessions {
    live: Mutex<Vec<([u8; 32], Instant)>>,
}

impl Sessions {
    /// Starts a session and returns its id (32 random bytes, hex).
    pub fn issue(&self) -> std::io::Result<String> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        live.retain(|(_, expires)| *expires > now);
        if live.len() >= MAX_SESSIONS {
            live.remove(0);
        }
        live.push((digest(&id), now + LIFETIME));
        Ok(id)
    }

    /// Whether the request carries the cookie of a live session.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        let Some(id) = cookie(headers) else {
            return false;
        };
        let given = digest(id);
        let now = Instant::now();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        // Every entry compared, in constant time each.
        live.iter().fold(false, |found, (d, expires)| {
            found | (bool::from(d.ct_eq(&given)) && *expires > now)
        })
    }

    /// Ends the request's session, if it has one.
    pub fn revoke(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            let given = digest(id);
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            live.retain(|(d, _)| !bool::from(d.ct_eq(&given)));
        }
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The session id in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` of a new session. `Secure` when the page came over HTTPS (a TLS
/// proxy in front): over plain HTTP the browser would drop a `Secure` cookie.
pub fn set_cookie(id: &str, https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    let value = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        LIFETIME.as_secs()
    );
    HeaderValue::from_str(&value).expect("a cookie of hex digits is a valid header")
}

/// The `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("glimpse_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether a method changes state (and so needs the CSRF check).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The CSRF check of a request authorized by the cookie: its `Origin` must be the server
/// itself (the `Host` the browser addressed). Browsers send `Origin` on every POST, PUT
/// and DELETE, so a missing one is refused too. `SameSite=Strict` alone is not enough:
/// another port of the same host is the same site.
pub fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let Some(origin) = text(header::ORIGIN) else {
        return Err("a request authorized by the session cookie must carry an Origin".into());
    };
    let host = text(header::HOST).unwrap_or("");
    if super::origin::same_origin(origin, host) {
        Ok(())
    } else {
        Err(format!(
            "cross-origin request refused: Origin {origin:?} is not this server ({host})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_session_lives_until_revoked_and_only_its_id_opens_it() {
        let s = Sessions::default();
        let id = s.issue().unwrap();
        assert_eq!(id.len(), 64);
        let with = |v: &str| headers(&[(header::COOKIE, v)]);
        assert!(s.check(&with(&format!("theme=dark; {COOKIE}={id}"))));
        assert!(!s.check(&with(&format!("{COOKIE}={}", &id[1..]))));
        assert!(!s.check(&with("other=1")));
        assert!(!s.check(&HeaderMap::new()));
        s.revoke(&with(&format!("{COOKIE}={id}")));
        assert!(!s.check(&with(&format!("{COOKIE}={id}"))));
    }

    #[test]
    fn sessions_are_capped_oldest_out() {
        let s = Sessions::default();
        let first = s.issue().unwrap();
        for _ in 0..MAX_SESSIONS {
            s.issue().unwrap();
        }
        let with = |id: &str| headers(&[(header::COOKIE, &format!("{COOKIE}={id}"))]);
        assert!(!s.check(&with(&first)));
        assert_eq!(s.live.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn only_the_servers_own_origin_passes() {
        let h = |origin: Option<&str>| {
            let mut pairs = vec![(header::HOST, "127.0.0.1:8080")];
            pairs.extend(origin.map(|o| (header::ORIGIN, o)));
            same_origin(&headers(&pairs))
        };
        assert_eq!(h(Some("http://127.0.0.1:8080")), Ok(()));
        assert!(h(Some("http://127.0.0.1:9999")).is_err());
        assert!(h(Some("http://evil.example")).is_err());
        assert!(h(Some("null")).is_err());
        assert!(h(None).is_err());
    }
}
