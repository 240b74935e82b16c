//! The web page (`GET /`): its files, embedded in the binary, the login that gives the
//! page its session, and the security headers every answer carries.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::http::{linger, ApiError, AppState};
use super::session;

/// The page's files: path, content type, contents.
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_str!("../../web/app.css"),
    ),
    (
        "/icon.svg",
        "image/svg+xml",
        include_str!("../../web/icon.svg"),
    ),
];

/// The page's paths, for the router.
pub fn asset_paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(path, _, _)| *path)
}

/// `GET` of one of the page's files. They hold no data (that comes from the API, which
/// needs the session), so they are served without one.
pub async fn asset(req: Request) -> Response {
    let path = req.uri().path();
    let Some((_, content_type, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let headers = [
        (header::CONTENT_TYPE, *content_type),
        // Small, and replaced with the binary: always asked again.
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, *body).into_response()
}

/// The headers of every answer: no script, style or image from elsewhere and no inline
/// script (an injected `<script>` does not run), no framing (clickjacking), no
/// `Referer` leaking the board's address, no content sniffing.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// `GET /session`: whether this browser may use the API (a session, or no token at
/// all), so that the page asks for the token instead of drawing a wall of 401s.
pub async fn session_info(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let token = st.token.is_some();
    let authenticated = !token || st.sessions.check(&headers);
    let cameras: Vec<&str> = if authenticated {
        st.cameras.iter().map(|c| c.name.as_str()).collect()
    } else {
        Vec::new()
    };
    let body = json!({
        "token_required": token,
        "authenticated": authenticated,
        "cameras": cameras,
        "collecting": authenticated && !st.queues.is_empty(),
    });
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    token: String,
}

/// `POST /login` with `{"token": "..."}`: the API token, once, for a session cookie.
pub async fn login(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let Some(token) = &st.token else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_token",
            "this server has no token: the page needs no login",
        ));
    };
    // A login from another site would put the victim's browser in the attacker's session.
    if let Err(why) = session::same_origin(req.headers()) {
        linger(req).await;
        return Err(ApiError::new(StatusCode::FORBIDDEN, "foreign_origin", why));
    }
    let https = req
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|o| o.as_bytes().starts_with(b"https:"));
    let body = axum::body::to_bytes(req.into_body(), 4096)
        .await
        .map_err(|e| bad_login(format!("reading the body: {e}")))?;
    let Login { token: given } = serde_json::from_slice(&body)
        .map_err(|e| bad_login(format!("expected {{\"token\": \"...\"}}: {e}")))?;
    let header = format!("Bearer {}", given.trim());
    if let Err(refusal) = token.check(Some(header.as_bytes())) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            match refusal {
                super::auth::Refusal::Wrong => "wrong token",
                _ => "no token given",
            },
        ));
    }
    let id = st.sessions.issue().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("no randomness for a session id: {e}"),
        )
    })?;
    let cookie = session::set_cookie(&id, https);
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

fn bad_login(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// `POST /logout`: ends this browser's session.
pub async fn logout(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if session::same_origin(&headers).is_err() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "foreign_origin",
            "cross-origin logout refused",
        )
        .into_response();
    }
    st.sessions.revoke(&headers);
    let cookie = session::clear_cookie();
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_fits_its_budget_and_its_policy() {
        let total: usize = ASSETS.iter().map(|(_, _, body)| body.len()).sum();
        assert!(
            total <= 100 * 1024,
            "the page is {total} bytes, over 100 KB"
        );
        let html = ASSETS[0].2;
        // default-src 'self' blocks inline script, inline handlers and style attributes:
        // the page must not need them.
        for inline in ["<script>", " onclick=", " onload=", " style=", "<style"] {
            assert!(!html.contains(inline), "index.html has {inline:?}");
        }
        let js = ASSETS[1].2;
        for risky in ["innerHTML", "eval(", "setAttribute('style'"] {
            assert!(!js.contains(risky), "app.js uses {risky}");
        }
    }
}
