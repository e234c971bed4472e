//! The front's TLS material: a rustls server configuration from PEM files,
//! or a self-signed certificate to make them from.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::FrontError;

/// Builds the rustls server configuration from a PEM certificate chain and a
/// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC). TLS 1.2 and 1.3 only, no
/// client certificates, ALPN `http/1.1`.
pub(crate) fn load_tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<rustls::ServerConfig, FrontError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| FrontError::CertificatePem { source })?;
    if certs.is_empty() {
        return Err(FrontError::NoCertificate);
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| FrontError::KeyPem { source })?;
    // An explicit provider: the process-wide default is ambiguous as soon as
    // any dependency enables a second rustls backend.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| FrontError::Tls { source })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| FrontError::Tls { source })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Generates a self-signed ECDSA P-256 certificate valid for `hostnames`
/// (DNS names or IP addresses) and returns `(cert_pem, key_pem)`.
pub(crate) fn self_signed(hostnames: &[impl AsRef<str>]) -> Result<(String, String), FrontError> {
    let names: Vec<String> = hostnames
        .iter()
        .map(|name| name.as_ref().to_string())
        .collect();
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|source| FrontError::SelfSigned { source })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "agent (self-signed)");
    let key = rcgen::KeyPair::generate().map_err(|source| FrontError::SelfSigned { source })?;
    let cert = params
        .self_signed(&key)
        .map_err(|source| FrontError::SelfSigned { source })?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_material_is_checked() {
        let (cert, key) = self_signed(&["localhost".to_string()]).unwrap();
        let (_, other_key) = self_signed(&["localhost"]).unwrap();
        assert!(load_tls_config(cert.as_bytes(), key.as_bytes()).is_ok());
        assert!(matches!(
            load_tls_config(b"", key.as_bytes()),
            Err(FrontError::NoCertificate)
        ));
        assert!(matches!(
            load_tls_config(cert.as_bytes(), cert.as_bytes()),
            Err(FrontError::KeyPem { .. })
        ));
        assert!(matches!(
            load_tls_config(cert.as_bytes(), other_key.as_bytes()),
            Err(FrontError::Tls { .. })
        ));
    }
}
