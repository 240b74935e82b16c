//! Bearer-token check for the HTTP API, in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The secret every request (except health checks) must present as
/// `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Token {
    /// Only the digest is kept: comparing digests of equal length makes the comparison
    /// time independent of both the secret's length and how much of it a guess matches.
    digest: [u8; 32],
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    Wrong,
}

impl Refusal {
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing bearer token: send `Authorization: Bearer <token>`",
            Refusal::Malformed => "malformed Authorization header: expected `Bearer <token>`",
            Refusal::Wrong => "wrong bearer token",
        }
    }
}

impl Token {
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        let secret = secret.trim();
        anyhow::ensure!(!secret.is_empty(), "the API token is empty");
        anyhow::ensure!(
            secret.len() >= 16,
            "the API token is too short: expected at least 16 characters, got {}",
            secret.len()
        );
        Ok(Token {
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// Checks the value of an `Authorization` header.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), Refusal> {
        let header = header.ok_or(Refusal::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| Refusal::Malformed)?;
        let (scheme, given) = header.trim().split_once(' ').ok_or(Refusal::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Refusal::Malformed);
        }
        let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        if bool::from(given.ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_exact_token() {
        let t = Token::new("correct horse battery staple").unwrap();
        assert_eq!(
            t.check(Some(b"Bearer correct horse battery staple")),
            Ok(())
        );
        assert_eq!(
            t.check(Some(b"bearer correct horse battery staple")),
            Ok(())
        );
        assert_eq!(
            t.check(Some(b"Bearer correct horse battery stapl")),
            Err(Refusal::Wrong)
        );
        assert_eq!(t.check(Some(b"Bearer ")), Err(Refusal::Malformed));
        assert_eq!(
            t.check(Some(b"Basic Zm9vOmJhcg==")),
            Err(Refusal::Malformed)
        );
        assert_eq!(t.check(Some(&[0xff, 0xfe])), Err(Refusal::Malformed));
        assert_eq!(t.check(None), Err(Refusal::Missing));
    }

    #[test]
    fn refuses_weak_tokens() {
        assert!(Token::new("  ").is_err());
        assert!(Token::new("short").is_err());
    }
}
