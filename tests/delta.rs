//! Delta uploads (issue 14): with a state directory, the agent sends the
//! chunks the registry lacks as zstd frames against the release it
//! published before; the registry rebuilds and checks them. Fewer bytes on
//! the wire, the same release stored, a safe fallback when the reference
//! is not the tenant's, and hostile runs refused. Real registry,
//! PostgreSQL, S3, and a relay counting the agent's bytes.

use std::path::Path;

use ferry_agent::{Connection, Progress, PublishRequest, PublishSummary};
use ferry_e2e::{Stack, noise, specs};
use ferry_proto::registry::v1 as pb;
use ferry_release::Name;
use ferry_testkit::Relay;

/// Version `n` of a release: an APK-like file with a few 1 KiB regions
/// changed per version, and a web bundle whose app.js gains lines.
fn write_release(dir: &Path, n: usize) {
    let mut apk = noise(1_500_000, 7);
    for i in 0..n * 3 {
        let at = (i * 397_331) % (apk.len() - 1024);
        apk[at..at + 1024].copy_from_slice(&noise(1024, 100 + i as u64));
    }
    std::fs::create_dir_all(dir.join("web")).unwrap();
    std::fs::write(dir.join("crm.apk"), apk).unwrap();
    let js: String =
        (0..20_000 + n * 50).map(|i| format!("export const f{i} = (x) => x * {i} + {};\n", i % 7)).collect();
    std::fs::write(dir.join("web/app.js"), js).unwrap();
}

async fn publish(
    conn: &Connection,
    tenant: &str,
    version: &str,
    dir: &Path,
    state: Option<&Path>,
) -> Result<PublishSummary, ferry_agent::AgentError> {
    let artifacts = [("mobile", dir.join("crm.apk")), ("web", dir.join("web"))];
    let artifacts: Vec<(&str, &Path)> = artifacts.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let req = PublishRequest {
        tenant: Name::parse("tenant", tenant).unwrap(),
        app: Name::parse("app", "crm").unwrap(),
        version: version.parse().unwrap(),
        artifacts: specs(&artifacts),
        deploy: true,
        retries: 0,
        compatible: None,
        state_dir: state.map(Path::to_owned),
    };
    ferry_agent::publish(conn, &req, &Progress::hidden()).await
}

fn via(relay: &Relay, token: &str) -> Connection {
    Connection { url: relay.url(), token: token.to_owned(), ca_cert: None, proxy: ferry_agent::Proxy::none() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_against_the_last_release_send_a_fraction_of_the_bytes() {
    let stack = Stack::start().await;
    let (acme, globex) = (stack.tenant("acme").await, stack.tenant("globex").await);
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
    write_release(&v1, 1);
    write_release(&v2, 2);
    let state = dir.path().join("state");

    // Both tenants publish 1.0.0; only acme keeps a cache.
    publish(&stack.connection(&acme), "acme", "1.0.0", &v1, Some(&state)).await.unwrap();
    publish(&stack.connection(&globex), "globex", "1.0.0", &v1, None).await.unwrap();

    // 2.0.0: the same chunks are missing for both; acme sends them as deltas.
    let relay = Relay::start(stack.addr, None).await.unwrap();
    let with = publish(&via(&relay, &acme), "acme", "2.0.0", &v2, Some(&state)).await.unwrap();
    let delta_wire = relay.bytes_sent();
    let relay = Relay::start(stack.addr, None).await.unwrap();
    let without = publish(&via(&relay, &globex), "globex", "2.0.0", &v2, None).await.unwrap();
    let plain_wire = relay.bytes_sent();
    assert_eq!((with.chunks_sent, with.bytes_sent), (without.chunks_sent, without.bytes_sent));
    assert!(with.chunks_delta > 0 && with.chunks_delta <= with.chunks_sent, "{with:?}");
    assert_eq!(without.chunks_delta, 0);
    assert!(delta_wire * 4 < plain_wire, "deltas: {delta_wire} bytes on the wire, whole chunks: {plain_wire}");
    // The registry holds the release acme published: rebuilt and checked.
    let app = stack.app_id("acme").await;
    let id = stack.meta.release_manifest(app, "2.0.0").await.unwrap().unwrap();
    assert_eq!(id.to_string(), with.manifest_id);

    // acme publishes 2.1.0, which globex never had. globex, handed acme's
    // cache, would build on chunks it does not hold: the registry refuses
    // the reference, the agent sends whole chunks, and the publish succeeds.
    let (v21, v3) = (dir.path().join("v21"), dir.path().join("v3"));
    write_release(&v21, 5);
    write_release(&v3, 4);
    publish(&stack.connection(&acme), "acme", "2.1.0", &v21, Some(&state)).await.unwrap();
    let stolen = dir.path().join("stolen");
    std::fs::create_dir_all(stolen.join("cache")).unwrap();
    for entry in std::fs::read_dir(state.join("cache")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().replace("acme.", "globex.");
        if entry.path().is_dir() {
            std::fs::rename(entry.path(), stolen.join("cache").join(&name)).unwrap();
        } else {
            let pointer = std::fs::read_to_string(entry.path()).unwrap().replace("acme.", "globex.");
            std::fs::write(stolen.join("cache").join(&name), pointer).unwrap();
        }
    }
    let s = publish(&stack.connection(&globex), "globex", "3.0.0", &v3, Some(&stolen)).await;
    let s = s.expect("the publish falls back to whole chunks");
    assert!(s.chunks_sent > 0 && s.chunks_delta == 0, "{s:?}");
    // And the fallback left globex a cache of its own to build on.
    let s = publish(&stack.connection(&globex), "globex", "3.1.0", &v21, Some(&stolen)).await.unwrap();
    assert!(s.chunks_delta > 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_delta_runs_are_refused_and_nothing_is_stored() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let dir = tempfile::tempdir().unwrap();
    write_release(dir.path(), 1);
    publish(&stack.connection(&token), "acme", "1.0.0", dir.path(), None).await.unwrap();
    let manifest_bytes =
        ferry_release::pack("1.0.0".parse().unwrap(), &specs(&[("mobile", &dir.path().join("crm.apk"))]), &|_| {})
            .unwrap();
    let held = manifest_bytes.files().next().unwrap().chunks[0];
    let target = noise(10_000, 5);
    let target_hash = blake3::hash(&target);
    let base = std::fs::read(dir.path().join("crm.apk")).unwrap()[..held.len as usize].to_vec();
    let frame = ferry_patch::make(&base, &target).unwrap();
    let run = |reference: Vec<Vec<u8>>, lens: Vec<u32>, frame: Vec<u8>| pb::DeltaRun {
        reference,
        hashes: vec![target_hash.as_bytes().to_vec()],
        lens,
        frame,
    };
    let send = |run: pb::DeltaRun| {
        let conn = stack.connection(&token);
        async move {
            let mut client = conn.connect().await.unwrap();
            let message = pb::UploadChunksRequest { tenant: "acme".into(), chunks: vec![], runs: vec![run] };
            client.upload_chunks(futures::stream::iter(vec![message])).await
        }
    };
    let held_ref = vec![held.hash.as_bytes().to_vec()];
    // A frame that decodes to other bytes than the hash says.
    let e = send(run(held_ref.clone(), vec![10_000], ferry_patch::make(&base, &noise(10_000, 6)).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("does not match") || e.message().contains("hash to"), "{e:?}");
    // A length that does not match what the frame decodes to.
    let e = send(run(held_ref.clone(), vec![9_999], frame.clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("does not decode to 9999 bytes"), "{e:?}");
    // A reference the tenant does not hold.
    let e =
        send(run(vec![blake3::hash(b"elsewhere").as_bytes().to_vec()], vec![10_000], frame.clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    // Too many chunks for one run.
    let mut big = run(held_ref.clone(), vec![10_000], frame.clone());
    big.hashes = vec![target_hash.as_bytes().to_vec(); 65];
    big.lens = vec![10_000; 65];
    let e = send(big).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // A reference named twice (more work for nothing).
    let e = send(run(vec![held_ref[0].clone(), held_ref[0].clone()], vec![10_000], frame.clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("delta run:") && e.message().contains("named twice"), "{e:?}");
    // More runs in one message than the registry takes.
    let conn = stack.connection(&token);
    let mut client = conn.connect().await.unwrap();
    let many = vec![run(held_ref.clone(), vec![10_000], frame.clone()); 17];
    let message = pb::UploadChunksRequest { tenant: "acme".into(), chunks: vec![], runs: many };
    let e = client.upload_chunks(futures::stream::iter(vec![message])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("at most 16"), "{e:?}");
    let tenant_id = stack.tenant_id("acme").await;
    assert!(stack.meta.tenant_chunks(tenant_id, &[target_hash]).await.unwrap().is_empty(), "nothing was stored");

    // The honest run is stored.
    let done = send(run(held_ref, vec![10_000], frame)).await.unwrap().into_inner();
    assert_eq!((done.chunks_stored, done.bytes_stored), (1, 10_000));
    assert!(stack.meta.tenant_chunks(tenant_id, &[target_hash]).await.unwrap().contains(&target_hash));
}
