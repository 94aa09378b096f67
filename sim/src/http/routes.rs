//! The server's routes, one function each: what [`answer`](super::answer)
//! does once it knows the method and the path.

use bytes::Bytes;
use freshen_core::time::MonoTime;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use secrecy::ExposeSecret;

use super::{Fields, State, oauth_error, paths, respond};
use crate::authority::Refusal;
use crate::authority::device::Decision;

fn field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields.get(name).map_or("", String::as_str)
}

/// The token endpoint: the refresh, authorization code, device code and password grants.
pub(super) fn token(state: &State, now: MonoTime, form: &Fields) -> Response<Full<Bytes>> {
    let client = field(form, "client_id");
    let issued = match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => state.authority().refresh(now, client, None, field(form, "refresh_token")),
        Some("password") => Ok(state.authority().login(now, client, None)),
        Some("authorization_code") => {
            let (code, redirect_uri) = (field(form, "code"), field(form, "redirect_uri"));
            match state.authority().redeem_code(now, client, code, redirect_uri, field(form, "code_verifier")) {
                Ok(issued) => Ok(issued),
                Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
            }
        }
        Some(freshen_core::device::GRANT_TYPE) => {
            match state.authority().poll_device_login(now, client, field(form, "device_code")) {
                Ok(issued) => Ok(issued),
                Err(refusal) => return oauth_error(StatusCode::BAD_REQUEST, refusal.code()),
            }
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    };
    match issued {
        Ok(issued) => respond(StatusCode::OK, "application/json", issued.to_json().expose_secret().to_owned()),
        Err(refusal) => respond(StatusCode::BAD_REQUEST, "application/json", Refusal::to_json(refusal)),
    }
}

/// RFC 7009 revocation.
pub(super) fn revoke(state: &State, now: MonoTime, form: &Fields) -> Response<Full<Bytes>> {
    match state.authority().revoke(now, field(form, "client_id"), field(form, "token")) {
        // RFC 7009 §2.2: 200 whether or not the token was known.
        Ok(()) => respond(StatusCode::OK, "text/plain", ""),
        Err(_) => oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
    }
}

/// The authorization endpoint: approves at once and sends the browser back
/// to a loopback `redirect_uri` with a code (or an error) and the `state`.
pub(super) fn authorize(state: &State, now: MonoTime, query: &Fields) -> Response<Full<Bytes>> {
    let redirect_uri = field(query, "redirect_uri");
    // Only loopback redirects (RFC 8252 §7.3): this server registers no others.
    if !redirect_uri.starts_with("http://127.0.0.1:") && !redirect_uri.starts_with("http://[::1]:") {
        return respond(StatusCode::BAD_REQUEST, "text/plain", "redirect_uri must be a loopback address");
    }
    let mut back = form_urlencoded::Serializer::new(String::new());
    let client = field(query, "client_id");
    if field(query, "response_type") != "code" || field(query, "code_challenge_method") != "S256" || client.is_empty() {
        back.append_pair("error", "invalid_request");
    } else {
        let code = state.authority().issue_code(now, client, redirect_uri, field(query, "code_challenge"));
        back.append_pair("code", &code);
    }
    back.append_pair("state", field(query, "state"));
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{separator}{}", back.finish());
    match header::HeaderValue::from_str(&location) {
        Ok(location) => {
            let mut response = respond(StatusCode::FOUND, "text/plain", "");
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Err(_) => respond(StatusCode::BAD_REQUEST, "text/plain", "redirect_uri is not a valid header value"),
    }
}

/// RFC 8628 device authorization; the verification page is on `host`.
pub(super) fn device_authorization(state: &State, now: MonoTime, form: &Fields, host: &str) -> Response<Full<Bytes>> {
    let start = state.authority().start_device_login(now, field(form, "client_id"));
    let verification_uri = format!("http://{host}{}", paths::DEVICE);
    let body = serde_json::json!({
        "device_code": start.device_code.expose_secret(),
        "user_code": start.user_code,
        "verification_uri": verification_uri,
        "verification_uri_complete": format!("{verification_uri}?user_code={}", start.user_code),
        "expires_in": start.expires_in.as_secs(),
        "interval": start.interval.as_secs(),
    });
    respond(StatusCode::OK, "application/json", body.to_string())
}

/// The user's side of a device login: approve or deny a user code.
pub(super) fn device_decision(state: &State, now: MonoTime, form: &Fields) -> Response<Full<Bytes>> {
    let decision = match form.get("decision").map(String::as_str) {
        Some("approve") => Decision::Approve,
        Some("deny") => Decision::Deny,
        _ => return respond(StatusCode::BAD_REQUEST, "text/plain", "decision must be approve or deny"),
    };
    if state.authority().decide_device_login(now, field(form, "user_code"), decision) {
        respond(StatusCode::OK, "text/plain", "done: return to your device")
    } else {
        respond(StatusCode::NOT_FOUND, "text/plain", "no pending login has this code")
    }
}

/// A protected resource: 200 for a valid bearer token, 401 otherwise
/// (always on [`paths::ALWAYS_401`]).
pub(super) fn resource(state: &State, now: MonoTime, path: &str, headers: &http::HeaderMap) -> Response<Full<Bytes>> {
    if let Ok(mut hits) = state.resource_hits.lock() {
        *hits += 1;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if path == paths::RESOURCE && state.authority().validate(now, bearer).is_ok() {
        return respond(StatusCode::OK, "text/plain", "hello");
    }
    let mut response = respond(StatusCode::UNAUTHORIZED, "text/plain", "");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer error=\"invalid_token\""));
    response
}
