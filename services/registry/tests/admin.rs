//! `ferry-registry admin ...` against a real PostgreSQL database.

use std::process::{Command, Output};

use ferry_release::Name;
use ferry_store::ApiKey;

fn admin(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry-registry"))
        .arg("admin")
        .args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn admin_creates_tenants_apps_and_keys_and_revokes_them() {
    let db = ferry_testkit::fresh_database().await.unwrap();
    assert!(admin(&db, &["create-tenant", "acme"]).status.success());
    assert!(admin(&db, &["create-app", "acme", "crm"]).status.success());

    let issued = admin(&db, &["issue-key", "acme", "--role", "agent"]);
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    let stdout = text(&issued.stdout);
    assert_eq!(stdout.lines().count(), 1, "only the key on stdout: {stdout}");
    let key = ApiKey::parse(stdout.trim()).unwrap();
    assert!(text(&issued.stderr).contains(&key.id));

    let meta = ferry_store::connect(&db, 1).unwrap();
    let auth = meta.authenticate(&key).await.unwrap().expect("key is valid");
    assert_eq!(auth.tenant, Name::parse("tenant", "acme").unwrap());
    let crm = Name::parse("app", "crm").unwrap();
    assert!(meta.app_id(auth.tenant_id, &crm).await.unwrap().is_some(), "create-app made the app");
    assert!(meta.app_id(auth.tenant_id, &Name::parse("app", "erp").unwrap()).await.unwrap().is_none());

    let limited = admin(&db, &["set-limit", "acme", "--per-second", "2.5", "--burst", "10"]);
    assert!(limited.status.success(), "{}", text(&limited.stderr));
    assert_eq!(meta.tenant_limit(auth.tenant_id).await.unwrap(), Some((2.5, 10)));

    // Dashboard keys: an admin names no tenant, an operator names one.
    let admin_key = admin(&db, &["issue-key", "--role", "admin"]);
    assert!(admin_key.status.success(), "{}", text(&admin_key.stderr));
    let admin_key = ApiKey::parse(text(&admin_key.stdout).trim()).unwrap();
    let principal = meta.principal(&admin_key).await.unwrap().expect("admin key is valid");
    assert_eq!((principal.role, principal.tenant), (ferry_store::KeyRole::Admin, None));
    assert!(
        meta.authenticate(&admin_key).await.unwrap().is_none(),
        "no tenant: the gateway and registry never accept it"
    );
    let operator = admin(&db, &["issue-key", "acme", "--role", "operator"]);
    let operator = ApiKey::parse(text(&operator.stdout).trim()).unwrap();
    let principal = meta.principal(&operator).await.unwrap().expect("operator key is valid");
    assert_eq!(principal.tenant.map(|(_, name)| name.to_string()), Some("acme".to_owned()));

    let revoked = admin(&db, &["revoke-key", &key.id]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    assert!(meta.authenticate(&key).await.unwrap().is_none(), "revoked keys stop working");
}

#[tokio::test]
async fn admin_errors_name_the_problem() {
    let db = ferry_testkit::fresh_database().await.unwrap();
    assert!(admin(&db, &["create-tenant", "acme"]).status.success());

    let cases: [(&[&str], &str); 13] = [
        (&["set-limit", "acme", "--per-second", "0", "--burst", "5"], "--per-second must be a positive number"),
        (&["set-limit", "globex", "--per-second", "10", "--burst", "5"], "tenant globex does not exist"),
        (&["create-tenant", "acme"], "tenant acme already exists"),
        (&["create-tenant", "Acme Corp"], "invalid tenant name"),
        (&["create-app", "globex", "crm"], "tenant globex does not exist"),
        (&["issue-key", "acme", "--role", "owner"], "invalid value 'owner'"),
        (&["issue-key", "acme", "--role", "admin"], "an admin key sees every tenant and names none"),
        (&["issue-key", "--role", "operator"], "a key of role operator belongs to a tenant"),
        (&["revoke-key", "0123456789ab"], "api key 0123456789ab does not exist"),
        (&["set-alerts", "acme"], "give --webhook URL and/or --email ADDRESS, or --clear"),
        (&["set-alerts", "acme", "--webhook", "ftp://x"], "--webhook: \"ftp://x\" is not an http(s):// URL"),
        (&["set-alerts", "acme", "--email", "ops at acme"], "--email: \"ops at acme\" is not an e-mail address"),
        (&["alerts", "globex"], "tenant globex does not exist"),
    ];
    for (args, needle) in cases {
        let out = admin(&db, args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in {stderr}");
    }
}

#[tokio::test]
async fn alert_destinations_are_set_once_with_a_secret_and_listed() {
    let db = ferry_testkit::fresh_database().await.unwrap();
    assert!(admin(&db, &["create-tenant", "acme"]).status.success());
    let set =
        admin(&db, &["set-alerts", "acme", "--webhook", "https://hooks.acme.test/ferry", "--email", "ops@acme.test"]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let secret = text(&set.stdout);
    assert!(secret.trim().starts_with("whsec_") && secret.lines().count() == 1, "only the secret on stdout: {secret}");
    assert!(text(&set.stderr).contains("https://hooks.acme.test/ferry, ops@acme.test"));
    // Setting again gives a new secret.
    let again = admin(&db, &["set-alerts", "acme", "--webhook", "https://hooks.acme.test/ferry"]);
    assert_ne!(text(&again.stdout), secret);

    let listed = admin(&db, &["alerts", "acme", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(listed.stdout.is_empty(), "no messages yet");
    assert!(text(&listed.stderr).contains("0 alert message(s) of tenant acme"));
    let cleared = admin(&db, &["set-alerts", "acme", "--clear"]);
    assert!(cleared.status.success() && cleared.stdout.is_empty());
}

#[tokio::test]
async fn admin_issues_publisher_keys_and_places_tenants_on_locations() {
    let db = ferry_testkit::fresh_database().await.unwrap();
    for tenant in ["acme", "globex"] {
        assert!(admin(&db, &["create-tenant", tenant]).status.success());
    }
    let meta = ferry_store::connect(&db, 1).unwrap();

    let issued = admin(&db, &["issue-key", "--role", "publisher", "--tenants", "globex,acme"]);
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    let key = ApiKey::parse(text(&issued.stdout).trim()).unwrap();
    assert!(text(&issued.stderr).contains("tenants acme, globex"), "{}", text(&issued.stderr));
    let record = meta.publisher_record(&key.id).await.unwrap().expect("publisher key is live");
    assert!(record.matches(&key));
    let names: Vec<&str> = record.tenants.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["acme", "globex"]);
    assert!(meta.authenticate(&key).await.unwrap().is_none(), "no single tenant: the gateway never accepts it");

    for (args, expected) in [
        (&["issue-key", "--role", "publisher", "--tenants", "acme,umbrella"][..], "tenant umbrella does not exist"),
        (&["issue-key", "--role", "publisher"][..], "needs --tenants"),
        (&["issue-key", "acme", "--role", "publisher", "--tenants", "acme"][..], "names its tenants with --tenants"),
        (&["issue-key", "acme", "--role", "agent", "--tenants", "acme"][..], "--tenants is for --role publisher"),
        (&["set-location", "acme", "--bucket", "Bad_Bucket"][..], "--bucket"),
        (&["set-location", "acme", "--bucket", "ferry-2", "--prefix", "files/acme/"][..], "--prefix"),
        (
            &["set-location", "acme", "--bucket", "ferry-2", "--public-endpoint", "cdn.example.com"][..],
            "--public-endpoint",
        ),
        (&["set-location", "umbrella", "--bucket", "ferry-2"][..], "tenant umbrella does not exist"),
    ] {
        let out = admin(&db, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(text(&out.stderr).contains(expected), "{args:?}: {}", text(&out.stderr));
    }

    let placed = admin(
        &db,
        &[
            "set-location",
            "acme",
            "--bucket",
            "ferry-2",
            "--prefix",
            "tenants/acme/",
            "--public-endpoint",
            "https://files-2.example.com/",
        ],
    );
    assert!(placed.status.success(), "{}", text(&placed.stderr));
    let acme = meta.tenant_id(&Name::parse("tenant", "acme").unwrap()).await.unwrap();
    let location = meta.tenant_location(acme).await.unwrap().expect("acme has a location");
    assert_eq!(
        (location.bucket.as_str(), location.prefix.as_str(), location.public_endpoint.as_deref()),
        ("ferry-2", "tenants/acme/", Some("https://files-2.example.com"))
    );
    assert!(admin(&db, &["set-location", "acme", "--clear"]).status.success());
    assert_eq!(meta.tenant_location(acme).await.unwrap(), None);
}
