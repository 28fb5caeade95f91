//! The committed API reference (`services/gateway/openapi.json`) is the
//! document generated from the code. After changing the HTTP API, run
//! `FERRY_BLESS=1 cargo test -p ferry-gateway --test openapi` and commit the
//! file.

#[test]
fn committed_openapi_document_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = ferry_gateway::openapi_json() + "\n";
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date: run FERRY_BLESS=1 cargo test -p ferry-gateway --test openapi",
        path.display()
    );
}

#[test]
fn openapi_document_describes_every_public_route() {
    let doc: serde_json::Value = serde_json::from_str(&ferry_gateway::openapi_json()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in ["/v1/check", "/v1/versions"] {
        let op = &doc["paths"][path]["get"];
        assert!(op.is_object(), "{path} is documented");
        for status in ["200", "400", "401", "404", "429"] {
            assert!(op["responses"][status].is_object(), "{path} documents {status}");
        }
    }
    let params: Vec<_> = doc["paths"]["/v1/check"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["tenant", "app", "version", "platform", "want", "have", "X-Ferry-Device"] {
        assert!(params.contains(&name), "parameter {name} is documented: {params:?}");
    }
    assert!(doc["components"]["securitySchemes"]["client_key"].is_object());
}
