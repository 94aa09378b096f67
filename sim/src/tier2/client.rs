//! The client side of tier 2: the transport over turmoil's network (with
//! its connection pacing) and the simulated store each app's processes share.

use super::*;

/// A client gives up on a request (and its connection) after this long, as any
/// HTTP client with a timeout does. Longer than the sessions' own request
/// timeout, so refreshes are governed by the session, as in an app.
pub(super) const CLIENT_REQUEST_DEADLINE: Duration = Duration::from_secs(15);
/// The server's backlog: connections turmoil queues for it to accept.
pub(super) const SERVER_BACKLOG: usize = 8192;
/// The pacer's window: a client socket's longest life, then the server's
/// longest hold of the same connection, and a second for the latencies.
pub(super) const PACER_WINDOW: Duration =
    Duration::from_secs(CLIENT_REQUEST_DEADLINE.as_secs() + SERVER_CONNECTION_DEADLINE.as_secs() + 1);

/// Paces one client host's new connections so that no port is handed out
/// again while the server may still hold its previous connection.
///
/// turmoil assigns ports round robin, skipping ports in use. For port `p`,
/// assigned at `t1`, to be assigned again at `t2`, the allocator must pass all
/// `R` ports: each either assigned (a connect in `[t1, t2]`) or skipped (in use,
/// so opened at most [`CLIENT_REQUEST_DEADLINE`] before). With fewer than
/// [`PACER_WINDOW`] between `t1` and `t2`, all of them were opened within two
/// windows, so `R <= 2 * 2 * per_window`, which `per_window` (a quarter of
/// `R`, rounded down) makes false. Hence `t2 - t1 >= PACER_WINDOW`, by when the server has dropped its
/// side ([`SERVER_CONNECTION_DEADLINE`]) and its FIN has arrived. Ordinary
/// worlds open far fewer connections (tier 2's default campaign never reaches
/// the bound), so the pacer only ever delays a pathological burst.
///
/// It also bounds the connections a host has open at once, as an HTTP
/// client's pool does: turmoil queues every connection the server has not
/// accepted yet and panics once [`SERVER_BACKLOG`] are queued (a real stack
/// drops the excess and the clients retry), and a host that released
/// thousands of waiting callers in one instant, each with its own request,
/// could queue that many within a tick. The hosts' bounds add up to less
/// than the backlog.
#[derive(Debug)]
pub(super) struct ConnectPacer {
    /// Connections this host may have open at once.
    pub(super) open: tokio::sync::Semaphore,
    /// The most connections per window.
    pub(super) per_window: u32,
    /// The current window's start and the connections opened in it.
    pub(super) window: Mutex<(Duration, u32)>,
    /// Connections opened in all.
    pub(super) connects: AtomicU64,
}

impl ConnectPacer {
    /// A pacer for one of `hosts` client hosts whose ephemeral ports are
    /// `first..=last`.
    pub(super) fn for_ports((first, last): (u16, u16), hosts: usize) -> Self {
        let ports = u32::from(last.saturating_sub(first)) + 1;
        Self {
            open: tokio::sync::Semaphore::new((SERVER_BACKLOG / hosts.max(1)).max(1)),
            per_window: ((ports - 1) / 4).max(1),
            window: Mutex::new((Duration::ZERO, 0)),
            connects: AtomicU64::new(0),
        }
    }

    /// Waits, if the window's connections are spent, until the next window.
    pub(super) async fn admit(&self) {
        loop {
            let now = turmoil::sim_elapsed().unwrap_or_default();
            let wait = match self.window.lock() {
                Ok(mut window) => {
                    if now >= window.0 + PACER_WINDOW {
                        *window = (now, 0);
                    }
                    if window.1 < self.per_window {
                        window.1 += 1;
                        self.connects.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    window.0 + PACER_WINDOW - now
                }
                Err(_) => return,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// HTTP/1.1 over turmoil: one connection per request, so a lost connection
/// loses exactly one answer.
pub(super) async fn send(
    pacer: &ConnectPacer,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<Bytes>, TransportFailure> {
    let _open = pacer.open.acquire().await.map_err(|_| TransportFailure::NotSent)?;
    pacer.admit().await;
    match tokio::time::timeout(CLIENT_REQUEST_DEADLINE, exchange(request)).await {
        Ok(answer) => answer,
        Err(_) => Err(TransportFailure::Interrupted),
    }
}

pub(super) async fn exchange(request: Request<Full<Bytes>>) -> Result<http::Response<Bytes>, TransportFailure> {
    let stream = turmoil::net::TcpStream::connect((AUTHORITY, PORT)).await.map_err(|_| TransportFailure::NotSent)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|_| TransportFailure::NotSent)?;
    // The connection task owns the socket: it too ends by the deadline.
    tokio::spawn(tokio::time::timeout(CLIENT_REQUEST_DEADLINE, connection));
    let response = sender.send_request(request).await.map_err(|_| TransportFailure::Interrupted)?;
    let (parts, body) = response.into_parts();
    let body =
        Limited::new(body, MAX_BODY_BYTES + 1).collect().await.map_err(|_| TransportFailure::Interrupted)?.to_bytes();
    Ok(http::Response::from_parts(parts, body))
}

/// freshen's transport over turmoil, paced with its host's other connections.
#[derive(Clone, Debug)]
pub(super) struct TurmoilTransport {
    pub(super) pacer: Arc<ConnectPacer>,
}

impl Transport for TurmoilTransport {
    async fn post_form(&self, url: &str, form: &FormRequest) -> Result<HttpResponse, TransportError> {
        let path = url.rsplit_once(AUTHORITY).map_or(url, |(_, path)| path);
        let mut request =
            Request::post(path).header(header::HOST, AUTHORITY).header(header::CONTENT_TYPE, FormRequest::CONTENT_TYPE);
        if let Some(proof) = form.expose_dpop() {
            request = request.header("dpop", proof);
        }
        let request = request
            .body(Full::new(Bytes::from(form.expose_body().to_owned())))
            .map_err(|_| TransportFailure::NotSent)?;
        let response = send(&self.pacer, request).await?;
        let headers = response.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()));
        Ok(HttpResponse::new(response.status().as_u16(), headers.collect::<Vec<_>>(), response.body().to_vec()))
    }
}
