//! Connection admission: at most so many open connections in all and per peer address, TCP
//! keepalive with a user timeout and a send timeout, so that one host cannot lock the
//! others out, and neither a vanished client nor one that stops reading holds its slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;

/// Why a connection was refused (the `reason` label of the refusal counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// This peer already holds its share.
    PerPeer,
    /// Every connection slot is taken.
    Total,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerPeer => "per_peer",
            Refusal::Total => "total",
        }
    }

    /// The answer written, without reading the request, to a refused connection before
    /// it is closed. Best effort: a client that already sent its request may see a reset.
    fn answer(self) -> String {
        let why = match self {
            Refusal::PerPeer => "too many connections open from this address",
            Refusal::Total => "too many connections open",
        };
        let body = serde_json::json!({"error": why, "kind": "busy"}).to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

/// Counts open connections, in all and per peer address.
pub struct Admission {
    total: Arc<Semaphore>,
    per_peer: usize,
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection: its slots are given back when it is dropped.
pub struct Admitted {
    _total: OwnedSemaphorePermit,
    peer: IpAddr,
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Admission {
    pub fn new(total: usize, per_peer: usize) -> Self {
        Admission {
            total: Arc::new(Semaphore::new(total)),
            per_peer,
            peers: Arc::default(),
        }
    }

    /// A slot for a connection from `peer`, or why there is none. IPv4 peers reaching an
    /// IPv6 listener (`::ffff:a.b.c.d`) count as their IPv4 address.
    pub fn admit(&self, peer: IpAddr) -> Result<Admitted, Refusal> {
        let peer = peer.to_canonical();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let open = peers.entry(peer).or_default();
        if *open >= self.per_peer {
            return Err(Refusal::PerPeer);
        }
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        *open += 1;
        Ok(Admitted {
            _total: total,
            peer,
            peers: self.peers.clone(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = peers.get_mut(&self.peer) {
            *open -= 1;
            if *open == 0 {
                peers.remove(&self.peer);
            }
        }
    }
}

/// Tells a refused client why (without waiting for it), then closes the connection.
pub fn refuse(stream: TcpStream, why: Refusal) {
    let _ = stream.try_write(why.answer().as_bytes());
}

/// Keepalive probes after `idle` without traffic, every third of it, three of them; and
/// data unacknowledged for twice `idle` ends the connection (TCP_USER_TIMEOUT): a client
/// that vanished (unplugged, out of Wi-Fi range) is noticed within about `2 * idle`, even
/// while an event stream keeps writing to it. `None` leaves the kernel's defaults.
pub fn keepalive(stream: &TcpStream, idle: Option<Duration>) -> std::io::Result<()> {
    let Some(idle) = idle else {
        return Ok(());
    };
    let sock = socket2::SockRef::from(stream);
    let interval = (idle / 3).max(Duration::from_secs(1));
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval)
            .with_retries(3),
    )?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(idle * 2))?;
    Ok(())
}

/// The connection with a send timeout: a write that makes no progress for `timeout` fails
/// with `TimedOut`, which ends the connection. Keepalive cannot catch a client that is
/// there but reads nothing (it acknowledges the probes with a zero window), and a client
/// that pipelines requests without reading the answers would hold its slot for good.
pub fn with_send_timeout(
    stream: TcpStream,
    timeout: Duration,
) -> Pin<Box<TimeoutStream<TcpStream>>> {
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(timeout));
    Box::pin(stream)
}

/// Whether a connection ended on its send timeout ([`with_send_timeout`]).
pub fn is_send_timeout(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_complete_json_answers() {
        for why in [Refusal::PerPeer, Refusal::Total] {
            let text = why.answer();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
            let length = format!("content-length: {}", body.len());
            assert!(head.split("\r\n").any(|l| l == length), "{head}");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["kind"], "busy");
        }
    }

    #[test]
    fn each_peer_gets_its_share_and_slots_come_back() {
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.1".parse().unwrap();
        let adm = Admission::new(3, 2);
        let first = adm.admit(a).unwrap();
        let _second = adm.admit(b).unwrap();
        assert_eq!(adm.admit(a).err(), Some(Refusal::PerPeer));
        let _third = adm.admit(c).unwrap();
        assert_eq!(adm.admit(c).err(), Some(Refusal::Total));
        drop(first);
        let _again = adm.admit(a).unwrap();
        assert_eq!(adm.peers.lock().unwrap().len(), 2);
    }
}
