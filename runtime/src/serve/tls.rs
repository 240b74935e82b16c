//! TLS to the MQTT broker (rustls with ring, no OpenSSL): the certificates to trust, and the
//! board's own when the broker asks for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Where the trust and the client identity come from.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM file of the CA certificates the broker's certificate must chain to; `None`: the
    /// system's store (Debian's ca-certificates, `$SSL_CERT_FILE`).
    pub ca: Option<PathBuf>,
    /// PEM certificate chain and PEM private key this board presents (mutual TLS).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Why the TLS settings cannot be used; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("no usable CA certificate in the system's store ({0}); give --mqtt-ca")]
    NoSystemRoots(String),
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls client configuration for these files: TLS 1.2 and 1.3, the broker verified
/// against the CA (its name or IP address must be in its certificate).
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(files.ca.as_deref())?);
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| file_error(key, format!("does not go with {}: {e}", cert.display())))?,
    };
    Ok(Arc::new(config))
}

fn file_error(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The CA file's certificates, else the system's.
fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates(path)? {
                store
                    .add(cert)
                    .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or("none found".into(), |e| e.to_string());
                return Err(TlsError::NoSystemRoots(why));
            }
        }
    }
    Ok(store)
}

/// Every certificate of a PEM file, at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(path, pem_reason(e)))?;
    if certs.is_empty() {
        return Err(file_error(
            path,
            "no PEM certificate (BEGIN CERTIFICATE) in it",
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            file_error(path, "no PEM private key (BEGIN PRIVATE KEY) in it")
        }
        e => file_error(path, pem_reason(e)),
    })
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => format!("cannot read it: {e}"),
        e => format!("not a PEM file: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_with_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(&TlsFiles {
            ca: Some(missing.clone()),
            client: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!("{}: cannot read it", missing.display())),
            "{e}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "just text\n").unwrap();
        let e = client_config(&TlsFiles {
            ca: Some(empty.clone()),
            client: None,
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            format!(
                "{}: no PEM certificate (BEGIN CERTIFICATE) in it",
                empty.display()
            )
        );
    }
}
