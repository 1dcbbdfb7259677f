//! The platform-adapter conformance suite: the same scenarios run against every adapter
//! (local now; Kubernetes and Nomad against their fake API servers next). A harness drives
//! the platform's source of truth; the scenarios watch the registry the adapter feeds.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use weft_core::platform::{AttestError, Credential, Platform};
use weft_core::{Registry, RegistrySnapshot, ServiceName};

use crate::WAIT;

/// Drives one platform's source of truth.
#[async_trait]
pub trait PlatformHarness: Send {
    /// The adapter under test.
    fn platform(&self) -> Arc<dyn Platform>;
    /// The namespace the harness's workloads live in.
    fn namespace(&self) -> &str;
    /// Adds a workload serving `service` at `addr`.
    async fn add(&mut self, name: &str, service: &str, addr: SocketAddr);
    /// Moves a workload to a new address.
    async fn change(&mut self, name: &str, addr: SocketAddr);
    /// Removes a workload.
    async fn remove(&mut self, name: &str);
    /// Feeds the adapter an invalid update (a broken config edit, a malformed object).
    async fn break_source(&mut self);
    /// The credential a proxy beside `name` would present.
    fn credential(&self, name: &str) -> Credential;
    /// A credential that must be refused.
    fn bad_credential(&self, name: &str) -> Credential;
}

/// Waits until the registry satisfies `f`.
async fn until(registry: &Registry, what: &str, f: impl Fn(&RegistrySnapshot) -> bool) {
    let mut rx = registry.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("registry never showed: {what}"))
        .unwrap();
}

fn addrs(s: &RegistrySnapshot, svc: &ServiceName) -> Vec<SocketAddr> {
    s.service(svc)
        .map(|s| {
            s.ports
                .iter()
                .flat_map(|p| p.endpoints.iter().map(|e| e.address))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs every scenario against `h`.
pub async fn run_all<H: PlatformHarness>(mut h: H) {
    let platform = h.platform();
    let registry = Registry::new();
    let stop = CancellationToken::new();
    let run = {
        let platform = platform.clone();
        let writer = registry.writer(platform.name());
        let stop = stop.clone();
        tokio::spawn(async move { platform.run(writer, stop).await })
    };
    let ns = h.namespace().to_string();
    let svc = ServiceName::new(&ns, "api").unwrap();
    let a1: SocketAddr = "127.0.0.1:10001".parse().unwrap();
    let a2: SocketAddr = "127.0.0.1:10002".parse().unwrap();
    let b1: SocketAddr = "127.0.0.1:10003".parse().unwrap();

    // Add.
    h.add("api-1", "api", a1).await;
    until(&registry, "api-1 added", |s| addrs(s, &svc) == [a1]).await;
    h.add("api-2", "api", b1).await;
    until(&registry, "api-2 added (scale up)", |s| {
        addrs(s, &svc).len() == 2
    })
    .await;

    // Change.
    h.change("api-1", a2).await;
    until(&registry, "api-1 moved", |s| {
        let a = addrs(s, &svc);
        a.contains(&a2) && !a.contains(&a1)
    })
    .await;

    // Remove.
    h.remove("api-2").await;
    until(&registry, "api-2 removed (scale down)", |s| {
        addrs(s, &svc) == [a2]
    })
    .await;

    // Attestation: a good credential proves the workload's identity; a bad one is refused.
    let id = platform.attest(&h.credential("api-1")).await.unwrap();
    assert_eq!(id.namespace(), ns);
    assert_eq!(id.name(), "api-1");
    let err = platform
        .attest(&h.bad_credential("api-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::Rejected(_) | AttestError::UnknownWorkload(_)
        ),
        "{err}"
    );
    let mut other = h.credential("api-1");
    other.platform = "elsewhere".into();
    assert!(matches!(
        platform.attest(&other).await,
        Err(AttestError::WrongPlatform(_))
    ));

    // An invalid update keeps the last good state; a later valid one still applies.
    let before = registry.snapshot();
    assert_eq!(addrs(&before, &svc), [a2]);
    h.break_source().await;
    // The bad update has been seen and refused by now: the registry still holds exactly what it
    // held before it, the same version included (nothing was removed and re-added).
    let after = registry.snapshot();
    assert_eq!(
        after.source(platform.name()).collect::<Vec<_>>(),
        before.source(platform.name()).collect::<Vec<_>>(),
        "a bad update changed the registry"
    );
    assert_eq!(after.version(), before.version());
    h.add("api-3", "api", a1).await;
    until(&registry, "api-3 added after a bad update", |s| {
        addrs(s, &svc).len() == 2
    })
    .await;

    stop.cancel();
    run.await.unwrap().unwrap();
}
