//! Hostile and broken input against a running stack: connections that
//! send nothing or too slowly, made-up keys, oversized and corrupt uploads.
//! Each case is one a probe of a running stack found or could find.

use std::time::Duration;

use ferry_e2e::{Release, Stack, noise};
use ferry_gateway::GatewayConfig;
use ferry_proto::registry::v1 as pb;
use ferry_registry::RegistrySettings;
use ferry_release::Hash;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn short_timeouts() -> ferry_net::Limits {
    ferry_net::Limits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        ..ferry_net::Limits::default()
    }
}

/// Waits (at most 20 s) until the server hangs up on `socket`.
async fn hung_up(socket: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), closed).await.expect("the server closes the connection");
}

/// A connection that never sends a request, or sends one byte at a time,
/// is closed: on the gateway's HTTP and gRPC listeners and the registry's.
#[tokio::test]
async fn silent_and_trickling_connections_are_closed_on_every_listener() {
    let settings = RegistrySettings { listener: short_timeouts(), ..RegistrySettings::default() };
    let stack = Stack::start_configured(None, settings).await;
    let gw = stack.gateway(GatewayConfig { listener: short_timeouts(), ..GatewayConfig::default() }).await;
    let addr = |url: &str| url.trim_start_matches("http://").to_owned();
    for target in [addr(&gw.http), addr(&gw.grpc), stack.addr.to_string()] {
        let mut silent = TcpStream::connect(&target).await.unwrap();
        hung_up(&mut silent).await;

        // The HTTP/2 preface, then a header trickling in byte by byte:
        // each byte comes well within the idle timeout, yet no request
        // ever completes.
        let mut slow = TcpStream::connect(&target).await.unwrap();
        slow.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let trickle = async {
            for byte in b"\x00\x00\x12\x04\x00\x00\x00\x00\x00".iter().cycle() {
                if slow.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), trickle).await.expect("the server hangs up on a trickle");
    }
}

/// A call whose key is unknown is refused before its message is read, even
/// an empty upload stream.
#[tokio::test]
async fn unknown_keys_are_refused_before_anything_else() {
    let stack = Stack::start().await;
    stack.tenant("acme").await;
    let made_up = ferry_store::ApiKey::generate(ferry_store::KeyRole::Agent).token();
    let mut client = pb::registry_client::RegistryClient::connect(stack.url.clone()).await.unwrap();

    let empty = futures::stream::iter(Vec::<pb::UploadChunksRequest>::new());
    let status = client.upload_chunks(authed(&made_up, empty)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A 16 MiB manifest behind a made-up key: refused as unauthenticated,
    // not as a malformed manifest (which would mean it was read).
    let big = pb::PrepareReleaseRequest { tenant: "acme".into(), app: "crm".into(), manifest: vec![7u8; 16 << 20] };
    let status = client.prepare_release(authed(&made_up, big)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

fn chunk(seed: u64, len: usize) -> (Hash, pb::Chunk) {
    let data = noise(len, seed);
    let hash = blake3::hash(&data);
    (hash, pb::Chunk { hash: hash.as_bytes().to_vec(), data })
}

/// A bad chunk fails the stream, and every chunk sent before it is kept,
/// as the protocol says.
#[tokio::test]
async fn chunks_before_a_bad_one_stay_stored() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let mut client = pb::registry_client::RegistryClient::connect(stack.url.clone()).await.unwrap();
    let good: Vec<(Hash, pb::Chunk)> = (0..12).map(|i| chunk(100 + i, 50_000)).collect();
    let (_, mut bad) = chunk(999, 50_000);
    bad.data[0] ^= 1;
    let first: Vec<pb::Chunk> = good[..8].iter().map(|(_, c)| c.clone()).collect();
    let mut second: Vec<pb::Chunk> = good[8..].iter().map(|(_, c)| c.clone()).collect();
    second.push(bad);
    let stream = futures::stream::iter(vec![
        pb::UploadChunksRequest { tenant: "acme".into(), chunks: first, ..Default::default() },
        pb::UploadChunksRequest { tenant: String::new(), chunks: second, ..Default::default() },
    ]);
    let status = client.upload_chunks(authed(&token, stream)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("nothing of it was stored"), "{}", status.message());

    let hashes: Vec<Hash> = good.iter().map(|(h, _)| *h).collect();
    let held = stack.meta.tenant_chunks(stack.tenant_id("acme").await, &hashes).await.unwrap();
    assert_eq!(held.len(), 12, "every good chunk sent before the bad one is stored");
}

/// Upload messages are held to the documented 4 MiB.
#[tokio::test]
async fn oversized_upload_messages_are_refused() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let mut client = pb::registry_client::RegistryClient::connect(stack.url.clone())
        .await
        .unwrap()
        .max_encoding_message_size(32 << 20);
    let chunks: Vec<pb::Chunk> = (0..17).map(|i| chunk(200 + i, 256 * 1024).1).collect();
    let stream =
        futures::stream::iter(vec![pb::UploadChunksRequest { tenant: "acme".into(), chunks, ..Default::default() }]);
    let status = client.upload_chunks(authed(&token, stream)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most 4194304"), "{}", status.message());
}

/// A release of more files than answers may list is refused up front.
#[tokio::test]
async fn releases_with_too_many_files_are_refused() {
    use ferry_release::{ArtifactKind, ArtifactManifest, ChunkRef, FileEntry, Manifest, Name, RelPath};
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let data = b"x";
    let chunk = ChunkRef { hash: blake3::hash(data), len: 1 };
    let files = (0..=ferry_registry::MAX_RELEASE_FILES)
        .map(|i| FileEntry {
            path: RelPath::parse(&format!("f{i:06}")).unwrap(),
            size: 1,
            mode: 0o644,
            hash: blake3::hash(data),
            chunks: vec![chunk],
        })
        .collect();
    let manifest = Manifest {
        version: "1.0.0".parse().unwrap(),
        owner: Some(ferry_release::Owner {
            tenant: Name::parse("tenant", "acme").unwrap(),
            app: Name::parse("app", "crm").unwrap(),
        }),
        artifacts: vec![ArtifactManifest {
            name: Name::parse("artifact", "web").unwrap(),
            kind: ArtifactKind::Directory,
            platforms: vec![],
            files,
        }],
    };
    let mut client = pb::registry_client::RegistryClient::connect(stack.url.clone())
        .await
        .unwrap()
        .max_encoding_message_size(32 << 20);
    let req = pb::PrepareReleaseRequest { tenant: "acme".into(), app: "crm".into(), manifest: manifest.encode() };
    let status = client.prepare_release(authed(&token, req)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most 50000"), "{}", status.message());
}

/// S1-8: a manifest naming another tenant or app as its owner is refused
/// (every client would refuse the release); one naming none (format 1,
/// older agents) is accepted, and tenants publishing the same files share
/// a content id.
#[tokio::test]
async fn manifests_must_name_the_publishing_tenant_and_app() {
    use ferry_release::{Name, Owner};
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(10_000, 31);
    let mut client = pb::registry_client::RegistryClient::connect(stack.url.clone()).await.unwrap();
    let prepare = |manifest: ferry_release::Manifest| pb::PrepareReleaseRequest {
        tenant: "acme".into(),
        app: "crm".into(),
        manifest: manifest.encode(),
    };
    for (tenant, app) in [("globex", "crm"), ("acme", "erp")] {
        let mut manifest = release.manifest("1.0.0");
        manifest.owner =
            Some(Owner { tenant: Name::parse("tenant", tenant).unwrap(), app: Name::parse("app", app).unwrap() });
        let status = client.prepare_release(authed(&token, prepare(manifest))).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let expected = format!("names {tenant}/{app} as its owner, but it is published as acme/crm");
        assert!(status.message().contains(&expected), "{}", status.message());
    }
    // Prepared for crm, committed as another app of the tenant: refused.
    let tenant = Name::parse("tenant", "acme").unwrap();
    stack.meta.create_app(&tenant, &Name::parse("app", "erp").unwrap()).await.unwrap();
    let owned = release.manifest("1.0.0");
    client.prepare_release(authed(&token, prepare(owned.clone()))).await.unwrap();
    let commit = pb::CommitReleaseRequest {
        tenant: "acme".into(),
        app: "erp".into(),
        manifest_id: owned.id().0.to_vec(),
        ..Default::default()
    };
    let status = client.commit_release(authed(&token, commit)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("names acme/crm as its owner, but it is published as acme/erp"),
        "{}",
        status.message()
    );

    let mut anonymous = release.manifest("1.0.0");
    anonymous.owner = None;
    client.prepare_release(authed(&token, prepare(anonymous.clone()))).await.unwrap();
    assert_ne!(owned.id(), anonymous.id(), "the owner is part of what the id covers");
    assert_eq!(owned.content_id(), anonymous.id(), "the content id leaves the owner out");
    assert_eq!(release.manifest_of("globex", "1.0.0").content_id(), owned.content_id());
}

/// Error messages name the bad input without echoing all of it.
#[tokio::test]
async fn errors_quote_only_a_short_prefix_of_bad_input() {
    let stack = Stack::start().await;
    stack.tenant("acme").await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    // A request head beyond the listener's limit is refused as such.
    let huge = ferry_testkit::http()
        .get(format!("{}/v1/check?tenant={}", gw.http, "a".repeat(20 * 1024)))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), reqwest::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    let long = "A".repeat(8_000);
    for (param, value) in [("tenant", long.as_str()), ("version", long.as_str()), ("platform", long.as_str())] {
        let mut query = vec![("tenant", "acme"), ("app", "crm"), ("version", "1.0.0")];
        query.retain(|(p, _)| *p != param);
        query.push((param, value));
        let resp = ferry_testkit::http()
            .get(format!("{}/v1/check", gw.http))
            .bearer_auth(&key)
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST, "{param}");
        let body: serde_json::Value = resp.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("parameter {param}")), "{message}");
        assert!(message.len() < 400, "{param}: {} bytes echoed", message.len());
    }
}

/// Random query strings and headers against a running gateway (what
/// schemathesis does from the OpenAPI document, in-process and seeded):
/// every answer is a documented status with a JSON error body of bounded
/// size; nothing is ever a 5xx.
#[tokio::test]
async fn random_requests_get_documented_answers() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = ferry_e2e::Release::new(20_000, 91);
    ferry_e2e::publish_to(&stack.connection(&token), "acme", "1.0.0", &release.artifacts(), true).await.unwrap();
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;

    let value = || {
        prop_oneof![
            Just("acme".to_owned()),
            Just("crm".to_owned()),
            Just("1.0.0".to_owned()),
            Just("android".to_owned()),
            "[a-z0-9.+-]{0,12}",
            "\\PC{0,40}",
            "[0-9a-f]{64}",
            ".{0,3000}",
        ]
    };
    let param = prop_oneof![
        Just("tenant"),
        Just("app"),
        Just("version"),
        Just("platform"),
        Just("want"),
        Just("have"),
        Just("x"),
    ];
    let case = (
        prop_oneof![Just("/v1/check"), Just("/v1/versions")],
        proptest::collection::vec((param, value()), 0..8),
        prop_oneof![Just(None), Just(Some(key.clone())), "\\PC{0,80}".prop_map(Some)],
        proptest::option::of("[ -~]{0,200}"),
    );
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let client = ferry_testkit::http();
    for _ in 0..300 {
        let (path, query, auth, device) = case.new_tree(&mut runner).unwrap().current();
        let mut req = client.get(format!("{}{path}", gw.http)).query(&query);
        if let Some(auth) = &auth {
            req = req.header("Authorization", format!("Bearer {auth}"));
        }
        if let Some(device) = &device {
            req = req.header("X-Ferry-Device", device.as_str());
        }
        let Ok(req) = req.build() else { continue }; // not even a valid HTTP request
        let resp = client.execute(req).await.unwrap();
        let status = resp.status().as_u16();
        let context = format!("{path} {query:?} auth={} device={device:?} -> {status}", auth.is_some());
        assert!([200, 400, 401, 404, 429, 431].contains(&status), "{context}");
        if status != 200 && status != 431 {
            let body = resp.bytes().await.unwrap();
            assert!(body.len() < 1024, "{context}: {} bytes", body.len());
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{context}: {e}"));
            assert!(json["error"].is_string() && json["message"].is_string(), "{context}: {json}");
        }
    }
}

/// PostgreSQL over TLS as `DATABASE_URL` asks (libpq's `sslmode` and
/// `sslrootcert`): with the server's CA the registry's pool and the
/// gateway's change listener connect (the server refuses plain TCP, so
/// they are encrypted); without the CA the certificate is not trusted;
/// without TLS the server refuses.
#[tokio::test]
async fn postgresql_over_tls_is_verified_against_sslrootcert() {
    let (tls, ca_pem) = ferry_e2e::self_signed_tls();
    let (cert, key) = (tls.cert_pem.clone(), tls.key_pem.clone());
    let pg = tokio::task::spawn_blocking(move || ferry_testkit::Postgres::start_with_tls(&cert, &key))
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();

    let verified = pg.tcp_url("postgres", &format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let meta = ferry_store::connect(&verified, 2).unwrap();
    meta.migrate().await.unwrap();
    meta.ping().await.unwrap();
    let mut changes = ferry_store::listen(&verified).unwrap();
    meta.create_tenant(&ferry_release::Name::parse("tenant", "acme").unwrap()).await.unwrap();
    let change = tokio::time::timeout(std::time::Duration::from_secs(30), changes.recv()).await.unwrap();
    assert!(change.is_some(), "the change listener works over TLS");

    let untrusted = ferry_store::connect(&pg.tcp_url("postgres", "sslmode=require"), 1).unwrap();
    let error = ferry_proto::error_chain(&untrusted.ping().await.unwrap_err()).to_string();
    assert!(error.contains("certificate") || error.contains("Certificate"), "{error}");

    let plain = ferry_store::connect(&pg.tcp_url("postgres", "sslmode=disable"), 1).unwrap();
    let error = ferry_proto::error_chain(&plain.ping().await.unwrap_err()).to_string();
    assert!(error.contains("no encryption") || error.contains("rejects connection"), "{error}");
}
