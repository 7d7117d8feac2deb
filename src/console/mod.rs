//! The admin console: static files served at `/admin/`, embedded in the binary.
//!
//! The console is a single page (`assets/index.html`, `app.js`, `app.css`) that talks only
//! to the public API: `POST /graphql`, the `events` subscription on `/graphql/ws`,
//! `/ready` and `/export`. So everything it shows is scriptable, and it needs no route or
//! permission of its own: its files are public, the key it is given decides what the API
//! answers. `/admin/graphiql` (and `GET /graphql` from a browser) is GraphiQL, from
//! the production builds vendored under `assets/vendor/` with their licences.
//!
//! Every response carries a Content-Security-Policy that allows only this origin, so the
//! console makes no request to another host. Vendored files have their version in their
//! path and are cached for a year; the console's own files are revalidated by their hash
//! (`ETag`), so a new binary is picked up at the next load.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

/// The files under `src/console/assets`. Debug builds read them from disk at each request,
/// so editing the console needs no rebuild; release builds carry them.
#[derive(RustEmbed)]
#[folder = "src/console/assets"]
#[exclude = "*.md"]
struct Assets;

/// The policy of every console response: scripts, styles, fonts and connections from this
/// origin only. Inline styles are allowed because uPlot and React set style attributes;
/// fonts and images may be `data:` URLs because GraphiQL's stylesheet inlines its fonts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The page `GET /graphql` answers a browser with, and `/admin/graphiql`.
const GRAPHIQL_PAGE: &str = "graphiql.html";

/// The console's routes: `/admin` (redirect), `/admin/`, `/admin/graphiql` and the files.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route(
            "/admin/",
            get(|headers: HeaderMap| async move { file("index.html", &headers) }),
        )
        .route("/admin/graphiql", get(graphiql))
        .route(
            "/admin/{*path}",
            get(
                |Path(path): Path<String>, headers: HeaderMap| async move { file(&path, &headers) },
            ),
        )
}

/// GraphiQL, served from the embedded production builds.
pub async fn graphiql(headers: HeaderMap) -> Response {
    file(GRAPHIQL_PAGE, &headers)
}

/// One embedded file with its content type, caching headers and the policy; `304` when
/// the client's copy is current, `404` for a path that names no file.
fn file(path: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = Assets::get(path) else {
        return (
            StatusCode::NOT_FOUND,
            secure_headers(),
            "no such file in the console\n",
        )
            .into_response();
    };
    let etag = format!("\"{}\"", hex::encode(&asset.metadata.sha256_hash()[..16]));
    let cache = if path.starts_with("vendor/") {
        // Each vendored file's path names its version, so its content never changes.
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = asset.data.into_owned().into_response();
        let mime = asset.metadata.mimetype();
        let content_type = if mime.starts_with("text/") {
            format!("{mime}; charset=utf-8")
        } else {
            mime.to_string()
        };
        if let Ok(value) = HeaderValue::from_str(&content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        response
    };
    let out = response.headers_mut();
    out.extend(secure_headers());
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, value);
    }
    response
}

fn secure_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vendored_file_is_embedded_with_a_type() {
        for path in [
            "index.html",
            "app.js",
            "app.css",
            GRAPHIQL_PAGE,
            "graphiql.js",
            "vendor/graphiql-3.8.2/graphiql.min.js",
            "vendor/graphiql-3.8.2/graphiql.min.css",
            "vendor/react-18.3.1/react.production.min.js",
            "vendor/react-dom-18.3.1/react-dom.production.min.js",
            "vendor/uplot-1.6.32/uPlot.iife.min.js",
            "vendor/uplot-1.6.32/uPlot.min.css",
        ] {
            let asset = Assets::get(path).unwrap_or_else(|| panic!("{path} is not embedded"));
            assert!(!asset.data.is_empty(), "{path} is empty");
            let mime = asset.metadata.mimetype();
            let expected = match path.rsplit('.').next() {
                Some("js") => "javascript",
                Some("css") => "text/css",
                _ => "text/html",
            };
            assert!(mime.contains(expected), "{path} is served as {mime}");
        }
        assert!(
            Assets::get("vendor/README.md").is_none(),
            "notes are not served"
        );
    }
}
