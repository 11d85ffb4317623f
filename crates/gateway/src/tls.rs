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
            if !parsed.is_ca() && !is_self_signed(&parsed) {
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

/// What TLS will make of each self-signed certificate in `tls.ca` when
/// the upstream at `host` presents it itself (a pin), as `serve --check`
/// reports it: errors, for a certificate that can be nothing but a pin
/// (no CA's) and that TLS refuses (not for `host`, expired); warnings, for
/// a CA's certificate that names `host` (made by `openssl req -x509`,
/// which marks it a CA's: TLS refuses a CA's certificate presented as the
/// server's own, though it takes it as the CA of another). Nothing when
/// the file cannot be read: [`client_config`] says why.
pub fn pin_findings(tls: &UpstreamTls, host: &str) -> (Vec<String>, Vec<String>) {
    use rustls::client::danger::ServerCertVerifier;
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let Some(ca) = &tls.ca else {
        return (errors, warnings);
    };
    let named = Named {
        setting: "ca",
        path: ca,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (Ok(certificates), Ok(name)) = (
        named.certificates(),
        rustls::pki_types::ServerName::try_from(host.to_owned()),
    ) else {
        return (errors, warnings);
    };
    installed_provider();
    let mut roots = rustls::RootCertStore::empty();
    for certificate in &certificates {
        let _ = roots.add(certificate.clone());
    }
    let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots)).build()
    else {
        return (errors, warnings);
    };
    let now = rustls::pki_types::UnixTime::now();
    for (n, certificate) in certificates.iter().enumerate() {
        let Ok(parsed) = named.x509(certificate) else {
            continue;
        };
        // A version 1 certificate may be an old CA's: no telling.
        if !is_self_signed(&parsed) || parsed.version() != x509_parser::x509::X509Version::V3 {
            continue;
        }
        let Err(refused) = verifier.verify_server_cert(certificate, &[], &name, &[], now) else {
            continue;
        };
        let which = format!(
            "{}: certificate {} ({})",
            ca.display(),
            n + 1,
            parsed.subject()
        );
        if !parsed.is_ca() {
            errors.push(format!(
                "{which} is self-signed and no CA's, so the upstream can only present it itself, and TLS refuses it from {host}: {refused}"
            ));
        } else if names(&parsed, host) {
            warnings.push(format!(
                "{which} is a CA's (CA:TRUE) and names {host}: if the upstream presents it itself, TLS refuses it (CaUsedAsEndEntity); make the upstream's own certificate without CA:TRUE (`-addext basicConstraints=critical,CA:FALSE`), or sign it with this CA"
            ));
        }
    }
    (errors, warnings)
}

/// Whether `certificate` is signed by its own key, not only issued in its
/// own name: test CAs and their servers often share one default name.
fn is_self_signed(certificate: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    certificate.subject().as_raw() == certificate.issuer().as_raw()
        && certificate.verify_signature(None).is_ok()
}

/// Whether `certificate` lists `host` among its subject alternative names
/// (DNS names compared without case; IP addresses as written).
fn names(certificate: &x509_parser::certificate::X509Certificate<'_>, host: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(names)) = certificate.subject_alternative_name() else {
        return false;
    };
    let ip: Option<std::net::IpAddr> = host.parse().ok();
    names.value.general_names.iter().any(|name| match name {
        GeneralName::DNSName(dns) => dns.eq_ignore_ascii_case(host),
        GeneralName::IPAddress(bytes) => match (ip, bytes.len()) {
            (Some(std::net::IpAddr::V4(v4)), 4) => v4.octets()[..] == bytes[..],
            (Some(std::net::IpAddr::V6(v6)), 16) => v6.octets()[..] == bytes[..],
            _ => false,
        },
        _ => false,
    })
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
