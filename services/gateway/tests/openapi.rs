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

/// The documented report body and the parser agree: every documented field
/// is accepted (the parser refuses unknown ones), the required ones are
/// required, and nothing else is.
#[test]
fn documented_report_fields_are_the_parsed_ones() {
    let doc: serde_json::Value = serde_json::from_str(&ferry_gateway::openapi_json()).unwrap();
    let schema = &doc["components"]["schemas"]["ReportBody"];
    let properties: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    let mut all = serde_json::Map::new();
    for p in &properties {
        all.insert((*p).to_owned(), if *p == "duration_ms" { 1.into() } else { "x".into() });
    }
    serde_json::from_value::<ferry_reports::ReportInput>(serde_json::Value::Object(all))
        .expect("every documented field parses");
    let mut required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    required.sort_unstable();
    assert_eq!(required, ["app", "device_id", "from_version", "report_id", "result", "tenant", "to_version"]);
    // The parser has exactly these fields: one more documented field would
    // have failed above, one more parsed field shows up here.
    let input = ferry_reports::ReportInput::default();
    let debug = format!("{input:?}");
    assert_eq!(debug.matches(": None").count(), properties.len(), "{debug}");
}
