//! The transport check passes freshen's own transport and catches broken
//! ones: each planted transport below breaks one rule, and the check must
//! name that rule.

use freshen::transport::{ReqwestTransport, TransportError};

use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

#[test]
fn the_reqwest_transport_passes() {
    let transport = ReqwestTransport::new().expect("a client");
    let report = runtime().block_on(check_transport(transport)).expect("it holds");
    assert_eq!(report, TransportReport { rules: 6, requests: 14 });
}

/// freshen's transport with one flaw planted.
#[derive(Clone, Debug)]
struct Planted {
    inner: ReqwestTransport,
    flaw: Flaw,
}

#[derive(Clone, Copy, Debug)]
enum Flaw {
    /// Turns every status of 400 or more into an error (`error_for_status()`).
    ErrorForStatus,
    /// Keeps no header.
    DropsHeaders,
    /// Calls every failure a timeout.
    EveryFailureATimeout,
    /// Hands back the whole body, however large.
    WholeBody,
}

impl Transport for Planted {
    async fn post_form(&self, url: &str, form: &FormRequest) -> Result<HttpResponse, TransportError> {
        if let Flaw::WholeBody = self.flaw {
            let mut request = reqwest::Client::new()
                .post(url)
                .header("content-type", FormRequest::CONTENT_TYPE)
                .body(form.expose_body().to_owned());
            if let Some(authorization) = form.expose_authorization() {
                request = request.header("authorization", authorization);
            }
            let response = request.send().await.map_err(|_| TransportFailure::NotSent)?;
            let status = response.status().as_u16();
            let headers: Vec<_> =
                response.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
            let body = response.bytes().await.map_err(|_| TransportFailure::Interrupted)?;
            return Ok(HttpResponse::new(status, headers, body.to_vec()));
        }
        let outcome = self.inner.post_form(url, form).await;
        match (self.flaw, outcome) {
            (Flaw::ErrorForStatus, Ok(response)) if response.status >= 400 => Err(TransportFailure::Interrupted.into()),
            (Flaw::DropsHeaders, Ok(response)) => Ok(HttpResponse::new(response.status, [], response.body.clone())),
            (Flaw::EveryFailureATimeout, Err(_)) => Err(TransportFailure::Timeout.into()),
            (_, outcome) => outcome,
        }
    }
}

fn broken_rule(flaw: Flaw) -> &'static str {
    let transport = Planted { inner: ReqwestTransport::new().expect("a client"), flaw };
    runtime().block_on(check_transport(transport)).expect_err("caught").rule
}

#[test]
fn a_transport_that_turns_error_statuses_into_failures_is_caught() {
    assert_eq!(broken_rule(Flaw::ErrorForStatus), "an answer is an answer whatever its status");
}

#[test]
fn a_transport_that_drops_headers_is_caught() {
    assert_eq!(broken_rule(Flaw::DropsHeaders), "Retry-After, Date and WWW-Authenticate come through");
}

#[test]
fn a_transport_that_buffers_a_whole_huge_body_is_caught() {
    assert_eq!(broken_rule(Flaw::WholeBody), "a body over the limit is cut at one byte more");
}

#[test]
fn a_transport_that_calls_a_refused_connection_a_timeout_is_caught() {
    assert_eq!(broken_rule(Flaw::EveryFailureATimeout), "a refused connection fails as not sent");
}
