//! Certificates the tests forge: leaves from the mesh's own intermediate (expired, for an
//! identity nobody proved, of another trust domain, or without a SPIFFE ID), and whole chains
//! from a CA the mesh does not know.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// A client certificate chain and its key.
#[derive(Debug)]
pub struct ClientCert {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

/// The mesh's intermediate, read from the CA data directory.
pub fn mesh_intermediate(
    data_dir: &std::path::Path,
) -> (Issuer<'static, KeyPair>, CertificateDer<'static>) {
    let pem = std::fs::read_to_string(data_dir.join("intermediate.pem")).unwrap();
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(data_dir.join("intermediate.key")).unwrap())
            .unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
    (Issuer::from_ca_cert_pem(&pem, key).unwrap(), der)
}

/// A leaf for `spiffe_id` signed by `issuer`, valid from `not_before` to `not_after`.
pub fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    chain_tail: &[CertificateDer<'static>],
    spiffe_id: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> ClientCert {
    let sans = vec![SanType::URI(spiffe_id.try_into().unwrap())];
    leaf_with_sans(issuer, chain_tail, sans, not_before, not_after)
}

/// A leaf with exactly `sans` as its subject alternative names (none of them need be a
/// SPIFFE ID), signed by `issuer`, valid from `not_before` to `not_after`.
pub fn leaf_with_sans(
    issuer: &Issuer<'_, KeyPair>,
    chain_tail: &[CertificateDer<'static>],
    sans: Vec<SanType>,
    not_before: SystemTime,
    not_after: SystemTime,
) -> ClientCert {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.not_before = not_before.into();
    p.not_after = not_after.into();
    p.subject_alt_names = sans;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, issuer).unwrap();
    let mut chain = vec![cert.der().clone()];
    chain.extend(chain_tail.iter().cloned());
    ClientCert {
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// A valid-looking leaf for `spiffe_id` from a CA of its own.
pub fn self_made(spiffe_id: &str) -> ClientCert {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let now = SystemTime::now();
    leaf(
        &issuer,
        &[ca_cert.der().clone()],
        spiffe_id,
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    )
}

/// A TLS client presenting `cert` (if any) and offering `alpn`, that accepts any server: the
/// tests aim at the server's checks, not the client's.
pub fn client_config(cert: Option<ClientCert>, alpn: &[u8]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut cfg = match cert {
        Some(c) => builder.with_client_auth_cert(c.chain, c.key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
