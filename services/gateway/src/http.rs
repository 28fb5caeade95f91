//! The HTTP API apps call (`/v1/check`, `/v1/versions`, `/v1/reports`,
//! `/v1/watch`), plus `/openapi.json`,
//! `/healthz`, `/readyz` and `/metrics`.

use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use ferry_net::ConnInfo;
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

use crate::core::{Caller, CheckParams, Gateway};
use crate::error::GatewayError;
use crate::model::{
    Action, ArtifactFile, CheckAnswer, CompressedOffer, DeletedFile, DeployNotice, ErrorBody, LastFailureBody,
    PatchOffer, ReportAccepted, ReportBody, VersionInfo, VersionList,
};
use crate::watch::WatchItem;

/// The HTTP API, described from the code itself.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry access gateway",
        description = "Tells an app which version its private cloud runs and hands out presigned S3 URLs to \
                       download it. Every call needs `Authorization: Bearer <client key>`.",
        version = "1"
    ),
    paths(check, versions, reports, watch),
    components(schemas(
        CheckAnswer,
        Action,
        ArtifactFile,
        PatchOffer,
        CompressedOffer,
        DeletedFile,
        LastFailureBody,
        VersionList,
        VersionInfo,
        ReportBody,
        ReportAccepted,
        DeployNotice,
        ErrorBody
    )),
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

/// The largest request body (or gRPC message) accepted: the API's requests
/// are small.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024;

pub fn router(gateway: Gateway) -> Router {
    let api = Router::new()
        .route("/v1/check", get(check))
        .route("/v1/versions", get(versions))
        .route("/v1/reports", post(reports))
        .route("/v1/watch", get(watch))
        .route_layer(axum::middleware::from_fn_with_state(gateway.clone(), timed));
    // Browsers may call the API from the configured origins; the
    // operational endpoints stay same-origin.
    let api = match gateway.config().cors.layer() {
        Some(cors) => api.layer(cors),
        None => api,
    };
    api.route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
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
    /// The version the client runs, in the app's versioning: semantic
    /// versioning (`2.3.0`, the default), an integer code (`42`) or dotted
    /// numbers (`2024.01.3`), as the app was created with.
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

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct WatchQuery {
    #[param(required = true)]
    tenant: Option<String>,
    #[param(required = true)]
    app: Option<String>,
    /// The version the client runs: events then say what it should do
    /// (`action`, `required`).
    #[param(example = "2.3.0")]
    version: Option<String>,
    /// The client key, for browsers' `EventSource`, which cannot send
    /// headers; `Authorization` wins when both are present. URLs end up in
    /// logs: prefer the header wherever the client can set it.
    access_token: Option<String>,
    /// The id of the last event seen, for clients that cannot send the
    /// `Last-Event-ID` header; the header wins when both are present.
    last_event_id: Option<String>,
}

/// Which version to run, and where to download it.
#[utoipa::path(
    get,
    path = "/v1/check",
    params(
        CheckQuery,
        ("X-Ferry-Device" = Option<String>, Header, description = "Stable device id, for per-device rate limits; \
          the device is counted once, with `version`, on the operators' dashboard"),
    ),
    responses(
        (status = 200, description = "The answer; `artifacts` is empty when `action` is `none`", body = CheckAnswer),
        (status = 400, description = "A parameter is missing or malformed", body = ErrorBody),
        (status = 401, description = "Missing, malformed, unknown or revoked client key", body = ErrorBody),
        (status = 404, description = "No such app for this key (`not_found`), nothing deployed yet (`not_deployed`), \
                                      or `want` is not published (`version_not_found`)", body = ErrorBody),
        (status = 429, description = "Over the tenant's or device's rate limit, or too many unknown keys from this \
                                      address: retry after `Retry-After` seconds",
         body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 431, description = "The request head (URL and headers) is larger than 16 KiB"),
        (status = 503, description = "Release data is unavailable, or download links cannot be signed right now: \
                                      retry later", body = ErrorBody),
    )
)]
async fn check(
    State(gateway): State<Gateway>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    query: Result<Query<CheckQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| GatewayError::invalid("query", e.body_text()))?;
        let params = CheckParams {
            caller: caller(&headers, conn),
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
    respond(&gateway, "check", result.map(|answer| Encoded(answer.to_json_parts())))
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
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    query: Result<Query<VersionsQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| GatewayError::invalid("query", e.body_text()))?;
        gateway.versions(&caller(&headers, conn), &q.tenant, &q.app).await
    }
    .await;
    respond(&gateway, "versions", result.map(Json))
}

/// Reports how an upgrade (or downgrade) went on a device (S4-3), with the
/// same key, tenancy and rate limits as `/v1/check`. Successes are reported
/// too. A failure or rollback alerts the tenant's administrators and is
/// shown in the device's next check until a success report clears it.
#[utoipa::path(
    post,
    path = "/v1/reports",
    request_body = ReportBody,
    params(
        ("X-Ferry-Device" = Option<String>, Header, description = "Stable device id, for per-device rate limits \
                                                                   (default: the report's device_id)"),
    ),
    responses(
        (status = 202, description = "Stored (or stored before, when `duplicate`)", body = ReportAccepted),
        (status = 400, description = "The body is not JSON, has an unknown field, or a field is missing or \
                                      malformed (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing, malformed, unknown or revoked client key", body = ErrorBody),
        (status = 404, description = "No such app for this key", body = ErrorBody),
        (status = 429, description = "Over a rate limit: retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Reports cannot be stored right now: retry later (same report_id)",
         body = ErrorBody),
    )
)]
async fn reports(
    State(gateway): State<Gateway>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    body: Result<Json<ferry_reports::ReportInput>, JsonRejection>,
) -> Response {
    let result = async {
        let Json(input) = body.map_err(|e| GatewayError::invalid_field("body", e.body_text()))?;
        gateway.report(&caller(&headers, conn), &input).await
    }
    .await;
    respond(&gateway, "reports", result.map(|accepted| (StatusCode::ACCEPTED, Json(accepted))))
}

/// Push notices (S1-6): a Server-Sent Events stream with an event
/// `deployed` (data: `DeployNotice`) whenever the app's deployed version,
/// or its `required` rule, changes, and the current deployment at once on
/// connect unless `Last-Event-ID` names it (or a later one). Event ids are
/// `<deploy sequence>-<digest>`. Comments (`:`) are heartbeats, every 15 s by
/// default. The stream ends when the gateway shuts down or the key is
/// revoked: reconnect with `Last-Event-ID` (browsers' `EventSource` does so
/// by itself, but not after an error status: reconnect yourself after a 429
/// or 503) and no change is missed. Same key, tenancy and rate limits as
/// `/v1/check`.
#[utoipa::path(
    get,
    path = "/v1/watch",
    params(
        WatchQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event seen (on reconnect)"),
        ("X-Ferry-Device" = Option<String>, Header, description = "Stable device id, for per-device rate limits"),
    ),
    responses(
        (status = 200, description = "An event stream; each event's data is a `DeployNotice`",
         content_type = "text/event-stream", body = DeployNotice),
        (status = 400, description = "A parameter is missing or malformed", body = ErrorBody),
        (status = 401, description = "Missing, malformed, unknown or revoked client key", body = ErrorBody),
        (status = 404, description = "No such app for this key", body = ErrorBody),
        (status = 429, description = "Over a rate limit: retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Release data is unavailable, or this gateway holds as many watches as it \
                                      may: retry after `Retry-After` seconds (another replica may have room)",
         body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn watch(
    State(gateway): State<Gateway>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| GatewayError::invalid("query", e.body_text()))?;
        let mut caller = caller(&headers, conn);
        if caller.authorization.is_none() {
            caller.authorization = q.access_token.map(|token| format!("Bearer {token}"));
        }
        let last_event_id = header_str(&headers, "last-event-id").or(q.last_event_id);
        gateway.watch(&caller, &q.tenant, &q.app, &q.version, last_event_id).await
    }
    .await;
    let watcher = match result {
        Ok(watcher) => watcher,
        Err(e) => return respond(&gateway, "watch", Err::<(), _>(e)),
    };
    // The first event also tells browsers' EventSource how long to wait
    // before reconnecting: 2 to 7 s at random, so that the watchers of a
    // gateway that shuts down come back spread out.
    let retry = Duration::from_millis(2000 + (crate::watch::fastrand_fraction() * 5000.0) as u64);
    let events = futures::stream::unfold((watcher, Some(retry)), |(mut watcher, retry)| async move {
        let event = match watcher.next().await? {
            WatchItem::Deployed { id, notice } => {
                Event::default().event("deployed").id(id).json_data(&notice).expect("notices serialise")
            }
            WatchItem::Heartbeat => Event::default().comment(""),
        };
        let event = match retry {
            Some(retry) => event.retry(retry),
            None => event,
        };
        Some((Ok::<_, std::convert::Infallible>(event), (watcher, None)))
    });
    let mut response = respond(&gateway, "watch", Ok(Sse::new(events)));
    // Proxies that buffer responses (nginx) would hold events back.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// Times the API's answers by route, each in a span that joins the app's
/// trace (watches last as long as the client stays: neither), and asks
/// HTTP/1.1 clients to reconnect elsewhere while draining.
async fn timed(
    State(gateway): State<Gateway>,
    route: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let call = match route.as_str() {
        "/v1/check" => "check",
        "/v1/versions" => "versions",
        "/v1/reports" => "reports",
        _ => return next.run(request).await,
    };
    let started = std::time::Instant::now();
    let http1 = request.version() <= http::Version::HTTP_11;
    // When spans are exported, one per API request, a child of the app's
    // trace when it sends `traceparent`.
    let mut response = if ferry_telemetry::exporting() {
        let span = tracing::info_span!("http", call);
        let headers = request.headers();
        ferry_telemetry::adopt_parent(&span, |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned));
        tracing::Instrument::instrument(next.run(request), span).await
    } else {
        next.run(request).await
    };
    gateway.metrics().took("http", call, started);
    // While the gateway drains, HTTP/1.1 answers carry `Connection: close`,
    // so clients on kept-alive connections move to another replica during
    // the drain rather than race the listener's close after it (HTTP/2
    // connections get a GOAWAY when the listener closes).
    if http1 && !gateway.lifecycle().is_ready() {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn ready(State(gateway): State<Gateway>) -> Response {
    match gateway.ready().await {
        Ok(()) => "ready".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response(),
    }
}

async fn metrics(State(gateway): State<Gateway>) -> Response {
    let ready = gateway.ready().await.is_ok();
    let body = gateway.metrics().render(ready);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn caller(headers: &HeaderMap, conn: Option<Extension<ConnInfo>>) -> Caller {
    Caller {
        authorization: header_str(headers, header::AUTHORIZATION.as_str()),
        device: header_str(headers, "x-ferry-device"),
        source: conn.and_then(|Extension(c)| c.remote_addr).map(|a| a.ip()),
    }
}

/// A JSON body encoded already, in parts: the cached file list is shared,
/// never copied per request.
struct Encoded(Vec<Bytes>);

impl IntoResponse for Encoded {
    fn into_response(self) -> Response {
        let body = axum::body::Body::new(PartsBody { parts: self.0.into() });
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
    }
}

/// A body of a few shared buffers with an exact length (so HTTP/1.1 sends
/// `Content-Length`, not chunks).
struct PartsBody {
    parts: std::collections::VecDeque<Bytes>,
}

impl http_body::Body for PartsBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.parts.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.parts.iter().map(|b| b.len() as u64).sum())
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
