//! The page script and style, and the chart library (uPlot, MIT, vendored
//! under `assets/vendor/uplot` so no build step and no CDN is needed).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const ASSETS: &[(&str, &str, &[u8])] = &[
    ("dashboard.js", "text/javascript; charset=utf-8", include_bytes!("../assets/dashboard.js")),
    ("dashboard.css", "text/css; charset=utf-8", include_bytes!("../assets/dashboard.css")),
    (
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/uplot/uPlot.iife.min.js"),
    ),
    ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8", include_bytes!("../assets/vendor/uplot/uPlot.min.css")),
];

pub(crate) async fn serve(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600")),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
