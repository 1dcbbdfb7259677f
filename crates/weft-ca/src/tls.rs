//! The one place Weft builds rustls configurations: TLS 1.3 only, ECDSA P-256 leaves, clients
//! that check the server's SPIFFE ID against the identity discovery promised, servers that
//! require (or, for the control plane's Certify call, accept missing) client certificates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use weft_core::Identity;

use crate::authority::{IssuedLeaf, TrustBundle};
use crate::identity::identity_of_cert;

/// ALPN for gRPC (HTTP/2) with the control plane.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/2 between proxies (all HTTP except upgrades).
///
/// The protocols between proxies have names of their own, so that an inbound listener can tell
/// a mesh peer's handshake from the TLS of a client outside the mesh, which offers `h2` or
/// `http/1.1` to the application itself.
pub const ALPN_MESH_H2: &[u8] = b"weft.h2";
/// ALPN for HTTP/1.1 between proxies (requests that upgrade the connection).
pub const ALPN_MESH_HTTP1: &[u8] = b"weft.http1";
/// ALPN for opaque TCP between proxies.
pub const ALPN_OPAQUE: &[u8] = b"weft.tcp";
/// What every ALPN between proxies starts with.
pub const ALPN_MESH_PREFIX: &[u8] = b"weft.";

/// The server name clients send. Peers are verified by SPIFFE ID, not by DNS name.
pub const SERVER_NAME: &str = "weft.mesh";

/// A workload's certificate, key and trust bundle, with the TLS configurations built from them.
/// Rebuilt whole on every renewal; connections opened earlier keep the configuration they
/// started with.
pub struct TlsCredentials {
    identity: Identity,
    not_after: SystemTime,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    bundle: TrustBundle,
    server_alpn: Vec<&'static [u8]>,
    client_auth: ClientAuth,
    provider: Arc<CryptoProvider>,
    server: Arc<ServerConfig>,
    clients: Mutex<ClientConfigCache>,
}

/// Client configurations by expected server identity and ALPN.
type ClientConfigCache = HashMap<(Identity, &'static [u8]), Arc<ClientConfig>>;

impl std::fmt::Debug for TlsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCredentials")
            .field("identity", &self.identity.to_string())
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Whether a server asks clients for certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate chaining to the bundle.
    Required,
    /// Clients may connect without one (the control plane's Certify), but one that is presented
    /// must verify.
    Optional,
}

// === impl TlsCredentials ===

impl TlsCredentials {
    /// Builds credentials from an issued leaf, its private key and the trust bundle.
    pub fn new(
        identity: Identity,
        leaf: &IssuedLeaf,
        key: PrivateKeyDer<'static>,
        bundle: &TrustBundle,
        server_alpn: &[&'static [u8]],
        client_auth: ClientAuth,
    ) -> Result<Self, rustls::Error> {
        let provider = crate::crypto_provider();
        let roots = Arc::new(bundle.root_store());
        let mut chain = vec![leaf.leaf.clone()];
        chain.extend(leaf.chain.iter().cloned());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        let verifier = match client_auth {
            ClientAuth::Required => verifier.build(),
            ClientAuth::Optional => verifier.allow_unauthenticated().build(),
        }
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = server_alpn.iter().map(|p| p.to_vec()).collect();
        // Resumption by stateless tickets: the session (the client's certificate chain among
        // it) travels to the client encrypted under a key of this config, rotated every six
        // hours, instead of a server-side cache that keeps 256 sessions of about a kilobyte
        // each for as long as the config lives. A new config (renewal, a new trust bundle)
        // has a new key, so earlier tickets then fall back to a full handshake.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Self {
            identity,
            not_after: leaf.not_after,
            chain,
            key,
            roots,
            bundle: bundle.clone(),
            server_alpn: server_alpn.to_vec(),
            client_auth,
            provider,
            server: Arc::new(server),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The same certificate and key trusting another bundle: how a root rotation announced by
    /// discovery reaches a proxy before its next renewal.
    pub fn with_bundle(&self, bundle: &TrustBundle) -> Result<Self, rustls::Error> {
        let leaf = IssuedLeaf {
            leaf: self.chain[0].clone(),
            chain: self.chain[1..].to_vec(),
            not_after: self.not_after,
        };
        Self::new(
            self.identity.clone(),
            &leaf,
            self.key.clone_key(),
            bundle,
            &self.server_alpn,
            self.client_auth,
        )
    }

    /// The roots these credentials trust.
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// This workload's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The server configuration for the inbound listener.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client configuration that presents this workload's certificate and accepts only a
    /// server proving `server` (cached per server identity and ALPN).
    pub fn client_config(&self, server: &Identity, alpn: &'static [u8]) -> Arc<ClientConfig> {
        let mut cache = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry((server.clone(), alpn))
            .or_insert_with(|| {
                let verifier = SpiffeServerVerifier::new(
                    self.roots.clone(),
                    server.clone(),
                    self.provider.clone(),
                );
                let builder = ClientConfig::builder_with_provider(self.provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .expect("TLS 1.3 is supported by the ring provider")
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier));
                let mut cfg =
                    match builder.with_client_auth_cert(self.chain.clone(), self.key.clone_key()) {
                        Ok(cfg) => cfg,
                        Err(e) => {
                            // The key and chain were accepted by the server config already.
                            tracing::error!(error = %e, "client certificate rejected by rustls");
                            anonymous_config(self.roots.clone(), server, self.provider.clone())
                        }
                    };
                cfg.alpn_protocols = vec![alpn.to_vec()];
                Arc::new(cfg)
            })
            .clone()
    }
}

/// A client configuration without a client certificate, accepting only a server proving
/// `server`: what a proxy uses to ask the control plane for its first certificate.
pub fn anonymous_client_config(bundle: &TrustBundle, server: &Identity) -> Arc<ClientConfig> {
    let mut cfg = anonymous_config(
        Arc::new(bundle.root_store()),
        server,
        crate::crypto_provider(),
    );
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(cfg)
}

fn anonymous_config(
    roots: Arc<RootCertStore>,
    server: &Identity,
    provider: Arc<CryptoProvider>,
) -> ClientConfig {
    let verifier = SpiffeServerVerifier::new(roots, server.clone(), provider.clone());
    ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by the ring provider")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth()
}

/// The name every Weft client sends as SNI.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
}

/// The identity a TLS peer proved with its certificate, if it presented one.
pub fn peer_identity(certs: Option<&[CertificateDer<'static>]>) -> Option<Identity> {
    certs
        .and_then(|c| c.first())
        .and_then(|c| identity_of_cert(c).ok())
}

/// Verifies a server's chain against the mesh roots and its SPIFFE ID against the expected one.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Identity,
    provider: Arc<CryptoProvider>,
}

/// The server proved a different identity than discovery promised.
#[derive(Debug, thiserror::Error)]
#[error("server proved {found}, expected {expected}")]
struct IdentityMismatch {
    found: String,
    expected: String,
}

impl SpiffeServerVerifier {
    fn new(roots: Arc<RootCertStore>, expected: Identity, provider: Arc<CryptoProvider>) -> Self {
        Self {
            roots,
            expected,
            provider,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let found = identity_of_cert(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if found != self.expected {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(IdentityMismatch {
                    found: found.to_string(),
                    expected: self.expected.to_string(),
                }))),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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
