//! The publish path end to end (S0-1, S0-2, S3-1…S3-5): agent library →
//! real gRPC → registry → real PostgreSQL and S3.

use ferry_agent::AgentError;
use ferry_e2e::{Release, Stack, noise, publish_to, self_signed_tls};
use ferry_proto::registry::v1 as pb;
use ferry_release::{ArtifactSpec, Hash, Manifest, Name, pack};
use ferry_store::KeyRole;
use ferry_testkit::Relay;
use tonic::Code;

/// A raw gRPC request with an agent key, for tests that speak the protocol
/// directly.
fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// PrepareRelease for tenant acme / app crm over a raw client.
async fn prepare(
    stack: &Stack,
    token: &str,
    manifest: &Manifest,
) -> (pb::registry_client::RegistryClient<tonic::transport::Channel>, pb::PrepareReleaseResponse) {
    let mut client = pb::registry_client::RegistryClient::connect(stack.url.clone()).await.unwrap();
    let req = pb::PrepareReleaseRequest { tenant: "acme".into(), app: "crm".into(), manifest: manifest.encode() };
    let prepared = client.prepare_release(authed(token, req)).await.unwrap().into_inner();
    (client, prepared)
}

fn code(err: &AgentError) -> Option<Code> {
    match err {
        AgentError::Rpc { code, .. } => Some(*code),
        _ => None,
    }
}

/// S3-2: the second publish of the same release finds everything in place.
#[tokio::test]
async fn publish_resends_nothing_when_release_is_unchanged() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(2_000_000, 1);
    let first = stack.publish(&token, "acme", "2.4.1", &release.artifacts()).await.unwrap();
    assert!(first.created);
    assert_eq!(first.chunks_sent, first.chunks_total);
    // Every file of this release is distinct noise: every byte travels once.
    assert_eq!(first.bytes_sent, first.bytes_total, "{first:?}");

    let second = stack.publish(&token, "acme", "2.4.1", &release.artifacts()).await.unwrap();
    assert!(!second.created);
    assert_eq!(second.chunks_sent, 0);
    assert_eq!(second.bytes_sent, 0);
    assert_eq!(second.manifest_id, first.manifest_id);
}

/// S3-2, S3-5: an edit in the middle of a large file sends only the chunks
/// around it; unchanged files of the web bundle are not sent at all.
#[tokio::test]
async fn publish_of_next_version_sends_only_changed_chunks() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(16 * 1024 * 1024, 2);
    let v1 = stack.publish(&token, "acme", "1.0.0", &release.artifacts()).await.unwrap();

    let mut apk = std::fs::read(&release.apk).unwrap();
    apk[8 * 1024 * 1024] ^= 0x5a;
    std::fs::write(&release.apk, &apk).unwrap();
    let v2 = stack.publish(&token, "acme", "1.1.0", &release.artifacts()).await.unwrap();

    assert!(v2.created);
    assert_ne!(v2.manifest_id, v1.manifest_id);
    assert!((1..=2).contains(&v2.chunks_sent), "{v2:?}");
    assert!(v2.bytes_sent <= 2 * ferry_release::CHUNK_MAX as u64, "{v2:?}");
    assert_eq!(v2.chunks_reused, v2.chunks_total - v2.chunks_sent);
}

/// S3-4: every assembled file in S3 is byte-identical to the agent's input.
#[tokio::test]
async fn assembled_files_in_s3_match_the_agents_input() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    // Larger than one multipart part, to exercise multipart assembly too.
    let release = Release::new(20 * 1024 * 1024 + 12345, 3);
    stack.publish(&token, "acme", "3.0.0", &release.artifacts()).await.unwrap();

    let inputs = [
        release.apk.clone(),
        release.web.join("index.html"),
        release.web.join("assets/app.js"),
        release.web.join("assets/vendor.js"),
        release.api.clone(),
    ];
    for path in inputs {
        let expected = std::fs::read(&path).unwrap();
        let stored = stack.blobs.get_file(&blake3::hash(&expected)).await.unwrap();
        assert_eq!(stored.len(), expected.len(), "{}", path.display());
        assert_eq!(blake3::hash(&stored), blake3::hash(&expected), "{}", path.display());
    }
}

/// S3-2: a publish cut off halfway, re-run, sends only what did not arrive.
#[tokio::test]
async fn interrupted_publish_resumes_sending_only_missing_chunks() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(12 * 1024 * 1024, 4);
    let relay = Relay::start(stack.addr, Some(6 * 1024 * 1024)).await.unwrap();
    let via_relay = ferry_agent::Connection {
        url: relay.url(),
        token: token.clone(),
        ca_cert: None,
        proxy: ferry_agent::Proxy::none(),
    };

    let cut = publish_to(&via_relay, "acme", "1.0.0", &release.artifacts(), false).await.unwrap_err();
    assert!(cut.is_retryable(), "{cut}");
    let app_id = stack.app_id("acme").await;
    assert_eq!(stack.meta.release_manifest(app_id, "1.0.0").await.unwrap(), None, "nothing half-published is visible");

    let manifest = release.manifest("1.0.0");
    let all: Vec<Hash> = manifest.unique_chunks().iter().map(|c| c.hash).collect();
    let stored = stack.meta.tenant_chunks(stack.tenant_id("acme").await, &all).await.unwrap().len() as u64;
    assert!(stored > 0, "the first run stored some chunks before the cut");

    let resumed = stack.publish(&token, "acme", "1.0.0", &release.artifacts()).await.unwrap();
    assert!(resumed.created);
    // Nothing stored before the cut travels again. (Stores in flight at the
    // cut still finish after it, so the resumed publish may find more.)
    assert!(resumed.chunks_reused >= stored, "{resumed:?}, {stored} stored before");
    assert_eq!(resumed.chunks_sent, resumed.chunks_total - resumed.chunks_reused);
    assert_eq!(
        stack.meta.release_manifest(app_id, "1.0.0").await.unwrap().map(|m| m.to_string()),
        Some(resumed.manifest_id)
    );
}

/// A chunk whose bytes do not match its hash is refused and nothing of the
/// release is committed.
#[tokio::test]
async fn corrupt_chunk_is_rejected_and_nothing_is_committed() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let apk = dir.path().join("crm.apk");
    std::fs::write(&apk, noise(300_000, 5)).unwrap();
    let spec = ArtifactSpec::parse(&format!("mobile={}", apk.display())).unwrap();
    let manifest = pack("1.0.0".parse().unwrap(), &[spec], &|_| {}).unwrap();

    let (mut client, prepared) = prepare(&stack, &token, &manifest).await;
    assert_eq!(prepared.missing_chunks.len(), manifest.unique_chunks().len());

    let first = manifest.unique_chunks()[0];
    let forged = pb::Chunk { hash: first.hash.as_bytes().to_vec(), data: noise(first.len as usize, 6) };
    let upload = pb::UploadChunksRequest { tenant: "acme".into(), chunks: vec![forged], ..Default::default() };
    let status = client.upload_chunks(authed(&token, futures::stream::iter(vec![upload]))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("hash to"), "{}", status.message());

    let commit = pb::CommitReleaseRequest {
        tenant: "acme".into(),
        app: "crm".into(),
        manifest_id: prepared.manifest_id,
        deploy: true,
        compatible: String::new(),
    };
    let status = client.commit_release(authed(&token, commit)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());
    let app_id = stack.app_id("acme").await;
    assert_eq!(stack.meta.release_manifest(app_id, "1.0.0").await.unwrap(), None);
    assert_eq!(stack.meta.deployed_version(app_id).await.unwrap(), None);
    let held = stack.meta.tenant_chunks(stack.tenant_id("acme").await, &[first.hash]).await.unwrap();
    assert!(held.is_empty(), "the forged chunk was not recorded");
}

/// S1-4: an agent key publishes only for its own tenant; a refused publish
/// stores nothing for the other tenant.
#[tokio::test]
async fn publish_for_another_tenant_is_refused_and_stores_nothing() {
    let stack = Stack::start().await;
    let acme = stack.tenant("acme").await;
    stack.tenant("globex").await;
    let release = Release::new(200_000, 7);
    let err = stack.publish(&acme, "globex", "1.0.0", &release.artifacts()).await.unwrap_err();
    assert_eq!(code(&err), Some(Code::PermissionDenied), "{err}");
    assert!(err.to_string().contains("not valid for tenant globex"), "{err}");

    let globex = stack.tenant_id("globex").await;
    let manifest = release.manifest("1.0.0");
    assert_eq!(stack.meta.load_manifest(globex, manifest.id()).await.unwrap(), None);
    let all: Vec<Hash> = manifest.unique_chunks().iter().map(|c| c.hash).collect();
    assert!(stack.meta.tenant_chunks(globex, &all).await.unwrap().is_empty());
}

/// S3-2 per tenant: a tenant is asked for chunks another tenant already
/// stored (it cannot learn what others hold), yet the bytes are kept once.
#[tokio::test]
async fn tenants_do_not_learn_each_others_content() {
    let stack = Stack::start().await;
    let acme = stack.tenant("acme").await;
    let globex = stack.tenant("globex").await;
    let release = Release::new(1_000_000, 8);
    let a = stack.publish(&acme, "acme", "1.0.0", &release.artifacts()).await.unwrap();
    let g = stack.publish(&globex, "globex", "1.0.0", &release.artifacts()).await.unwrap();
    assert_eq!(a.chunks_sent, a.chunks_total);
    assert_eq!(g.chunks_sent, g.chunks_total, "globex must send the bytes too");
    // Stored once: in the files (the chunks' own objects went with acme's
    // commit, and globex's upload stored nothing new).
    let count = |prefix: &'static str| {
        let client = stack.s3.client();
        let bucket = stack.blobs.bucket().to_owned();
        async move {
            let listed = client.list_objects_v2().bucket(bucket).prefix(prefix).send().await.unwrap();
            listed.key_count().unwrap_or(0) as usize
        }
    };
    assert_eq!(count("chunks/").await, 0);
    let files: std::collections::HashSet<Hash> = release.manifest("1.0.0").files().map(|f| f.hash).collect();
    assert_eq!(count("files/").await, files.len(), "files are stored once");
    let rows: i64 =
        stack.meta.client().await.unwrap().query_one("SELECT count(*) FROM chunks", &[]).await.unwrap().get(0);
    assert_eq!(rows as u64, a.chunks_total);
}

#[tokio::test]
async fn same_version_with_different_content_is_refused() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(100_000, 9);
    stack.publish(&token, "acme", "2.0.0", &release.artifacts()).await.unwrap();
    std::fs::write(&release.api, b"{\"openapi\":\"3.1.0\",\"changed\":true}").unwrap();
    let err = stack.publish(&token, "acme", "2.0.0", &release.artifacts()).await.unwrap_err();
    assert_eq!(code(&err), Some(Code::AlreadyExists), "{err}");
    assert!(err.to_string().contains("versions are immutable"), "{err}");
}

/// Versions that differ only in build metadata have equal precedence: a
/// client could not tell them apart, so the second is refused, naming the
/// first, whichever comes first and with or without deploy.
#[tokio::test]
async fn build_metadata_does_not_make_another_version() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(100_000, 19);
    stack.publish(&token, "acme", "1.0.0", &release.artifacts()).await.unwrap();
    std::fs::write(&release.api, b"{\"openapi\":\"3.1.0\",\"build\":2}").unwrap();
    let err = stack.publish(&token, "acme", "1.0.0+b2", &release.artifacts()).await.unwrap_err();
    assert_eq!(code(&err), Some(Code::AlreadyExists), "{err}");
    assert!(err.to_string().contains("same precedence as the published version 1.0.0"), "{err}");

    stack.publish(&token, "acme", "2.0.0+b1", &release.artifacts()).await.unwrap();
    let conn = stack.connection(&token);
    let err = publish_to(&conn, "acme", "2.0.0", &release.artifacts(), true).await.unwrap_err();
    assert!(err.to_string().contains("published version 2.0.0+b1"), "{err}");
    let app_id = stack.app_id("acme").await;
    assert_eq!(stack.meta.release_manifest(app_id, "2.0.0").await.unwrap(), None);
    assert_eq!(stack.meta.deployed_version(app_id).await.unwrap(), None, "nothing was deployed");

    // The same release again is still a no-op.
    let again = stack.publish(&token, "acme", "2.0.0+b1", &release.artifacts()).await.unwrap();
    assert!(!again.created);
}

#[tokio::test]
async fn unknown_revoked_and_client_keys_are_refused() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(100_000, 10);

    let unknown = ferry_store::ApiKey::generate(KeyRole::Agent).token();
    let err = stack.publish(&unknown, "acme", "1.0.0", &release.artifacts()).await.unwrap_err();
    assert_eq!(code(&err), Some(Code::Unauthenticated), "{err}");
    assert!(err.to_string().contains("refused the token"), "{err}");

    let err = stack.publish("not-a-key", "acme", "1.0.0", &release.artifacts()).await.unwrap_err();
    assert_eq!(code(&err), Some(Code::Unauthenticated), "{err}");

    // The tenant's real key id with a wrong secret.
    let id = ferry_store::ApiKey::parse(&token).unwrap().id;
    let wrong_secret = format!("ferry_agent_{id}_{}", "0".repeat(64));
    assert!(ferry_store::ApiKey::parse(&wrong_secret).is_ok(), "well-formed: only the secret is wrong");
    let err = stack.publish(&wrong_secret, "acme", "1.0.0", &release.artifacts()).await.unwrap_err();
    assert_eq!(code(&err), Some(Code::Unauthenticated), "{err}");

    let tenant = Name::parse("tenant", "acme").unwrap();
    let client = stack.meta.issue_key(&tenant, KeyRole::Client).await.unwrap().token();
    let err = stack.publish(&client, "acme", "1.0.0", &release.artifacts()).await.unwrap_err();
    assert_eq!(code(&err), Some(Code::PermissionDenied), "{err}");

    stack.meta.revoke_key(&ferry_store::ApiKey::parse(&token).unwrap().id).await.unwrap();
    let err = stack.publish(&token, "acme", "1.0.0", &release.artifacts()).await.unwrap_err();
    assert_eq!(code(&err), Some(Code::Unauthenticated), "{err}");
}

#[tokio::test]
async fn unknown_app_is_reported_with_how_to_create_it() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(100_000, 11);
    let req = ferry_agent::PublishRequest {
        tenant: Name::parse("tenant", "acme").unwrap(),
        app: Name::parse("app", "erp").unwrap(),
        version: "1.0.0".parse().unwrap(),
        artifacts: vec![ArtifactSpec::parse(&format!("api={}", release.api.display())).unwrap()],
        deploy: false,
        retries: 0,
        compatible: None,
        state_dir: None,
    };
    let err =
        ferry_agent::publish(&stack.connection(&token), &req, &ferry_agent::Progress::hidden()).await.unwrap_err();
    assert_eq!(code(&err), Some(Code::NotFound), "{err}");
    assert!(err.to_string().contains("admin create-app acme erp"), "{err}");
}

/// S0-3: the deployed version can move forward and back (rollback).
#[tokio::test]
async fn deploy_records_the_version_running_in_the_private_cloud() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let conn = stack.connection(&token);
    let release = Release::new(100_000, 12);
    let v1 = publish_to(&conn, "acme", "1.0.0", &release.artifacts(), true).await.unwrap();
    assert!(v1.deployed);
    std::fs::write(&release.api, b"{\"v\":2}").unwrap();
    publish_to(&conn, "acme", "2.0.0", &release.artifacts(), true).await.unwrap();
    let app_id = stack.app_id("acme").await;
    assert_eq!(stack.meta.deployed_version(app_id).await.unwrap().as_deref(), Some("2.0.0"));

    let (acme, crm) = (Name::parse("tenant", "acme").unwrap(), Name::parse("app", "crm").unwrap());
    let back = ferry_agent::deploy(&conn, &acme, &crm, &"1.0.0".parse().unwrap()).await.unwrap();
    assert_eq!(back.previous_version.as_deref(), Some("2.0.0"));
    assert_eq!(stack.meta.deployed_version(app_id).await.unwrap().as_deref(), Some("1.0.0"));

    let err = ferry_agent::deploy(&conn, &acme, &crm, &"9.9.9".parse().unwrap()).await.unwrap_err();
    assert_eq!(code(&err), Some(Code::NotFound), "{err}");
    assert!(err.to_string().contains("not published"), "{err}");
}

/// S3 down: the publish fails with a retryable error naming the cause and
/// leaves nothing visible; once S3 is back, the same publish completes.
#[tokio::test]
async fn publish_survives_s3_outage_once_s3_is_back() {
    let mut stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(500_000, 13);
    stack.s3.stop();
    let err = stack.publish(&token, "acme", "1.0.0", &release.artifacts()).await.unwrap_err();
    assert_eq!(code(&err), Some(Code::Unavailable), "{err}");
    assert!(err.to_string().contains("s3 is unavailable"), "{err}");
    let app_id = stack.app_id("acme").await;
    assert_eq!(stack.meta.release_manifest(app_id, "1.0.0").await.unwrap(), None);

    stack.s3.restart().unwrap();
    let done = stack.publish(&token, "acme", "1.0.0", &release.artifacts()).await.unwrap();
    assert!(done.created);
}

#[tokio::test]
async fn registry_that_is_down_is_reported_as_unreachable() {
    // A port bound but not listening: connections are refused, and no other
    // test can take the port meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", socket.local_addr().unwrap());
    let release = Release::new(10_000, 14);
    let conn = ferry_agent::Connection {
        url: url.clone(),
        token: "x".into(),
        ca_cert: None,
        proxy: ferry_agent::Proxy::none(),
    };
    let err = publish_to(&conn, "acme", "1.0.0", &release.artifacts(), false).await.unwrap_err();
    assert!(matches!(err, AgentError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

/// Transport: https:// with a private CA given by --ca-cert.
#[tokio::test]
async fn publish_over_tls_with_a_private_ca() {
    let (tls, ca_pem) = self_signed_tls();
    let stack = Stack::start_with_tls(Some(tls)).await;
    let token = stack.tenant("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let release = Release::new(100_000, 15);

    let trusted = ferry_agent::Connection {
        url: stack.url.clone(),
        token: token.clone(),
        ca_cert: Some(ca),
        proxy: ferry_agent::Proxy::none(),
    };
    let done = publish_to(&trusted, "acme", "1.0.0", &release.artifacts(), false).await.unwrap();
    assert!(done.created);

    let untrusted =
        ferry_agent::Connection { url: stack.url.clone(), token, ca_cert: None, proxy: ferry_agent::Proxy::none() };
    let err = publish_to(&untrusted, "acme", "1.0.0", &release.artifacts(), false).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, AgentError::Connect { .. } | AgentError::Rpc { code: Code::Unavailable, .. }), "{err}");
    assert!(message.contains("certificate") || message.contains("UnknownIssuer"), "{message}");
}

/// The manifest the registry stores is the agent's, byte for byte, and
/// decodes to the files that were packed.
#[tokio::test]
async fn registry_keeps_the_manifest_of_every_version() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(100_000, 16);
    let mut packed = Vec::new();
    for (i, version) in ["1.0.0", "1.0.1", "0.9.0"].into_iter().enumerate() {
        std::fs::write(&release.api, format!("{{\"v\":{i}}}")).unwrap();
        let s = stack.publish(&token, "acme", version, &release.artifacts()).await.unwrap();
        let manifest = release.manifest(version);
        assert_eq!(s.manifest_id, manifest.id().to_string());
        packed.push((version, manifest));
    }
    let app_id = stack.app_id("acme").await;
    let tenant_id = stack.tenant_id("acme").await;
    for (version, expected) in packed {
        let id = stack.meta.release_manifest(app_id, version).await.unwrap().unwrap();
        assert_eq!(id, expected.id(), "{version}");
        let body = stack.meta.load_manifest(tenant_id, id).await.unwrap().unwrap();
        assert_eq!(body, expected.encode(), "{version}: stored byte for byte");
        assert_eq!(Manifest::decode(&body).unwrap(), expected);
    }
}

/// A tenant cannot point a release at another tenant's file by naming its
/// hash: its own chunks must rebuild the file, or the commit is refused as
/// bad input (and says nothing about whether the file exists).
#[tokio::test]
async fn release_cannot_claim_another_tenants_file_by_hash() {
    let stack = Stack::start().await;
    let acme = stack.tenant("acme").await;
    let globex = stack.tenant("globex").await;
    let secret = tempfile::tempdir().unwrap();
    let apk = secret.path().join("crm.apk");
    std::fs::write(&apk, noise(300_000, 21)).unwrap();
    stack.publish(&globex, "globex", "1.0.0", &[("mobile", apk.as_path())]).await.unwrap();
    let globex_file = blake3::hash(&std::fs::read(&apk).unwrap());

    // acme packs a file of the same size, then claims globex's hash for it.
    let mine = tempfile::tempdir().unwrap();
    let fake = mine.path().join("crm.apk");
    std::fs::write(&fake, noise(300_000, 22)).unwrap();
    let spec = ArtifactSpec::parse(&format!("mobile={}", fake.display())).unwrap();
    let mut manifest = pack("1.0.0".parse().unwrap(), &[spec], &|_| {}).unwrap();
    manifest.artifacts[0].files[0].hash = globex_file;

    let (mut client, prepared) = prepare(&stack, &acme, &manifest).await;
    let data = std::fs::read(&fake).unwrap();
    let mut chunks = Vec::new();
    let mut offset = 0;
    for c in &manifest.artifacts[0].files[0].chunks {
        chunks
            .push(pb::Chunk { hash: c.hash.as_bytes().to_vec(), data: data[offset..offset + c.len as usize].to_vec() });
        offset += c.len as usize;
    }
    let upload = pb::UploadChunksRequest { tenant: "acme".into(), chunks, ..Default::default() };
    client.upload_chunks(authed(&acme, futures::stream::iter(vec![upload]))).await.unwrap();
    let commit = pb::CommitReleaseRequest {
        tenant: "acme".into(),
        app: "crm".into(),
        manifest_id: prepared.manifest_id,
        deploy: false,
        compatible: String::new(),
    };
    let status = client.commit_release(authed(&acme, commit)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("rebuild"), "{}", status.message());
    let app_id = stack.app_id("acme").await;
    assert_eq!(stack.meta.release_manifest(app_id, "1.0.0").await.unwrap(), None);
}

/// Two agents publishing and deploying different versions of one app at the
/// same time both succeed, and the app ends up deployed at one of them.
#[tokio::test]
async fn concurrent_publishes_with_deploy_both_succeed() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let (a, b) = (Release::new(200_000, 31), Release::new(200_000, 32));
    let conn = stack.connection(&token);
    let (artifacts_a, artifacts_b) = (a.artifacts(), b.artifacts());
    let (ra, rb) = tokio::join!(
        publish_to(&conn, "acme", "1.0.0", &artifacts_a, true),
        publish_to(&conn, "acme", "2.0.0", &artifacts_b, true),
    );
    ra.unwrap();
    rb.unwrap();
    let deployed = stack.meta.deployed_version(stack.app_id("acme").await).await.unwrap();
    assert!(matches!(deployed.as_deref(), Some("1.0.0" | "2.0.0")), "{deployed:?}");
}

/// The commit transaction itself under contention: many commits with
/// deploy of one app at once (the window in which two of them could
/// deadlock is microseconds wide, so it takes many of them at once to
/// reach it). All succeed; the deployed pointer and the history agree.
#[tokio::test]
async fn many_concurrent_commits_with_deploy_never_deadlock() {
    let stack = Stack::start().await;
    stack.tenant("acme").await;
    let (tenant_id, app_id) = (stack.tenant_id("acme").await, stack.app_id("acme").await);
    let release = Release::new(10_000, 33);
    let manifest = release.manifest("1.0.0");
    let id = manifest.id();
    let body = manifest.encode();
    stack.meta.save_manifest(tenant_id, &ferry_store::SavedManifest::of(&manifest, &body)).await.unwrap();
    for round in 0..10 {
        let commits = (0..6).map(|i| {
            let version: ferry_release::Version = format!("{round}.{i}.0").parse().unwrap();
            let meta = stack.meta.clone();
            let options = ferry_store::CommitOptions { deploy: true, ..Default::default() };
            async move { meta.commit_release(tenant_id, app_id, &version, id, options).await }
        });
        for result in futures::future::join_all(commits).await {
            result.unwrap();
        }
    }
    let deployed = stack.meta.deployed_version(app_id).await.unwrap().unwrap();
    let (client, conn) = tokio_postgres::connect(&stack.database_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let last: String = client
        .query_one(
            "SELECT r.version FROM deployments d JOIN releases r ON r.id = d.release_id \
             WHERE d.app_id = $1 ORDER BY d.id DESC LIMIT 1",
            &[&app_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(deployed, last);
    let count: i64 =
        client.query_one("SELECT count(*) FROM deployments WHERE app_id = $1", &[&app_id]).await.unwrap().get(0);
    assert_eq!(count, 60);
}

/// The registry's ops listener: `/metrics` counts calls by outcome, bytes
/// received against bytes the tenant already held, and S3 latencies;
/// `/readyz` turns 503 once the registry drains, while `/healthz` stays 200.
#[tokio::test]
async fn ops_listener_reports_calls_bytes_and_readiness() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(400_000, 3);
    let first = stack.publish(&token, "acme", "1.0.0", &release.artifacts()).await.unwrap();
    std::fs::write(&release.api, br#"{"openapi":"3.1.0","v":2}"#).unwrap();
    let second = stack.publish(&token, "acme", "1.1.0", &release.artifacts()).await.unwrap();
    assert!(second.bytes_sent < second.bytes_total, "the second publish reuses chunks");

    let http = ferry_testkit::http();
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{}{path}", stack.ops));
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{series} missing from:\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value(r#"ferry_registry_requests_total{call="commit_release",code="Ok"}"#), 2.0);
    assert_eq!(value(r#"ferry_registry_requests_total{call="prepare_release",code="Ok"}"#), 2.0);
    assert_eq!(value("ferry_registry_bytes_received_total"), (first.bytes_sent + second.bytes_sent) as f64);
    assert_eq!(value("ferry_registry_bytes_reused_total"), (second.bytes_total - second.bytes_sent) as f64);
    assert_eq!(value(r#"ferry_registry_request_duration_seconds_count{call="upload_chunks"}"#), 2.0);
    assert!(value(r#"ferry_registry_dependency_duration_seconds_count{dependency="s3",operation="put_object"}"#) > 0.0);
    assert_eq!(value("ferry_ready"), 1.0);
    assert_eq!(get("/readyz").await.0, 200);

    stack.registry.lifecycle().start_draining();
    let (status, why) = get("/readyz").await;
    assert_eq!((status, why.as_str()), (503, "not ready: shutting down"));
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(value_in(&get("/metrics").await.1, "ferry_ready"), 0.0);
}

fn value_in(metrics: &str, series: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' '))).unwrap().parse().unwrap()
}

/// Replicas starting together on an empty database all migrate it: they
/// take turns (an advisory lock) instead of colliding on the same
/// migration.
#[tokio::test]
async fn replicas_migrating_at_once_all_succeed() {
    let url = ferry_testkit::fresh_database().await.unwrap();
    let replicas: Vec<_> = (0..4).map(|_| ferry_store::connect(&url, 2).unwrap()).collect();
    let results = futures::future::join_all(replicas.iter().map(|m| m.migrate())).await;
    for result in results {
        result.unwrap();
    }
    // And the schema is whole: a tenant can be created.
    replicas[0].create_tenant(&Name::parse("tenant", "acme").unwrap()).await.unwrap();
}

/// The lock is really taken: while another session holds it, a migration
/// waits (PostgreSQL shows it waiting), and completes once it is released.
#[tokio::test]
async fn a_migration_waits_for_the_migration_lock() {
    let url = ferry_testkit::fresh_database().await.unwrap();
    let (holder, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let key: i64 = 0x6665_7272_795f_6d67;
    holder.execute("SELECT pg_advisory_lock($1)", &[&key]).await.unwrap();
    let meta = ferry_store::connect(&url, 2).unwrap();
    let migration = tokio::spawn(async move { meta.migrate().await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = holder
            .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted", &[])
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        assert!(!migration.is_finished(), "the migration ran without waiting for the lock");
        assert!(std::time::Instant::now() < deadline, "the migration never asked for the lock");
        tokio::task::yield_now().await;
    }
    holder.execute("SELECT pg_advisory_unlock($1)", &[&key]).await.unwrap();
    migration.await.unwrap().unwrap();
}
