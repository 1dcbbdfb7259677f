//! What a failed TLS handshake on the inbound side is called in logs and metrics.

/// Names a handshake failure for logs and metrics.
pub fn tls_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(err) = e.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return "handshake_failed";
    };
    match err {
        Error::InvalidMessage(_) => "not_tls",
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
        Error::InvalidCertificate(CertificateError::BadSignature) => "unknown_ca",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired_certificate",
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::PeerIncompatible(_) | Error::NoApplicationProtocol => "incompatible_peer",
        _ => "handshake_failed",
    }
}
