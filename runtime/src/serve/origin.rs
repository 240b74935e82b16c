//! Which `Host` and `Origin` values a daemon without a token answers: the defence against
//! DNS rebinding and cross-site requests from a browser on the same machine or LAN.
//!
//! Without a token, anything that can make a request is trusted, and a web page the user
//! visits can make requests: to `127.0.0.1:8080` directly (refused by the `Origin` check),
//! or to its own name after pointing that name's DNS at the board (DNS rebinding: the
//! browser then sends `Host: evil.example`, refused by the `Host` check). An IP address in
//! `Host` cannot come from rebinding (the page's origin would be that address), so
//! addresses are accepted; names must be loopback names, this machine's own name (and
//! its `.local` mDNS name) or one given with `--allowed-hosts`.

use std::net::IpAddr;

/// The names a token-less daemon answers to.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// Lower-case host names (no port) accepted besides IP addresses.
    names: Vec<String>,
}

/// Why a request's `Host` or `Origin` was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Foreign {
    /// A `Host` name this daemon does not answer to (421).
    Host(String),
    /// An `Origin` that is neither this server nor an allowed name (403).
    Origin(String),
}

impl HostPolicy {
    /// Loopback names, `hostname` and `hostname.local`, and `allowed` (names, any case).
    pub fn new(hostname: &str, allowed: &[String]) -> Self {
        let mut names: Vec<String> = ["localhost".to_string()]
            .into_iter()
            .chain(
                (!hostname.is_empty())
                    .then(|| [hostname.to_string(), format!("{hostname}.local")])
                    .into_iter()
                    .flatten(),
            )
            .chain(allowed.iter().cloned())
            .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        names.dedup();
        HostPolicy { names }
    }

    /// Checks a request's `Host` (required by HTTP/1.1; a request without one is refused
    /// by name `""`) and, when present, its `Origin`.
    pub fn check(&self, host: Option<&str>, origin: Option<&str>) -> Result<(), Foreign> {
        let host = host.unwrap_or("").trim();
        let name = host_name(host);
        if !(self.is_named(&name) || name.parse::<IpAddr>().is_ok()) {
            return Err(Foreign::Host(host.to_string()));
        }
        let Some(origin) = origin.map(str::trim) else {
            return Ok(());
        };
        if same_origin(origin, host) || self.is_named(&host_name(authority(origin))) {
            Ok(())
        } else {
            Err(Foreign::Origin(origin.to_string()))
        }
    }

    fn is_named(&self, name: &str) -> bool {
        name.ends_with(".localhost") || self.names.iter().any(|n| n == name)
    }
}

/// The `host[:port]` of an `Origin` (`scheme://authority`); empty for "null" (sandboxed
/// frames, file: pages), which has none.
fn authority(origin: &str) -> &str {
    origin
        .split_once("://")
        .map_or("", |(_, rest)| rest.trim_end_matches('/'))
}

/// Whether `origin` is the server the request addressed as `host`.
pub fn same_origin(origin: &str, host: &str) -> bool {
    let authority = authority(origin);
    !authority.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// The host part of `host[:port]` or `[v6]:port`, lower-case, without a trailing dot.
fn host_name(authority: &str) -> String {
    let name = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Foreign {
    pub fn message(&self) -> String {
        match self {
            Foreign::Host(h) => format!(
                "this server does not answer to Host {h:?} (without a token it answers only to IP addresses, localhost, its own name and --allowed-hosts)"
            ),
            Foreign::Origin(o) => {
                format!("cross-origin request refused: Origin {o:?} is not this server")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_addresses_and_origins() {
        let p = HostPolicy::new("board", &["Glimpse.Example".into()]);
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "192.168.1.20:8080",
            "board:8080",
            "board.local.",
            "glimpse.example",
            "app.localhost:1",
        ] {
            assert_eq!(p.check(Some(ok), None), Ok(()), "{ok}");
        }
        for bad in ["evil.example:8080", "localhost.evil.example", "", "boardx"] {
            assert_eq!(
                p.check(Some(bad), None),
                Err(Foreign::Host(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(p.check(None, None), Err(Foreign::Host("".into())));
        let h = Some("127.0.0.1:8080");
        assert_eq!(p.check(h, Some("http://127.0.0.1:8080")), Ok(()));
        assert_eq!(p.check(h, Some("https://glimpse.example")), Ok(()));
        assert_eq!(p.check(h, Some("http://localhost:3000")), Ok(()));
        for bad in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:9999",
            "http://192.168.1.66",
        ] {
            assert_eq!(
                p.check(h, Some(bad)),
                Err(Foreign::Origin(bad.into())),
                "{bad}"
            );
        }
    }
}
