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
    /// A file cannot be read, or does not hold what its setting names.
    #[error("{path}: {what}")]
    File {
        /// The setting that names the file (`ca`, `client_cert`,
        /// `client_key`; `cert` and `key` for the listener): one file may
        /// be named by two.
        setting: &'static str,
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

/// A file named by a setting.
#[derive(Clone, Copy)]
struct Named<'a> {
    setting: &'static str,
    path: &'a Path,
}

impl Named<'_> {
    fn error(self, what: impl Into<String>) -> TlsError {
        TlsError::File {
            setting: self.setting,
            path: self.path.to_owned(),
            what: what.into(),
        }
    }

    /// The bytes of the file, or the OS's reason (the PEM readers' own
    /// error says only "I/O error").
    fn read(self) -> Result<Vec<u8>, TlsError> {
        std::fs::read(self.path).map_err(|e| self.error(e.to_string()))
    }

    fn certificates(self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.read()?)
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(format!("not PEM certificates: {e}")))?;
        if chain.is_empty() {
            return Err(self.error("holds no certificate"));
        }
        Ok(chain)
    }

    fn x509<'c>(
        self,
        certificate: &'c CertificateDer<'_>,
    ) -> Result<x509_parser::certificate::X509Certificate<'c>, TlsError> {
        x509_parser::parse_x509_certificate(certificate.as_ref())
            .map(|(_, parsed)| parsed)
            .map_err(|e| self.error(format!("not an X.509 certificate: {e}")))
    }

    /// A chain to present, its first certificate the one TLS can carry:
    /// rustls says an X.509 v1 certificate's key does not match it.
    fn chain(self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let chain = self.certificates()?;
        let version = self.x509(&chain[0])?.version();
        if version != x509_parser::x509::X509Version::V3 {
            return Err(self.error(format!(
                "holds an X.509 v{} certificate: TLS takes version 3 only (one with extensions); issue it anew",
                version.0 + 1
            )));
        }
        Ok(chain)
    }

    /// Trust anchors: CA certificates, or self-signed ones (an upstream's
    /// own, pinned). A server's certificate that a CA signed is refused:
    /// it would pass this check and vouch for no upstream, not even its
    /// own.
    fn anchors(self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certificates = self.certificates()?;
        for (n, certificate) in certificates.iter().enumerate() {
            let parsed = self.x509(certificate)?;
            // By its own key, not only by name: test CAs and their
            // servers often share one default name.
            let self_signed = parsed.subject().as_raw() == parsed.issuer().as_raw()
                && parsed.verify_signature(None).is_ok();
            if !parsed.is_ca() && !self_signed {
                return Err(self.error(format!(
                    "certificate {} ({}) is neither a CA's nor self-signed: it vouches for no upstream; give the certificate of the CA that issued it ({})",
                    n + 1,
                    parsed.subject(),
                    parsed.issuer()
                )));
            }
        }
        Ok(certificates)
    }

    fn private_key(self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let pem = self.read()?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            // An encrypted key's PEM label is one the reader does not
            // know, and it says only "no items found".
            let text = String::from_utf8_lossy(&pem);
            if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
                || text.contains("Proc-Type: 4,ENCRYPTED")
            {
                self.error("holds an encrypted private key: give it unencrypted (`openssl pkey -in KEY -out PLAIN`), readable by the gateway only")
            } else {
                self.error(format!("not a PEM private key: {e}"))
            }
        })
    }
}

/// When the first certificate in the PEM file `path` (the one presented,
/// as a chain starts) stops being valid, in unix seconds.
///
/// # Errors
///
/// [`TlsError::File`] (its setting `cert`) when it holds no certificate,
/// or one that does not parse as X.509.
pub fn expires_at(path: &Path) -> Result<i64, TlsError> {
    let named = Named {
        setting: "cert",
        path,
    };
    let chain = named.certificates()?;
    Ok(named.x509(&chain[0])?.validity().not_after.timestamp())
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
        .with_single_cert(
            Named {
                setting: "cert",
                path: cert,
            }
            .chain()?,
            Named {
                setting: "key",
                path: key,
            }
            .private_key()?,
        )
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
            let named = Named {
                setting: "ca",
                path: ca,
            };
            for certificate in named.anchors()? {
                roots
                    .add(certificate)
                    .map_err(|e| named.error(format!("not a CA certificate: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                Named {
                    setting: "client_cert",
                    path: cert,
                }
                .chain()?,
                Named {
                    setting: "client_key",
                    path: key,
                }
                .private_key()?,
            )
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
