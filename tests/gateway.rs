//! The access gateway end to end (S0-3, S0-4, S1-1…S1-4, S1-7, S2-1…S2-5):
//! releases published by the agent through the registry, answered by the
//! gateway over real HTTP and gRPC, downloaded from the real S3 server.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use std::time::{Duration, SystemTime};

use ferry_e2e::{GatewayHandle, Release, Stack, noise, publish_to};
use ferry_gateway::{GatewayConfig, Rate};
use ferry_release::Name;
use ferry_store::Change;
use reqwest::StatusCode;
use serde_json::Value;

struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    body: Value,
}

async fn get(
    gw: &GatewayHandle,
    path: &str,
    key: Option<&str>,
    query: &[(&str, &str)],
    device: Option<&str>,
) -> Answer {
    let mut req = ferry_testkit::http().get(format!("{}{path}", gw.http)).query(query);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(device) = device {
        req = req.header("X-Ferry-Device", device);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    let body = resp.json().await.unwrap_or(Value::Null);
    Answer { status, retry_after, body }
}

async fn check(gw: &GatewayHandle, key: &str, tenant: &str, version: &str, extra: &[(&str, &str)]) -> Answer {
    let mut query = vec![("tenant", tenant), ("app", "crm"), ("version", version)];
    query.extend_from_slice(extra);
    get(gw, "/v1/check", Some(key), &query, None).await
}

/// Waits until the gateway has applied a change matching `pred`; the
/// database announces every publish, deploy and revocation.
async fn applied(gw: &GatewayHandle, mut rx: tokio::sync::broadcast::Receiver<Change>, pred: impl Fn(&Change) -> bool) {
    let wait = async {
        loop {
            if pred(&rx.recv().await.unwrap()) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.expect("change notification applied");
    let _ = gw;
}

/// A tenant with versions 1.0.0 and 2.0.0 published and 2.0.0 deployed.
async fn two_versions(stack: &Stack, tenant: &str) -> (Release, String) {
    let token = stack.tenant(tenant).await;
    let release = Release::new(300_000, 40);
    let conn = stack.connection(&token);
    publish_to(&conn, tenant, "1.0.0", &release.artifacts(), false).await.unwrap();
    std::fs::write(release.web.join("assets/app.js"), noise(300_000, 141)).unwrap();
    std::fs::write(&release.api, br#"{"openapi":"3.1.0","v":2}"#).unwrap();
    publish_to(&conn, tenant, "2.0.0", &release.artifacts(), true).await.unwrap();
    (release, token)
}

/// S0-3: equal → none; lower → upgrade; higher → downgrade (pre-release
/// versions order below their release).
#[tokio::test]
async fn check_says_none_upgrade_or_downgrade() {
    let stack = Stack::start().await;
    two_versions(&stack, "acme").await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;

    // Build metadata does not change precedence (semver 2.0.0, item 10).
    for current in ["2.0.0", "2.0.0+build.5"] {
        let none = check(&gw, &key, "acme", current, &[]).await;
        assert_eq!(none.status, StatusCode::OK, "{:?}", none.body);
        assert_eq!(none.body["action"], "none", "{current}");
        assert_eq!(none.body["artifacts"].as_array().unwrap().len(), 0);
    }

    for (current, action) in
        [("1.0.0", "upgrade"), ("2.0.0-rc.1", "upgrade"), ("2.0.1", "downgrade"), ("10.0.0", "downgrade")]
    {
        let a = check(&gw, &key, "acme", current, &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.body["action"], action, "{current}");
        assert_eq!(a.body["current"], current);
        assert_eq!(a.body["target"], "2.0.0");
        let kinds: Vec<_> =
            a.body["artifacts"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
        assert!(kinds.contains(&"web") && kinds.contains(&"api"), "{kinds:?}");
    }
}

/// S2-3: the published versions, newest first by semver precedence (not
/// by publication order or string order), and a chosen one via `want`.
#[tokio::test]
async fn versions_lists_newest_first_and_want_picks_one() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let conn = stack.connection(&token);
    let release = Release::new(50_000, 41);
    for (i, version) in ["1.10.0", "1.9.0", "2.0.0-rc.1", "2.0.0", "1.2.0"].into_iter().enumerate() {
        std::fs::write(&release.api, format!(r#"{{"openapi":"3.1.0","v":{i}}}"#)).unwrap();
        publish_to(&conn, "acme", version, &release.artifacts(), version == "1.9.0").await.unwrap();
    }
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;

    let list = get(&gw, "/v1/versions", Some(&key), &[("tenant", "acme"), ("app", "crm")], None).await;
    assert_eq!(list.status, StatusCode::OK, "{:?}", list.body);
    assert_eq!(list.body["deployed"], "1.9.0");
    let versions: Vec<(&str, bool)> = list.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_str().unwrap(), v["deployed"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        versions,
        [("2.0.0", false), ("2.0.0-rc.1", false), ("1.10.0", false), ("1.9.0", true), ("1.2.0", false)]
    );

    let want = check(&gw, &key, "acme", "1.9.0", &[("want", "1.2.0")]).await;
    assert_eq!(want.body["action"], "downgrade");
    assert_eq!(want.body["target"], "1.2.0");
    let missing = check(&gw, &key, "acme", "1.9.0", &[("want", "3.0.0")]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["error"], "version_not_found");
}

/// S1-7: untagged artifacts for everyone, tagged ones for their platform.
#[tokio::test]
async fn check_filters_artifacts_by_platform() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let (apk, ipa, api) = (dir.path().join("crm.apk"), dir.path().join("crm.ipa"), dir.path().join("openapi.json"));
    std::fs::write(&apk, noise(50_000, 1)).unwrap();
    std::fs::write(&ipa, noise(50_000, 2)).unwrap();
    std::fs::write(&api, b"{}").unwrap();
    let req = ferry_agent::PublishRequest {
        tenant: Name::parse("tenant", "acme").unwrap(),
        app: Name::parse("app", "crm").unwrap(),
        version: "1.0.0".parse().unwrap(),
        artifacts: vec![
            ferry_release::ArtifactSpec::parse(&format!("android@android={}", apk.display())).unwrap(),
            ferry_release::ArtifactSpec::parse(&format!("ios@ios={}", ipa.display())).unwrap(),
            ferry_release::ArtifactSpec::parse(&format!("api={}", api.display())).unwrap(),
        ],
        deploy: true,
        retries: 0,
        compatible: None,
        state_dir: None,
    };
    ferry_agent::publish(&stack.connection(&token), &req, &ferry_agent::Progress::hidden()).await.unwrap();
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;

    let paths = |a: &Answer| -> Vec<String> {
        let mut p: Vec<String> =
            a.body["artifacts"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_owned()).collect();
        p.sort();
        p
    };
    assert_eq!(
        paths(&check(&gw, &key, "acme", "0.9.0", &[("platform", "android")]).await),
        ["crm.apk", "openapi.json"]
    );
    assert_eq!(paths(&check(&gw, &key, "acme", "0.9.0", &[("platform", "ios")]).await), ["crm.ipa", "openapi.json"]);
    assert_eq!(paths(&check(&gw, &key, "acme", "0.9.0", &[]).await), ["openapi.json"]);
}

/// A web bundle update with `have` lists only changed files and the paths
/// to delete.
#[tokio::test]
async fn check_with_have_lists_only_changed_web_files() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(100_000, 50);
    let conn = stack.connection(&token);
    let v1 = publish_to(&conn, "acme", "1.0.0", &release.artifacts(), false).await.unwrap();
    std::fs::write(release.web.join("assets/app.js"), noise(300_000, 77)).unwrap();
    std::fs::remove_file(release.web.join("assets/vendor.js")).unwrap();
    std::fs::write(release.web.join("assets/new.css"), b"body{}").unwrap();
    publish_to(&conn, "acme", "1.1.0", &release.artifacts(), true).await.unwrap();
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;

    let a = check(&gw, &key, "acme", "1.0.0", &[("have", &v1.manifest_id)]).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["delta"], true);
    let mut web: Vec<&str> = a.body["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "web")
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    web.sort();
    assert_eq!(web, ["assets/app.js", "assets/new.css"], "index.html is unchanged");
    let deleted: Vec<_> = a.body["deleted"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert_eq!(deleted, ["assets/vendor.js"]);

    // Single-file artifacts are listed whole: only directories are diffed.
    let mut others: Vec<&str> = a.body["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .filter(|k| *k != "web")
        .collect();
    others.sort_unstable();
    assert_eq!(others, ["api", "mobile"]);

    let full = check(&gw, &key, "acme", "1.0.0", &[]).await;
    assert_eq!(full.body["delta"], false);
    assert_eq!(full.body["artifacts"].as_array().unwrap().iter().filter(|f| f["kind"] == "web").count(), 3);

    // Another tenant's manifest id is not a base this tenant can name: the
    // answer is the full list, exactly as for an unknown id.
    let globex = stack.tenant("globex").await;
    let foreign = publish_to(&stack.connection(&globex), "globex", "1.0.0", &release.artifacts(), false).await.unwrap();
    let with_foreign = check(&gw, &key, "acme", "1.0.0", &[("have", &foreign.manifest_id)]).await;
    assert_eq!(with_foreign.status, StatusCode::OK, "{:?}", with_foreign.body);
    assert_eq!(with_foreign.body["delta"], false);
    assert_eq!(with_foreign.body["artifacts"], full.body["artifacts"]);
}

/// S1-4: 401 without a valid key; another tenant's app looks exactly like
/// an app that does not exist.
#[tokio::test]
async fn credentials_matrix_across_two_tenants() {
    let stack = Stack::start().await;
    two_versions(&stack, "acme").await;
    two_versions(&stack, "globex").await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let acme = stack.client_key("acme").await;
    let acme_agent = stack.tenant_agent_key("acme").await;
    // acme's real key id with a wrong secret of the right shape.
    let acme_id = ferry_store::ApiKey::parse(&acme).unwrap().id;
    let wrong_secret = format!("ferry_client_{acme_id}_{}", "0".repeat(64));
    assert!(ferry_store::ApiKey::parse(&wrong_secret).is_ok(), "well-formed: only the secret is wrong");

    let q = [("tenant", "acme"), ("app", "crm"), ("version", "1.0.0")];
    assert_eq!(get(&gw, "/v1/check", Some(&acme), &q, None).await.status, StatusCode::OK);
    for key in [
        None,
        Some("garbage"),
        Some(wrong_secret.as_str()),
        Some(acme_agent.as_str()),
        Some(&*ferry_store::ApiKey::generate(ferry_store::KeyRole::Client).token()),
    ] {
        let a = get(&gw, "/v1/check", key, &q, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{key:?}: {:?}", a.body);
        assert_eq!(a.body["error"], "unauthenticated");
    }

    let foreign = check(&gw, &acme, "globex", "1.0.0", &[]).await;
    let nonexistent_tenant = check(&gw, &acme, "initech", "1.0.0", &[]).await;
    let q_app = [("tenant", "acme"), ("app", "erp"), ("version", "1.0.0")];
    let nonexistent_app = get(&gw, "/v1/check", Some(&acme), &q_app, None).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    assert_eq!(nonexistent_tenant.status, StatusCode::NOT_FOUND);
    assert_eq!(nonexistent_app.status, StatusCode::NOT_FOUND);
    assert_eq!(foreign.body["error"], nonexistent_tenant.body["error"]);
    assert_eq!(foreign.body["error"], nonexistent_app.body["error"]);
    assert_eq!(foreign.body["message"], "app globex/crm not found");
    assert_eq!(nonexistent_tenant.body["message"], "app initech/crm not found");

    let bad = check(&gw, &acme, "acme", "1.0", &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body["message"].as_str().unwrap().starts_with("parameter version"), "{:?}", bad.body);
    let missing = get(&gw, "/v1/check", Some(&acme), &[("tenant", "acme"), ("app", "crm")], None).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.body["message"], "parameter version: is required");
}

/// A revoked key is refused from the next request on, once the database's
/// change notice reached the gateway.
#[tokio::test]
async fn revoked_key_is_refused_without_restart() {
    let stack = Stack::start().await;
    two_versions(&stack, "acme").await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    assert_eq!(check(&gw, &key, "acme", "1.0.0", &[]).await.status, StatusCode::OK);

    let id = ferry_store::ApiKey::parse(&key).unwrap().id;
    let rx = gw.gateway.applied();
    stack.meta.revoke_key(&id).await.unwrap();
    applied(&gw, rx, |c| *c == Change::Key(id.clone())).await;
    assert_eq!(check(&gw, &key, "acme", "1.0.0", &[]).await.status, StatusCode::UNAUTHORIZED);
}

/// S2-4: over its limit a tenant gets 429 with Retry-After, never a 5xx,
/// while another tenant keeps getting answers; shed requests are counted.
/// The limits refill one request per 1,000 s, so the sequence below holds
/// however slow the machine is (refill timing itself is unit-tested in
/// `limits.rs` with a fake clock).
#[tokio::test]
async fn burst_over_the_limit_gets_429_while_other_tenants_get_200() {
    let stack = Stack::start().await;
    two_versions(&stack, "acme").await;
    two_versions(&stack, "globex").await;
    stack.meta.set_limit(&Name::parse("tenant", "acme").unwrap(), 0.001, 3).await.unwrap();
    let config = GatewayConfig { device_rate: Rate { per_second: 0.001, burst: 2 }, ..GatewayConfig::default() };
    let gw = stack.gateway(config).await;
    let (acme, globex) = (stack.client_key("acme").await, stack.client_key("globex").await);

    let mut statuses = Vec::new();
    for _ in 0..6 {
        let a = check(&gw, &acme, "acme", "2.0.0", &[]).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            // The next request is allowed in (at most) 1,000 s; the answer
            // adds up to half again of jitter.
            let retry = a.retry_after.expect("Retry-After");
            assert!((990..=1500).contains(&retry), "{retry}");
            assert_eq!(a.body["error"], "rate_limited");
            assert!(a.body["message"].as_str().unwrap().contains("retry later"));
        }
        statuses.push(a.status.as_u16());
        assert_eq!(check(&gw, &globex, "globex", "2.0.0", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);

    // Per device: one device of globex is limited, another is not.
    let q = [("tenant", "globex"), ("app", "crm"), ("version", "2.0.0")];
    let device_statuses: Vec<u16> = futures_statuses(&gw, &globex, &q, "phone-1", 3).await;
    assert_eq!(device_statuses, [200, 200, 429]);
    assert_eq!(get(&gw, "/v1/check", Some(&globex), &q, Some("phone-2")).await.status, StatusCode::OK);

    let metrics = ferry_testkit::http().get(format!("{}/metrics", gw.http)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ferry_gateway_requests_shed_total{scope=\"tenant\"} 3"), "{metrics}");
    assert!(metrics.contains("ferry_gateway_requests_shed_total{scope=\"device\"} 1"), "{metrics}");
}

async fn futures_statuses(gw: &GatewayHandle, key: &str, q: &[(&str, &str)], device: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(gw, "/v1/check", Some(key), q, Some(device)).await.status.as_u16());
    }
    out
}

/// S2-1, S0-4: the client downloads straight from S3; the bytes match the
/// advertised size and BLAKE3; `expires_at` is what the URL itself says;
/// URLs are reused across answers that share a file.
#[tokio::test]
async fn downloaded_artifacts_match_their_blake3() {
    let stack = Stack::start().await;
    two_versions(&stack, "acme").await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    let a = check(&gw, &key, "acme", "1.0.0", &[("platform", "android")]).await;
    let files = a.body["artifacts"].as_array().unwrap();
    assert_eq!(files.len(), 5, "crm.apk, three web files, openapi.json: {files:?}");
    for file in files {
        let url = file["url"].as_str().unwrap();
        let bytes = ferry_testkit::http().get(url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, file["size"].as_u64().unwrap());
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), file["blake3"].as_str().unwrap());
        // The URL was signed at X-Amz-Date for X-Amz-Expires seconds.
        let param = |name: &str| url.split(['?', '&']).find_map(|p| p.strip_prefix(name)).unwrap().to_owned();
        let signed = param("X-Amz-Date=");
        let lifetime: u64 = param("X-Amz-Expires=").parse().unwrap();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((epoch_seconds(&signed) - now).abs() < 120, "signed now: {signed}");
        assert_eq!(lifetime, 900);
        let expires_at = file["expires_at"].as_str().unwrap();
        assert!(expires_at.ends_with('Z') && expires_at.len() == 20, "{expires_at}");
        assert_eq!(epoch_seconds(expires_at), epoch_seconds(&signed) + lifetime as i64, "{url}");
    }
    // Another answer (another platform, so another cached listing) shares
    // every file (none is platform-tagged): it hands out the very same
    // URLs, not freshly signed ones.
    // Signing again in another second would give other URLs: cross into the
    // next second first (at most one), so equal URLs can only mean reuse.
    let into_second = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
    tokio::time::sleep(Duration::from_nanos(u64::from(1_000_000_000 - into_second)) + Duration::from_millis(5)).await;
    let ios = check(&gw, &key, "acme", "1.0.0", &[("platform", "ios")]).await;
    let urls = |a: &Answer| -> std::collections::BTreeMap<String, String> {
        a.body["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["path"].as_str().unwrap().to_owned(), f["url"].as_str().unwrap().to_owned()))
            .collect()
    };
    assert_eq!(urls(&ios).len(), 5);
    assert_eq!(urls(&ios), urls(&a));
}

/// Seconds since the Unix epoch of a UTC time given as digits only:
/// `20261123T060000Z` (SigV4) or `2026-11-23T06:15:00Z` (RFC 3339).
fn epoch_seconds(time: &str) -> i64 {
    let digits: String = time.chars().filter(char::is_ascii_digit).collect();
    assert_eq!(digits.len(), 14, "{time}");
    let n = |range: std::ops::Range<usize>| -> i64 { digits[range].parse().unwrap() };
    let (y, m, d) = (n(0..4), n(4..6), n(6..8));
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400 + n(8..10) * 3600 + n(10..12) * 60 + n(12..14)
}

/// Presigned URLs grant one GET of one object until they expire: S3 itself
/// refuses a tampered or an expired one.
#[tokio::test]
async fn tampered_and_expired_urls_are_refused_by_s3() {
    let stack = Stack::start().await;
    two_versions(&stack, "acme").await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    let a = check(&gw, &key, "acme", "1.0.0", &[]).await;
    let files = a.body["artifacts"].as_array().unwrap();
    let (url, other) = (files[0]["url"].as_str().unwrap(), files[1]["blake3"].as_str().unwrap());
    assert_eq!(ferry_testkit::http().get(url).send().await.unwrap().status(), StatusCode::OK);

    // Another object under the same signature.
    let own = files[0]["blake3"].as_str().unwrap();
    let swapped = url.replace(own, other);
    assert_eq!(ferry_testkit::http().get(&swapped).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    // A longer validity.
    let stretched = url.replace("X-Amz-Expires=900", "X-Amz-Expires=604800");
    assert_ne!(stretched, url);
    assert_eq!(ferry_testkit::http().get(&stretched).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    // A method other than GET.
    assert_eq!(ferry_testkit::http().delete(url).send().await.unwrap().status(), StatusCode::FORBIDDEN);

    let hash = blake3::Hash::from_hex(own).unwrap();
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let (expired, _) = stack.blobs.presign_file_from(&hash, an_hour_ago, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ferry_testkit::http().get(&expired).send().await.unwrap().status(), StatusCode::FORBIDDEN);
}

/// A publish and a deploy become visible to checks without restarting the
/// gateway: the database announces each of them.
#[tokio::test]
async fn publish_and_deploy_are_visible_without_restart() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let app = stack.app_id("acme").await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    let nothing = check(&gw, &key, "acme", "1.0.0", &[]).await;
    assert_eq!(nothing.status, StatusCode::NOT_FOUND);
    assert_eq!(nothing.body["error"], "not_deployed");

    let release = Release::new(100_000, 60);
    let conn = stack.connection(&token);
    let this_app = move |c: &Change| matches!(c, Change::App { app_id, .. } if *app_id == app);
    let rx = gw.gateway.applied();
    publish_to(&conn, "acme", "1.0.0", &release.artifacts(), true).await.unwrap();
    applied(&gw, rx, this_app).await;
    assert_eq!(check(&gw, &key, "acme", "0.9.0", &[]).await.body["target"], "1.0.0");

    // Publishing 2.0.0 without deploying: its own notice is applied and the
    // cache refilled (still 1.0.0) before the deploy, so only the deploy's
    // notice can make the next answer say 2.0.0.
    std::fs::write(&release.api, b"{\"v\":2}").unwrap();
    let rx = gw.gateway.applied();
    publish_to(&conn, "acme", "2.0.0", &release.artifacts(), false).await.unwrap();
    applied(&gw, rx, this_app).await;
    let before = check(&gw, &key, "acme", "1.0.0", &[]).await;
    assert_eq!(before.body["action"], "none", "{:?}", before.body);

    let rx = gw.gateway.applied();
    let (acme, crm) = (Name::parse("tenant", "acme").unwrap(), Name::parse("app", "crm").unwrap());
    ferry_agent::deploy(&conn, &acme, &crm, &"2.0.0".parse().unwrap()).await.unwrap();
    applied(&gw, rx, this_app).await;
    let a = check(&gw, &key, "acme", "1.0.0", &[]).await;
    assert_eq!((a.body["action"].as_str(), a.body["target"].as_str()), (Some("upgrade"), Some("2.0.0")));
}

/// The same answers over gRPC, with health.
#[tokio::test]
async fn grpc_check_matches_http() {
    use ferry_proto::gateway::v1 as pb;
    let stack = Stack::start().await;
    two_versions(&stack, "acme").await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    let mut client = pb::gateway_client::GatewayClient::connect(gw.grpc.clone()).await.unwrap();
    let mut req = tonic::Request::new(pb::CheckRequest {
        tenant: "acme".into(),
        app: "crm".into(),
        version: "1.0.0".into(),
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    let answer = client.check(req).await.unwrap().into_inner();
    let http = check(&gw, &key, "acme", "1.0.0", &[]).await;
    assert_eq!(http.body["action"], "upgrade");
    assert_eq!(answer.action, http.body["action"]);
    assert_eq!(answer.current, http.body["current"]);
    assert_eq!(answer.target, http.body["target"]);
    assert_eq!(answer.manifest_id, http.body["manifest_id"]);
    assert_eq!(answer.delta, http.body["delta"]);
    let http_files = http.body["artifacts"].as_array().unwrap();
    assert_eq!(answer.artifacts.len(), http_files.len());
    assert!(!answer.artifacts.is_empty());
    for (g, h) in answer.artifacts.iter().zip(http_files) {
        assert_eq!(g.kind, h["kind"]);
        assert_eq!(g.path, h["path"]);
        assert_eq!(g.size, h["size"].as_u64().unwrap());
        assert_eq!(g.blake3, h["blake3"]);
        assert_eq!(g.url, h["url"]);
        assert_eq!(g.expires_at, h["expires_at"]);
    }

    let unauthenticated =
        client.list_versions(pb::ListVersionsRequest { tenant: "acme".into(), app: "crm".into() }).await.unwrap_err();
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);

    let channel = tonic::transport::Channel::from_shared(gw.grpc.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest { service: "ferry.gateway.v1.Gateway".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

/// The served OpenAPI document is the one generated from the code, which a
/// unit test keeps equal to the committed services/gateway/openapi.json.
#[tokio::test]
async fn openapi_document_is_served() {
    let stack = Stack::start().await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let served: Value =
        ferry_testkit::http().get(format!("{}/openapi.json", gw.http)).send().await.unwrap().json().await.unwrap();
    let generated: Value = serde_json::from_str(&ferry_gateway::openapi_json()).unwrap();
    assert_eq!(served, generated);
    assert_eq!(served["openapi"], "3.1.0");
    assert!(served["paths"]["/v1/check"]["get"].is_object());
    assert!(served["paths"]["/v1/versions"]["get"].is_object());
    let ready = ferry_testkit::http().get(format!("{}/readyz", gw.http)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

/// A tenant's limiter survives everything that refreshes its cached
/// releases (a publish, a deploy, a resync of the change listener): none of
/// them hands it a fresh burst. Only a new limit starts a new limiter.
#[tokio::test]
async fn rate_limit_state_survives_cache_invalidation() {
    let stack = Stack::start().await;
    let (_, token) = two_versions(&stack, "acme").await;
    stack.meta.set_limit(&Name::parse("tenant", "acme").unwrap(), 0.001, 2).await.unwrap();
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    let status = |a: Answer| a.status.as_u16();
    assert_eq!(status(check(&gw, &key, "acme", "2.0.0", &[]).await), 200);
    assert_eq!(status(check(&gw, &key, "acme", "2.0.0", &[]).await), 200);
    assert_eq!(status(check(&gw, &key, "acme", "2.0.0", &[]).await), 429);

    // A publish of the tenant's app, announced and applied.
    let app = stack.app_id("acme").await;
    let rx = gw.gateway.applied();
    let release = Release::new(20_000, 71);
    publish_to(&stack.connection(&token), "acme", "3.0.0", &release.artifacts(), true).await.unwrap();
    applied(&gw, rx, move |c| matches!(c, Change::App { app_id, .. } if *app_id == app)).await;
    assert_eq!(status(check(&gw, &key, "acme", "2.0.0", &[]).await), 429, "a publish is no fresh burst");

    // The listener reconnecting (everything cached is suspect).
    gw.gateway.apply(Change::Resync).await;
    assert_eq!(status(check(&gw, &key, "acme", "2.0.0", &[]).await), 429, "a resync is no fresh burst");

    // A new limit is a new limiter.
    let rx = gw.gateway.applied();
    let tenant_id = stack.tenant_id("acme").await;
    stack.meta.set_limit(&Name::parse("tenant", "acme").unwrap(), 0.001, 1).await.unwrap();
    applied(&gw, rx, move |c| *c == Change::Limit(tenant_id)).await;
    assert_eq!(status(check(&gw, &key, "acme", "3.0.0", &[]).await), 200);
    assert_eq!(status(check(&gw, &key, "acme", "3.0.0", &[]).await), 429);
}

/// An app created after a client asked for it (and was told 404) is seen
/// as soon as it is published and deployed, not after the cache expires.
#[tokio::test]
async fn a_new_app_is_visible_at_once() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    let q = [("tenant", "acme"), ("app", "erp"), ("version", "0.9.0")];
    let missing = get(&gw, "/v1/check", Some(&key), &q, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{:?}", missing.body);

    let acme = Name::parse("tenant", "acme").unwrap();
    let erp = Name::parse("app", "erp").unwrap();
    let tenant_id = stack.tenant_id("acme").await;
    let rx = gw.gateway.applied();
    stack.meta.create_app(&acme, &erp).await.unwrap();
    applied(&gw, rx, move |c| *c == Change::Tenant(tenant_id)).await;
    let not_yet = get(&gw, "/v1/check", Some(&key), &q, None).await;
    assert_eq!(not_yet.body["error"], "not_deployed", "the app exists now: {:?}", not_yet.body);

    let release = Release::new(20_000, 72);
    let req = ferry_agent::PublishRequest {
        tenant: acme,
        app: erp,
        version: "1.0.0".parse().unwrap(),
        artifacts: ferry_e2e::specs(&release.artifacts()),
        deploy: true,
        retries: 0,
        compatible: None,
        state_dir: None,
    };
    let rx = gw.gateway.applied();
    ferry_agent::publish(&stack.connection(&token), &req, &ferry_agent::Progress::hidden()).await.unwrap();
    applied(&gw, rx, |c| matches!(c, Change::App { .. })).await;
    let found = get(&gw, "/v1/check", Some(&key), &q, None).await;
    assert_eq!(found.status, StatusCode::OK, "{:?}", found.body);
    assert_eq!(found.body["target"], "1.0.0");
}

/// Credentials that last 40 s from whenever they are issued (like STS
/// sessions close to renewal), on the test's clock.
#[derive(Debug)]
struct ShortLived {
    access_key_id: String,
    secret_access_key: String,
    clock: std::sync::Arc<std::sync::Mutex<SystemTime>>,
}

impl aws_credential_types::provider::ProvideCredentials for ShortLived {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let now = *self.clock.lock().unwrap();
        aws_credential_types::provider::future::ProvideCredentials::ready(Ok(aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            Some(now + Duration::from_secs(40)),
            "short-lived",
        )))
    }
}

/// A URL is handed out only while at least half the configured lifetime
/// remains on it, judged by the URL's own expiry, which short-lived signing
/// credentials cut short: a cached URL that no longer qualifies is signed
/// anew, with fresh credentials.
#[tokio::test]
async fn urls_signed_with_short_lived_credentials_are_renewed_in_time() {
    let stack = Stack::start().await;
    two_versions(&stack, "acme").await;
    let now = std::sync::Arc::new(std::sync::Mutex::new(SystemTime::now()));
    let settings = stack.s3_settings();
    let provider = ShortLived {
        access_key_id: settings.access_key_id.clone(),
        secret_access_key: settings.secret_access_key.clone(),
        clock: now.clone(),
    };
    let blobs = ferry_store::Blobs::from_settings_with_credentials(
        &settings,
        stack.blobs.bucket(),
        aws_credential_types::provider::SharedCredentialsProvider::new(provider),
    );
    // URLs of 60 s, so at least 30 s must remain on any URL handed out.
    let config = GatewayConfig { presign_lifetime: Duration::from_secs(60), ..GatewayConfig::default() };
    let clock = now.clone();
    let gateway = ferry_gateway::Gateway::with_clock(
        stack.meta.clone(),
        blobs,
        config,
        std::sync::Arc::new(move || *clock.lock().unwrap()),
    );
    let gw = stack.serve_gateway(gateway).await;
    let key = stack.client_key("acme").await;
    let expiries = |a: &Answer| -> Vec<i64> {
        a.body["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| epoch_seconds(f["expires_at"].as_str().unwrap()))
            .collect()
    };
    let seconds = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;

    let start = *now.lock().unwrap();
    let first = check(&gw, &key, "acme", "1.0.0", &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    // Cut to the credentials' 40 s, not the configured 60 s.
    assert!(expiries(&first).iter().all(|&e| e == seconds(start) + 40), "{:?}", expiries(&first));

    // 5 s on, 35 s remain: still good enough, the same URLs.
    *now.lock().unwrap() = start + Duration::from_secs(5);
    let again = check(&gw, &key, "acme", "1.0.0", &[]).await;
    assert_eq!(again.body["artifacts"], first.body["artifacts"]);

    // 15 s on, only 25 s would remain: new URLs, signed with new
    // credentials, valid for 40 s from now.
    *now.lock().unwrap() = start + Duration::from_secs(15);
    let renewed = check(&gw, &key, "acme", "1.0.0", &[]).await;
    assert_eq!(renewed.status, StatusCode::OK, "{:?}", renewed.body);
    assert!(expiries(&renewed).iter().all(|&e| e == seconds(start) + 15 + 40), "{:?}", expiries(&renewed));
    for file in renewed.body["artifacts"].as_array().unwrap() {
        let bytes =
            ferry_testkit::http().get(file["url"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), file["blake3"].as_str().unwrap());
    }
}

/// With `FERRY_REDIS_URL`, three gateway replicas share one limit: a
/// tenant allowed a burst of 4 gets 4 answers in all, not 4 from each
/// (which is what three replicas without it allow); devices too. When the
/// store goes away, each replica falls back to its own limits: requests
/// are still answered or refused with 429, never failed.
#[tokio::test]
async fn three_gateways_share_limits_through_redis() {
    let stack = Stack::start().await;
    two_versions(&stack, "acme").await;
    stack.meta.set_limit(&Name::parse("tenant", "acme").unwrap(), 0.001, 4).await.unwrap();
    let key = stack.client_key("acme").await;
    let mut redis = ferry_testkit::RedisServer::start().unwrap();
    let replicas = |shared: bool| {
        let config = GatewayConfig {
            device_rate: Rate { per_second: 0.001, burst: 2 },
            // A generous timeout: how fast Redis answers on a busy machine
            // is not what this test is about.
            shared_limits: shared.then(|| {
                Arc::new(
                    ferry_gateway::SharedLimits::new(&redis.url).unwrap().with_call_timeout(Duration::from_secs(30)),
                )
            }),
            ..GatewayConfig::default()
        };
        let stack = &stack;
        async move {
            let mut gws = Vec::new();
            for _ in 0..3 {
                gws.push(stack.gateway(config.clone()).await);
            }
            gws
        }
    };
    let round_robin = async |gws: &[GatewayHandle], n: usize, device: Option<&str>| {
        let q = [("tenant", "acme"), ("app", "crm"), ("version", "2.0.0")];
        let mut statuses = Vec::new();
        for i in 0..n {
            statuses.push(get(&gws[i % gws.len()], "/v1/check", Some(&key), &q, device).await.status.as_u16());
        }
        statuses
    };

    // Each replica on its own: three times the burst.
    let alone = replicas(false).await;
    let statuses = round_robin(&alone, 12, None).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 12, "{statuses:?}");
    drop(alone);

    // Sharing through Redis: the burst once, whichever replica answers.
    // (Fresh replicas: the local limiters above are gone with theirs.)
    let shared = replicas(true).await;
    let statuses = round_robin(&shared, 12, None).await;
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429, 429, 429, 429, 429, 429, 429]);
    let shed: u64 = metrics_sum(&shared, "ferry_gateway_requests_shed_total{scope=\"tenant\"}").await;
    assert_eq!(shed, 8);

    // Devices of another tenant (whose limit is the default): a burst of
    // 2 per device across the replicas.
    two_versions(&stack, "globex").await;
    let globex = stack.client_key("globex").await;
    let q = [("tenant", "globex"), ("app", "crm"), ("version", "2.0.0")];
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(get(&shared[i % 3], "/v1/check", Some(&globex), &q, Some("phone-1")).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(get(&shared[0], "/v1/check", Some(&globex), &q, Some("phone-2")).await.status, StatusCode::OK);

    // The store goes away: each replica limits on its own (its local
    // limiter is untouched so far, so it has its whole burst).
    redis.kill();
    let statuses = round_robin(&shared, 6, None).await;
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200]);
    assert_eq!(metrics_sum(&shared, "ferry_gateway_rate_limit_fallbacks_total").await, 6);
}

async fn metrics_sum(gws: &[GatewayHandle], series: &str) -> u64 {
    let mut sum = 0;
    for gw in gws {
        let text =
            ferry_testkit::http().get(format!("{}/metrics", gw.http)).send().await.unwrap().text().await.unwrap();
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .map_or(0, |v| v.parse::<u64>().unwrap());
    }
    sum
}

/// With `FERRY_TLS_CERT`/`FERRY_TLS_KEY` the gateway serves HTTPS itself
/// (HTTP/2 and HTTP/1.1 by ALPN) and gRPC over TLS; plain HTTP to it gets
/// no answer.
#[tokio::test]
async fn gateway_serves_https_and_grpc_over_tls() {
    let stack = Stack::start().await;
    two_versions(&stack, "acme").await;
    let key = stack.client_key("acme").await;
    let (tls, ca_pem) = ferry_e2e::self_signed_tls();
    let gateway = ferry_gateway::Gateway::new(stack.meta.clone(), stack.blobs.clone(), GatewayConfig::default());
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_port, grpc_port) = (http.local_addr().unwrap().port(), grpc.local_addr().unwrap().port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(ferry_gateway::serve_with_tls(gateway, http, grpc, Some(tls), async {
        let _ = stopped.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(&ca_pem).unwrap();
    roots.add(ca).unwrap();
    let mut client_config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    // A preconfigured TLS client offers what its configuration says.
    client_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let url = format!("https://localhost:{http_port}/v1/check?tenant=acme&app=crm&version=1.0.0");
    let mut http1_config = client_config.clone();
    http1_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    for (version, client) in [
        (reqwest::Version::HTTP_2, reqwest::Client::builder().use_preconfigured_tls(client_config)),
        (reqwest::Version::HTTP_11, reqwest::Client::builder().use_preconfigured_tls(http1_config).http1_only()),
    ] {
        let answer = client.build().unwrap().get(&url).bearer_auth(&key).send().await.unwrap();
        assert_eq!((answer.status(), answer.version()), (StatusCode::OK, version));
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["action"], "upgrade");
    }
    let plain = ferry_testkit::http().get(format!("http://localhost:{http_port}/healthz")).send().await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");

    let channel = tonic::transport::Endpoint::from_shared(format!("https://localhost:{grpc_port}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}
