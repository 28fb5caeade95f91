//! Pages and their JSON. Every number on a page comes from the same
//! [`crate::status`] struct the JSON endpoint serves, so the two never
//! disagree. Templates are compiled into the binary and auto-escaped.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use ferry_store::StoreError;
use std::sync::LazyLock;

use minijinja::{Environment, context};

use crate::Dashboard;
use crate::access::Viewer;
use crate::status::{self, AppStatus, Overview};

/// Compiled once, on first use.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(templates);

fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    for (name, source) in [
        ("base.html", include_str!("../templates/base.html")),
        ("signin.html", include_str!("../templates/signin.html")),
        ("overview.html", include_str!("../templates/overview.html")),
        ("app.html", include_str!("../templates/app.html")),
        ("error.html", include_str!("../templates/error.html")),
    ] {
        env.add_template(name, source).expect("the dashboard's templates parse");
    }
    env.add_filter("pct", |v: Option<f64>| match v {
        Some(v) => format!("{:.1} %", v * 100.0),
        None => "—".to_owned(),
    });
    env
}

/// A page that cannot be shown.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    fn not_found() -> Self {
        Self { status: StatusCode::NOT_FOUND, message: "No such page, or not yours to see.".into() }
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %ferry_proto::error_chain(&e), "dashboard: database error");
        Self { status: StatusCode::SERVICE_UNAVAILABLE, message: "The database is not answering; try again.".into() }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = TEMPLATES
            .get_template("error.html")
            .and_then(|t| t.render(context! { message => self.message }))
            .unwrap_or_else(|_| "error".to_owned());
        (self.status, Html(body)).into_response()
    }
}

/// The JSON API's errors: `{"error", "message"}`.
#[derive(Debug)]
pub(crate) struct ApiError(PageError);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = if self.0.status == StatusCode::NOT_FOUND { "not_found" } else { "unavailable" };
        (self.0.status, Json(serde_json::json!({"error": error, "message": self.0.message}))).into_response()
    }
}

fn render(name: &str, ctx: minijinja::Value) -> Response {
    match TEMPLATES.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, template = name, "dashboard: template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response()
        }
    }
}

pub(crate) fn render_signin(error: Option<&str>, status: StatusCode) -> Response {
    let mut response = render("signin.html", context! { error => error });
    *response.status_mut() = status;
    response
}

pub(crate) async fn overview_page(State(dashboard): State<Dashboard>, viewer: Viewer) -> Result<Response, PageError> {
    let overview = status::overview(&dashboard.inner.meta, viewer.tenant_id()).await?;
    let problems = overview.apps.iter().filter(|a| a.problem).count();
    Ok(render(
        "overview.html",
        context! { viewer => viewer.describe(), csrf => viewer.csrf, overview => overview, problems => problems },
    ))
}

pub(crate) async fn overview_json(
    State(dashboard): State<Dashboard>,
    viewer: Viewer,
) -> Result<Json<Overview>, ApiError> {
    Ok(Json(status::overview(&dashboard.inner.meta, viewer.tenant_id()).await?))
}

/// The app's status, or `404` when it does not exist or the viewer may not
/// see its tenant (the same answer: an operator learns nothing of others).
async fn visible_app(dashboard: &Dashboard, viewer: &Viewer, tenant: &str, app: &str) -> Result<AppStatus, PageError> {
    // A name that cannot exist is not looked up.
    if ferry_release::Name::parse("tenant", tenant).is_err() || ferry_release::Name::parse("app", app).is_err() {
        return Err(PageError::not_found());
    }
    let meta = &dashboard.inner.meta;
    match status::find_app(meta, tenant, app).await? {
        Some(found) if viewer.sees(found.tenant_id) => Ok(status::app_status(meta, tenant, app, &found).await?),
        _ => Err(PageError::not_found()),
    }
}

pub(crate) async fn app_page(
    State(dashboard): State<Dashboard>,
    viewer: Viewer,
    Path((tenant, app)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let status = visible_app(&dashboard, &viewer, &tenant, &app).await?;
    Ok(render("app.html", context! { viewer => viewer.describe(), csrf => viewer.csrf, status => status }))
}

pub(crate) async fn app_json(
    State(dashboard): State<Dashboard>,
    viewer: Viewer,
    Path((tenant, app)): Path<(String, String)>,
) -> Result<Json<AppStatus>, ApiError> {
    Ok(Json(visible_app(&dashboard, &viewer, &tenant, &app).await.map_err(ApiError)?))
}

pub(crate) async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        return ApiError(PageError::not_found()).into_response();
    }
    PageError::not_found().into_response()
}
