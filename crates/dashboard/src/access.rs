//! Who may see what. A dashboard key (`admin`: every tenant; `operator`:
//! its own tenant) is accepted two ways:
//! - `Authorization: Bearer <key>` on any request (scripts, SREs' tools);
//! - signed in once through `/signin`, then a session cookie: random, only
//!   its BLAKE3 stored, `HttpOnly; Secure; SameSite=Strict`, ended by
//!   sign-out, expiry or revoking the key.
//!
//! What changes state (`/signin`, `/signout`) is a POST whose `Origin`, when
//! the browser sends one, must be this listener's; sign-out also carries a
//! CSRF token derived from the session (a page of another site can neither
//! read it nor send the cookie).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use ferry_store::{ApiKey, KeyRole, Meta, StoreError};
use serde::Deserialize;

use crate::Dashboard;

pub(crate) const COOKIE: &str = "ferry_session";

/// Who is looking, and what they may see.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    /// What proved it: checked again while a live stream stays open.
    pub(crate) credential: Credential,
    /// `None` for an admin: every tenant.
    pub(crate) tenant: Option<(i64, String)>,
    /// Present when signed in by cookie: forms that change state carry it.
    pub(crate) csrf: Option<String>,
}

/// A dashboard key, or the token of a session signed in with one.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    Key(ApiKey),
    Session(String),
}

impl Credential {
    /// Whether it still opens the dashboard (key not revoked, session not
    /// signed out or expired).
    pub(crate) async fn still_valid(&self, meta: &Meta) -> Result<bool, StoreError> {
        Ok(match self {
            Credential::Key(key) => meta.principal(key).await?.is_some(),
            Credential::Session(token) => session_viewer(meta, token).await?.is_some(),
        })
    }
}

/// What a dashboard role may see: every tenant (admin), its own (operator);
/// `None` for any other role or an inconsistent row. Decided by the role,
/// never by the absence of a tenant alone.
#[allow(clippy::option_option)]
fn scope(role: KeyRole, tenant: Option<(i64, String)>) -> Option<Option<(i64, String)>> {
    match (role, tenant) {
        (KeyRole::Admin, None) => Some(None),
        (KeyRole::Operator, Some(tenant)) => Some(Some(tenant)),
        _ => None,
    }
}

impl Viewer {
    /// Whether this viewer may see `tenant_id`'s apps.
    pub(crate) fn sees(&self, tenant_id: i64) -> bool {
        self.tenant.as_ref().is_none_or(|(id, _)| *id == tenant_id)
    }

    pub(crate) fn tenant_id(&self) -> Option<i64> {
        self.tenant.as_ref().map(|(id, _)| *id)
    }

    /// What the page header says about the viewer.
    pub(crate) fn describe(&self) -> String {
        match &self.tenant {
            None => "admin · all tenants".to_owned(),
            Some((_, name)) => format!("operator · {name}"),
        }
    }
}

/// Why a request has no viewer.
#[derive(Debug)]
pub(crate) enum Denied {
    /// No credential, or one that is not (or no longer) valid: pages send
    /// the browser to sign in, the JSON API answers 401.
    Unauthenticated { api: bool, reason: &'static str },
    /// The credential could not be checked.
    Store { api: bool, error: StoreError },
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthenticated { api: true, reason } => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                Json(serde_json::json!({"error": "unauthenticated", "message": reason})),
            )
                .into_response(),
            Denied::Unauthenticated { api: false, .. } => Redirect::to("/signin").into_response(),
            Denied::Store { api: true, error } => crate::pages::ApiError::from(error).into_response(),
            Denied::Store { api: false, error } => crate::pages::PageError::from(error).into_response(),
        }
    }
}

impl FromRequestParts<Dashboard> for Viewer {
    type Rejection = Denied;

    async fn from_request_parts(parts: &mut Parts, dashboard: &Dashboard) -> Result<Self, Self::Rejection> {
        let api = parts.uri.path().starts_with("/api/") || parts.uri.path() == "/events";
        let meta = &dashboard.inner.meta;
        if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
            let key = auth
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .and_then(|token| ApiKey::parse(token).ok())
                .filter(|key| matches!(key.role, KeyRole::Admin | KeyRole::Operator))
                .ok_or(Denied::Unauthenticated { api, reason: "the bearer token is not a dashboard key" })?;
            let principal = meta
                .principal(&key)
                .await
                .map_err(|error| Denied::Store { api, error })?
                .ok_or(Denied::Unauthenticated { api, reason: "the key is unknown or revoked" })?;
            let tenant = scope(principal.role, principal.tenant.map(|(id, name)| (id, name.to_string())))
                .ok_or(Denied::Unauthenticated { api, reason: "the key is not a dashboard key" })?;
            return Ok(Viewer { tenant, csrf: None, credential: Credential::Key(key) });
        }
        let token = session_token(&parts.headers)
            .ok_or(Denied::Unauthenticated { api, reason: "sign in, or send a dashboard key as a bearer token" })?;
        session_viewer(meta, &token)
            .await
            .map_err(|error| Denied::Store { api, error })?
            .ok_or(Denied::Unauthenticated { api, reason: "the session ended; sign in again" })
    }
}

/// The session token in the request's cookies, when well formed.
fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn token_hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// The CSRF token of a session: derived, so nothing more is stored, and
/// useless without the session it belongs to.
pub(crate) fn csrf_of(token: &str) -> String {
    hex::encode(blake3::derive_key("ferry dashboard 2026 csrf token", token.as_bytes()))
}

async fn session_viewer(meta: &Meta, token: &str) -> Result<Option<Viewer>, StoreError> {
    let client = meta.client().await?;
    let row = client
        .query_opt(
            "SELECT k.role, k.tenant_id, t.name FROM dashboard_sessions s \
             JOIN api_keys k ON k.id = s.key_id AND k.revoked_at IS NULL \
             LEFT JOIN tenants t ON t.id = k.tenant_id \
             WHERE s.token_hash = $1 AND s.expires_at > now()",
            &[&token_hash(token).as_slice()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let tenant = match (row.get::<_, Option<i64>>(1), row.get::<_, Option<String>>(2)) {
        (Some(id), Some(name)) => Some((id, name)),
        _ => None,
    };
    let Some(tenant) = KeyRole::parse(row.get(0)).and_then(|role| scope(role, tenant)) else { return Ok(None) };
    Ok(Some(Viewer { tenant, csrf: Some(csrf_of(token)), credential: Credential::Session(token.to_owned()) }))
}

pub(crate) async fn purge_sessions(meta: &Meta) -> Result<u64, StoreError> {
    let client = meta.client().await?;
    Ok(client.execute("DELETE FROM dashboard_sessions WHERE expires_at <= now()", &[]).await?)
}

/// A POST from a page of another origin is refused. Browsers send `Origin`
/// on every POST; tools that send none are not browsers riding a cookie.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), headers.get(header::HOST).map(|h| h.to_str())) else {
        return false;
    };
    origin.split_once("://").is_some_and(|(_, authority)| authority == host)
}

pub(crate) async fn signin_page() -> Response {
    crate::pages::render_signin(None, StatusCode::OK)
}

#[derive(Deserialize)]
pub(crate) struct SignIn {
    key: String,
}

pub(crate) async fn signin(State(dashboard): State<Dashboard>, headers: HeaderMap, form: Form<SignIn>) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-origin sign-in refused").into_response();
    }
    let refuse = |why: &str| crate::pages::render_signin(Some(why), StatusCode::UNAUTHORIZED);
    let key = match ApiKey::parse(&form.key) {
        Ok(key) if matches!(key.role, KeyRole::Admin | KeyRole::Operator) => key,
        Ok(key) => {
            return refuse(&format!("a {} key does not open the dashboard: use an admin or operator key", key.role));
        }
        Err(_) => return refuse("that is not a Ferry key (ferry_<role>_<id>_<secret>)"),
    };
    let meta = &dashboard.inner.meta;
    match meta.principal(&key).await {
        Ok(Some(_)) => {}
        Ok(None) => return refuse("unknown or revoked key"),
        Err(e) => return crate::pages::PageError::from(e).into_response(),
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("operating system random source");
    let token = hex::encode(raw);
    let lifetime = dashboard.inner.settings.session_lifetime;
    let stored = async {
        let client = meta.client().await?;
        client
            .execute(
                "INSERT INTO dashboard_sessions (token_hash, key_id, expires_at) \
                 VALUES ($1, $2, now() + make_interval(secs => $3))",
                &[&token_hash(&token).as_slice(), &key.id, &lifetime.as_secs_f64()],
            )
            .await?;
        Ok::<_, StoreError>(())
    };
    if let Err(e) = stored.await {
        return crate::pages::PageError::from(e).into_response();
    }
    let cookie = session_cookie(&dashboard, &token, lifetime.as_secs());
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/".to_owned())]).into_response()
}

#[derive(Deserialize)]
pub(crate) struct SignOut {
    csrf: String,
}

pub(crate) async fn signout(State(dashboard): State<Dashboard>, headers: HeaderMap, form: Form<SignOut>) -> Response {
    let Some(token) = session_token(&headers) else { return Redirect::to("/signin").into_response() };
    let expected = csrf_of(&token);
    // Compared in constant time: the token is a secret of the session.
    let valid = blake3::hash(form.csrf.as_bytes()) == blake3::hash(expected.as_bytes());
    if !same_origin(&headers) || !valid {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    }
    let deleted = async {
        let client = dashboard.inner.meta.client().await?;
        client
            .execute("DELETE FROM dashboard_sessions WHERE token_hash = $1", &[&token_hash(&token).as_slice()])
            .await?;
        Ok::<_, StoreError>(())
    };
    if let Err(e) = deleted.await {
        return crate::pages::PageError::from(e).into_response();
    }
    let cookie = session_cookie(&dashboard, "", 0);
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/signin".to_owned())]).into_response()
}

/// The session cookie's `Set-Cookie` value (`max_age` 0 removes it).
fn session_cookie(dashboard: &Dashboard, token: &str, max_age: u64) -> String {
    let secure = if dashboard.inner.settings.secure_cookie { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/; HttpOnly{secure}; SameSite=Strict; Max-Age={max_age}")
}

/// Headers every answer carries: nothing framed, sniffed, leaked in a
/// referrer or cached; scripts and styles only from this origin.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let assets = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !assets {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_well_formed_session_cookies() {
        let token = "ab".repeat(32);
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, format!("theme=dark; {COOKIE}={token}").parse().unwrap());
        assert_eq!(session_token(&headers).as_deref(), Some(token.as_str()));
        headers.insert(header::COOKIE, format!("{COOKIE}=nothex").parse().unwrap());
        assert_eq!(session_token(&headers), None);
    }

    #[test]
    fn csrf_tokens_differ_per_session() {
        assert_ne!(csrf_of(&"a".repeat(64)), csrf_of(&"b".repeat(64)));
        assert_eq!(csrf_of(&"a".repeat(64)).len(), 64);
    }

    #[test]
    fn posts_from_other_origins_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "localhost:9090".parse().unwrap());
        assert!(same_origin(&headers), "no Origin: not a browser riding a cookie");
        headers.insert(header::ORIGIN, "http://localhost:9090".parse().unwrap());
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&headers));
    }
}
