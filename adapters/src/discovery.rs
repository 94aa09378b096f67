//! A server's endpoints from its issuer: authorization server metadata
//! (RFC 8414) and OpenID Connect Discovery 1.0.
//!
//! An app that knows only its server's issuer URL gets a [`Config`] with the
//! token, revocation, authorization and device endpoints filled in, and the
//! issuer set for the login's mix-up defense (RFC 9207):
//!
//! ```no_run
//! # #[cfg(feature = "reqwest")]
//! # async fn run() -> Result<(), freshen::discovery::DiscoveryError> {
//! use freshen::Config;
//! use freshen::core::oauth::Client;
//!
//! let config = Config::discover("https://auth.example.com", Client::public("my-cli")).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The document is fetched once, when the app builds its config; a session
//! never fetches it again. It is untrusted input: its body is cut at
//! [`MAX_BODY_BYTES`], its `issuer`
//! must be exactly the one asked for (RFC 8414 §3.3: otherwise one server
//! could send a client's tokens to another), and every endpoint must be
//! `https` (plain `http` only on a loopback host, for development).

use freshen_core::oauth::{Client, MAX_BODY_BYTES};
use thiserror::Error;

use crate::Config;

/// The RFC 8414 document's well-known path.
const OAUTH_WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";
/// The OpenID Connect Discovery document's well-known path.
const OIDC_WELL_KNOWN: &str = "/.well-known/openid-configuration";
/// How much of an untrusted string an error quotes.
const QUOTED_CHARS: usize = 120;

/// What a server's metadata says that a session uses: its endpoints, for
/// [`ServerMetadata::config`], and whether it takes DPoP proofs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerMetadata {
    issuer: String,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
    authorization_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    dpop_algorithms: Vec<String>,
}

/// Why a server's metadata could not be had.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The issuer is not an `https` URL (or `http` on loopback) without
    /// query or fragment (RFC 8414 §2).
    #[error("the issuer {0:?} is not an https URL without query or fragment (http only on loopback)")]
    InvalidIssuer(String),
    /// Neither well-known document could be fetched.
    #[error("the metadata at {url} could not be fetched")]
    Unreachable {
        /// The document's URL.
        url: String,
        /// The transport's error.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered without a document.
    #[error("the metadata at {url} was answered with status {status}")]
    Status {
        /// The document's URL (the last one tried).
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The document is larger than [`MAX_BODY_BYTES`].
    #[error("the metadata document is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// The document is not a JSON object.
    #[error("the metadata document is not a JSON object")]
    NotJson,
    /// A member the session needs is missing, or is not a string (or, for a
    /// list, not a list of strings).
    #[error("the metadata's `{0}` is missing or of the wrong type")]
    Field(&'static str),
    /// The document names another issuer (RFC 8414 §3.3).
    #[error("the metadata names the issuer {found:?}, not {expected:?}")]
    IssuerMismatch {
        /// The issuer asked for.
        expected: String,
        /// The issuer the document names (cut to 120 characters).
        found: String,
    },
    /// An endpoint is not `https` (or `http` on loopback).
    #[error("the metadata's `{field}` is not an https URL: {url:?}")]
    InsecureEndpoint {
        /// The member.
        field: &'static str,
        /// Its value (cut to 120 characters).
        url: String,
    },
}

impl ServerMetadata {
    /// Reads a metadata document fetched for `issuer`: bounded, and checked
    /// as the [module docs](self) say.
    pub fn parse(body: &[u8], issuer: &str) -> Result<Self, DiscoveryError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(DiscoveryError::TooLarge);
        }
        let document: serde_json::Value = serde_json::from_slice(body).map_err(|_| DiscoveryError::NotJson)?;
        let object = document.as_object().ok_or(DiscoveryError::NotJson)?;
        let text = |field: &'static str| -> Result<Option<&str>, DiscoveryError> {
            match object.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(value) => value.as_str().map(Some).ok_or(DiscoveryError::Field(field)),
            }
        };
        let found = text("issuer")?.ok_or(DiscoveryError::Field("issuer"))?;
        if found != issuer {
            return Err(DiscoveryError::IssuerMismatch { expected: issuer.to_owned(), found: quoted(found) });
        }
        let endpoint = |field: &'static str| -> Result<Option<String>, DiscoveryError> {
            let Some(url) = text(field)? else { return Ok(None) };
            if !secure_url(url) {
                return Err(DiscoveryError::InsecureEndpoint { field, url: quoted(url) });
            }
            Ok(Some(url.to_owned()))
        };
        let algorithms = match object.get("dpop_signing_alg_values_supported") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(values)) => values
                .iter()
                .map(|value| value.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or(DiscoveryError::Field("dpop_signing_alg_values_supported"))?,
            Some(_) => return Err(DiscoveryError::Field("dpop_signing_alg_values_supported")),
        };
        Ok(Self {
            issuer: issuer.to_owned(),
            token_endpoint: endpoint("token_endpoint")?.ok_or(DiscoveryError::Field("token_endpoint"))?,
            revocation_endpoint: endpoint("revocation_endpoint")?,
            authorization_endpoint: endpoint("authorization_endpoint")?,
            device_authorization_endpoint: endpoint("device_authorization_endpoint")?,
            dpop_algorithms: algorithms,
        })
    }

    /// The token endpoint, which every session needs.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// The DPoP proof algorithms the server accepts
    /// (`dpop_signing_alg_values_supported`, RFC 9449 §5.1); empty when it
    /// does not say, or does not support DPoP.
    pub fn dpop_algorithms(&self) -> &[String] {
        &self.dpop_algorithms
    }

    /// Whether the server takes the DPoP proofs freshen signs (ES256).
    pub fn supports_dpop(&self) -> bool {
        self.dpop_algorithms.iter().any(|alg| alg == "ES256")
    }

    /// A session config for `client` at this server: its endpoints and its
    /// issuer. DPoP stays off until the app turns it on
    /// ([`Config::with_dpop`]); [`ServerMetadata::supports_dpop`] says
    /// whether it can.
    pub fn config(&self, client: Client) -> Config {
        let mut config = Config::new(self.token_endpoint.clone(), client).with_issuer(self.issuer.clone());
        config.revocation_endpoint.clone_from(&self.revocation_endpoint);
        config.authorization_endpoint.clone_from(&self.authorization_endpoint);
        config.device_authorization_endpoint.clone_from(&self.device_authorization_endpoint);
        config
    }
}

/// Where `issuer` publishes its metadata, in the order tried: the RFC 8414
/// document (its well-known path goes before the issuer's path), then the
/// OpenID Connect one (after it), which most OpenID providers serve alone.
pub fn metadata_urls(issuer: &str) -> Result<[String; 2], DiscoveryError> {
    let invalid = || DiscoveryError::InvalidIssuer(quoted(issuer));
    let uri: http::Uri = issuer.parse().map_err(|_| invalid())?;
    if !secure_url(issuer) || uri.query().is_some() || issuer.contains('#') {
        return Err(invalid());
    }
    let authority = uri.authority().ok_or_else(invalid)?;
    let scheme = uri.scheme_str().ok_or_else(invalid)?;
    let path = uri.path().trim_end_matches('/');
    Ok([
        format!("{scheme}://{authority}{OAUTH_WELL_KNOWN}{path}"),
        format!("{scheme}://{authority}{path}{OIDC_WELL_KNOWN}"),
    ])
}

/// An endpoint a session would accept at start (`https`, or plain `http`
/// only to a loopback host: the one rule, `check_endpoint`), and without
/// user information, which a server has no reason to publish.
fn secure_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else { return false };
    let user_info = uri.authority().is_some_and(|authority| authority.as_str().contains('@'));
    !user_info && crate::error::check_endpoint("discovered", url, false).is_ok()
}

/// An untrusted string, cut for an error message.
fn quoted(text: &str) -> String {
    text.chars().take(QUOTED_CHARS).collect()
}

#[cfg(feature = "reqwest")]
impl Config {
    /// A config for `client` at the server that `issuer` names, from its
    /// published metadata (see [`discovery`](crate::discovery)); each
    /// request is bounded by 10 s.
    pub async fn discover(issuer: &str, client: Client) -> Result<Self, DiscoveryError> {
        let web = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|error| DiscoveryError::Unreachable { url: issuer.to_owned(), cause: Box::new(error) })?;
        Ok(fetch(&web, issuer).await?.config(client))
    }
}

/// Fetches and reads `issuer`'s metadata over `web` (a client the app
/// configured: proxies, TLS roots, timeouts): the RFC 8414 document, or
/// where the server has none, the OpenID Connect one. "None" is an error
/// status, or a body that is no metadata (a web app's page served for any
/// path); an unreachable server, or a document naming another issuer or an
/// insecure endpoint, ends the search with that error.
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub async fn fetch(web: &reqwest::Client, issuer: &str) -> Result<ServerMetadata, DiscoveryError> {
    let [oauth, oidc] = metadata_urls(issuer)?;
    let first = async { ServerMetadata::parse(&get(web, &oauth).await?, issuer) };
    match first.await {
        Err(
            DiscoveryError::Status { .. }
            | DiscoveryError::NotJson
            | DiscoveryError::Field(_)
            | DiscoveryError::TooLarge,
        ) => ServerMetadata::parse(&get(web, &oidc).await?, issuer),
        found => found,
    }
}

/// The body of a successful GET of `url`, at most `MAX_BODY_BYTES` + 1 bytes.
#[cfg(feature = "reqwest")]
async fn get(web: &reqwest::Client, url: &str) -> Result<Vec<u8>, DiscoveryError> {
    let unreachable = |error: reqwest::Error| DiscoveryError::Unreachable {
        url: url.to_owned(),
        cause: Box::new(error.without_url()),
    };
    let mut response =
        web.get(url).header(http::header::ACCEPT, "application/json").send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(DiscoveryError::Status { url: url.to_owned(), status });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY_BYTES {
            return Err(DiscoveryError::TooLarge);
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests;
