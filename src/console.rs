//! The web console: the files of `static/`, embedded at compile time, served at `/` and
//! `/static/…` with a strict Content-Security-Policy (no inline script or style, no framing).

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::app::AppState;

/// One embedded file: its name under `static/`, its content type, its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/static/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `static/` (a unit test checks that none is missing from this list).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("i18n.js", JS),
    asset!("dom.js", JS),
    asset!("format.js", JS),
    asset!("dialog.js", JS),
    asset!("keys.js", JS),
    asset!("key_forms.js", JS),
    asset!("stats.js", JS),
    asset!("chart.js", JS),
    asset!("logs.js", JS),
    asset!("upstreams.js", JS),
    asset!("audit.js", JS),
    asset!("pager.js", JS),
    asset!("upstream_forms.js", JS),
];

/// The policy of every console response: only this origin's scripts, styles, images and API;
/// nothing inline, no plugins, no framing, forms only to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/static/{name}", get(file))
}

async fn index(request: HeaderMap) -> Response {
    serve("index.html", &request)
}

async fn file(Path(name): Path<String>, request: HeaderMap) -> Response {
    serve(&name, &request)
}

/// The ETag of each asset (a hash of its bytes), in the order of `ASSETS`.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| format!("\"{}\"", hex::encode(&Sha256::digest(asset.body)[..12])))
            .collect()
    })
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        // As any other unknown path.
        return StatusCode::NOT_FOUND.into_response();
    };
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, asset.body).into_response()
    };
    let headers = [
        (header::CONTENT_TYPE, asset.content_type),
        // Small files without hashed names: the browser revalidates (a 304 by ETag), so an
        // upgraded binary's console shows at once.
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    let out = response.headers_mut();
    for (name, value) in headers {
        out.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(value) = HeaderValue::from_str(etag) {
        out.insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_static_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.name.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(!page.contains("style="), "inline style attribute");
        assert!(!page.contains("<style"), "inline style element");
        for script in page.split("<script").skip(1) {
            assert!(script.contains("src="), "inline script: {script}");
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
