//! SPIFFE identities in X.509 certificates, and the proxy's in-memory key.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use weft_core::Identity;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Problems with identities in certificates and requests.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The DER could not be parsed as a certificate.
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    /// The certificate carries no SPIFFE URI SAN, or more than one.
    #[error("certificate must carry exactly one spiffe:// URI SAN, found {0}")]
    SanCount(usize),
    /// The URI SAN is not a Weft SPIFFE ID.
    #[error(transparent)]
    Model(#[from] weft_core::model::ModelError),
    /// Key generation or CSR serialisation failed.
    #[error("key or CSR: {0}")]
    Key(#[from] rcgen::Error),
}

/// A proxy's private key: generated in memory, never written anywhere.
pub struct LeafKey {
    key: KeyPair,
}

impl std::fmt::Debug for LeafKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeafKey(<ECDSA P-256, in memory>)")
    }
}

impl LeafKey {
    /// Generates a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, IdentityError> {
        Ok(Self {
            key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// A DER certificate signing request for `identity`, signed with this key.
    pub fn csr(&self, identity: &Identity) -> Result<Vec<u8>, IdentityError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.spiffe_id().try_into()?)];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.name());
        params.distinguished_name = dn;
        Ok(params.serialize_request(&self.key)?.der().to_vec())
    }

    /// The key in the form rustls takes.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// The rcgen key pair, for signing with it directly.
    pub fn key_pair(&self) -> &KeyPair {
        &self.key
    }
}

/// Reads the one SPIFFE identity out of a DER certificate.
pub fn identity_of_cert(cert: &CertificateDer<'_>) -> Result<Identity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(cert).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && uri.starts_with("spiffe://")
            {
                uris.push(*uri);
            }
        }
    }
    match uris.as_slice() {
        [one] => Ok(Identity::parse_spiffe(one)?),
        other => Err(IdentityError::SanCount(other.len())),
    }
}
