//! The certificate authority: a long-lived root, an intermediate that signs, and leaves for
//! proven identities.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use weft_core::config::CaSection;
use weft_core::model::CONTROL_NAMESPACE;
use weft_core::{Identity, TrustDomain};
use x509_parser::certification_request::X509CertificationRequest;

use crate::files::replace_file;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Lifetime of a generated root.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated intermediate.
pub const INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// An intermediate closer than this to expiry is re-issued at start when the root key is at hand.
const INTERMEDIATE_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// CA failures.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The configured intermediate is not signed by the configured root.
    #[error("intermediate {0} is not signed by the root certificate")]
    ChainMismatch(PathBuf),
    /// The CSR cannot be parsed or its signature is wrong.
    #[error("certificate signing request rejected: {0}")]
    BadCsr(String),
    /// The CSR's public key is not an ECDSA P-256 key, the only kind Weft leaves carry.
    #[error("certificate signing request rejected: the key must be ECDSA P-256, not {0}")]
    UnsupportedKey(String),
    /// The CSR asks for another identity than the one the credential proved.
    #[error("CSR asks for {requested}, but the credential proves {proven}")]
    IdentityMismatch {
        /// What the CSR asked for.
        requested: String,
        /// What attestation proved.
        proven: String,
    },
    /// The identity is of another trust domain.
    #[error("identity {0} is outside trust domain {1}")]
    ForeignTrustDomain(String, String),
    /// A workload asked for an identity in the control plane's namespace.
    #[error("identity {0} is reserved for the control plane")]
    ReservedIdentity(String),
    /// The data directory cannot safely hold the CA's private keys.
    #[error("refusing to keep the CA's keys in {path}: {reason}")]
    UnsafeDataDir {
        /// The directory.
        path: PathBuf,
        /// Why it is unsafe.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The set of roots peers trust. May hold several, so a root can be rotated with overlap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

/// A signed leaf with the chain up to (not including) the root.
#[derive(Clone, Debug)]
pub struct IssuedLeaf {
    /// The leaf, DER.
    pub leaf: CertificateDer<'static>,
    /// Intermediates, leaf-side first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The end of the leaf's validity.
    pub not_after: SystemTime,
}

/// The mesh's certificate authority.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    intermediate: CertificateDer<'static>,
    intermediate_not_after: SystemTime,
    bundle: TrustBundle,
    leaf_ttl: Duration,
    clock_skew: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.bundle.roots.len())
            .field("leaf_ttl", &self.leaf_ttl)
            .finish()
    }
}

// === impl TrustBundle ===

impl TrustBundle {
    /// A bundle of DER roots.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Self {
        Self { roots }
    }

    /// Parses every certificate in a PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad PEM: {e}"))?;
        if roots.is_empty() {
            return Err("no certificate in PEM".into());
        }
        Ok(Self { roots })
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as one PEM text.
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|r| der_to_pem(r)).collect()
    }

    /// A rustls root store with every root.
    pub fn root_store(&self) -> RootCertStore {
        let mut store = RootCertStore::empty();
        let (_ok, _bad) = store.add_parsable_certificates(self.roots.iter().cloned());
        store
    }
}

fn der_to_pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// Loads the CA named in `[ca]`, or the one generated earlier under `data_dir`, or generates
    /// and persists a new one there.
    pub fn load_or_generate(
        trust_domain: &TrustDomain,
        ca: &CaSection,
        data_dir: &Path,
    ) -> Result<Self, CaError> {
        let (root_pem, root_key, inter_pem, inter_key) =
            match (&ca.root_cert, &ca.intermediate_cert, &ca.intermediate_key) {
                (Some(root), Some(inter), Some(inter_key)) => (
                    read(root)?,
                    ca.root_key.as_ref().map(read).transpose()?,
                    read(inter)?,
                    read(inter_key)?,
                ),
                _ => Self::generated(trust_domain, data_dir)?,
            };
        let root_path = ca
            .root_cert
            .clone()
            .unwrap_or_else(|| data_dir.join("root.pem"));
        let inter_path = ca
            .intermediate_cert
            .clone()
            .unwrap_or_else(|| data_dir.join("intermediate.pem"));
        let root_der = first_cert(&root_pem, &root_path)?;
        let inter_der = first_cert(&inter_pem, &inter_path)?;
        let (_, root_x) = X509Certificate::from_der(&root_der).map_err(|e| CaError::BadPem {
            path: root_path.clone(),
            reason: e.to_string(),
        })?;
        let (_, inter_x) = X509Certificate::from_der(&inter_der).map_err(|e| CaError::BadPem {
            path: inter_path.clone(),
            reason: e.to_string(),
        })?;
        inter_x
            .verify_signature(Some(root_x.public_key()))
            .map_err(|_| CaError::ChainMismatch(inter_path.clone()))?;
        let inter_key_path = ca
            .intermediate_key
            .clone()
            .unwrap_or_else(|| data_dir.join("intermediate.key"));
        let key = KeyPair::from_pem(&inter_key).map_err(|e| CaError::BadPem {
            path: inter_key_path,
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_der(&inter_der, key)?;
        let intermediate_not_after = asn1_to_system(inter_x.validity().not_after.timestamp());
        drop(root_key);

        let mut roots = vec![root_der];
        for extra in &ca.extra_roots {
            let pem = read(extra)?;
            let bundle =
                TrustBundle::from_pem(pem.as_bytes()).map_err(|reason| CaError::BadPem {
                    path: extra.clone(),
                    reason,
                })?;
            roots.extend(bundle.roots);
        }
        Ok(Self {
            trust_domain: trust_domain.clone(),
            issuer,
            intermediate: inter_der,
            intermediate_not_after,
            bundle: TrustBundle::new(roots),
            leaf_ttl: ca.leaf_ttl,
            clock_skew: ca.clock_skew,
        })
    }

    /// Reads the generated CA under `dir`, creating (or renewing the intermediate of) it first.
    fn generated(
        trust_domain: &TrustDomain,
        dir: &Path,
    ) -> Result<(String, Option<String>, String, String), CaError> {
        prepare_private_dir(dir)?;
        let (root_pem, root_key_pem) = match (
            read_if_exists(&dir.join("root.pem"))?,
            read_if_exists(&dir.join("root.key"))?,
        ) {
            (Some(cert), Some(key)) => (cert, key),
            // Only a missing file means "no root yet": any other read error is reported, so
            // that a transient failure never silently replaces the mesh's root.
            _ => {
                let (cert, key) = new_root(trust_domain)?;
                write_private(&dir.join("root.key"), &key)?;
                write_private(&dir.join("root.pem"), &cert)?;
                tracing::info!(dir = %dir.display(), "generated a new mesh root");
                // A new root invalidates any older intermediate.
                let _ = fs::remove_file(dir.join("intermediate.pem"));
                (cert, key)
            }
        };
        let existing = match (
            read(&dir.join("intermediate.pem")),
            read(&dir.join("intermediate.key")),
        ) {
            (Ok(cert), Ok(key)) if !expires_soon(&cert) => Some((cert, key)),
            _ => None,
        };
        let (inter_pem, inter_key) = match existing {
            Some(pair) => pair,
            None => {
                let root_key = KeyPair::from_pem(&root_key_pem).map_err(|e| CaError::BadPem {
                    path: dir.join("root.key"),
                    reason: e.to_string(),
                })?;
                let root_issuer = Issuer::from_ca_cert_pem(&root_pem, root_key)?;
                let (cert, key) = new_intermediate(trust_domain, &root_issuer)?;
                write_private(&dir.join("intermediate.key"), &key)?;
                write_private(&dir.join("intermediate.pem"), &cert)?;
                (cert, key)
            }
        };
        // The bundle is public (proxies are handed it), so it is readable by all; it still goes
        // through the same symlink-proof write as the keys.
        let bundle = dir.join("trust-bundle.pem");
        replace_file(&bundle, root_pem.as_bytes(), 0o644).map_err(|source| CaError::Io {
            path: bundle,
            source,
        })?;
        Ok((root_pem, Some(root_key_pem), inter_pem, inter_key))
    }

    /// An in-memory CA, for tests and throwaway meshes.
    pub fn generate_ephemeral(
        trust_domain: &TrustDomain,
        leaf_ttl: Duration,
    ) -> Result<Self, CaError> {
        let (root_pem, root_key) = new_root(trust_domain)?;
        let root_issuer = Issuer::from_ca_cert_pem(&root_pem, KeyPair::from_pem(&root_key)?)?;
        let (inter_pem, inter_key) = new_intermediate(trust_domain, &root_issuer)?;
        let inter_der = CertificateDer::from_pem_slice(inter_pem.as_bytes())
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let root_der = CertificateDer::from_pem_slice(root_pem.as_bytes())
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            issuer: Issuer::from_ca_cert_der(&inter_der, KeyPair::from_pem(&inter_key)?)?,
            intermediate: inter_der,
            intermediate_not_after: SystemTime::now() + INTERMEDIATE_TTL,
            bundle: TrustBundle::new(vec![root_der]),
            leaf_ttl,
            clock_skew: Duration::from_secs(60),
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots every peer should trust.
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The lifetime of issued leaves.
    pub fn leaf_ttl(&self) -> Duration {
        self.leaf_ttl
    }

    /// Signs a CSR for an identity that attestation has already proven. The CSR must carry an
    /// ECDSA P-256 key (checked in its SubjectPublicKeyInfo), be signed by that key, and ask
    /// for exactly that identity's SPIFFE ID.
    ///
    /// Identities in the control plane's namespace ([`CONTROL_NAMESPACE`]) are refused whatever
    /// attestation says: proxies accept any certificate for the control plane's identity as the
    /// control plane, so a workload that a platform maps into that namespace (by mistake or by
    /// malice) must not be able to obtain one. The control plane's own certificate comes from
    /// [`CertificateAuthority::issue_control_plane`].
    pub fn sign_csr(&self, csr_der: &[u8], proven: &Identity) -> Result<IssuedLeaf, CaError> {
        if proven.namespace() == CONTROL_NAMESPACE {
            return Err(CaError::ReservedIdentity(proven.to_string()));
        }
        let key = checked_csr_key(csr_der, &proven.spiffe_id())?;
        self.issue(proven, &[], &key)
    }

    /// Issues the control plane's own serving certificate: the identity
    /// [`Identity::control_plane`] of this CA's trust domain, plus `dns_names`, over a key the
    /// caller holds. This is the only way to obtain a certificate in the control plane's
    /// namespace; taking no identity argument keeps it from issuing anything else.
    pub fn issue_control_plane(
        &self,
        dns_names: &[String],
        key: &KeyPair,
    ) -> Result<IssuedLeaf, CaError> {
        self.issue(&Identity::control_plane(&self.trust_domain), dns_names, key)
    }

    fn issue(
        &self,
        identity: &Identity,
        dns_names: &[String],
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<IssuedLeaf, CaError> {
        if identity.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignTrustDomain(
                identity.to_string(),
                self.trust_domain.to_string(),
            ));
        }
        let now = SystemTime::now();
        let not_after = (now + self.leaf_ttl).min(self.intermediate_not_after);
        let mut params = CertificateParams::default();
        params.not_before = OffsetDateTime::from(now - self.clock_skew);
        params.not_after = OffsetDateTime::from(not_after);
        params.serial_number = Some(random_serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.name());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(identity.spiffe_id().try_into()?)];
        for dns in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.clone().try_into()?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(IssuedLeaf {
            leaf: cert.der().clone(),
            chain: vec![self.intermediate.clone()],
            not_after: OffsetDateTime::from(not_after).into(),
        })
    }
}

/// An ECDSA P-256 public key taken from a checked CSR: the uncompressed point only.
///
/// rcgen's own CSR parser labels the key with the algorithm the CSR was *signed* with, and
/// writes the leaf's SubjectPublicKeyInfo from that label; carrying the point with a fixed
/// P-256 label instead keeps the leaf's key description exact once the curve has been checked.
struct P256PublicKey(Vec<u8>);

impl rcgen::PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Parses a DER CSR and checks, in order: that its SubjectPublicKeyInfo is an EC key on
/// prime256v1, that it is signed by that key, and that it asks for exactly the SPIFFE ID
/// `want` and no other name. Returns the key.
fn checked_csr_key(csr_der: &[u8], want: &str) -> Result<P256PublicKey, CaError> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| CaError::BadCsr(format!("cannot be parsed: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::BadCsr("trailing bytes after the request".into()));
    }
    let spki = &csr.certification_request_info.subject_pki;
    // The key's own description (algorithm id-ecPublicKey, parameters the named curve), not
    // the signature algorithm: ecdsa-with-SHA256 is as valid over a P-384 key as over P-256.
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CaError::UnsupportedKey(format!(
            "key algorithm {}",
            spki.algorithm.algorithm.to_id_string()
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    match &curve {
        Some(c) if *c == OID_EC_P256 => {}
        Some(c) => {
            return Err(CaError::UnsupportedKey(format!(
                "an EC key on curve {}",
                c.to_id_string()
            )));
        }
        None => {
            return Err(CaError::UnsupportedKey(
                "an EC key without a named curve".into(),
            ));
        }
    }
    let point = spki.subject_public_key.data.to_vec();
    // An uncompressed P-256 point is 0x04 followed by two 32-byte coordinates; the signature
    // check below then proves it is on the curve, since ring refuses any other point.
    if point.len() != 65 || point[0] != 0x04 {
        return Err(CaError::UnsupportedKey(format!(
            "a {}-byte P-256 point (an uncompressed one has 65)",
            point.len()
        )));
    }
    csr.verify_signature().map_err(|e| {
        CaError::BadCsr(format!(
            "its signature does not verify with its own key: {e}"
        ))
    })?;

    let mut requested = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            requested.extend(san.general_names.iter().map(|name| match name {
                GeneralName::URI(uri) => (*uri).to_string(),
                other => other.to_string(),
            }));
        }
    }
    if requested != [want] {
        return Err(CaError::IdentityMismatch {
            requested: requested.join(", "),
            proven: want.to_string(),
        });
    }
    Ok(P256PublicKey(point))
}

fn new_root(td: &TrustDomain) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params(td, "root", ROOT_TTL, None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_intermediate(
    td: &TrustDomain,
    root: &Issuer<'_, KeyPair>,
) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params = ca_params(td, "intermediate", INTERMEDIATE_TTL, Some(0));
    let cert = params.signed_by(&key, root)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca_params(
    td: &TrustDomain,
    role: &str,
    ttl: Duration,
    path_len: Option<u8>,
) -> CertificateParams {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.not_before = OffsetDateTime::from(now - Duration::from_secs(3600));
    params.not_after = OffsetDateTime::from(now + ttl);
    params.serial_number = Some(random_serial());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Weft");
    dn.push(DnType::CommonName, format!("{td} {role}"));
    params.distinguished_name = dn;
    params.is_ca = match path_len {
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
        None => IsCa::Ca(BasicConstraints::Unconstrained),
    };
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = path_len.is_some();
    params
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes[0] &= 0x7f; // a positive INTEGER
    bytes[0] |= 0x01; // and no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

fn read(path: &PathBuf) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.clone(),
        source,
    })
}

/// Reads a file, `None` when it does not exist.
fn read_if_exists(path: &Path) -> Result<Option<String>, CaError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CaError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a file only this user can read, replacing (never following) a symlink at `path`.
fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    replace_file(path, text.as_bytes(), 0o600).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates `dir` (mode 0700) if it is missing, checks that it may hold the CA's private keys,
/// and sets its mode to 0700.
///
/// It must be a real directory, not a symlink (whoever controls the link's target would
/// control where the root key goes), and belong to this process's effective user (another
/// owner could read the keys or swap them). The check covers `dir` itself; its parents are
/// trusted, as an attacker who can rename entries in them could swap `dir` after any check.
fn prepare_private_dir(dir: &Path) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let refuse = |reason: String| CaError::UnsafeDataDir {
        path: dir.to_path_buf(),
        reason,
    };
    let seen = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
            fs::symlink_metadata(dir).map_err(io)?
        }
        Err(e) => return Err(io(e)),
    };
    if seen.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link".into()));
    }
    if !seen.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    // From here on, work on an open handle, and make sure it is the directory inspected above
    // rather than something swapped in at that path in between.
    let handle = fs::File::open(dir).map_err(io)?;
    let meta = handle.metadata().map_err(io)?;
    if (meta.dev(), meta.ino()) != (seen.dev(), seen.ino()) {
        return Err(refuse("it was replaced while being checked".into()));
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(refuse(format!(
            "it is owned by uid {}, not by this process's effective uid {euid}",
            meta.uid()
        )));
    }
    handle
        .set_permissions(fs::Permissions::from_mode(0o700))
        .map_err(io)
}

fn first_cert(pem: &str, path: &Path) -> Result<CertificateDer<'static>, CaError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CaError::BadPem {
        path: path.to_path_buf(),
        reason: format!("no certificate: {e}"),
    })
}

fn expires_soon(pem: &str) -> bool {
    let Ok(der) = CertificateDer::from_pem_slice(pem.as_bytes()) else {
        return true;
    };
    let Ok((_, x)) = X509Certificate::from_der(&der) else {
        return true;
    };
    asn1_to_system(x.validity().not_after.timestamp())
        < SystemTime::now() + INTERMEDIATE_RENEW_BEFORE
}

fn asn1_to_system(ts: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64)
}

#[cfg(test)]
mod tests;
