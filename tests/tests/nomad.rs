//! The Nomad adapter against the fake Nomad API, beyond the shared conformance suite: every
//! attestation refusal, the key set's cache, API restarts, cut streams and an index that goes
//! backwards, the ACL token, and a control plane that issues workload identities to proxies
//! that present Nomad JWTs and then talk mutual TLS.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::Duration;

use weft_core::platform::{AttestError, Credential, Platform};
use weft_core::{ServiceName, TrustDomain};
use weft_nomad::{NomadPlatform, NomadSettings};
use weft_tests::conformance::{self, addrs};
use weft_tests::fake_nomad::{FakeNomad, ServiceRegistration};
use weft_tests::jwt::{self, Claims, TestKey};
use weft_tests::{WAIT, admin_get, backends};

type Running = weft_tests::RunningPlatform<NomadPlatform>;

/// Runs the adapter against `fake` into a fresh registry, retrying quickly.
fn running(fake: &FakeNomad, settings: NomadSettings) -> Running {
    let settings = NomadSettings {
        address: Some(fake.url()),
        ..settings
    };
    Running::start(
        NomadPlatform::with_settings(settings, TrustDomain::new("weft.test").unwrap())
            .unwrap()
            .with_retry_floor(Duration::from_millis(50))
            .with_key_refetch(Duration::from_millis(300)),
    )
}

fn svc(ns: &str, name: &str) -> ServiceName {
    ServiceName::new(ns, name).unwrap()
}

/// A proxy's credential: its token, its workload (`namespace/allocation`) and the account its
/// CSR asks for.
fn credential(token: String, workload: &str, account: &str) -> Credential {
    Credential {
        platform: "nomad".into(),
        token,
        workload: Some(workload.into()),
        account: Some(account.into()),
    }
}

/// Registers service `api` of allocation `a1` (job `api`, namespace `default`), meshed.
fn register_a1(fake: &FakeNomad) {
    fake.register(
        ServiceRegistration::new("default", "api", "127.0.0.1", 8080)
            .job("api")
            .alloc("a1")
            .tags(&["weft"]),
    );
}

/// The claims of a task token of allocation `a1`.
fn a1_claims() -> Claims {
    Claims::task("default", "api", "a1", "weft-proxy")
}

/// The credential of `a1`'s proxy, asking for account `api`.
fn a1(token: String) -> Credential {
    credential(token, "default/a1", "api")
}

fn rejected(r: Result<weft_core::Identity, AttestError>, needle: &str) {
    match r {
        Err(AttestError::Rejected(why)) => assert!(why.contains(needle), "{why} lacks {needle:?}"),
        other => panic!("expected a rejection for {needle:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_checks_signature_time_audience_and_the_claimed_account() {
    let fake = FakeNomad::start().await;
    let key = TestKey::fixture(1);
    let other = TestKey::fixture(2);
    fake.set_keys(&[&key]);
    fake.register(
        ServiceRegistration::new("shop", "api", "127.0.0.1", 8080)
            .job("shop-api")
            .alloc("alloc-api")
            .tags(&["weft"]),
    );
    fake.register(
        ServiceRegistration::new("shop", "cart", "127.0.0.1", 8081)
            .job("shop-api")
            .alloc("alloc-api")
            .tags(&["weft", "weft-account=api"]),
    );
    fake.register(
        ServiceRegistration::new("shop", "plain", "127.0.0.1", 8082)
            .job("plain")
            .alloc("alloc-plain"),
    );
    let run = running(&fake, NomadSettings::default());
    let p = &run.platform;
    let task = || Claims::task("shop", "shop-api", "alloc-api", "weft-proxy");
    let good = task().mint(&key);

    // Accepted: a task identity whose allocation registers a meshed service with that account
    // (here two services share it).
    let id = p
        .attest(&credential(good.clone(), "shop/alloc-api", "api"))
        .await
        .unwrap();
    assert_eq!(id.to_string(), "spiffe://weft.test/ns/shop/sa/api");
    // A service identity names its service; without a claim the account is the only one.
    let service_token = Claims::service("shop", "shop-api", "alloc-api", "api").mint(&key);
    let id = p
        .attest(&Credential {
            account: None,
            ..credential(service_token, "shop/alloc-api", "")
        })
        .await
        .unwrap();
    assert_eq!(id.name(), "api");

    // Refused, each for its own reason.
    rejected(
        p.attest(&credential(
            task().expired().mint(&key),
            "shop/alloc-api",
            "api",
        ))
        .await,
        "expired",
    );
    rejected(
        p.attest(&credential(
            task().not_yet_valid().mint(&key),
            "shop/alloc-api",
            "api",
        ))
        .await,
        "not valid yet",
    );
    rejected(
        p.attest(&credential(
            task().audience("vault.example.com").mint(&key),
            "shop/alloc-api",
            "api",
        ))
        .await,
        "audience",
    );
    rejected(
        p.attest(&credential(
            jwt::alg_none(&task().build()),
            "shop/alloc-api",
            "api",
        ))
        .await,
        "algorithm \"none\"",
    );
    rejected(
        p.attest(&credential(
            jwt::wrong_signature(
                &key,
                &task().build(),
                &Claims::task("shop", "shop-api", "alloc-api", "weft-proxy")
                    .claim("nomad_namespace", "default".into())
                    .build(),
            ),
            "shop/alloc-api",
            "api",
        ))
        .await,
        "bad signature",
    );
    rejected(
        p.attest(&credential(
            jwt::signed_by_other_key(&other, key.kid(), &task().build()),
            "shop/alloc-api",
            "api",
        ))
        .await,
        "bad signature",
    );
    rejected(
        p.attest(&credential(
            jwt::unknown_kid(&key, &task().build()),
            "shop/alloc-api",
            "api",
        ))
        .await,
        "unknown signing key",
    );
    rejected(
        p.attest(&credential(
            "not.a.jwt.at-all".into(),
            "shop/alloc-api",
            "api",
        ))
        .await,
        "not a JWT",
    );
    // The workload must be the token's own allocation, as the registry keys it.
    for workload in [
        "default/alloc-api",
        "shop/alloc-plain",
        "shop/api",
        "alloc-api",
    ] {
        rejected(
            p.attest(&credential(good.clone(), workload, "api")).await,
            "the token is for allocation shop/alloc-api",
        );
    }
    rejected(
        p.attest(&Credential {
            workload: None,
            ..credential(good.clone(), "", "api")
        })
        .await,
        "names no workload",
    );
    // Another identity than the allocation's: refused as an unknown workload.
    for (workload, who, token) in [
        ("shop/alloc-api", "db", good.clone()),
        (
            "shop/alloc-plain",
            "plain",
            Claims::task("shop", "plain", "alloc-plain", "weft-proxy").mint(&key),
        ),
        (
            "shop/alloc-api",
            "api",
            Claims::task("shop", "another-job", "alloc-api", "weft-proxy").mint(&key),
        ),
        (
            "shop/alloc-gone",
            "api",
            Claims::task("shop", "shop-api", "alloc-gone", "weft-proxy").mint(&key),
        ),
    ] {
        match p.attest(&credential(token, workload, who)).await {
            Err(AttestError::UnknownWorkload(why)) => {
                assert!(why.contains("registers no"), "{why}")
            }
            other => panic!("{who}: {other:?}"),
        }
    }
    // A service identity covers its own service only.
    let cart = Claims::service("shop", "shop-api", "alloc-api", "plain").mint(&key);
    assert!(matches!(
        p.attest(&credential(cart, "shop/alloc-api", "api")).await,
        Err(AttestError::UnknownWorkload(_))
    ));
    // Another platform's credential.
    let mut k8s = credential(good.clone(), "shop/alloc-api", "api");
    k8s.platform = "kubernetes".into();
    assert!(matches!(
        p.attest(&k8s).await,
        Err(AttestError::WrongPlatform(_))
    ));
    // The API down: unavailable, not a verdict on the token.
    fake.fail("/v1/allocation", 500, None);
    assert!(matches!(
        p.attest(&credential(good.clone(), "shop/alloc-api", "api"))
            .await,
        Err(AttestError::Unavailable(_))
    ));
    fake.heal();
    p.attest(&credential(good, "shop/alloc-api", "api"))
        .await
        .unwrap();

    // Only the listed namespaces are attested.
    let narrow = running(
        &fake,
        NomadSettings {
            namespaces: vec!["default".into()],
            ..Default::default()
        },
    );
    rejected(
        narrow
            .platform
            .attest(&credential(task().mint(&key), "shop/alloc-api", "api"))
            .await,
        "not one the mesh watches",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_set_is_cached_and_refetched_at_most_so_often() {
    let fake = FakeNomad::start().await;
    let (k1, k2) = (TestKey::fixture(1), TestKey::fixture(2));
    fake.set_keys(&[&k1]);
    register_a1(&fake);
    let run = running(&fake, NomadSettings::default());
    let p = &run.platform;
    let claims = a1_claims;
    p.attest(&a1(claims().mint(&k1))).await.unwrap();
    p.attest(&a1(claims().mint(&k1))).await.unwrap();
    assert_eq!(fake.jwks_fetches(), 1, "a known key is not fetched again");
    // A flood of made-up key IDs fetches the set at most once per interval.
    for _ in 0..50 {
        let r = p
            .attest(&a1(jwt::unknown_kid(&k1, &claims().build())))
            .await;
        assert!(matches!(r, Err(AttestError::Rejected(_))));
    }
    assert!(fake.jwks_fetches() <= 2, "{} fetches", fake.jwks_fetches());
    // The keyring rotates: a token of the new key is accepted once the interval has passed.
    fake.set_keys(&[&k1, &k2]);
    let rotated = claims().mint(&k2);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match p.attest(&a1(rotated.clone())).await {
            Ok(id) => {
                assert_eq!(id.name(), "api");
                break;
            }
            Err(AttestError::Rejected(why)) if why.contains("unknown signing key") => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the new key was never fetched"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(fake.jwks_fetches() <= 4, "{} fetches", fake.jwks_fetches());
}

/// How long a token of a cached key may take to be attested while a key-set fetch hangs:
/// well below the Nomad client's 10 s request timeout, the longest a fetch can hang.
const CACHED_KEY_BOUND: Duration = Duration::from_secs(5);

/// An adapter with no least time between key-set fetches, so that a token of an unknown key
/// makes a fetch at once.
fn running_without_refetch_limit(fake: &FakeNomad) -> Running {
    let settings = NomadSettings {
        address: Some(fake.url()),
        ..NomadSettings::default()
    };
    Running::start(
        NomadPlatform::with_settings(settings, TrustDomain::new("weft.test").unwrap())
            .unwrap()
            .with_retry_floor(Duration::from_millis(50))
            .with_key_refetch(Duration::ZERO),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_key_set_fetch_holds_up_no_token_of_a_cached_key() {
    let fake = FakeNomad::start().await;
    let (k1, k2) = (TestKey::fixture(1), TestKey::fixture(2));
    fake.set_keys(&[&k1]);
    register_a1(&fake);
    let run = running_without_refetch_limit(&fake);
    let p = run.platform.clone();
    let claims = a1_claims;
    p.attest(&a1(claims().mint(&k1))).await.unwrap();
    assert_eq!(fake.jwks_fetches(), 1);

    // Nomad rotates its keyring and turns slow: a token of the new key makes a fetch that
    // hangs.
    fake.set_keys(&[&k1, &k2]);
    fake.hold_jwks();
    let rotated = tokio::spawn({
        let p = p.clone();
        let token = claims().mint(&k2);
        async move { p.attest(&a1(token)).await }
    });
    tokio::time::timeout(WAIT, fake.jwks_held(1))
        .await
        .expect("the unknown key makes a fetch");

    // Meanwhile a token of the cached key is attested without waiting for that fetch.
    let id = tokio::time::timeout(CACHED_KEY_BOUND, p.attest(&a1(claims().mint(&k1))))
        .await
        .expect("a token of a cached key waits for the key-set fetch")
        .unwrap();
    assert_eq!(id.name(), "api");
    assert!(!rotated.is_finished(), "the fetch is still held");

    // Once Nomad answers, the new key's token is accepted, from that one fetch.
    fake.release_jwks();
    let id = tokio::time::timeout(WAIT, rotated)
        .await
        .expect("the fetch ends once answered")
        .unwrap()
        .unwrap();
    assert_eq!(id.name(), "api");
    assert_eq!(fake.jwks_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_unknown_keys_share_the_fetch_in_flight() {
    let fake = FakeNomad::start().await;
    let (k1, k2, k3) = (
        TestKey::fixture(1),
        TestKey::fixture(2),
        TestKey::fixture(3),
    );
    fake.set_keys(&[&k1]);
    register_a1(&fake);
    let run = running_without_refetch_limit(&fake);
    let p = run.platform.clone();
    let claims = a1_claims;
    p.attest(&a1(claims().mint(&k1))).await.unwrap();
    assert_eq!(fake.jwks_fetches(), 1);

    fake.set_keys(&[&k1, &k2]);
    fake.hold_jwks();
    let first = tokio::spawn({
        let p = p.clone();
        let token = claims().mint(&k2);
        async move { p.attest(&a1(token)).await }
    });
    tokio::time::timeout(WAIT, fake.jwks_held(1))
        .await
        .expect("the unknown key makes a fetch");
    // Two more tokens of keys the cache lacks (one the rotation brings, one it never will),
    // each polled once while the fetch hangs: with no refetch limit, only single flight keeps
    // them from fetching again.
    let (second, third) = (a1(claims().mint(&k2)), a1(claims().mint(&k3)));
    let mut second = Box::pin(p.attest(&second));
    let mut third = Box::pin(p.attest(&third));
    for pending in [&mut second, &mut third] {
        tokio::select! {
            biased;
            r = pending => panic!("answered before the fetch it needs: {r:?}"),
            () = std::future::ready(()) => {}
        }
    }
    fake.release_jwks();
    let (first, second, third) = tokio::time::timeout(WAIT, async {
        (first.await.unwrap(), second.await, third.await)
    })
    .await
    .expect("every caller is answered once the fetch ends");
    assert_eq!(first.unwrap().name(), "api");
    assert_eq!(second.unwrap().name(), "api");
    rejected(third, "unknown signing key");
    assert_eq!(fake.jwks_fetches(), 2, "one fetch served the three of them");

    // A fetch that fails is an outage, not a verdict on the token.
    fake.fail("/.well-known/jwks.json", 500, Some(1));
    let waiting = tokio::spawn({
        let p = p.clone();
        let token = jwt::unknown_kid(&k1, &claims().build());
        async move { p.attest(&a1(token)).await }
    });
    let r = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert!(matches!(r, Err(AttestError::Unavailable(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_cut_streams_and_an_index_going_backwards_are_survived() {
    let fake = FakeNomad::start().await;
    fake.require_token(Some("s3cr3t"));
    let reg = |name: &str, port: u16| {
        ServiceRegistration::new("default", name, "127.0.0.1", port)
            .alloc(&format!("{name}-{port}"))
            .tags(&["weft"])
    };
    fake.register(reg("api", 9001));
    let run = running(
        &fake,
        NomadSettings {
            token: Some("s3cr3t".into()),
            ..Default::default()
        },
    );
    let api = svc("default", "api");
    run.until("api", |s| addrs(s, &api).len() == 1).await;
    // The event stream carries changes.
    fake.register(reg("api", 9002));
    run.until("api scaled up", |s| addrs(s, &api).len() == 2)
        .await;
    // Every request carried the token.
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.token.as_deref() == Some("s3cr3t"))
    );

    // A restart on the same port: the adapter reads everything again; a change made while
    // the API was away is seen, and nothing else flaps.
    let mut errors = run.platform.watch_errors();
    let seen = *errors.borrow_and_update();
    fake.restart().await;
    fake.register(reg("web", 9100));
    run.until("web after the restart", |s| {
        addrs(s, &svc("default", "web")).len() == 1
    })
    .await;
    assert!(*errors.borrow() > seen, "the restart was noticed");
    assert_eq!(addrs(&run.registry.snapshot(), &api).len(), 2);

    // The index goes backwards (the cluster was restored from a snapshot): the adapter starts
    // over from the lower index and follows changes from there. The cut must reach the event
    // stream the adapter opened after its read: one opened after the reset would ask for
    // events above the old index and never hear of the lower ones.
    tokio::time::timeout(WAIT, fake.streams(1)).await.unwrap();
    fake.reset_index();
    fake.cut_connections();
    fake.deregister("default", &reg("api", 9002).id);
    run.until("api scaled down after the reset", |s| {
        addrs(s, &api).len() == 1
    })
    .await;
    fake.register(reg("api", 9003));
    run.until("a change after the reset", |s| addrs(s, &api).len() == 2)
        .await;

    // A wrong token: the feed fails (and is counted) but the last state stays in force.
    fake.require_token(Some("rotated"));
    let seen = *errors.borrow_and_update();
    fake.cut_connections();
    tokio::time::timeout(WAIT, errors.wait_for(|n| *n > seen))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(addrs(&run.registry.snapshot(), &api).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_on_nomad_issues_workload_identities_and_traffic_flows() {
    weft_tests::trace_init();
    let fake = FakeNomad::start().await;
    let key = TestKey::fixture(1);
    fake.set_keys(&[&key]);
    let dir = tempfile::tempdir().unwrap();
    let (control, stop) = weft_tests::control_plane_from_file(
        dir.path(),
        &format!(
            "[[policy.authorizations]]\nservice = \"api.shop\"\nallow = [\"shop/web\"]\n\
             [platforms.nomad]\naddress = \"{}\"\n",
            fake.url()
        ),
    )
    .await;

    // Each proxy beside a task of its own allocation, presenting that task's JWT.
    let proxy_config = |service: &str, claims: Claims, app: Option<u16>, upstreams: &[&str]| {
        let token_file = dir.path().join(format!("{service}.jwt"));
        std::fs::write(&token_file, claims.mint(&key)).unwrap();
        weft_proxy::ProxyConfig {
            trust_bundle: Some(control.trust_bundle_file.clone()),
            namespace: "shop".into(),
            platform: "nomad".into(),
            token_file,
            // The workload is the allocation (every task here runs in `alloc-<service>`);
            // the account, the service.
            account: Some(service.into()),
            ..weft_tests::loopback_proxy_config(
                control.grpc_addr,
                &format!("alloc-{service}"),
                app,
                upstreams,
            )
        }
    };
    let task = |job: &str, alloc: &str| Claims::task("shop", job, alloc, "weft-proxy");
    let register = |service: &str, job: &str, alloc: &str, port: u16, tags: &[&str]| {
        fake.register(
            ServiceRegistration::new("shop", service, "127.0.0.1", port)
                .job(job)
                .alloc(alloc)
                .tags(tags),
        );
    };
    let app = backends::http_echo("api").await;
    // api registers its application's port; its proxy, which does not intercept it, says
    // where it listens with weft-inbound.
    register("api", "api", "alloc-api", app.port(), &["weft"]);
    let api = weft_proxy::Proxy::start(proxy_config(
        "api",
        task("api", "alloc-api"),
        Some(app.port()),
        &[],
    ))
    .await
    .unwrap();
    weft_tests::wait_ready(&api).await;
    let inbound = api.inbound_addr.unwrap().port();
    register(
        "api",
        "api",
        "alloc-api",
        app.port(),
        &["weft", &format!("weft-inbound={inbound}")],
    );
    register("web", "web", "alloc-web", 1, &["weft"]);
    register("db", "db", "alloc-db", 2, &["weft"]);
    let web = weft_proxy::Proxy::start(proxy_config(
        "web",
        task("web", "alloc-web"),
        None,
        &["api"],
    ))
    .await
    .unwrap();
    let db = weft_proxy::Proxy::start(proxy_config("db", task("db", "alloc-db"), None, &["api"]))
        .await
        .unwrap();
    weft_tests::wait_ready(&web).await;
    weft_tests::wait_ready(&db).await;
    conformance::until(&control.registry, "api at its proxy", |s| {
        addrs(s, &svc("shop", "api")) == [std::net::SocketAddr::from(([127, 0, 0, 1], inbound))]
    })
    .await;

    weft_tests::assert_mesh_call(
        &web,
        "api",
        &api,
        "api",
        "spiffe://weft.test/ns/shop/sa/web",
    )
    .await;
    weft_tests::assert_mesh_refused(&db, "api").await;

    // A proxy whose JWT is for another audience gets no certificate; the refusal is counted.
    let stray = weft_proxy::Proxy::start(proxy_config(
        "web",
        task("web", "alloc-web").audience("vault.example.com"),
        None,
        &[],
    ))
    .await
    .unwrap();
    weft_tests::wait_metric(
        control.http_addr,
        "weft_control_attest_refused_total",
        &["platform=\"nomad\"", "reason=\"rejected\""],
        1.0,
    )
    .await;
    let (status, why) = admin_get(stray.admin_addr, "GET", "/ready").await;
    assert_eq!(status, 503, "{why}");
    control.shutdown().await;
    stop.cancel();
}
