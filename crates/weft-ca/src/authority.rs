//! The certificate authority: a long-lived root, an intermediate that signs, and leaves for
//! proven identities.
//!
//! Intermediate lifecycle: the root key is kept in memory whenever it is available (a
//! generated CA, or `ca.root_key` configured), so that
//! [`CertificateAuthority::renew_intermediate_if_due`] can re-issue the intermediate once two
//! thirds of its life have passed; the control plane is expected to call it periodically.
//! Without the root key renewal is impossible, and [`CertificateAuthority::intermediate_not_after`]
//! is what to export and alert on. Leaves never outlive the intermediate, and none is issued
//! once it has less than [`MIN_LEAF_LIFETIME`] left.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};
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
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, X509Certificate};

use weft_core::private_fs::replace_file;

/// Lifetime of a generated root.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated or renewed intermediate (cut to the root's end if that comes first).
pub const INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest life a leaf is issued with. When the intermediate ends sooner than this, leaves
/// are refused rather than issued already expired or about to be: a proxy would install one
/// and fail every handshake. One minute also matches the default clock-skew allowance, below
/// which a peer whose clock runs ahead would already see the leaf as expired.
pub const MIN_LEAF_LIFETIME: Duration = Duration::from_secs(60);
/// How far back a generated root's or intermediate's `notBefore` is set, so that hosts whose
/// clocks lag accept it at once.
const CA_BACKDATE: Duration = Duration::from_secs(3600);

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
    /// A private key is not the one of the certificate it is configured with.
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The intermediate is due for renewal but cannot be renewed.
    #[error("the intermediate CA expires at {} and cannot be renewed: {reason}", utc(.not_after))]
    RenewalImpossible {
        /// When the current intermediate expires.
        not_after: SystemTime,
        /// Why it cannot be renewed.
        reason: String,
    },
    /// The intermediate has expired, or ends too soon for a leaf to be of any use.
    #[error(
        "the intermediate CA expires at {}, less than {}s from now: no leaf is issued until it \
         is renewed or replaced",
        utc(.not_after),
        MIN_LEAF_LIFETIME.as_secs()
    )]
    IntermediateExpired {
        /// When the intermediate expires (or expired).
        not_after: SystemTime,
    },
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
///
/// The intermediate that signs leaves can be replaced while the CA is shared (see
/// [`CertificateAuthority::renew_intermediate_if_due`]), so it sits behind a lock; issuing
/// takes the lock for reading only.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    signer: RwLock<Signer>,
    /// The root's key, when it is at hand: it is needed only to re-issue the intermediate.
    root: Option<RootSigner>,
    /// Where a renewed intermediate goes.
    storage: Storage,
    /// Serialises renewals, so that two callers never both issue and write an intermediate.
    renewing: Mutex<()>,
    bundle: TrustBundle,
    leaf_ttl: Duration,
    clock_skew: Duration,
}

/// The intermediate in use.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The root, with its key.
struct RootSigner {
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

/// Where the CA's intermediate lives, which decides what becomes of a renewed one.
#[derive(Debug)]
enum Storage {
    /// Generated under the data directory: a renewed intermediate replaces the files there.
    Generated(PathBuf),
    /// Files the operator configured: never overwritten; a renewal stays in memory.
    Configured {
        /// The intermediate certificate file.
        cert: PathBuf,
    },
    /// An in-memory CA.
    Memory,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.bundle.roots.len())
            .field("leaf_ttl", &self.leaf_ttl)
            .field("intermediate_not_after", &self.intermediate_not_after())
            .field("root_key", &self.root.is_some())
            .field("storage", &self.storage)
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

/// The trust bundle: the signing root, then `ca.extra_roots`.
fn with_extra_roots(
    root_der: CertificateDer<'static>,
    ca: &CaSection,
) -> Result<TrustBundle, CaError> {
    let mut roots = vec![root_der];
    for extra in &ca.extra_roots {
        let pem = read(extra)?;
        let bundle = TrustBundle::from_pem(pem.as_bytes()).map_err(|reason| CaError::BadPem {
            path: extra.clone(),
            reason,
        })?;
        roots.extend(bundle.roots);
    }
    Ok(TrustBundle::new(roots))
}

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// Loads the CA named in `[ca]`, or the one generated earlier under `data_dir`, or generates
    /// and persists a new one there.
    ///
    /// The root key is kept in memory when it is available (always for a generated CA; for a
    /// configured one when `ca.root_key` is set), and the intermediate is renewed at once if it
    /// is already due (see [`CertificateAuthority::renew_intermediate_if_due`]). A configured
    /// intermediate that is due but cannot be renewed is only warned about: it still signs
    /// until the end of its life.
    pub fn load_or_generate(
        trust_domain: &TrustDomain,
        ca: &CaSection,
        data_dir: &Path,
    ) -> Result<Self, CaError> {
        let (root_path, root_key_path, inter_path, inter_key_path, storage) =
            match (&ca.root_cert, &ca.intermediate_cert, &ca.intermediate_key) {
                (Some(root), Some(inter), Some(inter_key)) => (
                    root.clone(),
                    ca.root_key.clone(),
                    inter.clone(),
                    inter_key.clone(),
                    Storage::Configured {
                        cert: inter.clone(),
                    },
                ),
                // A root and its key alone (as mounted from a Secret shared by several
                // control-plane replicas): this process issues its own intermediate, in memory.
                (Some(root), None, None) if ca.root_key.is_some() => {
                    return Self::with_memory_intermediate(trust_domain, ca, root);
                }
                _ => {
                    Self::prepare_generated(trust_domain, data_dir)?;
                    (
                        data_dir.join("root.pem"),
                        Some(data_dir.join("root.key")),
                        data_dir.join("intermediate.pem"),
                        data_dir.join("intermediate.key"),
                        Storage::Generated(data_dir.to_path_buf()),
                    )
                }
            };
        let root_der = first_cert(&read(&root_path)?, &root_path)?;
        let (_, root_x) = X509Certificate::from_der(&root_der).map_err(|e| CaError::BadPem {
            path: root_path.clone(),
            reason: e.to_string(),
        })?;
        let root = match &root_key_path {
            Some(key_path) => Some(RootSigner::new(
                &root_der,
                &root_x,
                &read(key_path)?,
                &root_path,
                key_path,
            )?),
            None => None,
        };
        let loaded = read(&inter_path).and_then(|cert| {
            Signer::from_pem(
                &cert,
                &read(&inter_key_path)?,
                &inter_path,
                &inter_key_path,
                &root_x,
            )
        });
        let signer = match (loaded, &storage, &root) {
            (Ok(signer), _, _) => signer,
            // The generated CA's intermediate is the CA's own to replace: a missing (new root),
            // unreadable or mismatched pair is re-issued rather than refused.
            (Err(e), Storage::Generated(dir), Some(root)) => {
                tracing::info!(reason = %e, "issuing a new intermediate");
                let (signer, cert_pem, key_pem) =
                    new_signer(trust_domain, root, SystemTime::now())?;
                save_intermediate(dir, &cert_pem, &key_pem)?;
                signer
            }
            (Err(e), _, _) => return Err(e),
        };

        let roots = with_extra_roots(root_der, ca)?;
        let authority = Self {
            trust_domain: trust_domain.clone(),
            signer: RwLock::new(signer),
            root,
            storage,
            renewing: Mutex::new(()),
            bundle: roots,
            leaf_ttl: ca.leaf_ttl,
            clock_skew: ca.clock_skew,
        };
        match authority.renew_intermediate_if_due(SystemTime::now()) {
            Ok(_) => {}
            Err(e @ CaError::RenewalImpossible { .. }) => {
                tracing::warn!(error = %e, "leaves will be cut to the intermediate's end, then refused");
            }
            Err(e) => return Err(e),
        }
        Ok(authority)
    }

    /// The CA of a configured root and root key, with an intermediate of its own issued now and
    /// kept in memory (renewed there).
    fn with_memory_intermediate(
        trust_domain: &TrustDomain,
        ca: &CaSection,
        root_path: &Path,
    ) -> Result<Self, CaError> {
        let key_path = ca.root_key.as_deref().unwrap_or(Path::new(""));
        let root_der = first_cert(&read(root_path)?, root_path)?;
        let (_, root_x) = X509Certificate::from_der(&root_der).map_err(|e| CaError::BadPem {
            path: root_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let root = RootSigner::new(&root_der, &root_x, &read(key_path)?, root_path, key_path)?;
        let (signer, _, _) = new_signer(trust_domain, &root, SystemTime::now())?;
        let roots = with_extra_roots(root_der, ca)?;
        tracing::info!(root = %root_path.display(), "issued this replica's own intermediate from the configured root");
        Ok(Self {
            trust_domain: trust_domain.clone(),
            signer: RwLock::new(signer),
            root: Some(root),
            storage: Storage::Memory,
            renewing: Mutex::new(()),
            bundle: roots,
            leaf_ttl: ca.leaf_ttl,
            clock_skew: ca.clock_skew,
        })
    }

    /// Makes sure the generated CA's directory is safe and holds a root, and writes the trust
    /// bundle there. The intermediate is left to [`CertificateAuthority::load_or_generate`].
    fn prepare_generated(trust_domain: &TrustDomain, dir: &Path) -> Result<(), CaError> {
        prepare_private_dir(dir)?;
        let root_pem = match (
            read_if_exists(&dir.join("root.pem"))?,
            read_if_exists(&dir.join("root.key"))?,
        ) {
            (Some(cert), Some(_)) => cert,
            // Only a missing file means "no root yet": any other read error is reported, so
            // that a transient failure never silently replaces the mesh's root.
            _ => {
                let (cert, key) = new_root(trust_domain)?;
                write_private(&dir.join("root.key"), &key)?;
                write_private(&dir.join("root.pem"), &cert)?;
                tracing::info!(dir = %dir.display(), "generated a new mesh root");
                // A new root invalidates any older intermediate.
                let _ = fs::remove_file(dir.join("intermediate.pem"));
                cert
            }
        };
        // The bundle is public (proxies are handed it), so it is readable by all; it still goes
        // through the same symlink-proof write as the keys.
        let bundle = dir.join("trust-bundle.pem");
        replace_file(&bundle, root_pem.as_bytes(), 0o644).map_err(|source| CaError::Io {
            path: bundle,
            source,
        })
    }

    /// An in-memory CA, for tests and throwaway meshes. It keeps its root key, so its
    /// intermediate can be renewed (in memory).
    pub fn generate_ephemeral(
        trust_domain: &TrustDomain,
        leaf_ttl: Duration,
    ) -> Result<Self, CaError> {
        let now = SystemTime::now();
        Self::generate_ephemeral_with_validity(
            trust_domain,
            leaf_ttl,
            now - CA_BACKDATE..now + INTERMEDIATE_TTL,
            true,
        )
    }

    /// An in-memory CA whose intermediate is valid over `intermediate_validity` (which may lie
    /// in the past), with or without its root key.
    ///
    /// Meant for tests, here and in other crates, that need a CA close to or past the end of
    /// its intermediate (to exercise renewal, expiry warnings or refusals) without waiting.
    pub fn generate_ephemeral_with_validity(
        trust_domain: &TrustDomain,
        leaf_ttl: Duration,
        intermediate_validity: std::ops::Range<SystemTime>,
        keep_root_key: bool,
    ) -> Result<Self, CaError> {
        let (root_pem, root_key) = new_root(trust_domain)?;
        let memory = Path::new("<memory>");
        let root_der = first_cert(&root_pem, memory)?;
        let (_, root_x) = X509Certificate::from_der(&root_der).map_err(|e| CaError::BadPem {
            path: memory.to_path_buf(),
            reason: e.to_string(),
        })?;
        let root = RootSigner::new(&root_der, &root_x, &root_key, memory, memory)?;
        let (cert_pem, key_pem) = new_intermediate(
            trust_domain,
            &root.issuer,
            intermediate_validity.start,
            intermediate_validity.end,
        )?;
        let signer = Signer::from_pem(&cert_pem, &key_pem, memory, memory, &root_x)?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            signer: RwLock::new(signer),
            root: keep_root_key.then_some(root),
            storage: Storage::Memory,
            renewing: Mutex::new(()),
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

    /// The end of the signing intermediate's validity; no leaf outlives it.
    ///
    /// For the control plane to export as a gauge and to warn about well before it comes,
    /// above all when [`CertificateAuthority::can_renew_intermediate`] is false: then only an
    /// operator replacing the intermediate (and restarting) keeps the mesh issuing.
    pub fn intermediate_not_after(&self) -> SystemTime {
        self.signer().not_after
    }

    /// When the intermediate becomes due for renewal: once two thirds of its life have passed.
    ///
    /// A third of the life, rather than a fixed margin, suits intermediates of any length (a
    /// configured one may live a week or five years), and for the generated one-year
    /// intermediate it leaves about four months of warning when renewal is impossible.
    pub fn intermediate_renewal_due_at(&self) -> SystemTime {
        let signer = self.signer();
        renewal_due_at(signer.not_before, signer.not_after)
    }

    /// Whether this CA holds its root key, and so can renew its intermediate itself.
    pub fn can_renew_intermediate(&self) -> bool {
        self.root.is_some()
    }

    /// Re-issues the intermediate when `now` is past
    /// [`CertificateAuthority::intermediate_renewal_due_at`], and returns the new intermediate's
    /// end; returns `None` when it is not due yet. `now` is the caller's clock reading, used
    /// both to decide and as the new intermediate's start, so tests need not wait.
    ///
    /// The new intermediate lives [`INTERMEDIATE_TTL`], cut to the root's end. Where it goes
    /// depends on where the CA came from: a generated CA writes it over the files in its data
    /// directory (before using it, so an error here changes nothing); a CA from configured
    /// files never overwrites them, keeps it in memory and logs that the files are older; an
    /// in-memory CA just uses it. Leaves issued earlier stay valid: they chain to the same root.
    ///
    /// Fails with [`CaError::RenewalImpossible`] when renewal is due but the root key is not
    /// available, or the root itself ends no later than the current intermediate. Meant to be
    /// called periodically (say hourly) by the control plane; renewals are serialised.
    pub fn renew_intermediate_if_due(
        &self,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, CaError> {
        let _one_at_a_time = self.renewing.lock().unwrap_or_else(PoisonError::into_inner);
        let (due_at, current_end) = {
            let signer = self.signer();
            (
                renewal_due_at(signer.not_before, signer.not_after),
                signer.not_after,
            )
        };
        if now < due_at {
            return Ok(None);
        }
        let Some(root) = &self.root else {
            return Err(CaError::RenewalImpossible {
                not_after: current_end,
                reason: "the root key is not available (configure ca.root_key, or replace the \
                         intermediate files and restart)"
                    .into(),
            });
        };
        if root.not_after <= current_end {
            return Err(CaError::RenewalImpossible {
                not_after: current_end,
                reason: format!(
                    "the root itself expires at {}; rotate the root",
                    utc(&root.not_after)
                ),
            });
        }
        let (signer, cert_pem, key_pem) = new_signer(&self.trust_domain, root, now)?;
        let new_end = signer.not_after;
        match &self.storage {
            Storage::Generated(dir) => {
                save_intermediate(dir, &cert_pem, &key_pem)?;
                tracing::info!(dir = %dir.display(), not_after = %utc(&new_end), "renewed the intermediate");
            }
            Storage::Configured { cert } => tracing::warn!(
                file = %cert.display(),
                not_after = %utc(&new_end),
                "renewed the intermediate in memory only: the configured files are older and \
                 are never overwritten; replace them before the old intermediate expires"
            ),
            Storage::Memory => {}
        }
        *self.signer.write().unwrap_or_else(PoisonError::into_inner) = signer;
        Ok(Some(new_end))
    }

    /// The current intermediate. A panic elsewhere while the lock was held cannot have left
    /// it half-written (it is replaced whole), so a poisoned lock is used as it is.
    fn signer(&self) -> RwLockReadGuard<'_, Signer> {
        self.signer.read().unwrap_or_else(PoisonError::into_inner)
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

    /// As [`sign_csr`](Self::sign_csr), for a request already checked: the control plane reads
    /// the request once, before attestation, and signs what it read.
    pub fn sign_checked(&self, csr: &CheckedCsr, proven: &Identity) -> Result<IssuedLeaf, CaError> {
        if proven.namespace() == CONTROL_NAMESPACE {
            return Err(CaError::ReservedIdentity(proven.to_string()));
        }
        if csr.identity != *proven {
            return Err(CaError::IdentityMismatch {
                requested: csr.identity.to_string(),
                proven: proven.to_string(),
            });
        }
        self.issue(proven, &[], &csr.key)
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
        let signer = self.signer();
        if signer.not_after < now + MIN_LEAF_LIFETIME {
            return Err(CaError::IntermediateExpired {
                not_after: signer.not_after,
            });
        }
        // A leaf that outlived its intermediate would fail path validation at the
        // intermediate's end anyway; cutting it there keeps the leaf's own date truthful, so
        // proxies schedule their renewal in time.
        let not_after = (now + self.leaf_ttl).min(signer.not_after);
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
        let cert = params.signed_by(public_key, &signer.issuer)?;
        Ok(IssuedLeaf {
            leaf: cert.der().clone(),
            chain: vec![signer.cert.clone()],
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

/// A certificate signing request that passed every check [`sign_csr`] makes of one (a P-256
/// key, its own signature, exactly one name, and that name a SPIFFE ID), with the identity it
/// asks for. The control plane reads it before attesting, so a junk request costs no call to
/// a platform, and tells the platform which account the proxy asks for; then it signs it with
/// [`sign_checked`] without reading it again.
///
/// [`sign_csr`]: CertificateAuthority::sign_csr
/// [`sign_checked`]: CertificateAuthority::sign_checked
pub struct CheckedCsr {
    key: P256PublicKey,
    identity: Identity,
}

impl std::fmt::Debug for CheckedCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedCsr")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl CheckedCsr {
    /// Reads and checks a DER request.
    pub fn parse(csr_der: &[u8]) -> Result<Self, CaError> {
        let (key, requested) = parse_csr(csr_der)?;
        let identity = match requested.as_slice() {
            [one] => Identity::parse_spiffe(one).map_err(|_| {
                CaError::BadCsr(format!(
                    "it asks for {:?}, which is not a mesh SPIFFE ID",
                    weft_core::platform::clip(one, 120)
                ))
            })?,
            _ => {
                return Err(CaError::BadCsr(format!(
                    "it asks for {} names; a mesh CSR asks for exactly one SPIFFE ID",
                    requested.len()
                )));
            }
        };
        Ok(Self { key, identity })
    }

    /// The identity the request asks for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// The identity a CSR asks for, once it has passed [`CheckedCsr::parse`].
pub fn csr_identity(csr_der: &[u8]) -> Result<Identity, CaError> {
    CheckedCsr::parse(csr_der).map(|c| c.identity)
}

/// Parses a DER CSR and checks, in order: that its SubjectPublicKeyInfo is an EC key on
/// prime256v1, that it is signed by that key, and that it asks for exactly the SPIFFE ID
/// `want` and no other name. Returns the key.
fn checked_csr_key(csr_der: &[u8], want: &str) -> Result<P256PublicKey, CaError> {
    let (key, requested) = parse_csr(csr_der)?;
    if requested != [want] {
        return Err(CaError::IdentityMismatch {
            requested: requested.join(", "),
            proven: want.to_string(),
        });
    }
    Ok(key)
}

/// Parses a DER CSR, checks its key (P-256) and its signature, and returns the key with every
/// name it asks for.
fn parse_csr(csr_der: &[u8]) -> Result<(P256PublicKey, Vec<String>), CaError> {
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
    Ok((P256PublicKey(point), requested))
}

// === impl Signer, RootSigner ===

impl Signer {
    /// The intermediate in `cert_pem` with its key in `key_pem`, checked to be signed by `root`
    /// and to match its key (a pair written half-way, or mixed up, would sign leaves that no
    /// peer can verify). The paths only name the files in errors.
    fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        cert_path: &Path,
        key_path: &Path,
        root: &X509Certificate<'_>,
    ) -> Result<Self, CaError> {
        let der = first_cert(cert_pem, cert_path)?;
        let (_, x) = X509Certificate::from_der(&der).map_err(|e| CaError::BadPem {
            path: cert_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        x.verify_signature(Some(root.public_key()))
            .map_err(|_| CaError::ChainMismatch(cert_path.to_path_buf()))?;
        let key = key_of(&x, key_pem, cert_path, key_path)?;
        let not_before = asn1_to_system(x.validity().not_before.timestamp());
        let not_after = asn1_to_system(x.validity().not_after.timestamp());
        Ok(Self {
            issuer: Issuer::from_ca_cert_der(&der, key)?,
            cert: der,
            not_before,
            not_after,
        })
    }
}

impl RootSigner {
    /// The root `der` (parsed as `x`) with its key, checked to match.
    fn new(
        der: &CertificateDer<'_>,
        x: &X509Certificate<'_>,
        key_pem: &str,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, CaError> {
        let key = key_of(x, key_pem, cert_path, key_path)?;
        Ok(Self {
            issuer: Issuer::from_ca_cert_der(der, key)?,
            not_after: asn1_to_system(x.validity().not_after.timestamp()),
        })
    }
}

/// Parses a private key. An RSA key in the traditional PKCS#1 form (`BEGIN RSA PRIVATE KEY`,
/// as Helm's `genCA` and `openssl genrsa -traditional` write it) is first wrapped in the
/// PKCS#8 envelope the signer reads; other keys must be PKCS#8 (or SEC1 for EC keys).
fn key_pair_from_pem(pem: &str) -> Result<KeyPair, rcgen::Error> {
    match rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(rustls_pki_types::PrivateKeyDer::Pkcs1(k)) => {
            KeyPair::try_from(pkcs1_to_pkcs8(k.secret_pkcs1_der()))
        }
        _ => KeyPair::from_pem(pem),
    }
}

/// A DER length.
fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        return vec![n as u8];
    }
    let bytes = n.to_be_bytes();
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    let mut out = vec![0x80 | (bytes.len() - first) as u8];
    out.extend_from_slice(&bytes[first..]);
    out
}

/// Wraps an RSAPrivateKey (PKCS#1) in a PrivateKeyInfo (PKCS#8, RFC 5208): version 0, the
/// rsaEncryption algorithm with NULL parameters, and the key as an OCTET STRING.
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    const VERSION: [u8; 3] = [0x02, 0x01, 0x00];
    const RSA_ENCRYPTION: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut octets = vec![0x04];
    octets.extend(der_len(pkcs1.len()));
    octets.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    out.extend(der_len(VERSION.len() + RSA_ENCRYPTION.len() + octets.len()));
    out.extend_from_slice(&VERSION);
    out.extend_from_slice(&RSA_ENCRYPTION);
    out.extend(octets);
    out
}

/// Parses `key_pem` and checks it is the private half of `cert`'s public key.
fn key_of(
    cert: &X509Certificate<'_>,
    key_pem: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<KeyPair, CaError> {
    let key = key_pair_from_pem(key_pem).map_err(|e| CaError::BadPem {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    // The public key bits alone: the algorithm's encoding may legitimately differ between the
    // tool that wrote the certificate and rcgen.
    if key.public_key_raw() != &*cert.public_key().subject_public_key.data {
        return Err(CaError::KeyMismatch {
            key: key_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
        });
    }
    Ok(key)
}

/// A new intermediate signed by `root`, starting at `now` (backdated) and living
/// [`INTERMEDIATE_TTL`] or until the root's end, whichever comes first; with its PEM texts.
fn new_signer(
    td: &TrustDomain,
    root: &RootSigner,
    now: SystemTime,
) -> Result<(Signer, String, String), CaError> {
    let not_after = (now + INTERMEDIATE_TTL).min(root.not_after);
    let (cert_pem, key_pem) = new_intermediate(td, &root.issuer, now - CA_BACKDATE, not_after)?;
    let memory = Path::new("<new intermediate>");
    let der = first_cert(&cert_pem, memory)?;
    let (_, x) = X509Certificate::from_der(&der).map_err(|e| CaError::BadPem {
        path: memory.to_path_buf(),
        reason: e.to_string(),
    })?;
    let signer = Signer {
        issuer: Issuer::from_ca_cert_der(&der, key_pair_from_pem(&key_pem)?)?,
        not_before: asn1_to_system(x.validity().not_before.timestamp()),
        not_after: asn1_to_system(x.validity().not_after.timestamp()),
        cert: der.clone(),
    };
    Ok((signer, cert_pem, key_pem))
}

/// Writes a generated CA's intermediate. The key goes first: should the process stop between
/// the two writes, the next start finds a key that does not match the certificate and issues
/// a new pair, rather than signing with a key whose certificate was lost.
fn save_intermediate(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), CaError> {
    write_private(&dir.join("intermediate.key"), key_pem)?;
    write_private(&dir.join("intermediate.pem"), cert_pem)
}

/// When an intermediate valid over `not_before..not_after` becomes due for renewal: after
/// two thirds of its life.
fn renewal_due_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_after.checked_sub(life / 3).unwrap_or(not_before)
}

fn new_root(td: &TrustDomain) -> Result<(String, String), CaError> {
    let now = SystemTime::now();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params(td, "root", now - CA_BACKDATE, now + ROOT_TTL, None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_intermediate(
    td: &TrustDomain,
    root: &Issuer<'_, KeyPair>,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params = ca_params(td, "intermediate", not_before, not_after, Some(0));
    let cert = params.signed_by(&key, root)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca_params(
    td: &TrustDomain,
    role: &str,
    not_before: SystemTime,
    not_after: SystemTime,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.not_before = OffsetDateTime::from(not_before);
    params.not_after = OffsetDateTime::from(not_after);
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

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
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

/// A time as `YYYY-MM-DDTHH:MM:SSZ`, for messages.
fn utc(t: &SystemTime) -> String {
    let t = OffsetDateTime::from(*t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn asn1_to_system(ts: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64)
}

#[cfg(test)]
mod tests;
