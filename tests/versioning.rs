//! Version schemes per app (issue 14, seed 001): integer version codes and
//! dotted versions next to semantic versioning. Each app accepts only its
//! own scheme, orders by it, and a client's version must be of it. Real
//! registry, gateway, PostgreSQL and S3.

use ferry_agent::{AgentError, Progress, PublishRequest};
use ferry_e2e::{Release, Stack, specs};
use ferry_gateway::GatewayConfig;
use ferry_release::{Name, Versioning};
use serde_json::Value;

async fn publish(
    stack: &Stack,
    token: &str,
    app: &str,
    version: &str,
    release: &Release,
    compatible: Option<&str>,
) -> Result<ferry_agent::PublishSummary, AgentError> {
    let req = PublishRequest {
        tenant: Name::parse("tenant", "acme").unwrap(),
        app: Name::parse("app", app).unwrap(),
        version: version.parse().unwrap(),
        artifacts: specs(&release.artifacts()),
        deploy: true,
        retries: 0,
        compatible: compatible.map(|c| c.parse().unwrap()),
        state_dir: None,
    };
    ferry_agent::publish(&stack.connection(token), &req, &Progress::hidden()).await
}

async fn get(gateway: &str, key: &str, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
    let response = ferry_testkit::http()
        .get(format!("{gateway}/v1/{path}"))
        .query(&[("tenant", "acme")])
        .query(query)
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn invalid(e: &AgentError) -> String {
    assert!(matches!(e, AgentError::Rpc { code: tonic::Code::InvalidArgument, .. }), "{e:?}");
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_order_and_accept_versions_by_their_own_scheme() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let acme = Name::parse("tenant", "acme").unwrap();
    stack.meta.create_app_with(&acme, &Name::parse("app", "droid").unwrap(), Versioning::Code).await.unwrap();
    stack.meta.create_app_with(&acme, &Name::parse("app", "portal").unwrap(), Versioning::Dotted).await.unwrap();
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    let (r1, r2) = (Release::new(30_000, 1), Release::new(30_000, 2));

    // Integer codes: 9 < 10 as numbers (not as text), and nothing else.
    publish(&stack, &token, "droid", "10", &r2, None).await.unwrap();
    publish(&stack, &token, "droid", "9", &r1, None).await.unwrap();
    ferry_agent::deploy(
        &stack.connection(&token),
        &acme,
        &Name::parse("app", "droid").unwrap(),
        &"10".parse().unwrap(),
    )
    .await
    .unwrap();
    let e = publish(&stack, &token, "droid", "1.2.3", &r1, None).await.unwrap_err();
    let e = invalid(&e);
    assert!(e.contains("app acme/droid uses code versioning") && e.contains("integer version code"), "{e}");
    let e = publish(&stack, &token, "droid", "11", &r1, Some(">=9")).await.unwrap_err();
    assert!(invalid(&e).contains("semver apps only"), "{e}");
    let (status, body) = get(&gw.http, &key, "check", &[("app", "droid"), ("version", "9")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["action"].as_str(), body["target"].as_str()), (Some("upgrade"), Some("10")), "{body}");
    let (_, body) = get(&gw.http, &key, "check", &[("app", "droid"), ("version", "12")]).await;
    assert_eq!((body["action"].as_str(), body["target"].as_str()), (Some("downgrade"), Some("10")), "{body}");
    let (status, body) = get(&gw.http, &key, "check", &[("app", "droid"), ("version", "9.0.1")]).await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("parameter version") && message.contains("the app uses code versioning"), "{body}");
    let (_, body) = get(&gw.http, &key, "versions", &[("app", "droid")]).await;
    let listed: Vec<&str> =
        body["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(listed, ["10", "9"]);

    // Dotted: compared number by number, leading zeros ignored, spelling kept.
    publish(&stack, &token, "portal", "2024.1.10", &r2, None).await.unwrap();
    publish(&stack, &token, "portal", "2024.01.3", &r1, None).await.unwrap();
    ferry_agent::deploy(
        &stack.connection(&token),
        &acme,
        &Name::parse("app", "portal").unwrap(),
        &"2024.1.10".parse().unwrap(),
    )
    .await
    .unwrap();
    let (_, body) = get(&gw.http, &key, "versions", &[("app", "portal")]).await;
    let listed: Vec<&str> =
        body["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(listed, ["2024.1.10", "2024.01.3"]);
    let (_, body) = get(&gw.http, &key, "check", &[("app", "portal"), ("version", "2024.01.3")]).await;
    assert_eq!((body["action"].as_str(), body["target"].as_str()), (Some("upgrade"), Some("2024.1.10")), "{body}");
    let (_, body) = get(&gw.http, &key, "check", &[("app", "portal"), ("version", "2024.1.10.0")]).await;
    assert_eq!(body["action"].as_str(), Some("none"), "trailing zeros name the same version: {body}");
    // 2024.1.10.0 is 2024.1.10: it cannot be published beside it.
    let e = publish(&stack, &token, "portal", "2024.1.10.0", &r1, None).await.unwrap_err();
    assert!(matches!(e, AgentError::Rpc { code: tonic::Code::AlreadyExists, .. }), "{e:?}");
    assert!(e.to_string().contains("same precedence as the published version 2024.1.10"), "{e}");
    // Leading zeros do not make another version either, and publishing the
    // same release again (any app's scheme) changes nothing.
    let e = publish(&stack, &token, "portal", "2024.1.3", &r2, None).await.unwrap_err();
    assert!(matches!(e, AgentError::Rpc { code: tonic::Code::AlreadyExists, .. }), "{e:?}");
    let again = publish(&stack, &token, "droid", "10", &r2, None).await.unwrap();
    assert!(!again.created, "{again:?}");
    let again = publish(&stack, &token, "portal", "2024.01.3", &r1, None).await.unwrap();
    assert!(!again.created, "{again:?}");
    // Deploying another spelling of a published version deploys it.
    let portal = Name::parse("app", "portal").unwrap();
    let done =
        ferry_agent::deploy(&stack.connection(&token), &acme, &portal, &"2024.1.3.0".parse().unwrap()).await.unwrap();
    assert_eq!(done.version, "2024.01.3");
    let listed = ferry_agent::releases(&stack.connection(&token), &acme, &portal).await.unwrap();
    assert_eq!(listed.deployed_version.as_deref(), Some("2024.01.3"));
    let e = publish(&stack, &token, "portal", "2.0.0-rc.1", &r1, None).await.unwrap_err();
    assert!(invalid(&e).contains("app acme/portal uses dotted versioning"), "{e}");

    // Semver apps are as strict as ever, now told by the registry.
    let e = publish(&stack, &token, "crm", "2.4", &r1, None).await.unwrap_err();
    let e = invalid(&e);
    assert!(e.contains("app acme/crm uses semver versioning") && e.contains("semantic versioning"), "{e}");
    let (status, body) = get(&gw.http, &key, "check", &[("app", "crm"), ("version", "42")]).await;
    assert_eq!(status, 400, "{body}");
}
