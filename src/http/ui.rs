//! The dashboard at `/ui`: one HTML page and its script and style sheet, embedded in the binary
//! (no Node, no network at build or run time). The page reads the same `/v1` API as every
//! other client, with the caller's key, so it sees exactly what that key may see; the assets
//! themselves hold no data and need no key.

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const STYLE_CSS: &str = include_str!("../../ui/style.css");

/// Mounts `/`, the pages under `/ui` and their assets.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(root))
        .route("/ui", web::get().to(page))
        .route("/ui/", web::get().to(page))
        .route("/ui/flows/{id}", web::get().to(page))
        .route("/ui/types", web::get().to(page))
        .route("/ui/queues", web::get().to(page))
        .route("/ui/assets/app.js", web::get().to(app_js))
        .route("/ui/assets/style.css", web::get().to(style_css));
}

async fn root() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((LOCATION, "/ui"))
        .finish()
}

/// Every page is the same document; the script renders the one its path names.
async fn page() -> HttpResponse {
    asset(INDEX, "text/html; charset=utf-8")
}

async fn app_js() -> HttpResponse {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn style_css() -> HttpResponse {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, content_type))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'",
        ))
        .body(body)
}
