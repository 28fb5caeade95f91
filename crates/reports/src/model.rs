//! A report as a client sends it, and as it is once validated.

use std::time::SystemTime;

use ferry_release::{Name, Quoted, parse_version};
use serde::{Deserialize, Serialize};

/// Longest client-chosen report id and error code.
pub const MAX_ID_CHARS: usize = 64;
/// Longest device id (as for `X-Ferry-Device`).
pub const MAX_DEVICE_CHARS: usize = 128;
/// Longest error message kept.
pub const MAX_MESSAGE_CHARS: usize = 1000;
/// Longest upgrade duration accepted: a week.
pub const MAX_DURATION_MS: u64 = 7 * 24 * 3600 * 1000;

/// How an upgrade (or downgrade) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    /// The app went back to the version it ran before.
    RolledBack,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            "rolled_back" => Some(Outcome::RolledBack),
            _ => None,
        }
    }
}

/// A report as received (JSON body or gRPC fields), not validated yet.
/// Unknown JSON fields are refused, so a misspelt one is not silently lost.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportInput {
    pub report_id: Option<String>,
    pub device_id: Option<String>,
    pub tenant: Option<String>,
    pub app: Option<String>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub duration_ms: Option<u64>,
    pub platform: Option<String>,
}

/// A validated report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub report_id: String,
    pub device_id: String,
    pub tenant: Name,
    pub app: Name,
    pub from_version: ferry_release::Version,
    pub to_version: ferry_release::Version,
    pub outcome: Outcome,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub duration_ms: Option<u64>,
    pub platform: Option<Name>,
}

/// A report field that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

fn field(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError { field, reason: reason.into() }
}

fn required<'a>(name: &'static str, value: &'a Option<String>) -> Result<&'a str, FieldError> {
    value.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| field(name, "is required"))
}

/// An id of 1 to 64 characters of `A-Z a-z 0-9 . _ : -`.
fn token(name: &'static str, value: &str) -> Result<String, FieldError> {
    let ok = value.len() <= MAX_ID_CHARS
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if !ok {
        return Err(field(
            name,
            format!("{} is not 1 to {MAX_ID_CHARS} characters of A-Z a-z 0-9 . _ : -", Quoted(value)),
        ));
    }
    Ok(value.to_owned())
}

impl Report {
    /// Validates everything a client sent; the error names the first bad
    /// field.
    pub fn validate(input: &ReportInput) -> Result<Self, FieldError> {
        let report_id = token("report_id", required("report_id", &input.report_id)?)?;
        let device_id = required("device_id", &input.device_id)?;
        if device_id.len() > MAX_DEVICE_CHARS || !device_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(field("device_id", format!("must be 1 to {MAX_DEVICE_CHARS} visible ASCII characters")));
        }
        let name =
            |f: &'static str, what: &'static str, v: &str| Name::parse(what, v).map_err(|e| field(f, e.to_string()));
        let tenant = name("tenant", "tenant", required("tenant", &input.tenant)?)?;
        let app = name("app", "app", required("app", &input.app)?)?;
        let version =
            |f: &'static str, v: &Option<String>| parse_version(required(f, v)?).map_err(|e| field(f, e.to_string()));
        let from_version = version("from_version", &input.from_version)?;
        let to_version = version("to_version", &input.to_version)?;
        let result = required("result", &input.result)?;
        let outcome = Outcome::parse(result)
            .ok_or_else(|| field("result", format!("{} is not success, failure or rolled_back", Quoted(result))))?;
        let error_code =
            input.error_code.as_deref().filter(|c| !c.is_empty()).map(|c| token("error_code", c)).transpose()?;
        let error_message = match input.error_message.as_deref().filter(|m| !m.is_empty()) {
            None => None,
            Some(m) if m.chars().count() > MAX_MESSAGE_CHARS => {
                return Err(field("error_message", format!("is longer than {MAX_MESSAGE_CHARS} characters")));
            }
            Some(m) if m.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
                return Err(field("error_message", "contains control characters"));
            }
            Some(m) => Some(m.to_owned()),
        };
        if let Some(ms) = input.duration_ms
            && ms > MAX_DURATION_MS
        {
            return Err(field("duration_ms", format!("is more than a week ({MAX_DURATION_MS} ms)")));
        }
        let platform =
            input.platform.as_deref().filter(|p| !p.is_empty()).map(|p| name("platform", "platform", p)).transpose()?;
        Ok(Report {
            report_id,
            device_id: device_id.to_owned(),
            tenant,
            app,
            from_version,
            to_version,
            outcome,
            error_code,
            error_message,
            duration_ms: input.duration_ms,
            platform,
        })
    }
}

/// A device's latest failure, shown at its next check until a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFailure {
    /// The version the device failed to run.
    pub version: String,
    pub outcome: Outcome,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub at: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ReportInput {
        ReportInput {
            report_id: Some("r-1".into()),
            device_id: Some("phone-1".into()),
            tenant: Some("acme".into()),
            app: Some("crm".into()),
            from_version: Some("1.0.0".into()),
            to_version: Some("1.1.0".into()),
            result: Some("failure".into()),
            error_code: Some("E_DISK".into()),
            error_message: Some("no space left\\non device".into()),
            duration_ms: Some(1200),
            platform: Some("android".into()),
        }
    }

    #[test]
    fn a_valid_report_is_accepted_whole() {
        let r = Report::validate(&valid()).unwrap();
        assert_eq!(
            (r.outcome, r.to_version.to_string(), r.error_code.as_deref()),
            (Outcome::Failure, "1.1.0".into(), Some("E_DISK"))
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        type Spoil = Box<dyn Fn(&mut ReportInput)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("report_id", Box::new(|r| r.report_id = None)),
            ("report_id", Box::new(|r| r.report_id = Some("a b".into()))),
            ("report_id", Box::new(|r| r.report_id = Some("x".repeat(65)))),
            ("device_id", Box::new(|r| r.device_id = Some("phone one".into()))),
            ("tenant", Box::new(|r| r.tenant = Some("Acme".into()))),
            ("app", Box::new(|r| r.app = None)),
            ("from_version", Box::new(|r| r.from_version = Some("v1".into()))),
            // Whether it is of the app's scheme is the gateway's call.
            ("to_version", Box::new(|r| r.to_version = Some("latest".into()))),
            ("result", Box::new(|r| r.result = Some("crashed".into()))),
            ("error_code", Box::new(|r| r.error_code = Some("E DISK".into()))),
            ("error_message", Box::new(|r| r.error_message = Some("x".repeat(1001)))),
            ("error_message", Box::new(|r| r.error_message = Some("bell\u{7}".into()))),
            ("duration_ms", Box::new(|r| r.duration_ms = Some(MAX_DURATION_MS + 1))),
            ("platform", Box::new(|r| r.platform = Some("And roid".into()))),
        ];
        for (name, spoil) in cases {
            let mut input = valid();
            spoil(&mut input);
            let e = Report::validate(&input).unwrap_err();
            assert_eq!(e.field, name, "{e}");
            assert!(e.to_string().len() < 300, "{e}");
        }
    }

    #[test]
    fn unknown_json_fields_are_refused() {
        let e = serde_json::from_str::<ReportInput>(r#"{"report_id":"a","error_mesage":"typo"}"#).unwrap_err();
        assert!(e.to_string().contains("error_mesage"), "{e}");
    }

    proptest::proptest! {
        /// Whatever a client sends: no panic, and an accepted report keeps
        /// every bound.
        #[test]
        fn accepted_reports_keep_every_bound(
            id in "\\PC{0,70}", device in "\\PC{0,130}", code in proptest::option::of("\\PC{0,70}"),
            message in proptest::option::of("\\PC{0,1100}"), result in "success|failure|rolled_back|\\PC{0,12}",
        ) {
            let input = ReportInput {
                report_id: Some(id), device_id: Some(device), error_code: code, error_message: message,
                result: Some(result), ..valid()
            };
            if let Ok(r) = Report::validate(&input) {
                proptest::prop_assert!(r.report_id.len() <= MAX_ID_CHARS && r.device_id.len() <= MAX_DEVICE_CHARS);
                proptest::prop_assert!(r.error_message.as_ref().is_none_or(|m| m.chars().count() <= MAX_MESSAGE_CHARS));
            }
        }
    }
}
