//! The server's routes, one function each: what [`answer`](super::answer)
//! does once it knows the method and the path.

use bytes::Bytes;
use freshen_core::time::MonoTime;
use freshen_core::token::AccessToken;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use secrecy::ExposeSecret;

use super::{Fields, State, oauth_error, paths, respond};
use crate::authority::device::Decision;
use crate::authority::dpop::{self, InvalidProof};
use crate::authority::{Issued, Proof, Refusal};

fn field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields.get(name).map_or("", String::as_str)
}

/// The token endpoint: the refresh, authorization code, device code and
/// password grants, each with a DPoP proof or without (RFC 9449): a grant
/// that starts a family binds it to the proof's key; a refresh of a bound
/// family needs a proof by that key. With nonces on, every answer to a
/// proof names the current nonce.
pub(super) fn token(state: &State, now: MonoTime, form: &Fields, headers: &http::HeaderMap) -> Response<Full<Bytes>> {
    let proof = match proven(state, now, headers) {
        Ok(proof) => proof,
        Err(refused) => return *refused,
    };
    let mut response = grant(state, now, form, proof.as_ref());
    if let Some(nonce) = proof.as_ref().and_then(|_| state.authority().dpop_nonce(now)) {
        with_nonce(&mut response, &nonce);
    }
    response
}

/// The request's DPoP proof, checked (`None` when it has none), or the answer
/// that refuses it: a stale one gets a nonce challenge where the server has
/// nonces (a nonce vouches for a proof's age), as oidc-provider answers it.
fn proven(state: &State, now: MonoTime, headers: &http::HeaderMap) -> Result<Option<Proof>, Refused> {
    let Some(header) = headers.get("dpop") else { return Ok(None) };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let url = format!("http://{host}{}", paths::TOKEN);
    let nonce = state.authority().dpop_nonce(now);
    match dpop::verify(header.as_bytes(), "POST", &url, state.wall(), None) {
        Ok(proof) => Ok(Some(proof)),
        Err(InvalidProof::Stale) if nonce.is_some() => {
            let mut challenge = oauth_error(StatusCode::BAD_REQUEST, Refusal::UseDpopNonce.code());
            with_nonce(&mut challenge, nonce.as_deref().unwrap_or_default());
            Err(Box::new(challenge))
        }
        Err(_) => Err(Box::new(oauth_error(StatusCode::BAD_REQUEST, Refusal::DpopProofReplayed.code()))),
    }
}

fn with_nonce(response: &mut Response<Full<Bytes>>, nonce: &str) {
    if let Ok(value) = header::HeaderValue::from_str(nonce) {
        response.headers_mut().insert("dpop-nonce", value);
    }
}

/// A resource server's DPoP nonce challenge (RFC 9449 §9): a 401 naming
/// `use_dpop_nonce`, with the nonce to put in the next proof.
pub fn resource_nonce_challenge(nonce: &str) -> Response<Full<Bytes>> {
    let mut challenge = respond(StatusCode::UNAUTHORIZED, "text/plain", "");
    let value = header::HeaderValue::from_static("DPoP error=\"use_dpop_nonce\"");
    challenge.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    with_nonce(&mut challenge, nonce);
    challenge
}

/// A grant that starts a family (a login) with a proof binds it to the
/// proof's key, once the proof's nonce and id are good.
fn bound_login(
    state: &State,
    now: MonoTime,
    proof: Option<&Proof>,
    login: impl FnOnce(&mut crate::authority::Authority) -> Result<Issued, Refused>,
) -> Result<Issued, Refused> {
    let mut authority = state.authority();
    if let Some(proof) = proof {
        authority.check_proof(now, proof).map_err(refusal_response)?;
    }
    let mut issued = login(&mut authority)?;
    if let Some(proof) = proof {
        authority.bind(now, issued.family, &proof.jkt);
        issued.dpop_bound = true;
    }
    Ok(issued)
}

fn refusal_response(refusal: Refusal) -> Refused {
    Box::new(respond(StatusCode::BAD_REQUEST, "application/json", Refusal::to_json(refusal)))
}

/// An answer that refuses a request before any grant (boxed: it is large).
type Refused = Box<Response<Full<Bytes>>>;

fn grant(state: &State, now: MonoTime, form: &Fields, proof: Option<&Proof>) -> Response<Full<Bytes>> {
    let client = field(form, "client_id");
    let issued = match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => state.authority().refresh(now, client, None, field(form, "refresh_token"), proof),
        Some("password") => match bound_login(state, now, proof, |a| Ok(a.login(now, client, None))) {
            Ok(issued) => Ok(issued),
            Err(refused) => return *refused,
        },
        Some("authorization_code") => {
            let (code, redirect_uri) = (field(form, "code"), field(form, "redirect_uri"));
            let redeemed = bound_login(state, now, proof, |a| {
                a.redeem_code(now, client, code, redirect_uri, field(form, "code_verifier"))
                    .map_err(|_| Box::new(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant")))
            });
            match redeemed {
                Ok(issued) => Ok(issued),
                Err(refused) => return *refused,
            }
        }
        Some(freshen_core::device::GRANT_TYPE) => {
            let polled = bound_login(state, now, proof, |a| {
                a.poll_device_login(now, client, field(form, "device_code"))
                    .map_err(|refusal| Box::new(oauth_error(StatusCode::BAD_REQUEST, refusal.code())))
            });
            match polled {
                Ok(issued) => Ok(issued),
                Err(refused) => return *refused,
            }
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    };
    match issued {
        Ok(issued) => respond(StatusCode::OK, "application/json", issued.to_json().expose_secret().to_owned()),
        Err(refusal) => *refusal_response(refusal),
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

/// A protected resource: 200 for a valid token, 401 otherwise (always on
/// [`paths::ALWAYS_401`]). A token of a family bound by DPoP is valid only
/// as `Authorization: DPoP` with a proof of this request by the family's key
/// (its `ath` naming the token); others only as bearer tokens.
pub(super) fn resource(
    state: &State,
    now: MonoTime,
    method: &http::Method,
    path: &str,
    headers: &http::HeaderMap,
) -> Response<Full<Bytes>> {
    state.count_resource_request(|counts| counts.requests += 1);
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (token, as_dpop) = match (authorization.strip_prefix("Bearer "), authorization.strip_prefix("DPoP ")) {
        (Some(token), _) => (token, false),
        (None, Some(token)) => (token, true),
        (None, None) => ("", false),
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let url = format!("http://{host}{path}");
    let (nonce, nonce_required) = {
        let authority = state.authority();
        (authority.dpop_nonce(now), authority.config().resource_requires_dpop_nonce)
    };
    let proof = headers.get("dpop").map(|proof| {
        dpop::verify(proof.as_bytes(), method.as_str(), &url, state.wall(), Some(&AccessToken::new(token)))
    });
    if let (Some(proof), Some(nonce)) = (&proof, &nonce) {
        // As at the token endpoint: a nonce vouches for a proof's age, so a
        // stale proof is asked for one, and a proof that names one must
        // name a fresh one. A server that requires it asks every proof.
        let challenged = match proof {
            Err(InvalidProof::Stale) => true,
            Ok(proof) => {
                (nonce_required || proof.nonce.is_some())
                    && !state.authority().dpop_nonce_is_fresh(now, proof.nonce.as_deref())
            }
            Err(_) => false,
        };
        if challenged {
            state.count_resource_request(|counts| counts.nonce_challenges += 1);
            return resource_nonce_challenge(nonce);
        }
    }
    let proven = proof.is_some();
    let mut response = judge_resource_request(state, now, path, token, as_dpop, proof.and_then(Result::ok));
    if nonce_required
        && proven
        && let Some(nonce) = &nonce
    {
        with_nonce(&mut response, nonce);
    }
    response
}

/// The resource's answer to a request whose proof (if any) is not stale:
/// 200 for a valid token presented as its family requires, 401 otherwise.
fn judge_resource_request(
    state: &State,
    now: MonoTime,
    path: &str,
    token: &str,
    as_dpop: bool,
    proof: Option<Proof>,
) -> Response<Full<Bytes>> {
    let replayed = proof
        .as_ref()
        .is_some_and(|proof| state.resource_proofs.lock().is_ok_and(|mut seen| !seen.first_use(now, &proof.jti)));
    if replayed {
        let mut refused = respond(StatusCode::UNAUTHORIZED, "text/plain", "");
        let value = header::HeaderValue::from_static("DPoP error=\"invalid_dpop_proof\"");
        refused.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        return refused;
    }
    let proven_by = proof.map(|proof| proof.jkt);
    let valid = path == paths::RESOURCE && {
        let mut authority = state.authority();
        match authority.validate(now, token) {
            Ok(family) => match authority.family_jkt(family) {
                None => !as_dpop,
                Some(jkt) => as_dpop && proven_by.as_deref() == Some(jkt),
            },
            Err(_) => false,
        }
    };
    if valid {
        return respond(StatusCode::OK, "text/plain", "hello");
    }
    let mut response = respond(StatusCode::UNAUTHORIZED, "text/plain", "");
    let challenge = if as_dpop { "DPoP error=\"invalid_token\"" } else { "Bearer error=\"invalid_token\"" };
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static(challenge));
    response
}
