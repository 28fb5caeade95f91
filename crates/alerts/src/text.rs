//! The words of an e-mail alert, from the message's JSON payload.

use serde_json::Value;

/// Subject and plain-text body.
pub(crate) fn email(payload: &Value) -> (String, String) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let (tenant, app, version) = (s(&payload["tenant"]), s(&payload["app"]), s(&payload["version"]));
    let line = |f: &Value| {
        format!(
            "  device {} ({} from {}) at {}: {}{}",
            s(&f["device_id"]),
            s(&f["result"]).replace('_', " "),
            s(&f["from_version"]),
            s(&f["at"]),
            f["error_code"].as_str().map(|c| format!("[{c}] ")).unwrap_or_default(),
            s(&f["error_message"]),
        )
    };
    if payload["kind"] == "digest" {
        let d = &payload["digest"];
        let count = d["failures"].as_i64().unwrap_or(0);
        let mut body = format!(
            "{count} more upgrades of {tenant}/{app} to {version} failed since {}.\n\nBy error code:\n",
            s(&d["since"])
        );
        if let Some(codes) = d["by_error_code"].as_object() {
            for (code, n) in codes {
                let code = if code.is_empty() { "(none)" } else { code };
                body.push_str(&format!("  {code}: {n}\n"));
            }
        }
        body.push_str("\nSamples:\n");
        for f in d["samples"].as_array().into_iter().flatten() {
            body.push_str(&line(f));
            body.push('\n');
        }
        (format!("[Ferry] {tenant}/{app} {version}: {count} more upgrade failures"), body)
    } else {
        let body = format!(
            "An upgrade of {tenant}/{app} to {version} failed:\n\n{}\n\nFurther failures of this version are \
             summed up in one digest per interval.\n",
            line(&payload["failure"])
        );
        (format!("[Ferry] {tenant}/{app} {version}: upgrade failed on a device"), body)
    }
}
