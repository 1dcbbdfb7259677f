use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::process::Command;

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::ParsedCertificate;
use rustls_pki_types::UnixTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::identity::{LeafKey, identity_of_cert};

fn td() -> TrustDomain {
    TrustDomain::new("weft.test").unwrap()
}

fn id(name: &str) -> Identity {
    Identity::new(td(), "demo", name).unwrap()
}

/// Verifies `leaf`'s chain against `bundle` with webpki, a path verifier independent of rcgen.
fn verify_with_webpki(leaf: &IssuedLeaf, bundle: &TrustBundle) {
    let parsed = ParsedCertificate::try_from(&leaf.leaf).unwrap();
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &bundle.root_store(),
        &leaf.chain,
        UnixTime::now(),
        crate::crypto_provider()
            .signature_verification_algorithms
            .all,
    )
    .unwrap();
}

fn ca_section() -> CaSection {
    CaSection {
        leaf_ttl: Duration::from_secs(24 * 3600),
        ..CaSection::default()
    }
}

#[test]
fn issued_leaf_verifies_and_carries_exactly_the_identity() {
    let ca =
        CertificateAuthority::generate_ephemeral(&td(), Duration::from_secs(24 * 3600)).unwrap();
    let key = LeafKey::generate().unwrap();
    let web = id("web");
    let leaf = ca.sign_csr(&key.csr(&web).unwrap(), &web).unwrap();

    // An independent path verifier (webpki) accepts the chain against the bundle.
    verify_with_webpki(&leaf, ca.trust_bundle());
    assert_eq!(identity_of_cert(&leaf.leaf).unwrap(), web);

    let (_, x) = X509Certificate::from_der(&leaf.leaf).unwrap();
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!x.is_ca());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nb = x.validity().not_before.timestamp();
    let na = x.validity().not_after.timestamp();
    assert!(
        (now - 61..=now - 59).contains(&nb),
        "backdated by the skew allowance"
    );
    assert!(
        (now + 24 * 3600 - 2..=now + 24 * 3600 + 1).contains(&na),
        "24 h"
    );
}

#[test]
fn csr_for_another_identity_is_refused() {
    let ca = CertificateAuthority::generate_ephemeral(&td(), Duration::from_secs(3600)).unwrap();
    let key = LeafKey::generate().unwrap();
    let csr = key.csr(&id("admin")).unwrap();
    let err = ca.sign_csr(&csr, &id("web")).unwrap_err();
    assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");

    let other_td = Identity::new(TrustDomain::new("evil.test").unwrap(), "demo", "web").unwrap();
    let csr = key.csr(&other_td).unwrap();
    assert!(ca.sign_csr(&csr, &other_td).is_err());

    assert!(matches!(
        ca.sign_csr(b"not a csr", &id("web")),
        Err(CaError::BadCsr(_))
    ));
}

#[test]
fn a_checked_csr_is_signed_only_for_the_identity_it_asks_for() {
    let ca = CertificateAuthority::generate_ephemeral(&td(), Duration::from_secs(3600)).unwrap();
    let key = LeafKey::generate().unwrap();
    let web = id("web");
    let csr = CheckedCsr::parse(&key.csr(&web).unwrap()).unwrap();
    assert_eq!(csr.identity(), &web);
    let leaf = ca.sign_checked(&csr, &web).unwrap();
    verify_with_webpki(&leaf, ca.trust_bundle());
    assert_eq!(identity_of_cert(&leaf.leaf).unwrap(), web);

    // Attestation proved another identity than the request asks for.
    let err = ca.sign_checked(&csr, &id("admin")).unwrap_err();
    assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
    // The control plane's namespace is refused whatever the request and attestation say.
    let reserved = Identity::new(td(), weft_core::model::CONTROL_NAMESPACE, "helper").unwrap();
    let csr = CheckedCsr::parse(&key.csr(&reserved).unwrap()).unwrap();
    let err = ca.sign_checked(&csr, &reserved).unwrap_err();
    assert!(matches!(err, CaError::ReservedIdentity(_)), "{err}");
    // Another trust domain's identity.
    let foreign = Identity::new(TrustDomain::new("evil.test").unwrap(), "demo", "web").unwrap();
    let csr = CheckedCsr::parse(&key.csr(&foreign).unwrap()).unwrap();
    let err = ca.sign_checked(&csr, &foreign).unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain(..)), "{err}");
    assert!(matches!(
        CheckedCsr::parse(b"not a csr"),
        Err(CaError::BadCsr(_))
    ));
}

#[test]
fn generated_ca_persists_with_private_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let a = CertificateAuthority::load_or_generate(&td(), &ca_section(), &data).unwrap();
    let b = CertificateAuthority::load_or_generate(&td(), &ca_section(), &data).unwrap();
    assert_eq!(
        a.trust_bundle(),
        b.trust_bundle(),
        "a restart keeps the root"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("root.key")), 0o600);
    assert_eq!(mode(&data.join("intermediate.key")), 0o600);

    // A leaf from the first instance verifies under the second one's bundle.
    let key = LeafKey::generate().unwrap();
    let leaf = a
        .sign_csr(&key.csr(&id("api")).unwrap(), &id("api"))
        .unwrap();
    verify_with_webpki(&leaf, b.trust_bundle());
}

#[test]
fn configured_ca_files_are_used_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let gen_dir = dir.path().join("gen");
    CertificateAuthority::load_or_generate(&td(), &ca_section(), &gen_dir).unwrap();
    let mut section = ca_section();
    section.root_cert = Some(gen_dir.join("root.pem"));
    section.intermediate_cert = Some(gen_dir.join("intermediate.pem"));
    section.intermediate_key = Some(gen_dir.join("intermediate.key"));
    let ca = CertificateAuthority::load_or_generate(&td(), &section, &dir.path().join("unused"))
        .unwrap();
    assert_eq!(ca.trust_bundle().roots().len(), 1);

    // A root that did not sign the intermediate is refused.
    let other = dir.path().join("other");
    CertificateAuthority::load_or_generate(&td(), &ca_section(), &other).unwrap();
    section.root_cert = Some(other.join("root.pem"));
    let err = CertificateAuthority::load_or_generate(&td(), &section, &other).unwrap_err();
    assert!(matches!(err, CaError::ChainMismatch(_)), "{err}");

    // Extra roots widen the bundle for rotation.
    section.root_cert = Some(gen_dir.join("root.pem"));
    section.extra_roots = vec![other.join("root.pem")];
    let ca = CertificateAuthority::load_or_generate(&td(), &section, &other).unwrap();
    assert_eq!(ca.trust_bundle().roots().len(), 2);
    let pem = ca.trust_bundle().to_pem();
    assert_eq!(
        TrustBundle::from_pem(pem.as_bytes()).unwrap(),
        *ca.trust_bundle()
    );
}

/// openssl is a verifier that shares no code with rustls or rcgen.
#[test]
fn openssl_verifies_the_chain_for_both_purposes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate_ephemeral(&td(), Duration::from_secs(3600)).unwrap();
    let key = LeafKey::generate().unwrap();
    let leaf = ca
        .sign_csr(&key.csr(&id("web")).unwrap(), &id("web"))
        .unwrap();
    let write = |name: &str, der: &CertificateDer<'_>| {
        let p = dir.path().join(name);
        std::fs::write(&p, der_to_pem(der)).unwrap();
        p
    };
    let root = write("root.pem", &ca.trust_bundle().roots()[0]);
    let inter = write("inter.pem", &leaf.chain[0]);
    let leaf_p = write("leaf.pem", &leaf.leaf);
    for purpose in ["sslclient", "sslserver"] {
        let out = Command::new("openssl")
            .args(["verify", "-purpose", purpose, "-CAfile"])
            .arg(&root)
            .arg("-untrusted")
            .arg(&inter)
            .arg(&leaf_p)
            .output()
            .expect("openssl is installed by .ci/run");
        assert!(
            out.status.success(),
            "openssl verify -purpose {purpose}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&leaf_p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("URI:spiffe://weft.test/ns/demo/sa/web"),
        "{text}"
    );

    // And it refuses the leaf against a root that did not issue it.
    let other = CertificateAuthority::generate_ephemeral(&td(), Duration::from_secs(3600)).unwrap();
    let wrong = write("wrong.pem", &other.trust_bundle().roots()[0]);
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&wrong)
        .arg("-untrusted")
        .arg(&inter)
        .arg(&leaf_p)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn control_plane_namespace_is_never_issued_through_a_csr() {
    let ca = CertificateAuthority::generate_ephemeral(&td(), Duration::from_secs(3600)).unwrap();
    let key = LeafKey::generate().unwrap();

    // A workload that attestation maps to the control plane's own identity (say, a local
    // workload declared as weft-system/weft-control) must not get a certificate that every
    // proxy would accept as the control plane's.
    let control = Identity::control_plane(&td());
    let err = ca
        .sign_csr(&key.csr(&control).unwrap(), &control)
        .unwrap_err();
    assert!(matches!(err, CaError::ReservedIdentity(_)), "{err}");
    assert!(
        err.to_string().contains("reserved for the control plane"),
        "{err}"
    );

    // The whole namespace is reserved, not just the one account.
    let neighbour = Identity::new(td(), weft_core::model::CONTROL_NAMESPACE, "helper").unwrap();
    let err = ca
        .sign_csr(&key.csr(&neighbour).unwrap(), &neighbour)
        .unwrap_err();
    assert!(matches!(err, CaError::ReservedIdentity(_)), "{err}");

    // The control plane's own path still issues its identity, and only that one.
    let leaf = ca
        .issue_control_plane(&["localhost".to_string()], key.key_pair())
        .unwrap();
    assert_eq!(identity_of_cert(&leaf.leaf).unwrap(), control);
    verify_with_webpki(&leaf, ca.trust_bundle());
}

/// A DER CSR for `identity` made by the openssl command line, over a fresh key on `curve`
/// (an openssl curve name) and signed with `digest`: openssl, unlike ring, signs with any
/// digest on any curve, which is how a P-384 key gets an ecdsa-with-SHA256 signature.
fn openssl_csr(dir: &Path, curve: &str, digest: &str, identity: &Identity) -> Vec<u8> {
    let key = dir.join(format!("{curve}-{digest}.key"));
    let csr = dir.join(format!("{curve}-{digest}.csr"));
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("openssl is installed by .ci/run");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
        .arg(format!("ec_paramgen_curve:{curve}"))
        .arg("-out")
        .arg(&key));
    run(Command::new("openssl")
        .args(["req", "-new", "-key"])
        .arg(&key)
        .arg(format!("-{digest}"))
        .args(["-subj", "/CN=web", "-addext"])
        .arg(format!("subjectAltName=URI:{}", identity.spiffe_id()))
        .args(["-outform", "DER", "-out"])
        .arg(&csr));
    std::fs::read(&csr).unwrap()
}

/// The curve named in a DER certificate's SubjectPublicKeyInfo, as a dotted OID.
fn leaf_key_curve(leaf: &CertificateDer<'_>) -> String {
    let (_, x) = X509Certificate::from_der(leaf).unwrap();
    let spki = x.public_key();
    assert_eq!(spki.algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1");
    spki.algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap()
        .to_id_string()
}

#[test]
fn csr_key_must_be_p256_whatever_the_signature_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate_ephemeral(&td(), Duration::from_secs(3600)).unwrap();
    let web = id("web");

    // A P-384 key signing with ecdsa-with-SHA256: the signature algorithm is the one P-256
    // keys use, but the key is not P-256.
    let csr = openssl_csr(dir.path(), "P-384", "sha256", &web);
    let err = ca.sign_csr(&csr, &web).unwrap_err();
    assert!(matches!(err, CaError::UnsupportedKey(_)), "{err}");

    // A P-384 key signing with SHA-384, as rcgen makes it.
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let csr = csr_with_key(&web, &p384);
    let err = ca.sign_csr(&csr, &web).unwrap_err();
    assert!(matches!(err, CaError::UnsupportedKey(_)), "{err}");

    // Ed25519.
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let err = ca.sign_csr(&csr_with_key(&web, &ed), &web).unwrap_err();
    assert!(matches!(err, CaError::UnsupportedKey(_)), "{err}");

    // A P-256 key is accepted, and the leaf carries it as a P-256 key, even when the CSR was
    // signed with SHA-384.
    for digest in ["sha256", "sha384"] {
        let csr = openssl_csr(dir.path(), "P-256", digest, &web);
        let leaf = ca.sign_csr(&csr, &web).unwrap();
        assert_eq!(
            leaf_key_curve(&leaf.leaf),
            "1.2.840.10045.3.1.7",
            "{digest}"
        );
        verify_with_webpki(&leaf, ca.trust_bundle());
    }
}

fn csr_with_key(identity: &Identity, key: &KeyPair) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.spiffe_id().try_into().unwrap())];
    params.serialize_request(key).unwrap().der().to_vec()
}

#[test]
fn csr_whose_signature_does_not_verify_is_refused() {
    let ca = CertificateAuthority::generate_ephemeral(&td(), Duration::from_secs(3600)).unwrap();
    let web = id("web");
    let key = LeafKey::generate().unwrap();
    let good = key.csr(&web).unwrap();
    assert!(ca.sign_csr(&good, &web).is_ok());

    // The DER ends with the signature's `s` integer: changing its last byte keeps the
    // structure intact and breaks only the signature.
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 0x01;
    let err = ca.sign_csr(&bad, &web).unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "{err}");
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );
}

#[test]
fn a_symlink_planted_in_the_data_dir_is_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&data)
        .unwrap();
    let outside_key = dir.path().join("outside-key");
    let outside_bundle = dir.path().join("outside-bundle");
    std::fs::write(&outside_key, "precious").unwrap();
    std::fs::write(&outside_bundle, "also precious").unwrap();
    std::os::unix::fs::symlink(&outside_key, data.join("root.key")).unwrap();
    std::os::unix::fs::symlink(&outside_bundle, data.join("trust-bundle.pem")).unwrap();

    CertificateAuthority::load_or_generate(&td(), &ca_section(), &data).unwrap();

    assert_eq!(std::fs::read_to_string(&outside_key).unwrap(), "precious");
    assert_eq!(
        std::fs::read_to_string(&outside_bundle).unwrap(),
        "also precious"
    );
    for name in ["root.key", "trust-bundle.pem"] {
        let meta = std::fs::symlink_metadata(data.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is now a regular file");
    }
    assert_eq!(
        std::fs::read_to_string(data.join("trust-bundle.pem")).unwrap(),
        std::fs::read_to_string(data.join("root.pem")).unwrap()
    );
}

#[test]
fn every_generated_file_is_private_and_the_dir_is_tightened() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    // Created too open by someone else's umask: the CA tightens it.
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&data)
        .unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    CertificateAuthority::load_or_generate(&td(), &ca_section(), &data).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for name in [
        "root.key",
        "root.pem",
        "intermediate.key",
        "intermediate.pem",
    ] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    assert_eq!(mode(&data.join("trust-bundle.pem")), 0o644, "public");
    // Nothing but the five files: no temporary file left over.
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 5);
}

#[test]
fn a_data_dir_that_is_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&real)
        .unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let err = CertificateAuthority::load_or_generate(&td(), &ca_section(), &link).unwrap_err();
    assert!(matches!(err, CaError::UnsafeDataDir { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(
        std::fs::read_dir(&real).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn a_data_dir_owned_by_another_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let euid = rustix::process::geteuid().as_raw();
    let foreign = if euid == 0 {
        // As root, make a directory that belongs to someone else.
        let d = dir.path().join("nobody");
        std::fs::DirBuilder::new().mode(0o777).create(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        d
    } else {
        // Otherwise the root directory is someone else's; it is refused before any write.
        PathBuf::from("/")
    };
    let err = CertificateAuthority::load_or_generate(&td(), &ca_section(), &foreign).unwrap_err();
    assert!(matches!(err, CaError::UnsafeDataDir { .. }), "{err}");
    assert!(err.to_string().contains("owned by uid"), "{err}");
    if euid == 0 {
        assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 0);
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// An in-memory CA with 24 h leaves whose intermediate is valid over `validity`.
fn ca_with_intermediate(
    validity: std::ops::Range<SystemTime>,
    root_key: bool,
) -> CertificateAuthority {
    CertificateAuthority::generate_ephemeral_with_validity(&td(), DAY, validity, root_key).unwrap()
}

fn sign_web(ca: &CertificateAuthority) -> Result<IssuedLeaf, CaError> {
    let key = LeafKey::generate().unwrap();
    ca.sign_csr(&key.csr(&id("web")).unwrap(), &id("web"))
}

fn cert_not_after(der: &[u8]) -> SystemTime {
    let (_, x) = X509Certificate::from_der(der).unwrap();
    asn1_to_system(x.validity().not_after.timestamp())
}

/// Replaces the intermediate in `into` with one valid over `validity`, signed by the root
/// generated in `root_dir`.
fn plant_intermediate(root_dir: &Path, into: &Path, validity: std::ops::Range<SystemTime>) {
    let root_pem = std::fs::read_to_string(root_dir.join("root.pem")).unwrap();
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(root_dir.join("root.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let (cert, key) = new_intermediate(&td(), &issuer, validity.start, validity.end).unwrap();
    std::fs::write(into.join("intermediate.pem"), cert).unwrap();
    std::fs::write(into.join("intermediate.key"), key).unwrap();
}

#[test]
fn a_leaf_is_cut_to_the_end_of_its_intermediate() {
    let now = SystemTime::now();
    let ca = ca_with_intermediate(now - DAY..now + Duration::from_secs(2 * 3600), false);
    let leaf = sign_web(&ca).unwrap();
    assert_eq!(cert_not_after(&leaf.leaf), ca.intermediate_not_after());
    assert_eq!(leaf.not_after, ca.intermediate_not_after());
    verify_with_webpki(&leaf, ca.trust_bundle());

    // Far from the intermediate's end, a leaf gets its whole lifetime.
    let ca = ca_with_intermediate(now - DAY..now + 100 * DAY, false);
    let leaf = sign_web(&ca).unwrap();
    let life = cert_not_after(&leaf.leaf).duration_since(now).unwrap();
    assert!(
        life > DAY - Duration::from_secs(2) && life <= DAY,
        "{life:?}"
    );
}

#[test]
fn no_leaf_is_issued_from_an_expired_or_expiring_intermediate() {
    let now = SystemTime::now();
    let key = LeafKey::generate().unwrap();

    // Already expired: today's code would issue a leaf born expired.
    let ca = ca_with_intermediate(now - 2 * DAY..now - DAY, false);
    let err = sign_web(&ca).unwrap_err();
    assert!(matches!(err, CaError::IntermediateExpired { .. }), "{err}");
    assert!(err.to_string().contains("no leaf is issued"), "{err}");
    let err = ca
        .issue_control_plane(&["localhost".to_string()], key.key_pair())
        .unwrap_err();
    assert!(matches!(err, CaError::IntermediateExpired { .. }), "{err}");

    // Ending within the minimum lifetime: a leaf of a few seconds is no better.
    let ca = ca_with_intermediate(now - DAY..now + Duration::from_secs(30), false);
    let err = sign_web(&ca).unwrap_err();
    assert!(matches!(err, CaError::IntermediateExpired { .. }), "{err}");

    // Just beyond it, a short leaf is still issued (cut to the intermediate).
    let ca = ca_with_intermediate(now - DAY..now + Duration::from_secs(300), false);
    let leaf = sign_web(&ca).unwrap();
    assert_eq!(leaf.not_after, ca.intermediate_not_after());
}

#[test]
fn a_due_intermediate_is_renewed_and_old_and_new_leaves_both_verify() {
    let now = SystemTime::now();
    // 25 days of life, 5 left: less than a third, so due.
    let ca = ca_with_intermediate(now - 20 * DAY..now + 5 * DAY, true);
    assert!(ca.can_renew_intermediate());
    assert!(ca.intermediate_renewal_due_at() <= now);
    let old_end = ca.intermediate_not_after();
    let old_leaf = sign_web(&ca).unwrap();

    let new_end = ca.renew_intermediate_if_due(now).unwrap().expect("due");
    assert_eq!(new_end, ca.intermediate_not_after());
    assert!(new_end > old_end + 300 * DAY, "a full new lifetime");
    assert_eq!(
        ca.renew_intermediate_if_due(now).unwrap(),
        None,
        "done once"
    );

    let new_leaf = sign_web(&ca).unwrap();
    assert_ne!(
        new_leaf.chain[0], old_leaf.chain[0],
        "signed by the new one"
    );
    verify_with_webpki(&new_leaf, ca.trust_bundle());
    verify_with_webpki(&old_leaf, ca.trust_bundle());
    let life = cert_not_after(&new_leaf.leaf).duration_since(now).unwrap();
    assert!(
        life > DAY - Duration::from_secs(5),
        "no longer cut: {life:?}"
    );
}

#[test]
fn an_intermediate_is_renewed_only_after_two_thirds_of_its_life() {
    let now = SystemTime::now();
    let ca = ca_with_intermediate(now - DAY..now + 299 * DAY, true);
    let chain_before = sign_web(&ca).unwrap().chain;
    assert_eq!(ca.renew_intermediate_if_due(now).unwrap(), None);
    let due = ca.intermediate_renewal_due_at();
    assert_eq!(
        ca.intermediate_not_after().duration_since(due).unwrap(),
        Duration::from_secs(100 * 24 * 3600),
        "a third of 300 days"
    );
    assert_eq!(
        ca.renew_intermediate_if_due(due - Duration::from_secs(1))
            .unwrap(),
        None
    );
    assert_eq!(sign_web(&ca).unwrap().chain, chain_before, "untouched");
    assert!(ca.renew_intermediate_if_due(due).unwrap().is_some());
}

#[test]
fn without_the_root_key_renewal_is_reported_impossible() {
    let now = SystemTime::now();
    let ca = ca_with_intermediate(now - 20 * DAY..now + 5 * DAY, false);
    assert!(!ca.can_renew_intermediate());
    let end = ca.intermediate_not_after();
    let err = ca.renew_intermediate_if_due(now).unwrap_err();
    assert!(matches!(err, CaError::RenewalImpossible { .. }), "{err}");
    assert!(
        err.to_string().contains("root key is not available"),
        "{err}"
    );
    assert_eq!(ca.intermediate_not_after(), end, "unchanged");
    // It keeps signing until its end.
    assert!(sign_web(&ca).is_ok());

    // Not due yet: nothing to report.
    let ca = ca_with_intermediate(now - DAY..now + 300 * DAY, false);
    assert_eq!(ca.renew_intermediate_if_due(now).unwrap(), None);
}

#[test]
fn a_renewed_intermediate_never_outlives_the_root() {
    let now = SystemTime::now();
    let ca = ca_with_intermediate(now - DAY..now + 300 * DAY, true);
    let root_end = cert_not_after(&ca.trust_bundle().roots()[0]);
    // A year before the root's end, a full intermediate lifetime would overrun it.
    let late = root_end - 200 * DAY;
    assert_eq!(ca.renew_intermediate_if_due(late).unwrap(), Some(root_end));
    // Once due again, there is nothing left to gain from the root.
    let later = ca.intermediate_renewal_due_at();
    let err = ca.renew_intermediate_if_due(later).unwrap_err();
    assert!(matches!(err, CaError::RenewalImpossible { .. }), "{err}");
    assert!(err.to_string().contains("root itself expires"), "{err}");
}

#[test]
fn a_generated_ca_saves_its_renewed_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let ca = CertificateAuthority::load_or_generate(&td(), &ca_section(), &data).unwrap();
    // The generated intermediate lives a year; 300 days on, it is due.
    let later = SystemTime::now() + 300 * DAY;
    let end = ca.renew_intermediate_if_due(later).unwrap().expect("due");
    let on_disk = std::fs::read_to_string(data.join("intermediate.pem")).unwrap();
    let der = CertificateDer::from_pem_slice(on_disk.as_bytes()).unwrap();
    assert_eq!(cert_not_after(&der), end);
    let mode = std::fs::metadata(data.join("intermediate.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A restart picks up the renewed pair and signs with it.
    let again = CertificateAuthority::load_or_generate(&td(), &ca_section(), &data).unwrap();
    assert_eq!(again.intermediate_not_after(), end);
    assert_eq!(sign_web(&again).unwrap().chain[0], der);
}

#[test]
fn a_generated_ca_renews_a_due_intermediate_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    CertificateAuthority::load_or_generate(&td(), &ca_section(), &data).unwrap();
    let now = SystemTime::now();
    plant_intermediate(&data, &data, now - 20 * DAY..now + 5 * DAY);

    let ca = CertificateAuthority::load_or_generate(&td(), &ca_section(), &data).unwrap();
    assert!(ca.intermediate_not_after() > now + 300 * DAY);
    let on_disk = std::fs::read_to_string(data.join("intermediate.pem")).unwrap();
    let der = CertificateDer::from_pem_slice(on_disk.as_bytes()).unwrap();
    assert_eq!(cert_not_after(&der), ca.intermediate_not_after());
}

#[test]
fn a_generated_intermediate_with_the_wrong_key_is_reissued() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    CertificateAuthority::load_or_generate(&td(), &ca_section(), &data).unwrap();
    // As if the process had stopped between writing a new key and its certificate.
    let stray = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(data.join("intermediate.key"), stray.serialize_pem()).unwrap();

    let ca = CertificateAuthority::load_or_generate(&td(), &ca_section(), &data).unwrap();
    verify_with_webpki(&sign_web(&ca).unwrap(), ca.trust_bundle());
}

#[test]
fn a_configured_ca_with_its_root_key_renews_in_memory_only() {
    let dir = tempfile::tempdir().unwrap();
    let gen_dir = dir.path().join("gen");
    CertificateAuthority::load_or_generate(&td(), &ca_section(), &gen_dir).unwrap();
    let user = dir.path().join("user");
    std::fs::create_dir(&user).unwrap();
    let now = SystemTime::now();
    plant_intermediate(&gen_dir, &user, now - 20 * DAY..now + 5 * DAY);
    let mut section = ca_section();
    section.root_cert = Some(gen_dir.join("root.pem"));
    section.intermediate_cert = Some(user.join("intermediate.pem"));
    section.intermediate_key = Some(user.join("intermediate.key"));
    let files_before: Vec<Vec<u8>> = ["intermediate.pem", "intermediate.key"]
        .iter()
        .map(|f| std::fs::read(user.join(f)).unwrap())
        .collect();

    // Without the root key the old intermediate is used, and reported as not renewable.
    let unused = dir.path().join("unused");
    let ca = CertificateAuthority::load_or_generate(&td(), &section, &unused).unwrap();
    assert!(!ca.can_renew_intermediate());
    assert!(ca.intermediate_not_after() < now + 6 * DAY);

    // With it, the intermediate is renewed at start, in memory.
    section.root_key = Some(gen_dir.join("root.key"));
    let ca = CertificateAuthority::load_or_generate(&td(), &section, &unused).unwrap();
    assert!(ca.can_renew_intermediate());
    assert!(ca.intermediate_not_after() > now + 300 * DAY);
    verify_with_webpki(&sign_web(&ca).unwrap(), ca.trust_bundle());

    let files_after: Vec<Vec<u8>> = ["intermediate.pem", "intermediate.key"]
        .iter()
        .map(|f| std::fs::read(user.join(f)).unwrap())
        .collect();
    assert_eq!(
        files_before, files_after,
        "the operator's files are untouched"
    );
    assert!(!unused.exists(), "nothing written to the data dir");
}

#[test]
fn configured_keys_must_match_their_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    CertificateAuthority::load_or_generate(&td(), &ca_section(), &a).unwrap();
    CertificateAuthority::load_or_generate(&td(), &ca_section(), &b).unwrap();
    let mut section = ca_section();
    section.root_cert = Some(a.join("root.pem"));
    section.intermediate_cert = Some(a.join("intermediate.pem"));
    section.intermediate_key = Some(a.join("intermediate.key"));

    // Another CA's root key would re-issue an intermediate that chains to nothing trusted.
    section.root_key = Some(b.join("root.key"));
    let err = CertificateAuthority::load_or_generate(&td(), &section, &a).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");

    // Another intermediate's key would sign leaves no peer can verify.
    section.root_key = Some(a.join("root.key"));
    section.intermediate_key = Some(b.join("intermediate.key"));
    let err = CertificateAuthority::load_or_generate(&td(), &section, &a).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
}

/// Several control-plane replicas given the same root and root key (a Secret) each issue an
/// intermediate of their own; leaves of either verify against the one shared bundle, and
/// nothing is written to the data directory.
#[test]
fn replicas_sharing_a_root_issue_their_own_intermediates() {
    let dir = tempfile::tempdir().unwrap();
    let gen_dir = dir.path().join("gen");
    CertificateAuthority::load_or_generate(&td(), &ca_section(), &gen_dir).unwrap();
    let mut section = ca_section();
    section.root_cert = Some(gen_dir.join("root.pem"));
    section.root_key = Some(gen_dir.join("root.key"));
    let unused = dir.path().join("unused");
    let a = CertificateAuthority::load_or_generate(&td(), &section, &unused).unwrap();
    let b = CertificateAuthority::load_or_generate(&td(), &section, &unused).unwrap();
    assert!(!unused.exists(), "a replica wrote to its data directory");
    assert_eq!(a.trust_bundle(), b.trust_bundle());
    let (la, lb) = (sign_web(&a).unwrap(), sign_web(&b).unwrap());
    assert_ne!(la.chain, lb.chain, "each replica has its own intermediate");
    verify_with_webpki(&la, b.trust_bundle());
    verify_with_webpki(&lb, a.trust_bundle());
    assert!(a.can_renew_intermediate());

    // A root key that does not belong to the root is refused.
    let other = dir.path().join("other");
    CertificateAuthority::load_or_generate(&td(), &ca_section(), &other).unwrap();
    section.root_key = Some(other.join("root.key"));
    assert!(CertificateAuthority::load_or_generate(&td(), &section, &unused).is_err());
}

/// A root made the way Helm's `genCA` makes one (an RSA key in the traditional PKCS#1 form)
/// signs intermediates, and a key that does not match it is still refused.
#[test]
fn an_rsa_root_with_a_traditional_key_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["genrsa", "-traditional", "-out", "ca.key", "2048"]);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=weft-ca",
        "-days",
        "3650",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    let key = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
    assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{key}");
    let mut section = ca_section();
    section.root_cert = Some(dir.path().join("ca.crt"));
    section.root_key = Some(dir.path().join("ca.key"));
    let ca = CertificateAuthority::load_or_generate(&td(), &section, &dir.path().join("unused"))
        .unwrap();
    verify_with_webpki(&sign_web(&ca).unwrap(), ca.trust_bundle());

    run(&["genrsa", "-traditional", "-out", "other.key", "2048"]);
    section.root_key = Some(dir.path().join("other.key"));
    let err = CertificateAuthority::load_or_generate(&td(), &section, &dir.path().join("unused"))
        .unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
}

#[test]
fn der_lengths_use_the_short_and_long_forms() {
    assert_eq!(der_len(5), [5]);
    assert_eq!(der_len(127), [127]);
    assert_eq!(der_len(128), [0x81, 128]);
    assert_eq!(der_len(1190), [0x82, 0x04, 0xa6]);
}
