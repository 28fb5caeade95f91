//! Upgrade outcomes end to end (S4-3…S4-5): reports through the gateway,
//! the failure shown at a device's next check, required updates, and
//! alerts by signed webhook and by e-mail through a real SMTP server,
//! folded into digests and retried until delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use ferry_e2e::{GatewayHandle, Release, Stack, publish_to};
use ferry_gateway::GatewayConfig;
use ferry_registry::{Registry, RegistrySettings};
use ferry_release::Name;
use ferry_testkit::{Faults, Relay, SmtpServer, Target};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn report(id: &str, device: &str, to: &str, result: &str) -> Value {
    json!({
        "report_id": id, "device_id": device, "tenant": "acme", "app": "crm",
        "from_version": "1.0.0", "to_version": to, "result": result,
        "error_code": if result == "success" { Value::Null } else { json!("E_DISK") },
        "error_message": if result == "success" { Value::Null } else { json!("no space left on device") },
        "duration_ms": 1234, "platform": "android",
    })
}

async fn post(gw: &GatewayHandle, key: &str, body: &Value) -> (StatusCode, Value) {
    let resp =
        ferry_testkit::http().post(format!("{}/v1/reports", gw.http)).bearer_auth(key).json(body).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn check(gw: &GatewayHandle, key: &str, version: &str, device: Option<&str>) -> Value {
    let mut req = ferry_testkit::http()
        .get(format!("{}/v1/check?tenant=acme&app=crm&version={version}", gw.http))
        .bearer_auth(key);
    if let Some(device) = device {
        req = req.header("X-Ferry-Device", device);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// acme with crm 1.0.0 published and 1.1.0 deployed.
async fn deployed(stack: &Stack) -> String {
    let token = stack.tenant("acme").await;
    let conn = stack.connection(&token);
    let release = Release::new(50_000, 120);
    publish_to(&conn, "acme", "1.0.0", &release.artifacts(), false).await.unwrap();
    std::fs::write(&release.api, b"{\"v\":\"1.1\"}").unwrap();
    publish_to(&conn, "acme", "1.1.0", &release.artifacts(), true).await.unwrap();
    token
}

/// S4-3: a report is stored once (a retry changes nothing), successes too;
/// a malformed one names the field; another tenant's app is the 404 of a
/// check; the same call works over gRPC.
#[tokio::test]
async fn reports_are_validated_and_stored_once() {
    let stack = Stack::start().await;
    deployed(&stack).await;
    stack.tenant("globex").await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;

    let (status, body) = post(&gw, &key, &report("r-1", "phone-1", "1.1.0", "failure")).await;
    assert_eq!((status, &body), (StatusCode::ACCEPTED, &json!({"report_id": "r-1", "duplicate": false})));
    let (status, body) = post(&gw, &key, &report("r-1", "phone-1", "1.1.0", "failure")).await;
    assert_eq!((status, body["duplicate"].as_bool()), (StatusCode::ACCEPTED, Some(true)));
    let (status, _) = post(&gw, &key, &report("r-2", "phone-2", "1.1.0", "success")).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let (client, conn) = tokio_postgres::connect(&stack.database_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let rows =
        client.query("SELECT report_id, result, duration_ms FROM reports ORDER BY report_id", &[]).await.unwrap();
    let stored: Vec<(String, String, Option<i64>)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(stored, [("r-1".into(), "failure".into(), Some(1234)), ("r-2".into(), "success".into(), Some(1234))]);

    let mut bad = report("r-3", "phone-1", "1.1", "failure");
    let (status, body) = post(&gw, &key, &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_field");
    assert!(body["message"].as_str().unwrap().starts_with("field to_version:"), "{body}");
    bad = report("r-3", "phone-1", "1.1.0", "failure");
    bad["eror_code"] = json!("typo");
    let (status, body) = post(&gw, &key, &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("eror_code"), "{body}");

    let mut foreign = report("r-4", "phone-1", "1.1.0", "failure");
    foreign["tenant"] = json!("globex");
    let (status, body) = post(&gw, &key, &foreign).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["message"], "app globex/crm not found");
    let (status, _) = post(&gw, "ferry_client_000000000000_00", &report("r-5", "p", "1.1.0", "success")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    use ferry_proto::gateway::v1 as pb;
    let mut grpc = pb::gateway_client::GatewayClient::connect(gw.grpc.clone()).await.unwrap();
    let mut req = tonic::Request::new(pb::SubmitReportRequest {
        report_id: "g-1".into(),
        device_id: "phone-9".into(),
        tenant: "acme".into(),
        app: "crm".into(),
        from_version: "1.0.0".into(),
        to_version: "1.1.0".into(),
        result: "rolled_back".into(),
        duration_ms: Some(10),
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    let accepted = grpc.submit_report(req).await.unwrap().into_inner();
    assert_eq!((accepted.report_id.as_str(), accepted.duplicate), ("g-1", false));
}

/// S4-5: a device whose latest report was a failure sees it at its next
/// check, on any gateway, until a success report clears it.
#[tokio::test]
async fn the_last_failure_is_shown_until_a_success() {
    let stack = Stack::start().await;
    deployed(&stack).await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    assert!(check(&gw, &key, "1.0.0", Some("phone-1")).await.get("last_failure").is_none());

    post(&gw, &key, &report("r-1", "phone-1", "1.1.0", "failure")).await;
    let answer = check(&gw, &key, "1.0.0", Some("phone-1")).await;
    let failure = &answer["last_failure"];
    assert_eq!((failure["version"].as_str(), failure["result"].as_str()), (Some("1.1.0"), Some("failure")));
    assert_eq!(failure["error_code"], "E_DISK");
    assert_eq!(failure["error_message"], "no space left on device");
    assert!(failure["at"].as_str().unwrap().ends_with('Z'));
    // Only that device, and only with its id.
    assert!(check(&gw, &key, "1.0.0", Some("phone-2")).await.get("last_failure").is_none());
    assert!(check(&gw, &key, "1.0.0", None).await.get("last_failure").is_none());
    // Another gateway (another replica) reads it from the database.
    let other = stack.gateway(GatewayConfig::default()).await;
    assert_eq!(check(&other, &key, "1.0.0", Some("phone-1")).await["last_failure"]["version"], "1.1.0");

    post(&gw, &key, &report("r-2", "phone-1", "1.1.0", "success")).await;
    assert!(check(&gw, &key, "1.1.0", Some("phone-1")).await.get("last_failure").is_none());
    let fresh = stack.gateway(GatewayConfig::default()).await;
    assert!(check(&fresh, &key, "1.1.0", Some("phone-1")).await.get("last_failure").is_none());
}

/// A release may declare which older clients keep working: they are told
/// the update is not required; every other mismatch is. Also set at deploy.
#[tokio::test]
async fn required_updates_follow_the_declared_compatible_versions() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let conn = stack.connection(&token);
    let release = Release::new(50_000, 121);
    let req = |version: &str, compatible: Option<&str>, deploy: bool| ferry_agent::PublishRequest {
        tenant: Name::parse("tenant", "acme").unwrap(),
        app: Name::parse("app", "crm").unwrap(),
        version: version.parse().unwrap(),
        artifacts: ferry_e2e::specs(&release.artifacts()),
        deploy,
        retries: 0,
        compatible: compatible.map(|c| semver::VersionReq::parse(c).unwrap()),
        state_dir: None,
    };
    let hidden = ferry_agent::Progress::hidden();
    ferry_agent::publish(&conn, &req("2.4.0", None, false), &hidden).await.unwrap();
    std::fs::write(&release.api, b"{\"v\":\"2.5\"}").unwrap();
    ferry_agent::publish(&conn, &req("2.5.0", Some(">=2.4.0, <2.5.0"), true), &hidden).await.unwrap();
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    let required = |v: Value| (v["action"].as_str().unwrap().to_owned(), v["required"].as_bool().unwrap());
    assert_eq!(required(check(&gw, &key, "2.4.3", None).await), ("upgrade".into(), false));
    assert_eq!(required(check(&gw, &key, "2.3.9", None).await), ("upgrade".into(), true));
    assert_eq!(required(check(&gw, &key, "2.6.0", None).await), ("downgrade".into(), true));
    assert_eq!(required(check(&gw, &key, "2.5.0", None).await), ("none".into(), false));

    // A deploy with a requirement: rolling back to 2.4.0, which keeps 2.5.x
    // clients working.
    let app = stack.app_id("acme").await;
    let rx = gw.gateway.applied();
    let (acme, crm) = (Name::parse("tenant", "acme").unwrap(), Name::parse("app", "crm").unwrap());
    let compatible = semver::VersionReq::parse(">=2.4.0, <2.6.0").unwrap();
    ferry_agent::deploy_with(&conn, &acme, &crm, &"2.4.0".parse().unwrap(), Some(&compatible)).await.unwrap();
    let wait = async {
        let mut rx = rx;
        loop {
            if matches!(rx.recv().await.unwrap(), ferry_store::Change::App { app_id, .. } if app_id == app) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.unwrap();
    assert_eq!(required(check(&gw, &key, "2.5.0", None).await), ("downgrade".into(), false));
    assert_eq!(required(check(&gw, &key, "3.0.0", None).await), ("downgrade".into(), true));

    // A requirement that is not semver is refused, naming the flag's field.
    let bad = ferry_proto::registry::v1::DeployRequest {
        tenant: "acme".into(),
        app: "crm".into(),
        version: "2.4.0".into(),
        compatible: "about 2.4".into(),
    };
    let mut client =
        ferry_proto::registry::v1::registry_client::RegistryClient::connect(stack.url.clone()).await.unwrap();
    let mut request = tonic::Request::new(bad);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let status = client.deploy(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("compatible:"), "{}", status.message());
}

/// A webhook receiver: records what it gets, answers with `status`.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<(axum::http::HeaderMap, bytes::Bytes)>>,
}

async fn receiver() -> Receiver {
    let status = Arc::new(AtomicU16::new(200));
    let (tx, rx) = mpsc::unbounded_channel();
    let answer = status.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let (tx, answer) = (tx.clone(), answer.clone());
            async move {
                let code = answer.load(Ordering::Relaxed);
                if code == 200 {
                    let _ = tx.send((headers, body));
                }
                StatusCode::from_u16(code).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, status, received: tokio::sync::Mutex::new(rx) }
}

impl Receiver {
    async fn next(&self, timeout: Duration) -> Option<(axum::http::HeaderMap, Value, Vec<u8>)> {
        let mut rx = self.received.lock().await;
        let (headers, body) = tokio::time::timeout(timeout, rx.recv()).await.ok()??;
        Some((headers, serde_json::from_slice(&body).unwrap(), body.to_vec()))
    }
}

/// A registry running the alert folder and sender with test timings.
async fn alerting_registry(stack: &Stack, smtp_url: String, digest: Duration) -> tokio::sync::oneshot::Sender<()> {
    let settings = RegistrySettings {
        gc_interval: None,
        alerts: Some(ferry_alerts::AlertSettings {
            digest_interval: digest,
            smtp: Some(ferry_alerts::SmtpSettings { url: smtp_url, password: None, from: "Ferry <ferry@test>".into() }),
            max_attempts: 20,
            first_backoff: Duration::from_millis(200),
            tick: Duration::from_millis(100),
        }),
        ..RegistrySettings::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let registry = Registry::with_settings(stack.meta.clone(), stack.blobs.clone(), settings);
    tokio::spawn(async move {
        ferry_registry::serve(registry, listener, None, async {
            let _ = stopped.await;
        })
        .await
        .expect("the alerting registry serves");
    });
    stop
}

/// S4-4: a failure report produces a signed webhook and an e-mail within
/// seconds; a flood produces one digest per interval with counts; a
/// receiver (or SMTP relay) that is down gets the message once it is back;
/// two registries deliver each message once; the state is queryable.
#[tokio::test]
async fn failures_alert_administrators_without_floods_or_losses() {
    let stack = Stack::start().await;
    deployed(&stack).await;
    let gw = stack.gateway(GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    let hook = receiver().await;
    let smtp = SmtpServer::start().unwrap();
    // The SMTP relay is reached through a relay that can go down.
    let smtp_link = Relay::start_with(Target::Tcp(smtp.addr), Faults::default()).await.unwrap();
    let acme = Name::parse("tenant", "acme").unwrap();
    let secret = ferry_alerts::set_targets(&stack.meta, &acme, Some(&hook.url), &["ops@acme.test".into()], false)
        .await
        .unwrap()
        .expect("a webhook secret");
    let smtp_url = format!("smtp://{}?tls=none", smtp_link.addr);
    let digest = Duration::from_secs(5);
    let _first = alerting_registry(&stack, smtp_url.clone(), digest).await;
    let _second = alerting_registry(&stack, smtp_url, digest).await;

    // One failure: one webhook, signed, and one e-mail, within seconds.
    post(&gw, &key, &report("f-1", "phone-1", "1.1.0", "failure")).await;
    let Some((headers, payload, raw)) = hook.next(Duration::from_secs(20)).await else {
        let states = ferry_alerts::deliveries(&stack.meta, &acme, 10).await;
        let fold = ferry_alerts::fold(&stack.meta, digest).await;
        panic!("no webhook within seconds: {states:?} {fold:?}");
    };
    let signature = headers["x-ferry-signature"].to_str().unwrap();
    assert!(ferry_alerts::verify(&secret, &raw, signature), "signed with the tenant's secret");
    assert_eq!(headers["x-ferry-timestamp"].to_str().unwrap(), payload["sent_at"].as_str().unwrap());
    assert_eq!(headers["x-ferry-delivery"].to_str().unwrap(), payload["delivery_id"].to_string());
    assert_eq!((payload["kind"].as_str(), payload["version"].as_str()), (Some("failure"), Some("1.1.0")));
    assert_eq!(payload["failure"]["device_id"], "phone-1");
    assert_eq!(payload["failure"]["error_code"], "E_DISK");
    let mail = smtp.next(Duration::from_secs(20)).await.expect("an e-mail within seconds");
    assert_eq!(mail.to, ["ops@acme.test"]);
    assert!(mail.header("Subject").unwrap().contains("acme/crm 1.1.0: upgrade failed"), "{:?}", mail.header("Subject"));
    assert!(mail.data.contains("no space left on device"));

    // A flood: 300 failures at once, one digest (not 300 messages), with
    // counts per error code.
    let flood = (0..300).map(|i| {
        let mut r = report(&format!("flood-{i}"), &format!("phone-{i}"), "1.1.0", "failure");
        if i % 3 == 0 {
            r["error_code"] = json!("E_SIG");
        }
        let (gw, key) = (&gw, &key);
        async move { post(gw, key, &r).await.0 }
    });
    let statuses = futures::future::join_all(flood).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::ACCEPTED), "{statuses:?}");
    let (_, digest_payload, _) = hook.next(digest * 10).await.expect("a digest after the interval");
    assert_eq!(digest_payload["kind"], "digest");
    assert_eq!(digest_payload["digest"]["failures"], 300);
    assert_eq!(digest_payload["digest"]["by_error_code"], json!({"E_DISK": 200, "E_SIG": 100}));
    assert_eq!(digest_payload["digest"]["samples"].as_array().unwrap().len(), 5);
    let digest_mail = smtp.next(Duration::from_secs(20)).await.expect("a digest e-mail");
    assert!(digest_mail.header("Subject").unwrap().contains("300 more upgrade failures"));
    assert!(hook.next(digest + Duration::from_secs(1)).await.is_none(), "nothing more for the flood");

    // Receiver and SMTP relay down: the next alert waits, retried, and
    // arrives once they are back.
    hook.status.store(503, Ordering::Relaxed);
    smtp_link.set_down(true);
    let mut other = report("down-1", "phone-x", "1.2.0", "rolled_back");
    other["error_code"] = json!("E_BOOT");
    post(&gw, &key, &other).await;
    let retried = async {
        loop {
            let states = ferry_alerts::deliveries(&stack.meta, &acme, 10).await.unwrap();
            let pending: Vec<_> = states.iter().filter(|s| s.version == "1.2.0").collect();
            if pending.len() == 2
                && pending.iter().all(|s| s.status == "pending" && s.attempts >= 2 && s.last_error.is_some())
            {
                return pending.iter().map(|s| s.last_error.clone().unwrap()).collect::<Vec<_>>();
            }
            // Polling the workers' progress, not waiting for a server.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let errors = tokio::time::timeout(Duration::from_secs(30), retried).await.expect("retried while down");
    assert!(errors.iter().any(|e| e.contains("503")), "{errors:?}");
    hook.status.store(200, Ordering::Relaxed);
    smtp_link.set_down(false);
    let (_, back, _) = hook.next(Duration::from_secs(30)).await.expect("delivered once the receiver is back");
    assert_eq!((back["version"].as_str(), back["failure"]["result"].as_str()), (Some("1.2.0"), Some("rolled_back")));
    smtp.next(Duration::from_secs(30)).await.expect("e-mailed once the relay is back");

    // Every message delivered exactly once, by one of the two registries:
    // 3 webhooks and 3 e-mails arrived, and nothing more comes. (A message
    // reaches its receiver before the sender records it delivered: wait for
    // the record.)
    let recorded = async {
        loop {
            let states = ferry_alerts::deliveries(&stack.meta, &acme, 100).await.unwrap();
            if states.iter().all(|s| s.status != "pending") {
                return states;
            }
            // Polling the workers' progress, not waiting for a server.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let states = tokio::time::timeout(Duration::from_secs(30), recorded).await.expect("deliveries recorded");
    assert_eq!(states.len(), 6, "{states:?}");
    assert!(states.iter().all(|s| s.status == "delivered" && s.delivered_at.is_some()), "{states:?}");
    assert!(hook.next(Duration::from_secs(2)).await.is_none());
    assert!(smtp.next(Duration::from_secs(1)).await.is_none());
}
