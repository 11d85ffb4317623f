//! TLS, both ways, with rustls: the certificate the gateway serves, and
//! the trust it places in an `https://` upstream.
//!
//! An upstream is trusted by the Web PKI roots (Mozilla's, as the
//! `webpki-roots` crate ships them) unless its service names a CA bundle,
//! which then replaces them: a private upstream behind its own CA is not
//! also trusted for any certificate a public CA would sign. A client
//! certificate is presented when the upstream asks for one (mutual TLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How to reach an `https://` upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// PEM certificates of the CAs to trust instead of the Web PKI roots.
    pub ca: Option<PathBuf>,
    /// PEM certificate chain to present (mutual TLS), with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// Why TLS settings cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no PEM of the expected kind.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the combination (a key that does not match its
    /// certificate, say).
    #[error("{0}")]
    Config(String),
}

fn installed_provider() {
    // Several crypto providers are linked in (ring, aws-lc); rustls needs
    // to be told which one serves.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The bytes of `path`, or the OS's reason (the PEM readers' own error
/// says only "I/O error").
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        what: e.to_string(),
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |what: String| TlsError::File {
        path: path.to_owned(),
        what,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(file_error("holds no certificate".into()));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::File {
        path: path.to_owned(),
        what: format!("not a PEM private key: {e}"),
    })
}

/// When the first certificate in the PEM file `path` (the server's own,
/// as a chain starts) stops being valid, in unix seconds.
///
/// # Errors
///
/// [`TlsError::File`] when it holds no certificate, or one that does not
/// parse as X.509.
pub fn expires_at(path: &Path) -> Result<i64, TlsError> {
    let chain = certificates(path)?;
    let (_, certificate) =
        x509_parser::parse_x509_certificate(chain[0].as_ref()).map_err(|e| TlsError::File {
            path: path.to_owned(),
            what: format!("not an X.509 certificate: {e}"),
        })?;
    Ok(certificate.validity().not_after.timestamp())
}

/// The server side: the certificate chain and key in these PEM files,
/// offering HTTP/2 and HTTP/1.1 by ALPN.
///
/// # Errors
///
/// [`TlsError`] naming the file that cannot be used.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    installed_provider();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| {
            TlsError::Config(format!("the certificate and key do not go together: {e}"))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side for an upstream: its roots and its client certificate.
///
/// # Errors
///
/// [`TlsError`] naming the file that cannot be used.
pub fn client_config(tls: &UpstreamTls) -> Result<rustls::ClientConfig, TlsError> {
    installed_provider();
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            for certificate in certificates(ca)? {
                roots.add(certificate).map_err(|e| TlsError::File {
                    path: ca.clone(),
                    what: format!("not a CA certificate: {e}"),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| {
                TlsError::Config(format!(
                    "{} and {}: the certificate and key do not go together: {e}",
                    cert.display(),
                    key.display()
                ))
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Config(
                "a client certificate needs both client_cert and client_key".into(),
            ))
        }
    };
    Ok(config)
}
