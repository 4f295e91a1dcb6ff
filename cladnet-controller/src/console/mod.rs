//! The web console: a static page at `/console/` (HTML, plain JavaScript and CSS embedded in
//! the binary) that drives the REST API from the browser.
//!
//! Serving the page needs no credentials: it holds no data. Everything it shows comes from the
//! REST API, called with the admin token the user types in (kept in the tab's
//! `sessionStorage`, sent only as `Authorization: Bearer`; a `#token=` fragment may prefill it,
//! fragments never reach the server). The page polls every 2 s; see `docs/console.md`.
//!
//! Every response carries a strict Content-Security-Policy (`default-src 'self'`, no inline
//! script or style, no framing), so injected markup could neither run script nor send data
//! elsewhere; the script builds the DOM with `textContent`, never `innerHTML`.

use axum::{
    Router,
    http::{HeaderName, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// The page.
pub const INDEX_HTML: &str = include_str!("index.html");
/// The script (plain JavaScript, no build step).
pub const APP_JS: &str = include_str!("app.js");
/// The style sheet.
pub const CONSOLE_CSS: &str = include_str!("console.css");

/// The Content-Security-Policy of every console response: same-origin scripts, styles and API
/// calls only; no inline code, plugins, framing or form posts.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                       base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes (no state: the files are constants).
pub fn router() -> Router {
    Router::new()
        // Relative, so the console also works behind a reverse proxy that adds a path prefix.
        .route("/console", get(|| async { redirect("console/") }))
        .route(
            "/console/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
}

/// Headers every console response carries.
fn security_headers() -> [(HeaderName, &'static str); 5] {
    [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // Small files, always revalidated: a controller upgrade shows at the next load.
        (header::CACHE_CONTROL, "no-cache"),
    ]
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        security_headers(),
        [(header::CONTENT_TYPE, content_type)],
        body,
    )
        .into_response()
}

fn redirect(to: &'static str) -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        security_headers(),
        [(header::LOCATION, to)],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_code() {
        // Scripts only by src, no event-handler attributes, no inline styles: the CSP would
        // block them anyway, this keeps the page working under it.
        let html = INDEX_HTML.to_ascii_lowercase();
        for (at, _) in html.match_indices("<script") {
            let tag_end = at + html[at..].find('>').expect("closed tag");
            assert!(
                html[at..tag_end].contains(" src="),
                "inline <script> at {at}"
            );
            assert!(
                html[tag_end + 1..].starts_with("</script>"),
                "a <script src> with a body at {at}"
            );
        }
        assert!(!html.contains("<style"), "inline <style>");
        assert!(!html.contains(" style="), "inline style attribute");
        for attr in [
            " onclick=",
            " onload=",
            " onsubmit=",
            " onchange=",
            " oninput=",
        ] {
            assert!(!html.contains(attr), "inline handler {attr}");
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn the_script_builds_the_dom_safely_and_stays_local() {
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "eval(",
            "new Function",
        ] {
            assert!(!APP_JS.contains(banned), "app.js uses {banned}");
        }
        // The SVG namespace is a name, not an address.
        let js = APP_JS.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !js.contains("http://") && !js.contains("https://"),
            "app.js only talks to its own origin"
        );
        assert!(APP_JS.contains("sessionStorage"));
        assert!(!APP_JS.contains("localStorage"), "the token stays per tab");
        assert!(!CONSOLE_CSS.contains("@import") && !CONSOLE_CSS.contains("url("));
    }

    #[test]
    fn csp_allows_only_the_origin() {
        assert!(CSP.starts_with("default-src 'self';"));
        assert!(!CSP.contains("unsafe"));
        assert!(CSP.contains("frame-ancestors 'none'"));
    }
}
