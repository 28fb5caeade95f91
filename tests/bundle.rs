//! Transport bundles (issue 14, seed 003): a release packed into one file
//! where the registry cannot be reached, then published by `bundle push`
//! or `ferry-registry admin import`. Full and partial bundles, the order
//! they must arrive in, damage, and importing twice. Real registry,
//! PostgreSQL, S3 and gRPC.

use std::path::{Path, PathBuf};

use ferry_agent::bundle::{Base, BundleRequest, create_bundle, push_bundle};
use ferry_agent::{AgentError, Progress};
use ferry_e2e::{Release, Stack, specs};
use ferry_registry::import::{ImportError, import_bundle};
use ferry_release::Name;

fn request(release: &Release, version: &str, out: PathBuf, state: &Path, base: Option<Base>) -> BundleRequest {
    BundleRequest {
        tenant: Name::parse("tenant", "acme").unwrap(),
        app: Name::parse("app", "crm").unwrap(),
        version: version.parse().unwrap(),
        artifacts: specs(&release.artifacts()),
        out,
        deploy: true,
        compatible: None,
        base,
        state_dir: state.to_owned(),
    }
}

async fn deployed(stack: &Stack, token: &str) -> (Option<String>, Vec<String>) {
    let conn = stack.connection(token);
    let (tenant, app) = (Name::parse("tenant", "acme").unwrap(), Name::parse("app", "crm").unwrap());
    let r = ferry_agent::releases(&conn, &tenant, &app).await.unwrap();
    (r.deployed_version, r.releases.into_iter().map(|l| l.version).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_carry_releases_to_a_registry_the_private_cloud_never_reaches() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (v1, v2) = (Release::new(400_000, 1), Release::new(400_000, 1));
    // v2 changes the web bundle's app.js only; the APK and vendor.js stay.
    std::fs::write(v2.web.join("assets/app.js"), ferry_e2e::noise(300_000, 77)).unwrap();

    // On the air-gapped side: a full bundle of 1.0.0, then 2.0.0 since 1.0.0.
    let full = dir.path().join("crm-1.0.0.ferry");
    let s1 = create_bundle(&request(&v1, "1.0.0", full.clone(), &state, None), &Progress::hidden()).unwrap();
    assert_eq!(s1.chunks_bundled, s1.chunks_total);
    let since = Some(Base::Version("1.0.0".parse().unwrap()));
    let part = dir.path().join("crm-2.0.0.ferry");
    let s2 = create_bundle(&request(&v2, "2.0.0", part.clone(), &state, since), &Progress::hidden()).unwrap();
    assert_eq!(s2.base_manifest_id.as_deref(), Some(s1.manifest_id.as_str()));
    assert!(s2.chunks_bundled > 0 && s2.chunks_bundled < s2.chunks_total / 2, "{s2:?}");
    // Only app.js's chunks travel (the same seed gives the same bytes).
    let app_js = std::fs::metadata(v2.web.join("assets/app.js")).unwrap().len();
    assert!(s2.chunk_bytes <= app_js + 2 * ferry_release::CHUNK_MAX as u64, "{s2:?}");
    assert!(s2.bundle_bytes < s1.bundle_bytes / 2, "{s1:?} {s2:?}");

    // 2.0.0 arriving first is refused whole: the registry lacks what it left out.
    let e = import_bundle(&stack.registry, &part).await.unwrap_err();
    assert!(matches!(e, ImportError::Incomplete { .. }), "{e}");
    assert!(e.to_string().contains(&format!("left out those of manifest {}", s1.manifest_id)), "{e}");
    assert_eq!(deployed(&stack, &token).await, (None, vec![]));
    let conn = stack.connection(&token);
    let e = push_bundle(&conn, &part, 0, &Progress::hidden()).await.unwrap_err();
    assert!(matches!(e, AgentError::Incomplete { .. }), "{e}");
    assert_eq!(deployed(&stack, &token).await, (None, vec![]));

    // The full bundle, by import: published and deployed; again: nothing changes.
    let i1 = import_bundle(&stack.registry, &full).await.unwrap();
    assert!(i1.created && i1.deployed, "{i1:?}");
    assert_eq!(i1.chunks_stored, s1.chunks_total);
    assert_eq!(i1.manifest_id, s1.manifest_id);
    let again = import_bundle(&stack.registry, &full).await.unwrap();
    assert!(!again.created && again.chunks_stored == 0, "{again:?}");
    assert_eq!(deployed(&stack, &token).await, (Some("1.0.0".into()), vec!["1.0.0".into()]));

    // Now the partial one, pushed over gRPC: only its chunks are sent.
    let p2 = push_bundle(&conn, &part, 0, &Progress::hidden()).await.unwrap();
    assert!(p2.created && p2.deployed, "{p2:?}");
    assert_eq!((p2.chunks_sent, p2.bytes_sent), (s2.chunks_bundled, s2.chunk_bytes));
    assert_eq!(deployed(&stack, &token).await, (Some("2.0.0".into()), vec!["2.0.0".into(), "1.0.0".into()]));
    let again = push_bundle(&conn, &part, 0, &Progress::hidden()).await.unwrap();
    assert!(!again.created && again.chunks_sent == 0, "{again:?}");
    // Replaying the old --deploy bundle does not roll 2.0.0 back.
    let replay = import_bundle(&stack.registry, &full).await.unwrap();
    assert!(!replay.created && !replay.deployed, "{replay:?}");
    let replay = push_bundle(&conn, &full, 0, &Progress::hidden()).await.unwrap();
    assert!(!replay.created && !replay.deployed, "{replay:?}");
    assert_eq!(deployed(&stack, &token).await.0.as_deref(), Some("2.0.0"));

    // The registry holds exactly what a direct publish would have made:
    // the same manifest, files that read back as the originals.
    let app_id = stack.app_id("acme").await;
    let id = stack.meta.release_manifest(app_id, "2.0.0").await.unwrap().unwrap();
    assert_eq!(id.to_string(), s2.manifest_id);
    let direct = v2.manifest("2.0.0");
    assert_eq!(direct.id().to_string(), s2.manifest_id, "a bundle packs as publish does");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_truncated_bundle_is_refused_and_nothing_becomes_visible() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let conn = stack.connection(&token);
    let dir = tempfile::tempdir().unwrap();
    let release = Release::new(200_000, 5);
    let good = dir.path().join("good.ferry");
    create_bundle(&request(&release, "1.0.0", good.clone(), &dir.path().join("state"), None), &Progress::hidden())
        .unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.ferry");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = push_bundle(&conn, &truncated, 0, &Progress::hidden()).await.unwrap_err().to_string();
    assert!(e.contains("truncated.ferry: truncated") && e.contains("copy it again"), "{e}");
    let e = import_bundle(&stack.registry, &truncated).await.unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");

    let damaged = dir.path().join("damaged.ferry");
    let mut flipped = bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 1;
    std::fs::write(&damaged, &flipped).unwrap();
    let e = push_bundle(&conn, &damaged, 0, &Progress::hidden()).await.unwrap_err().to_string();
    assert!(e.contains("damaged.ferry: damaged at byte"), "{e}");
    let e = import_bundle(&stack.registry, &damaged).await.unwrap_err().to_string();
    assert!(e.contains("damaged at byte"), "{e}");
    assert_eq!(deployed(&stack, &token).await, (None, vec![]));

    // Another tenant's key cannot push acme's bundle.
    let other = stack.tenant("globex").await;
    let e = push_bundle(&stack.connection(&other), &good, 0, &Progress::hidden()).await.unwrap_err();
    assert!(matches!(e, AgentError::Rpc { code: tonic::Code::PermissionDenied, .. }), "{e}");
    // acme's own key can.
    assert!(push_bundle(&conn, &good, 0, &Progress::hidden()).await.unwrap().created);

    // A bundle is never written over, and a failed one leaves nothing.
    let e =
        create_bundle(&request(&release, "1.0.0", good.clone(), &dir.path().join("state"), None), &Progress::hidden())
            .unwrap_err()
            .to_string();
    assert!(e.contains("exists"), "{e}");
    std::fs::remove_file(&release.api).unwrap();
    let failed = dir.path().join("failed.ferry");
    assert!(
        create_bundle(
            &request(&release, "1.0.1", failed.clone(), &dir.path().join("state"), None),
            &Progress::hidden()
        )
        .is_err()
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!failed.exists() && left.iter().all(|n| !n.to_string_lossy().contains("partial")), "{left:?}");

    // --since-version of a release this machine never bundled.
    let since = Some(Base::Version("0.9.0".parse().unwrap()));
    let e = create_bundle(
        &request(&release, "1.0.2", dir.path().join("x.ferry"), &dir.path().join("state"), since),
        &Progress::hidden(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no manifest of acme/crm version 0.9.0") && e.contains("make a full bundle"), "{e}");
}
