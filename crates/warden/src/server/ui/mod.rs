//! `GET /ui`: the dashboard, one HTML page built into the binary (no build step, works
//! offline). The page itself needs no token; it asks for the admin token once (kept in the
//! tab's session storage) and reads the admin API with it, live through `/admin/events`.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("index.html");

pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE)
}
