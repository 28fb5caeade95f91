//! The operator dashboard (S4-6) against a real stack: who may see what,
//! and, in headless Chromium, that the numbers on the pages are the
//! database's after scripted checks and reports, and that a new failure
//! appears live with a notice.

use std::time::Duration;

use fantoccini::Locator;
use ferry_dashboard::DashboardSettings;
use ferry_e2e::{DashboardHandle, GatewayHandle, Release, Stack, publish_to};
use ferry_gateway::{Gateway, GatewayConfig};
use ferry_release::Name;
use ferry_store::KeyRole;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

struct Env {
    stack: Stack,
    gw: GatewayHandle,
    dash: DashboardHandle,
    client_key: String,
    admin_key: String,
    globex_operator: String,
}

/// acme/crm with 1.0.0 published and 1.1.0 deployed; globex/crm with 2.0.0
/// deployed; a gateway and the dashboard.
async fn env() -> Env {
    let stack = Stack::start().await;
    let acme = stack.tenant("acme").await;
    let globex = stack.tenant("globex").await;
    // Sorts first by name and has no problem: problems-first must beat it.
    stack.tenant("able").await;
    let release = Release::new(20_000, 5);
    publish_to(&stack.connection(&acme), "acme", "1.0.0", &release.artifacts(), false).await.unwrap();
    std::fs::write(&release.api, b"{\"v\":\"1.1\"}").unwrap();
    publish_to(&stack.connection(&acme), "acme", "1.1.0", &release.artifacts(), true).await.unwrap();
    publish_to(&stack.connection(&globex), "globex", "2.0.0", &release.artifacts(), true).await.unwrap();
    // Devices here check more often than the default device limit allows.
    let unlimited = ferry_gateway::Rate { per_second: 1e6, burst: 1_000_000 };
    let config = GatewayConfig { device_rate: unlimited, ..GatewayConfig::default() };
    let gw = stack.serve_gateway(Gateway::new(stack.meta.clone(), stack.blobs.clone(), config)).await;
    let client_key = stack.client_key("acme").await;
    let admin_key = stack.meta.issue_admin_key().await.unwrap().token();
    let globex_name = Name::parse("tenant", "globex").unwrap();
    let globex_operator = stack.meta.issue_key(&globex_name, KeyRole::Operator).await.unwrap().token();
    // Open live streams re-check their viewer often, so a test sees a
    // revocation end one at once.
    let dash = stack
        .serve_dashboard(DashboardSettings { recheck: Duration::from_millis(200), ..DashboardSettings::default() })
        .await;
    Env { stack, gw, dash, client_key, admin_key, globex_operator }
}

fn no_redirects() -> reqwest::Client {
    ferry_testkit::http_builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

impl Env {
    /// The dashboard at `path`, by reqwest on 127.0.0.1 (Host: localhost).
    async fn get(&self, path: &str, bearer: Option<&str>, cookie: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut req = no_redirects().get(format!("{}{path}", self.dash.url));
        if let Some(key) = bearer {
            req = req.bearer_auth(key);
        }
        if let Some(cookie) = cookie {
            req = req.header("Cookie", cookie);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.headers().clone(), resp.text().await.unwrap())
    }

    async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        cookie: Option<&str>,
        origin: Option<&str>,
    ) -> (StatusCode, HeaderMap) {
        let mut req = no_redirects().post(format!("{}{path}", self.dash.url)).form(form);
        if let Some(cookie) = cookie {
            req = req.header("Cookie", cookie);
        }
        if let Some(origin) = origin {
            req = req.header("Origin", origin);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.headers().clone())
    }

    async fn check(&self, version: &str, device: Option<&str>) {
        let mut req = ferry_testkit::http()
            .get(format!("{}/v1/check?tenant=acme&app=crm&version={version}", self.gw.http))
            .bearer_auth(&self.client_key);
        if let Some(device) = device {
            req = req.header("X-Ferry-Device", device);
        }
        assert_eq!(req.send().await.unwrap().status(), StatusCode::OK);
    }

    async fn report(&self, id: &str, device: &str, result: &str) {
        self.report_as("acme", &self.client_key, id, device, result).await;
    }

    async fn report_as(&self, tenant: &str, key: &str, id: &str, device: &str, result: &str) {
        let body = json!({
            "report_id": id, "device_id": device, "tenant": tenant, "app": "crm",
            "from_version": "1.0.0", "to_version": "1.1.0", "result": result,
            "error_code": if result == "success" { Value::Null } else { json!("E_DISK") },
            "error_message": if result == "success" { Value::Null } else { json!("no space left on device") },
            "duration_ms": 800, "platform": "android",
        });
        let resp = ferry_testkit::http()
            .post(format!("{}/v1/reports", self.gw.http))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
    }

    /// Devices per version of acme/crm, as the database has them.
    async fn devices_in_database(&self) -> Vec<(String, i64)> {
        let client = self.stack.meta.pool().get().await.unwrap();
        let rows = client
            .query(
                "SELECT d.version, count(*) FROM devices d JOIN apps a ON a.id = d.app_id \
                 JOIN tenants t ON t.id = a.tenant_id WHERE t.name = 'acme' AND a.name = 'crm' \
                 GROUP BY 1 ORDER BY 1 DESC",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }

    /// Reports about 1.1.0 per result, as the database has them.
    async fn outcomes_in_database(&self) -> (i64, i64, i64) {
        let client = self.stack.meta.pool().get().await.unwrap();
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE result = 'success'), count(*) FILTER (WHERE result = 'failure'), \
                 count(*) FILTER (WHERE result = 'rolled_back') FROM reports WHERE to_version = '1.1.0' \
                 AND tenant_id = (SELECT id FROM tenants WHERE name = 'acme')",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    /// A scripted day: one device checking 1,000 times, others checking and
    /// reporting; the gateway's census written.
    async fn script(&self) {
        for _ in 0..1_000 {
            self.check("1.0.0", Some("phone-1")).await;
        }
        self.check("1.1.0", Some("phone-2")).await;
        self.check("1.0.0", Some("phone-3")).await;
        for _ in 0..5 {
            self.check("1.0.0", None).await; // no device: not counted
        }
        self.gw.gateway.flush_census().await.unwrap();
        self.report("r-2", "phone-2", "success").await;
        self.report("r-4", "phone-4", "success").await;
        self.report("r-3", "phone-3", "failure").await;
        self.report("r-5", "phone-5", "rolled_back").await;
    }
}

fn cookie_of(headers: &HeaderMap) -> (String, String) {
    let set = headers.get(SET_COOKIE).expect("a session cookie").to_str().unwrap().to_owned();
    (set.split(';').next().unwrap().to_owned(), set)
}

/// No credential → sign-in; the JSON API answers 401; keys of other roles
/// do not open it; an operator sees its tenant only and gets the same 404
/// for another tenant's app as for none; the cookie's flags; CSRF and
/// cross-origin posts refused; sign-out and revocation end sessions.
#[tokio::test]
async fn access_is_by_dashboard_key_and_scoped_to_the_tenant() {
    let env = env().await;
    // Probes need no key.
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let (status, _, text) = env.get(path, None, None).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, body), "{path}");
    }

    let (status, headers, _) = env.get("/", None, None).await;
    assert_eq!((status, headers.get(LOCATION).unwrap().to_str().unwrap()), (StatusCode::SEE_OTHER, "/signin"));
    let (status, headers, body) = env.get("/signin", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("name=\"key\""), "{body}");
    assert!(headers.get("content-security-policy").unwrap().to_str().unwrap().contains("frame-ancestors 'none'"));
    assert_eq!(headers.get("x-frame-options").unwrap(), "DENY");
    let (status, _, body) = env.get("/api/v1/overview", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "unauthenticated");
    let agent = env.stack.tenant_agent_key("acme").await;
    let unknown = ferry_store::ApiKey::generate(KeyRole::Admin).token();
    for key in [&agent, &env.client_key, &unknown, &"ferry_admin_not_a_key".to_owned()] {
        let (status, _, _) = env.get("/api/v1/overview", Some(key), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key}");
    }

    // The operator of globex.
    let op = env.globex_operator.as_str();
    let (status, _, body) = env.get("/api/v1/overview", Some(op), None).await;
    assert_eq!(status, StatusCode::OK);
    let apps: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["tenant"].as_str().unwrap(), a["app"].as_str().unwrap()))
        .collect();
    assert_eq!(apps, ["globex/crm"]);
    let (status, _, own) = env.get("/tenants/globex/apps/crm", Some(op), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(own.contains("2.0.0"));
    let (foreign, _, foreign_body) = env.get("/api/v1/tenants/acme/apps/crm", Some(op), None).await;
    let (missing, _, missing_body) = env.get("/api/v1/tenants/nobody/apps/crm", Some(op), None).await;
    assert_eq!((foreign, missing), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(foreign_body, missing_body, "another tenant's app looks like no app");
    let (status, _, _) = env.get("/tenants/acme/apps/crm", Some(op), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = env.get("/tenants/acme/apps/crm", Some(&env.admin_key), None).await;
    assert_eq!(status, StatusCode::OK);

    // Sign-in: refused for other roles and from other origins.
    let (status, _) = env.post_form("/signin", &[("key", &env.client_key)], None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = env.post_form("/signin", &[("key", &env.admin_key)], None, Some("https://evil.example")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, headers) = env.post_form("/signin", &[("key", &env.admin_key)], None, Some(&env.dash.url)).await;
    assert_eq!((status, headers.get(LOCATION).unwrap().to_str().unwrap()), (StatusCode::SEE_OTHER, "/"));
    let (cookie, set_cookie) = cookie_of(&headers);
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.split("; ").any(|f| f == flag), "{flag} missing in {set_cookie}");
    }
    let (status, _, page) = env.get("/", None, Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    assert_eq!(csrf.len(), 64);

    // Sign-out needs the session's CSRF token and this origin.
    let (status, _) = env.post_form("/signout", &[("csrf", &"0".repeat(64))], Some(&cookie), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = env.post_form("/signout", &[("csrf", &csrf)], Some(&cookie), Some("https://evil.example")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(env.get("/", None, Some(&cookie)).await.0, StatusCode::OK, "refused sign-outs change nothing");
    let (status, _) = env.post_form("/signout", &[("csrf", &csrf)], Some(&cookie), Some(&env.dash.url)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(env.get("/", None, Some(&cookie)).await.0, StatusCode::SEE_OTHER, "signed out");

    // Live events: an operator hears of its own tenant only.
    let mut events = no_redirects().get(format!("{}/events", env.dash.url)).bearer_auth(op).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    env.report("r-live-acme", "phone-9", "failure").await;
    let globex_key = env.stack.client_key("globex").await;
    env.report_as("globex", &globex_key, "r-live-globex", "tablet-1", "failure").await;
    let mut heard = String::new();
    let listen = async {
        while !heard.contains("\"tenant\":\"globex\"") {
            heard.push_str(&String::from_utf8_lossy(&events.chunk().await.unwrap().expect("the stream stays open")));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), listen).await.expect("globex's failure is heard within 10 s");
    assert!(!heard.contains("acme"), "an operator of globex heard of acme: {heard}");

    // Revoking the key ends its sessions and its open live stream.
    let (_, headers) = env.post_form("/signin", &[("key", op)], None, None).await;
    let (cookie, _) = cookie_of(&headers);
    assert_eq!(env.get("/tenants/globex/apps/crm", None, Some(&cookie)).await.0, StatusCode::OK);
    let key_id = op.split('_').nth(2).unwrap();
    env.stack.meta.revoke_key(key_id).await.unwrap();
    assert_eq!(env.get("/tenants/globex/apps/crm", None, Some(&cookie)).await.0, StatusCode::SEE_OTHER);
    assert_eq!(env.get("/api/v1/overview", Some(op), None).await.0, StatusCode::UNAUTHORIZED);
    let ended = async { while events.chunk().await.unwrap().is_some() {} };
    tokio::time::timeout(Duration::from_secs(10), ended).await.expect("the live stream ends after revocation");
}

/// Numbers as JSON equal the database's: devices counted once each however
/// often they check, outcomes per target version.
#[tokio::test]
async fn the_json_api_counts_devices_once_and_reports_per_target() {
    let env = env().await;
    env.script().await;
    let devices = env.devices_in_database().await;
    assert_eq!(devices, [("1.1.0".to_owned(), 2), ("1.0.0".to_owned(), 2)], "phone-1 checked 1,000 times: one device");

    let (status, _, body) = env.get("/api/v1/overview", Some(&env.admin_key), None).await;
    assert_eq!(status, StatusCode::OK);
    let overview: Value = serde_json::from_str(&body).unwrap();
    let apps = overview["apps"].as_array().unwrap();
    let tenants: Vec<&str> = apps.iter().map(|a| a["tenant"].as_str().unwrap()).collect();
    assert_eq!(tenants, ["acme", "able", "globex"], "problems first, then by name");
    assert_eq!((apps[0]["problem"].as_bool(), apps[1]["problem"].as_bool()), (Some(true), Some(false)));
    let acme = &apps[0];
    assert_eq!((acme["deployed_version"].as_str(), acme["devices"].as_i64()), (Some("1.1.0"), Some(4)));
    assert_eq!((acme["devices_on_deployed"].as_i64(), acme["share_on_deployed"].as_f64()), (Some(2), Some(0.5)));
    let (s, f, r) = env.outcomes_in_database().await;
    assert_eq!((s, f, r), (2, 1, 1));
    assert_eq!(acme["rollout"], json!({"success": s, "failure": f, "rolled_back": r, "total": 4, "failure_rate": 0.5}));

    let (status, _, body) = env.get("/api/v1/tenants/acme/apps/crm", Some(&env.admin_key), None).await;
    assert_eq!(status, StatusCode::OK);
    let app: Value = serde_json::from_str(&body).unwrap();
    let versions: Vec<(String, i64)> = app["devices"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_str().unwrap().to_owned(), v["devices"].as_i64().unwrap()))
        .collect();
    assert_eq!(versions, devices);
    assert_eq!(app["outcomes"][0]["to_version"], "1.1.0");
    assert_eq!(
        (app["outcomes"][0]["failure"].as_i64(), app["outcomes"][0]["rolled_back"].as_i64()),
        (Some(1), Some(1))
    );
    let failures: Vec<&str> =
        app["recent_failures"].as_array().unwrap().iter().map(|f| f["device_id"].as_str().unwrap()).collect();
    assert_eq!(failures, ["phone-5", "phone-3"], "newest first");
    assert_eq!(app["recent_failures"][1]["error_code"], "E_DISK");
    let deployments: Vec<&str> =
        app["deployments"].as_array().unwrap().iter().map(|d| d["version"].as_str().unwrap()).collect();
    assert_eq!(deployments, ["1.1.0"]);
    let published: Vec<&str> =
        app["published"].as_array().unwrap().iter().map(|p| p["version"].as_str().unwrap()).collect();
    assert_eq!(published, ["1.1.0", "1.0.0"]);
    assert!(app["published"][1].get("yanked").is_none());
    // A withdrawn release says so, with its reason.
    let crm = env.stack.app_id("acme").await;
    env.stack.meta.yank_release(crm, "1.0.0", "leaks <tokens>").await.unwrap();
    let (_, _, body) = env.get("/api/v1/tenants/acme/apps/crm", Some(&env.admin_key), None).await;
    let yanked: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(yanked["published"][1]["yanked"], "leaks <tokens>");
    let (_, _, page) = env.get("/tenants/acme/apps/crm", Some(&env.admin_key), None).await;
    assert!(page.contains("(yanked: leaks &lt;tokens&gt;)"), "escaped on the page");
    // The chart series hold the same reports, in the current hour.
    let series = &app["series"];
    let sum = |k: &str| series[k].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).sum::<i64>();
    assert_eq!((sum("success"), sum("failure"), sum("rolled_back")), (s, f, r));
}

/// In headless Chromium: sign in, read the overview and the app page, see
/// the database's numbers; a new failure shows up live with a notice.
/// Screenshots land in target/screenshots/.
#[tokio::test]
async fn the_pages_show_the_database_and_a_new_failure_appears_live() {
    let env = env().await;
    env.script().await;
    let browser = ferry_testkit::Browser::start().await.unwrap();
    let c = browser.client();
    let text = |css: &'static str| async move { c.find(Locator::Css(css)).await.unwrap().text().await.unwrap() };

    c.goto(&format!("{}/", env.dash.url)).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/signin");
    c.find(Locator::Id("key")).await.unwrap().send_keys(&env.admin_key).await.unwrap();
    c.find(Locator::Id("signin")).await.unwrap().click().await.unwrap();
    c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Id("apps")).await.unwrap();

    let devices = env.devices_in_database().await;
    let total: i64 = devices.iter().map(|(_, n)| n).sum();
    let on_deployed = devices.iter().find(|(v, _)| v == "1.1.0").unwrap().1;
    let first_row = c.find(Locator::Css("#apps tbody tr")).await.unwrap();
    assert_eq!(first_row.attr("data-app").await.unwrap().as_deref(), Some("acme/crm"), "problems first");
    assert_eq!(text("tr[data-app='acme/crm'] .deployed").await, "1.1.0");
    assert_eq!(text("tr[data-app='acme/crm'] .devices").await, total.to_string());
    assert_eq!(text("tr[data-app='acme/crm'] .on").await, on_deployed.to_string());
    assert_eq!(text("tr[data-app='acme/crm'] .share .pct").await, "50.0 %");
    assert_eq!(text("tr[data-app='acme/crm'] .failure-rate .pct").await, "50.0 %");
    assert_eq!(text("tr[data-app='globex/crm'] .devices").await, "0");
    browser.screenshot("dashboard-overview").await.unwrap();

    c.find(Locator::Css("tr[data-app='acme/crm'] a")).await.unwrap().click().await.unwrap();
    c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Id("devices-total")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/tenants/acme/apps/crm");
    assert_eq!(text("#devices-total").await, total.to_string());
    for (version, n) in &devices {
        let css = format!("#device-versions tr[data-version='{version}'] .devices");
        assert_eq!(c.find(Locator::Css(&css)).await.unwrap().text().await.unwrap(), n.to_string());
    }
    let (s, f, r) = env.outcomes_in_database().await;
    assert_eq!(text("#outcomes tr[data-target='1.1.0'] .success").await, s.to_string());
    assert_eq!(text("#outcomes tr[data-target='1.1.0'] .failure").await, f.to_string());
    assert_eq!(text("#outcomes tr[data-target='1.1.0'] .rolled-back").await, r.to_string());
    // uPlot drew both charts (a canvas each).
    assert_eq!(c.find_all(Locator::Css(".chart canvas")).await.unwrap().len(), 2);
    browser.screenshot("dashboard-app").await.unwrap();

    // Live: once the page listens, a new failure appears without a reload.
    c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("#live.on")).await.unwrap();
    env.report("r-6", "phone-6", "failure").await;
    let toast = c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(".toast")).await.unwrap();
    assert!(toast.text().await.unwrap().contains("acme / crm"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The page swaps its content in while we read: a stale element is
        // read again.
        let shown = match c.find(Locator::Css("#outcomes tr[data-target='1.1.0'] .failure")).await {
            Ok(cell) => cell.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if shown == (f + 1).to_string() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the failure count still shows {shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(text("#failures tbody tr .device").await, "phone-6", "newest failure first");
    browser.screenshot("dashboard-live-failure").await.unwrap();
    browser.close().await;
}
