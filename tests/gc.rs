//! Garbage collection of what abandoned publishes leave behind: unused
//! manifests, chunks and files go once older than the grace period; what a
//! release or a recent publish uses stays.

use std::time::Duration;

use ferry_e2e::{Release, Stack, publish_to};
use ferry_proto::registry::v1 as pb;

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

async fn objects(stack: &Stack, prefix: &str) -> usize {
    let listed = stack.s3.client().list_objects_v2().bucket(stack.blobs.bucket()).prefix(prefix).send().await.unwrap();
    listed.key_count().unwrap_or(0) as usize
}

#[tokio::test]
async fn abandoned_publishes_are_collected_and_releases_kept() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let conn = stack.connection(&token);
    let kept = Release::new(3_000_000, 81);
    publish_to(&conn, "acme", "1.0.0", &kept.artifacts(), true).await.unwrap();
    // The release's chunks are in its files: no object of their own.
    assert_eq!(objects(&stack, "chunks/").await, 0);

    // A publish abandoned halfway: prepared, half its chunks uploaded, never
    // committed.
    let abandoned = Release::new(6_000_000, 82);
    let manifest = abandoned.manifest("2.0.0");
    let mut client = pb::registry_client::RegistryClient::connect(stack.url.clone()).await.unwrap();
    let prepare = pb::PrepareReleaseRequest { tenant: "acme".into(), app: "crm".into(), manifest: manifest.encode() };
    client.prepare_release(authed(&token, prepare)).await.unwrap();
    let chunks = abandoned.chunks("2.0.0");
    let half: Vec<pb::Chunk> = chunks[..chunks.len() / 2]
        .iter()
        .map(|(hash, data)| pb::Chunk { hash: hash.as_bytes().to_vec(), data: data.clone() })
        .collect();
    let messages: Vec<pb::UploadChunksRequest> = half
        .chunks(8)
        .map(|c| pb::UploadChunksRequest { tenant: "acme".into(), chunks: c.to_vec(), ..Default::default() })
        .collect();
    let stored = client.upload_chunks(authed(&token, futures::stream::iter(messages))).await.unwrap().into_inner();
    let stranded = stored.chunks_stored as usize;
    assert!(stranded > 0);
    assert_eq!(objects(&stack, "chunks/").await, stranded);

    // Within the grace period nothing goes.
    let report = ferry_store::collect_garbage(&stack.meta, &stack.blobs, Duration::from_secs(3600)).await.unwrap();
    assert!(report.ran);
    assert_eq!((report.manifests, report.chunks, report.files), (0, 0, 0), "{report}");

    // Past it, what only the abandoned publish used goes.
    let report = ferry_store::collect_garbage(&stack.meta, &stack.blobs, Duration::ZERO).await.unwrap();
    assert_eq!(report.manifests, 1, "{report}");
    assert_eq!(report.chunks as usize, stranded, "{report}");
    assert_eq!(report.chunk_claims as usize, stranded, "{report}");
    assert_eq!(report.files, 0, "{report}");
    assert_eq!(objects(&stack, "chunks/").await, 0, "the release's chunks are in its files");

    // The release is whole: every file downloads and matches.
    let app = stack.app_id("acme").await;
    let id = stack.meta.release_manifest(app, "1.0.0").await.unwrap().unwrap();
    let body = stack.meta.load_manifest(stack.tenant_id("acme").await, id).await.unwrap().unwrap();
    for file in ferry_release::Manifest::decode(&body).unwrap().files() {
        let bytes = stack.blobs.get_file(&file.hash).await.unwrap();
        assert_eq!(blake3::hash(&bytes), file.hash);
    }
    // The abandoned version can still be published: it starts over.
    let redone = publish_to(&conn, "acme", "2.0.0", &abandoned.artifacts(), false).await.unwrap();
    assert!(redone.created);
    assert_eq!(redone.chunks_sent, redone.chunks_total - redone.chunks_reused);

    // Nothing of a committed release is ever garbage.
    let report = ferry_store::collect_garbage(&stack.meta, &stack.blobs, Duration::ZERO).await.unwrap();
    assert_eq!((report.manifests, report.chunks, report.files), (0, 0, 0), "{report}");
}

/// One collection at a time across replicas: while another holds the lock,
/// a collection does nothing and says so.
#[tokio::test]
async fn only_one_replica_collects_at_a_time() {
    let stack = Stack::start().await;
    let (client, conn) = tokio_postgres::connect(&stack.database_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.execute("SELECT pg_advisory_lock($1)", &[&0x6665_7272_7967_6300_i64]).await.unwrap();
    let report = ferry_store::collect_garbage(&stack.meta, &stack.blobs, Duration::ZERO).await.unwrap();
    assert!(!report.ran, "{report}");
    client.execute("SELECT pg_advisory_unlock($1)", &[&0x6665_7272_7967_6300_i64]).await.unwrap();
    let report = ferry_store::collect_garbage(&stack.meta, &stack.blobs, Duration::ZERO).await.unwrap();
    assert!(report.ran, "{report}");
}

/// An object a registry wrote but never recorded (it died in between) is
/// collected too, once old enough.
#[tokio::test]
async fn objects_without_a_row_are_collected() {
    let stack = Stack::start().await;
    let orphan = blake3::hash(b"written, never recorded");
    let key = ferry_store::chunk_key(&orphan);
    stack
        .s3
        .client()
        .put_object()
        .bucket(stack.blobs.bucket())
        .key(&key)
        .body(b"written, never recorded".to_vec().into())
        .send()
        .await
        .unwrap();
    let report = ferry_store::collect_garbage(&stack.meta, &stack.blobs, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(report.chunks, 0, "too young: {report}");
    // Objects carry whole-second timestamps: a zero grace needs the next second.
    let collected = async {
        loop {
            let report = ferry_store::collect_garbage(&stack.meta, &stack.blobs, Duration::ZERO).await.unwrap();
            if report.chunks > 0 {
                return report;
            }
            tokio::task::yield_now().await;
        }
    };
    let report =
        tokio::time::timeout(Duration::from_secs(10), collected).await.expect("collected within a second or so");
    assert_eq!((report.chunks, report.chunk_bytes), (1, 23), "{report}");
    assert_eq!(objects(&stack, "chunks/").await, 0);
}
