//! Trusting a node's own certificate file, and nothing else.
//!
//! LND writes `tls.cert` as one self-signed certificate marked `CA:TRUE`.
//! Added as a root, webpki then refuses the very same certificate when the
//! node presents it (`CaUsedAsEndEntity`, lnd issue 5450), so a stock LND
//! could not be reached. It is pinned instead: the node must present that
//! exact certificate (its host name is not checked: the certificate is the
//! identity), and its handshake signature is checked against it. clnrest's
//! `ca.pem` is a real CA over a separate leaf, checked the usual way with it
//! as the only root.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{read, RemoteError};

/// The certificates of a PEM file.
///
/// # Errors
///
/// [`RemoteError::Read`] when it cannot be read, [`RemoteError::Certificate`]
/// when it holds no certificate.
pub(crate) fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, RemoteError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| RemoteError::Certificate(path.to_owned()))?;
    if certs.is_empty() {
        return Err(RemoteError::Certificate(path.to_owned()));
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config that accepts only a server presenting one of `certs`.
pub(crate) fn pinned(
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = Pinned {
        certs,
        file: path.display().to_string(),
        provider: provider.clone(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// A client config whose only roots are `certs`.
pub(crate) fn authority(
    certs: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn fingerprint(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

#[derive(Debug)]
struct Pinned {
    certs: Vec<CertificateDer<'static>>,
    file: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::General(format!(
            "the node presented a certificate (sha256 {}) that is not the one in {} (sha256 {}); \
             if the node made a new tls.cert, copy it there",
            fingerprint(end_entity),
            self.file,
            fingerprint(&self.certs[0]),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
