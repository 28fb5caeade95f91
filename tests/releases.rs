//! An app's releases as an operator sees and corrects them (issue 14):
//! the list and deploy history, and yanking: a withdrawn release stays
//! stored but the gateway no longer offers it and it cannot be deployed;
//! the deployed release cannot be withdrawn. Real registry, gateway and
//! PostgreSQL.

use ferry_agent::AgentError;
use ferry_e2e::{Release, Stack, publish_to};
use ferry_gateway::GatewayConfig;
use ferry_release::Name;
use serde_json::Value;

/// A GET of the gateway's `/v1/<path>` for acme's crm with `query` added.
async fn ask(gateway: &str, key: &str, path: &str, query: &[(&str, &str)]) -> reqwest::Response {
    ferry_testkit::http()
        .get(format!("{gateway}/v1/{path}"))
        .query(&[("tenant", "acme"), ("app", "crm")])
        .query(query)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yanked_release_is_kept_listed_and_never_offered() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let conn = stack.connection(&token);
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    let (tenant, app) = (Name::parse("tenant", "acme").unwrap(), Name::parse("app", "crm").unwrap());
    let (v1, v2) = (Release::new(50_000, 71), Release::new(50_000, 72));
    publish_to(&conn, "acme", "1.0.0", &v1.artifacts(), true).await.unwrap();
    publish_to(&conn, "acme", "2.0.0", &v2.artifacts(), true).await.unwrap();
    let versions = || async {
        let body: Value = ask(&gw.http, &key, "versions", &[]).await.json().await.unwrap();
        body["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(versions().await, ["2.0.0", "1.0.0"]);

    // The deployed release cannot be withdrawn.
    let err = ferry_agent::yank(&conn, &tenant, &app, &"2.0.0".parse().unwrap(), "crashes on start").await.unwrap_err();
    assert!(matches!(err, AgentError::Rpc { code: tonic::Code::FailedPrecondition, .. }), "{err:?}");
    assert!(err.to_string().contains("2.0.0 is the deployed one"), "{err}");

    // Roll back, then withdraw 2.0.0.
    ferry_agent::deploy(&conn, &tenant, &app, &"1.0.0".parse().unwrap()).await.unwrap();
    let mut applied = gw.gateway.applied();
    let done = ferry_agent::yank(&conn, &tenant, &app, &"2.0.0".parse().unwrap(), "crashes on start").await.unwrap();
    assert!(!done.already_yanked);
    let again = ferry_agent::yank(&conn, &tenant, &app, &"2.0.0".parse().unwrap(), "other").await.unwrap();
    assert!(again.already_yanked);

    // The gateway hears of it and stops offering it.
    let seen = async {
        while versions().await != ["1.0.0"] {
            applied.recv().await.unwrap();
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), seen).await.expect("the gateway drops 2.0.0");
    let want = ask(&gw.http, &key, "check", &[("version", "1.0.0"), ("want", "2.0.0")]).await;
    assert_eq!(want.status(), 404, "a yanked version is not offered");

    // A device still on 2.0.0 moves back by a delta from what it holds, and
    // must (whatever 1.0.0's compatible rule says).
    let v2_id = stack.meta.release_manifest(stack.app_id("acme").await, "2.0.0").await.unwrap().unwrap();
    let have = v2_id.to_string();
    let stuck: Value =
        ask(&gw.http, &key, "check", &[("version", "2.0.0"), ("have", &have)]).await.json().await.unwrap();
    assert_eq!((stuck["action"].as_str(), stuck["target"].as_str()), (Some("downgrade"), Some("1.0.0")), "{stuck}");
    assert_eq!((stuck["delta"].as_bool(), stuck["required"].as_bool()), (Some(true), Some(true)), "{stuck}");

    // It cannot be deployed, nor deployed by committing it again.
    let err = ferry_agent::deploy(&conn, &tenant, &app, &"2.0.0".parse().unwrap()).await.unwrap_err();
    assert!(matches!(err, AgentError::Rpc { code: tonic::Code::FailedPrecondition, .. }), "{err:?}");
    assert!(err.to_string().contains("yanked (crashes on start)"), "{err}");
    let err = publish_to(&conn, "acme", "2.0.0", &v2.artifacts(), true).await.unwrap_err();
    assert!(err.to_string().contains("yanked"), "{err}");

    // The list shows it, with the first reason; the history every deploy.
    let list = ferry_agent::releases(&conn, &tenant, &app).await.unwrap();
    assert_eq!(list.deployed_version.as_deref(), Some("1.0.0"));
    let lines: Vec<(&str, bool, Option<&str>)> =
        list.releases.iter().map(|r| (r.version.as_str(), r.deployed, r.yank_reason.as_deref())).collect();
    assert_eq!(lines, [("2.0.0", false, Some("crashes on start")), ("1.0.0", true, None)]);
    let history: Vec<&str> = list.history.iter().map(|d| d.version.as_str()).collect();
    assert_eq!(history, ["1.0.0", "2.0.0", "1.0.0"]);
    // Still stored: its files are all there.
    let manifest = v2.manifest("2.0.0");
    for file in manifest.files() {
        assert_eq!(blake3::hash(&stack.blobs.get_file(&file.hash).await.unwrap()), file.hash);
    }

    // A reason is required, and on one line.
    for reason in ["", "  ", "line\nbreak", "looks\u{202e}fine"] {
        let err = ferry_agent::yank(&conn, &tenant, &app, &"1.0.0".parse().unwrap(), reason).await.unwrap_err();
        assert!(matches!(err, AgentError::Rpc { code: tonic::Code::InvalidArgument, .. }), "{reason:?}: {err:?}");
    }
    // Another tenant's key cannot see or yank acme's releases.
    let globex = stack.tenant("globex").await;
    let other = stack.connection(&globex);
    let err = ferry_agent::releases(&other, &tenant, &app).await.unwrap_err();
    assert!(matches!(err, AgentError::Rpc { code: tonic::Code::PermissionDenied, .. }), "{err:?}");
}
