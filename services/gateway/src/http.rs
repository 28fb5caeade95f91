//! The HTTP API apps call (`/v1/check`, `/v1/versions`), plus `/openapi.json`,
//! `/healthz`, `/readyz` and `/metrics`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

use crate::core::{CheckParams, Gateway};
use crate::error::GatewayError;
use crate::model::{Action, ArtifactFile, CheckAnswer, DeletedFile, ErrorBody, VersionInfo, VersionList};

/// The HTTP API, described from the code itself.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry access gateway",
        description = "Tells an app which version its private cloud runs and hands out presigned S3 URLs to \
                       download it. Every call needs `Authorization: Bearer <client key>`.",
        version = "1"
    ),
    paths(check, versions),
    components(schemas(CheckAnswer, Action, ArtifactFile, DeletedFile, VersionList, VersionInfo, ErrorBody)),
    modifiers(&ClientKey),
    security(("client_key" = []))
)]
pub(crate) struct ApiDoc;

struct ClientKey;

impl Modify for ClientKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "client_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A client key: `ferry-registry admin issue-key TENANT --role client`"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as served at `/openapi.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serialises")
}

pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/v1/check", get(check))
        .route("/v1/versions", get(versions))
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CheckQuery {
    /// Tenant name, e.g. `acme`.
    #[param(required = true)]
    tenant: Option<String>,
    /// App name, e.g. `crm`.
    #[param(required = true)]
    app: Option<String>,
    /// The version the client runs (semantic versioning).
    #[param(required = true, example = "2.3.0")]
    version: Option<String>,
    /// The client's platform, e.g. `android`: selects platform-tagged artifacts.
    platform: Option<String>,
    /// A published version to get instead of the deployed one.
    want: Option<String>,
    /// Manifest id of the release the client runs: directory artifacts then
    /// list only changed files, plus `deleted`.
    have: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct VersionsQuery {
    #[param(required = true)]
    tenant: Option<String>,
    #[param(required = true)]
    app: Option<String>,
}

/// Which version to run, and where to download it.
#[utoipa::path(
    get,
    path = "/v1/check",
    params(
        CheckQuery,
        ("X-Ferry-Device" = Option<String>, Header, description = "Stable device id, for per-device rate limits"),
    ),
    responses(
        (status = 200, description = "The answer; `artifacts` is empty when `action` is `none`", body = CheckAnswer),
        (status = 400, description = "A parameter is missing or malformed", body = ErrorBody),
        (status = 401, description = "Missing, malformed, unknown or revoked client key", body = ErrorBody),
        (status = 404, description = "No such app for this key (`not_found`), nothing deployed yet (`not_deployed`), \
                                      or `want` is not published (`version_not_found`)", body = ErrorBody),
        (status = 429, description = "Over the tenant's or device's rate limit: retry after `Retry-After` seconds",
         body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Release data is unavailable: retry later", body = ErrorBody),
    )
)]
async fn check(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    query: Result<Query<CheckQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| GatewayError::invalid("query", e.body_text()))?;
        let params = CheckParams {
            authorization: header_str(&headers, header::AUTHORIZATION.as_str()),
            device: header_str(&headers, "x-ferry-device"),
            tenant: q.tenant,
            app: q.app,
            version: q.version,
            platform: q.platform,
            want: q.want,
            have: q.have,
        };
        gateway.check(&params).await
    }
    .await;
    respond(&gateway, "check", result.map(|answer| Encoded(answer.to_json())))
}

/// The published versions, newest first, and the deployed one.
#[utoipa::path(
    get,
    path = "/v1/versions",
    params(VersionsQuery),
    responses(
        (status = 200, body = VersionList),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, body = ErrorBody),
    )
)]
async fn versions(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    query: Result<Query<VersionsQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| GatewayError::invalid("query", e.body_text()))?;
        let authorization = header_str(&headers, header::AUTHORIZATION.as_str());
        let device = header_str(&headers, "x-ferry-device");
        gateway.versions(authorization.as_deref(), device.as_deref(), &q.tenant, &q.app).await
    }
    .await;
    respond(&gateway, "versions", result.map(Json))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn ready(State(gateway): State<Gateway>) -> Response {
    match gateway.ready().await {
        Ok(()) => "ready".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response(),
    }
}

async fn metrics(State(gateway): State<Gateway>) -> Response {
    let body = gateway.metrics().render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A JSON body encoded already.
struct Encoded(Vec<u8>);

impl IntoResponse for Encoded {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], self.0).into_response()
    }
}

fn respond<T: IntoResponse>(gateway: &Gateway, call: &'static str, result: Result<T, GatewayError>) -> Response {
    match result {
        Ok(body) => {
            gateway.metrics().request("http", call, "ok");
            // Answers carry short-lived URLs: no shared cache may keep them.
            let mut response = body.into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
            response
        }
        Err(e) => {
            gateway.metrics().request("http", call, e.code);
            let status = e.kind.http_status();
            let body = ErrorBody { error: e.code.to_owned(), message: e.message, retry_after_seconds: e.retry_after };
            let mut response = (status, Json(body)).into_response();
            if let Some(seconds) = e.retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
    }
}
