//! Weft's certificate authority and the identity helpers its proxies share.
//!
//! - [`authority`]: the CA (root + intermediate, CSR signing, trust bundle);
//! - [`identity`]: SPIFFE IDs in certificates, CSR building, in-memory proxy keys;
//! - [`tls`]: the one place where Weft's rustls client and server configurations are built.

pub mod authority;
pub mod identity;
pub mod tls;

pub use authority::{
    CaError, CertificateAuthority, CheckedCsr, IssuedLeaf, TrustBundle, csr_identity,
};
pub use identity::{IdentityError, LeafKey, identity_of_cert};
pub use tls::{
    ALPN_H2, ALPN_MESH_H2, ALPN_MESH_HTTP1, ALPN_MESH_PREFIX, ALPN_OPAQUE, TlsCredentials,
};

/// The crypto provider every Weft TLS configuration uses (ring), so builds carry one backend.
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
