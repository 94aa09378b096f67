//! What every way of authorizing requests shares: the span each request runs
//! in, and the decision after a 401. [`middleware`](crate::middleware) (for
//! reqwest) and [`tower`](crate::tower) (for hyper, tonic and axum clients)
//! differ only in how they send.

use freshen_core::ids::Generation;

use crate::store::Store;
use crate::transport::Transport;
use crate::{Error, Session, Token};

/// Puts `token` in the `Authorization` header (marked sensitive).
pub(crate) fn authorize(headers: &mut http::HeaderMap, token: &Token) -> Result<(), Error> {
    headers.insert(http::header::AUTHORIZATION, token.authorization()?.clone());
    Ok(())
}

/// The span of one authorized request: the generation of the token it
/// carried (the fresh one after a retry) and whether a 401 made it retry.
pub(crate) fn request_span() -> tracing::Span {
    tracing::info_span!("authorized_request", generation = tracing::field::Empty, retried = tracing::field::Empty)
}

/// Records the token a request was answered with, once it is known.
pub(crate) fn record_answer(generation: Generation, retried: bool) {
    tracing::Span::current().record("generation", tracing::field::display(generation)).record("retried", retried);
}

/// After a resource answered 401 to a request that carried `used`: its copy
/// (made before it was sent) and the token to send the copy with, once. A
/// request without a copy (its body cannot be sent twice) tells the session
/// the token was refused and fails with [`Error::UnauthorizedNotRetried`].
pub(crate) async fn prepare_retry<T: Transport, S: Store, R>(
    session: &Session<T, S>,
    used: &Token,
    copy: Option<R>,
) -> Result<(R, Token), Error> {
    let Some(copy) = copy else {
        session.report_unauthorized(used);
        return Err(Error::UnauthorizedNotRetried);
    };
    Ok((copy, session.retry_token(used).await?))
}
