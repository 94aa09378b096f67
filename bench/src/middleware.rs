//! The middleware comparison: one request through raw reqwest, through an
//! empty reqwest-middleware chain, through `AuthMiddleware`, through
//! `AuthorizedClient` and through the least any middleware with the same
//! retry must do ([`StaticRetrying`]), timed in interleaved rounds and
//! counted in instructions.

use std::time::{Duration, Instant};

use freshen::core::oauth::Client;
use freshen::middleware::{AuthMiddleware, AuthorizedClient};
use freshen::store::MemoryStore;
use freshen::transport::ReqwestTransport;
use freshen::{Config, Session, system_clock};
use freshen_sim::authority::AuthorityConfig;
use freshen_sim::http::{Server, paths};

use crate::{BenchError, CLIENT, blob, instructions_per_operation, median};

/// The ways a request reaches the protected resource in [`middleware`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    /// Plain reqwest with a static `Authorization` header: the baseline.
    Raw,
    /// reqwest-middleware with no middleware at all, and the static header:
    /// what the middleware framework costs by itself.
    EmptyChain,
    /// reqwest-middleware with freshen's `AuthMiddleware`.
    AuthMiddleware,
    /// freshen's own `AuthorizedClient`, without reqwest-middleware.
    AuthorizedClient,
    /// reqwest-middleware with [`StaticRetrying`]: the floor of any
    /// middleware that authorizes a request and can retry it once after a 401.
    StaticRetrying,
}

impl Arm {
    /// Every arm, the baseline first.
    pub const ALL: [Self; 5] =
        [Self::Raw, Self::EmptyChain, Self::AuthMiddleware, Self::AuthorizedClient, Self::StaticRetrying];

    /// The arm named `name` (as `run_operations` takes it).
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|arm| arm.name() == name)
    }

    /// Its name in figures and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::EmptyChain => "empty_chain",
            Self::AuthMiddleware => "auth_middleware",
            Self::AuthorizedClient => "authorized_client",
            Self::StaticRetrying => "static_retrying",
        }
    }
}

/// One client per [`Arm`], all against one loopback server, with a session
/// that holds a token valid for the whole run.
pub(crate) struct Arms {
    raw: reqwest::Client,
    empty: reqwest_middleware::ClientWithMiddleware,
    through: reqwest_middleware::ClientWithMiddleware,
    authorized: AuthorizedClient<ReqwestTransport, MemoryStore>,
    static_retrying: reqwest_middleware::ClientWithMiddleware,
    url: String,
    header: reqwest::header::HeaderValue,
    _server: Server,
}

impl Arms {
    pub(crate) async fn new() -> Result<Self, BenchError> {
        let mut authority = AuthorityConfig::default();
        authority.access_ttl = Duration::from_secs(3600);
        let server = Server::loopback(authority, 1).await?;
        let issued = server.state().login(CLIENT);
        let access = issued.access_token.expose_secret().to_owned();
        let expires_at = system_clock().saturating_add(Duration::from_secs(3000));
        let stored = blob(&access, issued.refresh_token.expose_secret(), expires_at)?;
        let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT));
        let header = reqwest::header::HeaderValue::from_str(&format!("Bearer {access}"))?;
        let session = Session::start(config, ReqwestTransport::new()?, MemoryStore::holding(&stored))?;
        Ok(Self {
            raw: reqwest::Client::new(),
            empty: reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build(),
            through: reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(AuthMiddleware::new(session.clone()))
                .build(),
            authorized: AuthorizedClient::new(reqwest::Client::new(), session),
            static_retrying: reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(StaticRetrying(header.clone()))
                .build(),
            url: server.url(paths::RESOURCE),
            header,
            _server: server,
        })
    }

    /// One request through `arm`, read to its end: its latency in µs.
    pub(crate) async fn once(&self, arm: Arm) -> Result<f64, BenchError> {
        let (url, auth) = (&self.url, reqwest::header::AUTHORIZATION);
        let started = Instant::now();
        let response = match arm {
            Arm::Raw => self.raw.get(url).header(auth, self.header.clone()).send().await?,
            Arm::EmptyChain => self.empty.get(url).header(auth, self.header.clone()).send().await?,
            Arm::AuthMiddleware => self.through.get(url).send().await?,
            Arm::AuthorizedClient => {
                self.authorized.execute(self.authorized.request(reqwest::Method::GET, url).build()?).await?
            }
            Arm::StaticRetrying => self.static_retrying.get(url).send().await?,
        };
        let ok = response.status().is_success();
        response.bytes().await?;
        if ok { Ok(started.elapsed().as_secs_f64() * 1e6) } else { Err(format!("{arm:?} was refused").into()) }
    }
}

/// Median request latency, in microseconds, of each [`Arm`] (in
/// [`Arm::ALL`]'s order), all against the same loopback server, interleaved
/// request by request with the order rotating, after a warm-up: one set of
/// medians for each of `rounds` rounds, which share the `requests` per arm.
pub async fn middleware(requests: usize, rounds: usize) -> Result<Vec<[f64; 5]>, BenchError> {
    let arms = Arms::new().await?;
    for _ in 0..requests / 10 {
        for arm in Arm::ALL {
            arms.once(arm).await?;
        }
    }
    let mut medians = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let mut samples: [Vec<f64>; 5] = Default::default();
        for i in 0..requests / rounds.max(1) {
            // Rotate the order, so no arm always follows the same other.
            for k in 0..Arm::ALL.len() {
                let index = (i + k) % Arm::ALL.len();
                if let (Some(arm), Some(sample)) = (Arm::ALL.get(index), samples.get_mut(index)) {
                    sample.push(arms.once(*arm).await?);
                }
            }
        }
        medians.push(samples.map(|mut s| median(&mut s)));
    }
    Ok(medians)
}

/// User-space instructions per request through `arm`, client and loopback
/// server together (callgrind; see [`instructions_per_operation`]): the
/// middleware comparison without the machine's noise. `None` without valgrind.
pub fn request_instructions(arm: Arm) -> Result<Option<f64>, BenchError> {
    instructions_per_operation(&format!("request_{}", arm.name()), 100, 600)
}

/// The least a middleware must do to authorize a request and keep the one
/// retry after a 401 that `AuthMiddleware` offers: copy the request before
/// it goes out, put a header on it (a static one, so no session is asked),
/// pass it down the chain, and send the copy if the answer is 401. What it
/// costs beyond the empty chain is the floor of `middleware_own_*`.
#[derive(Debug)]
pub(crate) struct StaticRetrying(pub(crate) reqwest::header::HeaderValue);

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for StaticRetrying {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let copy = request.try_clone();
        let mut request = request;
        request.headers_mut().insert(reqwest::header::AUTHORIZATION, self.0.clone());
        let response = next.clone().run(request, extensions).await?;
        match copy {
            Some(mut copy) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                copy.headers_mut().insert(reqwest::header::AUTHORIZATION, self.0.clone());
                next.run(copy, extensions).await
            }
            _ => Ok(response),
        }
    }
}
