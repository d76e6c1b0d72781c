//! The status page's assets, compiled into the binary (no build step, no framework, no CDN),
//! and the axum handlers that serve them: [`index`] for `GET /`, [`asset`] for
//! `GET /assets/{name}` (`app.js`, `style.css`), `GET /status.json` and
//! `GET /cameras/{c}/snapshot.jpg` from a [`StatusSource`] (the daemon's), and [`login_page`],
//! the answer to a page request without a valid token when one is configured. [`routes`] and
//! [`public_routes`] put them on the HTTP listener (the first behind its token).
//!
//! The page (`index.html` + `app.js`) polls `GET /status.json` every 2 s (same origin, with
//! credentials) and renders it; the JSON it expects:
//!
//! ```text
//! {"node": {"id", "version", "uptime_secs", "engine_library", "providers": [..]},
//!  "models": [{"name", "state", "versions": [..], "version", "engine", "provider", "sha256",
//!              "error", "inferences_per_sec", "p50_ms", "p99_ms"}],
//!  "cameras": [{"name", "model", "online", "detail", "fps_in", "fps_out", "dropped": {"cause": n},
//!               "snapshot": "/cameras/<c>/snapshot.jpg" or null while there is none}],
//!  "mqtt": {"enabled", "connected", "outbox_records", "dropped"}}
//! ```
//!
//! Any field may be null. A 401 from `/status.json` makes the page reload (and so meet the
//! login form). Caching: `index.html` and the login page are `no-cache`; the assets are linked
//! as `/assets/<name>?v=<hash of both assets>` and served `immutable` for a year when `v`
//! matches (a new binary links new URLs), `no-cache` otherwise; all carry an `ETag` and an
//! `If-None-Match` that matches gets a 304.
//!
//! The login form sets the cookie `onnxd_token=<encodeURIComponent(token)>; path=/;
//! SameSite=Strict` (plus `Secure` over HTTPS) in the browser and reloads; the server's
//! auth then accepts that cookie like `Authorization: Bearer <token>` (percent-decoding it).
//! The assets hold no data and may be served without a token; the login page is
//! self-contained (inline style and script) so that it works when they are not.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use sha2::{Digest, Sha256};

const INDEX: &str = include_str!("index.html");
const LOGIN: &str = include_str!("login.html");
/// The assets under `/assets/`: name, content type, body.
const ASSETS: [(&str, &str, &str); 2] = [
    ("app.js", "text/javascript; charset=utf-8", include_str!("app.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("style.css")),
];
/// Where `index.html` puts the assets' version.
const VERSION_MARK: &str = "__ASSET_VERSION__";
const HTML: &str = "text/html; charset=utf-8";
const NO_CACHE: &str = "no-cache";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Characters of a camera name kept as they are in its snapshot URL (RFC 3986 unreserved).
const URL_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What the page shows, from the daemon.
pub trait StatusSource: Send + Sync {
    /// The `/status.json` document (its shape is in the module documentation).
    fn status(&self) -> serde_json::Value;
    /// The latest annotated frame of `camera`, once there is one.
    fn snapshot(&self, camera: &str) -> Option<Bytes>;
}

/// `/cameras/<camera, percent-encoded>/snapshot.jpg`: the URL of a camera's snapshot (names may
/// hold spaces and `/`).
pub fn snapshot_url(camera: &str) -> String {
    format!(
        "/cameras/{}/snapshot.jpg",
        utf8_percent_encode(camera, URL_SEGMENT)
    )
}

/// The routes that need the token (when one is configured): the page, its JSON and the
/// snapshots, for a router of any state.
pub fn routes<S: Clone + Send + Sync + 'static>(source: Arc<dyn StatusSource>) -> axum::Router<S> {
    axum::Router::new()
        .route("/", get(index))
        .route("/status.json", get(status_json))
        .route("/cameras/{camera}/snapshot.jpg", get(snapshot))
        .with_state(source)
}

/// The routes anyone may read: the assets (they hold no data).
pub fn public_routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new().route("/assets/{name}", get(asset))
}

/// `GET /status.json`.
pub async fn status_json(State(source): State<Arc<dyn StatusSource>>) -> Response {
    let status = source.status();
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(status)).into_response()
}

/// `GET /cameras/{camera}/snapshot.jpg`: the latest annotated frame, 404 until there is one.
pub async fn snapshot(State(source): State<Arc<dyn StatusSource>>, Path(camera): Path<String>) -> Response {
    match source.snapshot(&camera) {
        Some(jpeg) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            jpeg,
        )
            .into_response(),
        None => {
            let body = serde_json::json!({
                "error": format!("no snapshot of camera {camera:?} yet: it has no processed frame, or no such camera")
            });
            (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
        }
    }
}

/// The query of an asset URL.
#[derive(Debug, Default, Deserialize)]
pub struct AssetQuery {
    /// The asset version the page linked.
    pub v: Option<String>,
}

/// 16 hex digits of the SHA-256 of both assets: their URLs' version and their ETag.
pub fn asset_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut hasher = Sha256::new();
        for (name, _, body) in ASSETS {
            hasher.update(name.as_bytes());
            hasher.update(body.as_bytes());
        }
        hasher.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

fn index_html() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| INDEX.replace(VERSION_MARK, asset_version()))
}

fn etag() -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", asset_version())).expect("hex is a valid header value")
}

fn not_modified(headers: &HeaderMap) -> bool {
    let tag = etag();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "*" || v.trim().trim_start_matches("W/") == tag)
}

/// `GET /`: the status page.
pub async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, HTML), (header::CACHE_CONTROL, NO_CACHE)],
        index_html(),
    )
        .into_response()
}

/// `GET /assets/{name}`: `app.js` or `style.css`; anything else is a 404.
pub async fn asset(
    Path(name): Path<String>,
    Query(query): Query<AssetQuery>,
    headers: HeaderMap,
) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        let body = serde_json::json!({
            "error": format!("no asset {name:?}; the page's assets are app.js and style.css")
        });
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let cache = match query.v.as_deref() {
        Some(v) if v == asset_version() => IMMUTABLE,
        _ => NO_CACHE,
    };
    let cache_headers = [
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (header::ETAG, etag()),
    ];
    if not_modified(&headers) {
        return (StatusCode::NOT_MODIFIED, cache_headers).into_response();
    }
    let content_type = [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))];
    (content_type, cache_headers, *body).into_response()
}

/// The 401 answer to a page request without a valid token: a form that stores the token in
/// the `onnxd_token` cookie and reloads.
pub fn login_page() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, HTML),
            (header::CACHE_CONTROL, "no-store"),
            (header::WWW_AUTHENTICATE, "Bearer realm=\"onnxd\""),
        ],
        LOGIN,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    async fn read(response: Response) -> (StatusCode, HeaderMap, String) {
        let status = response.status();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get_asset(
        name: &str,
        v: Option<&str>,
        if_none_match: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let mut headers = HeaderMap::new();
        if let Some(tag) = if_none_match {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(tag).unwrap());
        }
        let query = AssetQuery {
            v: v.map(str::to_string),
        };
        read(asset(Path(name.to_string()), Query(query), headers).await).await
    }

    #[tokio::test]
    async fn the_page_links_versioned_assets_that_are_served_with_their_types() {
        let (status, headers, page) = read(index().await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], HTML);
        assert_eq!(headers[header::CACHE_CONTROL], NO_CACHE);
        assert!(!page.contains(VERSION_MARK));
        let version = asset_version();
        for (name, content_type, body) in ASSETS {
            let url = format!("/assets/{name}?v={version}");
            assert!(page.contains(&url), "the page links {url}");
            let (status, headers, served) = get_asset(name, Some(version), None).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers[header::CONTENT_TYPE], content_type);
            assert_eq!(headers[header::CACHE_CONTROL], IMMUTABLE);
            assert_eq!(served, body);
            // Without the current version: revalidate every time.
            let (_, headers, _) = get_asset(name, Some("old"), None).await;
            assert_eq!(headers[header::CACHE_CONTROL], NO_CACHE);
            let tag = headers[header::ETAG].to_str().unwrap().to_string();
            let (status, _, body) = get_asset(name, None, Some(&tag)).await;
            assert_eq!((status, body.as_str()), (StatusCode::NOT_MODIFIED, ""));
            let (status, _, _) = get_asset(name, None, Some("\"other\", W/\"x\"")).await;
            assert_eq!(status, StatusCode::OK);
            let (status, _, _) = get_asset(name, None, Some(&format!("\"other\", W/{tag}"))).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED);
        }
        let (status, _, body) = get_asset("secret.txt", None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("app.js and style.css"), "{body}");
    }

    #[tokio::test]
    async fn the_login_page_is_a_401_form_that_sets_the_cookie() {
        let (status, headers, body) = read(login_page()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::CONTENT_TYPE], HTML);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer realm=\"onnxd\"");
        assert!(body.contains("document.cookie = `onnxd_token="));
        assert!(body.contains("SameSite=Strict") && body.contains("path=/"));
        assert!(!body.contains("/assets/"), "self-contained");
    }

    #[test]
    fn the_script_renders_with_dom_calls_only_and_marks_what_the_browser_check_reads() {
        let script = ASSETS[0].2;
        assert!(
            !script.contains(".innerHTML") && !script.contains("insertAdjacentHTML"),
            "data goes in as text only"
        );
        for mark in [
            "dataset.loaded = \"1\"",
            "dataset.naturalWidth",
            "dataset.naturalHeight",
            "/status.json",
        ] {
            assert!(script.contains(mark), "{mark}");
        }
        assert!(
            !INDEX.contains("http://") && !INDEX.contains("https://"),
            "no external resources"
        );
    }
}
