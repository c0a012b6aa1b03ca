//! The live dashboard at `GET /`: static assets compiled into the binary.
//!
//! The page is a plain client of the server's own APIs (`/api/v1/stats`,
//! `/api/v1/stats/history` and `/ws`), so it sees exactly what the credentials typed into it
//! allow, and serving it needs no state. The assets are in `dashboard/` beside this file;
//! uPlot (MIT) is vendored under `dashboard/vendor/`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 6] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("dashboard/index.html"),
    },
    Asset {
        path: "/dashboard/dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("dashboard/dashboard.js"),
    },
    Asset {
        path: "/dashboard/dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("dashboard/dashboard.css"),
    },
    Asset {
        path: "/dashboard/favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("dashboard/favicon.svg"),
    },
    Asset {
        path: "/dashboard/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("dashboard/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "/dashboard/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("dashboard/vendor/uPlot.min.css"),
    },
];

/// Only this server's own scripts, styles and connections; no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The asset at `path`, if it is one.
pub(crate) fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let asset = ASSETS.iter().find(|a| a.path == path)?;
    let mut response = Response::new(Full::new(Bytes::from_static(asset.body.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Small files, and a new binary may change them: always revalidate.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        let page = asset("/").unwrap();
        assert_eq!(page.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let html = include_str!("dashboard/index.html");
        for reference in html
            .split(['"', '\''])
            .filter(|s| s.starts_with("/dashboard/"))
        {
            assert!(asset(reference).is_some(), "{reference} is not embedded");
        }
        assert!(asset("/dashboard/nothing.js").is_none());
        assert!(asset("/index.html").is_none());
    }
}
