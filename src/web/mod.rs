//! The built-in web console: pages from assets embedded in the binary, a JSON API under
//! `/api/`, live updates by Server-Sent Events, and writes through the command executor.
//!
//! Does: accept HTTP (or HTTPS through rustls on ring), authenticate (`auth`), answer from
//! the console board (`northbound::console`, fed by the engine through the northbound seam)
//! and the health board (`health`), and hand writes to the executor as [`WebCommand`]s.
//! Must not: read devices, write to them, or publish to MQTT itself; every write goes
//! through the executor (range check, write, read-back, ack), logged with origin `web:<user>`.
//!
//! Safety: writes answer 403 unless `web.allow_writes` and the user's role is `operate`; a
//! write with a session cookie needs the session's CSRF token in `X-CSRF-Token` and, when the
//! browser sends one, an `Origin` equal to the console's own; a console without users answers
//! only to a loopback `Host` (no DNS rebinding); failed logins are rate-limited; every response
//! carries CSP (`frame-ancestors 'none'`) and the usual hardening headers.

pub mod auth;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json_, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::executor::{WebCommand, WebRequest};
use crate::model::{CommandAction, Model, Web, WebRole};
use crate::northbound::console::Console;
use auth::{Auth, Denied, Via, Who};

/// The peer address of a connection, put on each of its requests.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

#[derive(Debug)]
struct Inner {
    allow_writes: bool,
    tls: bool,
    auth: Auth,
    console: Arc<Console>,
    commands: mpsc::Sender<WebCommand>,
    started: SystemTime,
    started_mono: Instant,
    shutdown: CancellationToken,
    trend_requests: tokio::sync::Semaphore,
}

type App = Arc<Inner>;

/// The embedded assets: path under `/assets/`, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/web/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/web/style.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/vendor/uplot/uPlot.min.css"),
    ),
    (
        "uPlot-LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/vendor/uplot/LICENSE"),
    ),
];
const INDEX: &str = include_str!("../../assets/web/index.html");

/// The most connections served at once (each open page holds one for its event stream).
const MAX_CONNECTIONS: usize = 64;
/// The most connections one client address holds at once (a single client cannot take all
/// [`MAX_CONNECTIONS`]); one more is closed at once.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
/// A request head must arrive within this long (slowloris)...
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// ...and a request body too: a body still incomplete after this long is answered 408.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections held per client address; a [`PerAddress`] slot gives its count back on drop.
type AddressCounts = Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>;

/// One connection's place in the per-address count.
struct PerAddress {
    counts: AddressCounts,
    ip: IpAddr,
}

impl PerAddress {
    /// A place for one more connection from `ip`, or `None` when it holds
    /// [`MAX_CONNECTIONS_PER_ADDRESS`] already.
    fn take(counts: &AddressCounts, ip: IpAddr) -> Option<Self> {
        let mut c = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = c.entry(ip).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(PerAddress {
            counts: Arc::clone(counts),
            ip,
        })
    }
}

impl Drop for PerAddress {
    fn drop(&mut self) {
        let mut c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

/// The Content-Security-Policy of every response: nothing from elsewhere, no inline script or
/// style, no framing (clickjacking), no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Which of the two TLS files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
}

/// The console's rustls server configuration (ring) from a PEM certificate chain and its PEM
/// private key, as `run` builds it; `check` calls it too, so both refuse the same files
/// (encrypted key, swapped files, a key that does not belong to the certificate).
///
/// # Errors
/// Which file, and what is wrong with it (the file is named in the text).
pub fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, (TlsFile, String)> {
    let certs = crate::outputs::tls::read_certs(cert).map_err(|e| (TlsFile::Cert, e))?;
    let key_der = crate::outputs::tls::read_key(key).map_err(|e| (TlsFile::Key, e))?;
    rustls::ServerConfig::builder_with_provider(crate::outputs::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| (TlsFile::Cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            (
                TlsFile::Key,
                format!(
                    "{} does not go with the certificate {}: {e}",
                    key.display(),
                    cert.display()
                ),
            )
        })
}

/// Start the console of `settings` on its listener, showing `console` and writing through
/// `commands`, until `shutdown`. Returns the bound address (port 0 picks one), also logged.
///
/// # Errors
/// The address cannot be bound, or the TLS certificate or key cannot be read.
pub async fn serve(
    settings: &Web,
    console: Arc<Console>,
    commands: mpsc::Sender<WebCommand>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let tls = match &settings.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            server_tls(cert, key).map_err(|(_, e)| anyhow::Error::msg(e))?,
        ))),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("web listener on {}: {e}", settings.listen))?;
    let addr = listener.local_addr()?;
    let app: App = Arc::new(Inner {
        allow_writes: settings.allow_writes,
        tls: tls.is_some(),
        auth: Auth::new(settings.users.clone()),
        console,
        commands,
        started: SystemTime::now(),
        started_mono: Instant::now(),
        shutdown: shutdown.clone(),
        trend_requests: tokio::sync::Semaphore::new(MAX_TREND_REQUESTS),
    });
    let router = router(app);
    let scheme = if tls.is_some() { "https" } else { "http" };
    crate::events::web_listening(
        &format!("{scheme}://{addr}/"),
        settings.allow_writes,
        settings.users.len(),
    );
    tokio::spawn(accept_loop(listener, tls, router, shutdown));
    Ok(addr)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    let tasks = tokio_util::task::TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address = AddressCounts::default();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    crate::events::web_accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // At most MAX_CONNECTIONS at a time: one more is closed at once.
        let Some(mine) = PerAddress::take(&per_address, peer.ip()) else {
            drop(stream);
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let router = router.clone();
        let tls = tls.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _slot = (slot, mine);
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Peer(peer));
                    let mut r = router.clone();
                    async move {
                        use tower::Service;
                        r.call(req.map(axum::body::Body::new)).await
                    }
                });
            let mut http = hyper::server::conn::http1::Builder::new();
            // A client that sends its request head slowly (slowloris) is cut off.
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            let served = async {
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => http
                                .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                                .await
                                .map_err(|e| e.to_string()),
                            Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                            Err(_) => Err("TLS handshake timed out".into()),
                        }
                    }
                    None => http
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await
                        .map_err(|e| e.to_string()),
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                r = served => if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "web connection ended");
                },
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

fn router(app: App) -> axum::Router {
    let api = axum::Router::new()
        .route("/session", get(session))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/status", get(status))
        .route("/devices", get(devices))
        .route("/points", get(points))
        .route("/trends", get(trends))
        .route("/acks", get(acks))
        .route("/commands", get(commands))
        .route("/command", post(command))
        .route("/write", post(write))
        .route("/events", get(events));
    axum::Router::new()
        .route("/", get(index))
        .route("/assets/:file", get(asset))
        .nest("/api", api)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), guard))
        .with_state(app)
}

/// The message of an error answer, kept on the response for the log.
#[derive(Debug, Clone)]
struct ErrorText(String);

/// Any other path: 404 with a JSON body like every other error.
async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such page or API endpoint")
}

fn error(status: StatusCode, message: &str) -> Response {
    let mut r = (status, Json(json!({"error": message}))).into_response();
    r.extensions_mut().insert(ErrorText(message.to_owned()));
    r
}

fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Every request: a console without users answers only to a loopback `Host` (a web page
/// elsewhere cannot rebind its name to 127.0.0.1 and read the console); `/api/` needs a caller
/// ([`Who`] goes into the request); every response gets the security headers.
async fn guard(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let mut resp = if app.auth.is_open() && !host_is_loopback(req.headers()) {
        error(
            StatusCode::FORBIDDEN,
            "this console has no users and answers only to a loopback host name (127.0.0.1, localhost)",
        )
    } else if req.uri().path().starts_with("/api/") && req.uri().path() != "/api/login" {
        let ip = req
            .extensions()
            .get::<Peer>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
        let authz = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let cookie = session_cookie(req.headers());
        match app.auth.authenticate(ip, authz, cookie.as_deref()) {
            Ok(who) => {
                req.extensions_mut().insert(who);
                next.run(req).await
            }
            Err(d) => denied(d),
        }
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if app.tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    resp
}

fn denied(d: Denied) -> Response {
    match d {
        Denied::Unauthorized => {
            let mut r = error(StatusCode::UNAUTHORIZED, "log in, or send a bearer token");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fieldgate\""),
            );
            r
        }
        Denied::Busy => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "other logins are being checked; try again in a moment",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Denied::Limited(after) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed attempts from this address; wait and try again",
            );
            let secs = after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == auth::COOKIE)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(app: &Inner, id: &str) -> HeaderValue {
    let secure = if app.tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        auth::COOKIE,
        auth::SESSION_LIFETIME.as_secs()
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => ([(header::CONTENT_TYPE, *kind)], *body).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such asset"),
    }
}

fn who(req: &axum::http::Extensions) -> Option<Who> {
    req.get::<Who>().cloned()
}

fn role(r: WebRole) -> &'static str {
    match r {
        WebRole::View => "view",
        WebRole::Operate => "operate",
    }
}

/// `GET /api/session`: who you are, your CSRF token, and whether you may write. On a console
/// without users, the first call makes a session (cookie) for `local`.
async fn session(State(app): State<App>, req: Request) -> Response {
    let Some(who) = who(req.extensions()) else {
        return denied(Denied::Unauthorized);
    };
    let can_write = app.allow_writes && who.role == WebRole::Operate;
    let body = |csrf: Option<&str>| json!({"user": &*who.user, "role": role(who.role), "csrf": csrf, "allow_writes": app.allow_writes, "can_write": can_write, "open": app.auth.is_open()});
    match &who.via {
        Via::Session { csrf } => Json(body(Some(csrf))).into_response(),
        Via::Bearer => Json(body(None)).into_response(),
        Via::Open => {
            let (id, csrf) = app.auth.open_session(Arc::clone(&who.user), who.role);
            let mut r = Json(body(Some(&csrf))).into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, set_cookie(&app, &id));
            r
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct LoginBody {
    user: String,
    password: String,
}

/// `POST /api/login` `{"user", "password"}`: a session cookie and the CSRF token; 401 for a
/// wrong user or password, 429 after too many failures from the address.
async fn login(State(app): State<App>, req: Request) -> Response {
    let ip = req
        .extensions()
        .get::<Peer>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
    // No login from another site's page (login CSRF: the victim logged in as the attacker;
    // or a remote lockout of the victim's address).
    if let Err(r) = json_content(req.headers()) {
        return r;
    }
    if let Err(r) = same_origin(req.headers(), app.tls) {
        return r;
    }
    let bytes = match read_body(req, 16 * 1024).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<LoginBody>(&bytes) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send JSON {\"user\": ..., \"password\": ...}",
        );
    };
    if app.auth.is_open() {
        return error(
            StatusCode::BAD_REQUEST,
            "this console has no users (web.users_file); no login is needed",
        );
    }
    let checker = Arc::clone(&app);
    let result =
        tokio::task::spawn_blocking(move || checker.auth.login(ip, &body.user, &body.password))
            .await;
    match result {
        Ok(Ok(who)) => {
            let (id, csrf) = app.auth.open_session(Arc::clone(&who.user), who.role);
            crate::events::web_login(&who.user, ip, true);
            let mut r = Json(json!({"user": &*who.user, "role": role(who.role), "csrf": csrf}))
                .into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, set_cookie(&app, &id));
            r
        }
        Ok(Err(d)) => denied(d),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the login check failed"),
    }
}

/// `POST /api/logout`: ends the session (CSRF token required) and clears the cookie
/// (`Max-Age=0`).
async fn logout(State(app): State<App>, req: Request) -> Response {
    if let Err(r) = same_origin_and_csrf(&req, app.tls) {
        return r;
    }
    if let Some(id) = session_cookie(req.headers()) {
        app.auth.close_session(&id);
    }
    // The browser forgets the cookie too.
    let secure = if app.tls { "; Secure" } else { "" };
    let mut r = Json(json!({"result": "ok"})).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
        auth::COOKIE
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn uptime(app: &Inner) -> u64 {
    app.started_mono.elapsed().as_secs()
}

/// Device rows of the console board with `status` `quarantined` for a quarantined device, as
/// `/api/devices` says (the board knows the poller's status only).
fn with_quarantine(mut devs: Vec<Json_>) -> Vec<Json_> {
    let health = crate::health::snapshot();
    for d in &mut devs {
        let q = d["name"]
            .as_str()
            .and_then(|n| health.quarantined.get(n).copied())
            .unwrap_or(false);
        if q {
            d["status"] = json!("quarantined");
        }
    }
    devs
}

fn device_rows(app: &Inner, model: &Model) -> Vec<Json_> {
    let health = crate::health::snapshot();
    let statuses = app.console.devices_since(0);
    model
        .devices
        .iter()
        .map(|d| {
            let st = statuses
                .iter()
                .find(|s| s["name"] == *d.name)
                .cloned()
                .unwrap_or_default();
            let link = &model.links[d.link];
            let quarantined = health.quarantined.get(&*d.name).copied().unwrap_or(false);
            let mut status = st["status"].as_str().unwrap_or("unknown").to_owned();
            if quarantined {
                status = "quarantined".into();
            }
            let s7 = match &link.spec {
                crate::model::LinkSpec::S7(s7) => Some(s7),
                _ => None,
            };
            // An S7 device: its ReadVar requests (the engine's register plan is internal).
            let plan: Vec<String> = if let Some(s7) = s7 {
                s7.plan
                    .requests
                    .iter()
                    .map(|r| {
                        let items: Vec<String> = r.items.iter().map(ToString::to_string).collect();
                        format!(
                            "ReadVar {} item(s) at PDU {}: {}",
                            r.items.len(),
                            s7.plan.pdu,
                            items.join("; ")
                        )
                    })
                    .collect()
            } else {
                d.plan
                    .requests
                    .iter()
                    .map(|r| {
                        format!(
                            "FC{:02} unit {} start {} count {} ({})",
                            r.kind.read_function(),
                            d.unit,
                            r.start,
                            r.count,
                            r.kind.name()
                        )
                    })
                    .collect()
            };
            json!({
                "name": &*d.name,
                "link": &*link.name,
                "unit": if s7.is_some() { Json_::Null } else { json!(d.unit) },
                "poll_interval_ms": d.poll_interval.as_millis() as u64,
                "status": status,
                "last_error": st["reason"],
                "since": st["since"],
                "points": d.points.iter().map(|&p| &*model.points[p].full_name).collect::<Vec<_>>(),
                "read_plan": plan,
            })
        })
        .collect()
}

/// `GET /api/status`: version, configuration id, uptime, MQTT, buffer, links, devices.
async fn status(State(app): State<App>) -> Response {
    let model = app.console.model();
    let h = crate::health::snapshot();
    let links: Vec<Json_> = model
        .links
        .iter()
        .map(|l| {
            let (up, reason) = h.links.get(&*l.name).cloned().unwrap_or((false, None));
            json!({"name": &*l.name, "spec": l.spec.to_string(), "up": up, "last_error": reason})
        })
        .collect();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config_id": &*model.identity.config_id,
        "started": crate::vocabulary::timestamp(app.started),
        "uptime_s": uptime(&app),
        "mqtt": {
            "broker": format!("{}:{}", model.mqtt.host, model.mqtt.port),
            "client_id": model.mqtt.client_id,
            "state": if h.mqtt_state.is_empty() { "connecting" } else { &h.mqtt_state },
            "last_failure": h.mqtt_last_failure.as_ref().map(|(t, r)| json!({"at": crate::vocabulary::timestamp(*t), "reason": r})),
        },
        "buffer": {"depth": h.buffer_depth, "bytes": h.buffer_bytes, "oldest_age_s": h.buffer_age_seconds},
        "links": links,
        "devices": device_rows(&app, &model),
        "allow_writes": app.allow_writes,
        "trend_samples": app.console.trend_samples(),
    }))
    .into_response()
}

/// `GET /api/devices`: each device with its status, last error, points and read plan.
async fn devices(State(app): State<App>) -> Response {
    let model = app.console.model();
    Json(json!(device_rows(&app, &model))).into_response()
}

/// `GET /api/points`: every point and derived value: what it is (`device`, `unit`, `kind`,
/// `writable` limits) and its latest value, quality and age.
async fn points(State(app): State<App>) -> Response {
    let (seq, values, model) = app.console.values_with_model(0, SystemTime::now());
    let rows: Vec<Json_> = values
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut v)| {
            if let Some(p) = model.points.get(i) {
                v["device"] = json!(&*model.devices[p.device].name);
                v["name"] = json!(&*p.name);
                let dev = &model.devices[p.device];
                let s7_address = match &model.links[dev.link].spec {
                    crate::model::LinkSpec::S7(s7) => s7
                        .points
                        .iter()
                        .find(|(n, _)| **n == *p.name)
                        .map(|(_, a)| a),
                    _ => None,
                };
                match s7_address {
                    // An S7 point: its S7 address and type, not the engine's internal kind.
                    Some(a) => {
                        v["kind"] = json!(format!("s7 {}", a.ty.name()));
                        v["address"] = json!(a.to_string());
                    }
                    None => v["kind"] = json!(p.kind.name()),
                }
                v["unit"] = json!(p.unit.as_deref());
                v["numeric"] = json!(!matches!(p.dtype, crate::vocabulary::DataType::String(_)));
                v["writable"] = match p.write {
                    Some(l) => json!({"min": l.min, "max": l.max, "coil": p.kind == crate::vocabulary::RegisterKind::Coil}),
                    None => Json_::Null,
                };
            } else {
                let d = model.derived.get(i - model.points.len())?;
                v["device"] = Json_::Null;
                v["name"] = json!(&*d.name);
                v["kind"] = json!("derived");
                v["unit"] = Json_::Null;
                v["numeric"] = json!(true);
                v["writable"] = Json_::Null;
            }
            Some(v)
        })
        .collect();
    Json(json!({"seq": seq, "points": rows})).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct TrendQuery {
    /// Comma-separated ids; all when absent.
    ids: Option<String>,
    /// The newest this many samples of each value; all (`web.trend_samples`) when absent.
    max: Option<usize>,
}

/// Trend answers built at once (each copies up to every value's samples; more wait for none:
/// 503 at once), so that parallel requests cannot grow memory without bound.
const MAX_TREND_REQUESTS: usize = 2;

/// `GET /api/trends[?ids=a,b][&max=N]`: `{id: [[t...], [v...]]}`. The samples are copied
/// value by value under the board's lock and serialised without it (the engine's updates
/// never wait for a whole answer).
async fn trends(
    State(app): State<App>,
    q: Result<Query<TrendQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "query: ids=a,b (point ids) and max=N (a whole number of samples)",
        );
    };
    let Ok(_permit) = app.trend_requests.try_acquire() else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "other trend requests are being answered; try again in a moment",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let console = Arc::clone(&app.console);
    let max = q.max.unwrap_or(usize::MAX);
    let built = tokio::task::spawn_blocking(move || {
        let ids: Vec<&str> = q
            .ids
            .as_deref()
            .map(|s| s.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let mut out = serde_json::Map::new();
        for (id, t, v) in console.trends(&ids, max) {
            out.insert(id, json!([t, v]));
        }
        serde_json::to_vec(&Json_::Object(out))
    })
    .await;
    match built {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the trends could not be built",
        ),
    }
}

fn acks_json() -> Json_ {
    let h = crate::health::snapshot();
    json!(
        h.acks
            .iter()
            .map(|a| json!({"origin": a.origin, "ack": a.body}))
            .collect::<Vec<_>>()
    )
}

/// `GET /api/acks`: the recent command outcomes, oldest first.
async fn acks() -> Response {
    Json(acks_json()).into_response()
}

/// `GET /api/commands`: what the console may write: the command tables (their payloads), the
/// value commands, and the writable points with their limits. Empty lists when writes are off.
async fn commands(State(app): State<App>) -> Response {
    let model = app.console.model();
    if !app.allow_writes {
        return Json(json!({"allow_writes": false, "tables": [], "points": []})).into_response();
    }
    let tables: Vec<Json_> = model
        .commands
        .iter()
        .filter_map(|c| match &c.action {
            CommandAction::Table(t) => {
                let mut payloads: Vec<Json_> = t
                    .iter()
                    .map(|(k, writes)| {
                        json!({"payload": k, "writes": writes.iter().map(|(p, v)| json!({"point": &*model.points[*p].full_name, "value": v})).collect::<Vec<_>>()})
                    })
                    .collect();
                payloads.sort_by(|a, b| a["payload"].as_str().cmp(&b["payload"].as_str()));
                Some(json!({"topic": &*c.topic, "ack_topic": &*c.ack_topic, "payloads": payloads}))
            }
            CommandAction::Value(_) => None,
        })
        .collect();
    let points: Vec<Json_> = model
        .points
        .iter()
        .filter_map(|p| {
            p.write.map(|l| {
                json!({"point": &*p.full_name, "device": &*model.devices[p.device].name, "min": l.min, "max": l.max, "unit": p.unit.as_deref(), "coil": p.kind == crate::vocabulary::RegisterKind::Coil})
            })
        })
        .collect();
    Json(json!({"allow_writes": true, "tables": tables, "points": points})).into_response()
}

/// A write must come from this console's own page: a session's CSRF token in `X-CSRF-Token`,
/// and no foreign `Origin` or cross-site `Sec-Fetch-Site`. Bearer tokens need neither (a
/// browser never sends one by itself); a console without users needs a session first.
#[allow(clippy::result_large_err)]
fn same_origin_and_csrf(req: &Request, tls: bool) -> Result<(), Response> {
    let Some(who) = who(req.extensions()) else {
        return Err(denied(Denied::Unauthorized));
    };
    let headers = req.headers();
    let csrf = match &who.via {
        Via::Bearer => return Ok(()),
        Via::Open => {
            return Err(error(
                StatusCode::FORBIDDEN,
                "no session: GET /api/session first, then send its csrf token in X-CSRF-Token",
            ));
        }
        Via::Session { csrf } => csrf,
    };
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !auth::same(sent.as_bytes(), csrf.as_bytes()) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token (X-CSRF-Token)",
        ));
    }
    same_origin(headers, tls)
}

/// The request comes from this console's own page, as far as the browser tells: an `Origin`,
/// when sent, must be exactly `<scheme>://<Host>` with this console's scheme (`Origin: null`
/// and foreign origins are refused), and `Sec-Fetch-Site`, when sent, `same-origin` or `none`.
#[allow(clippy::result_large_err)]
fn same_origin(headers: &HeaderMap, tls: bool) -> Result<(), Response> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let scheme = if tls { "https" } else { "http" };
        let own = !host.is_empty()
            && origin.to_str().is_ok_and(|o| {
                o.split_once("://").is_some_and(|(sch, rest)| {
                    sch.eq_ignore_ascii_case(scheme) && rest.eq_ignore_ascii_case(host)
                })
            });
        if !own {
            return Err(error(StatusCode::FORBIDDEN, "cross-origin request refused"));
        }
    }
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s != "same-origin" && s != "none")
    {
        return Err(error(StatusCode::FORBIDDEN, "cross-site request refused"));
    }
    Ok(())
}

/// The body is declared JSON (`Content-Type: application/json`, parameters allowed): a
/// cross-site HTML form or a `no-cors` fetch cannot send that type.
#[allow(clippy::result_large_err)]
fn json_content(headers: &HeaderMap) -> Result<(), Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as Content-Type: application/json",
        ))
    }
}

/// The checks every write passes before the executor sees it: writes allowed, role `operate`,
/// same origin and CSRF token. Returns the user.
#[allow(clippy::result_large_err)]
fn may_write(app: &Inner, req: &Request) -> Result<Arc<str>, Response> {
    may_write_unlogged(app, req).inspect_err(|r| {
        let origin = match who(req.extensions()) {
            Some(w) => format!("web:{}", w.user),
            None => "web".to_owned(),
        };
        let client = req
            .extensions()
            .get::<Peer>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
        let reason = r
            .extensions()
            .get::<ErrorText>()
            .map_or_else(|| r.status().to_string(), |e| e.0.clone());
        crate::events::web_write_refused(&origin, client, req.uri().path(), &reason);
    })
}

#[allow(clippy::result_large_err)]
fn may_write_unlogged(app: &Inner, req: &Request) -> Result<Arc<str>, Response> {
    if !app.allow_writes {
        return Err(error(
            StatusCode::FORBIDDEN,
            "writes are disabled on this console (web.allow_writes is false)",
        ));
    }
    let Some(who) = who(req.extensions()) else {
        return Err(denied(Denied::Unauthorized));
    };
    if who.role != WebRole::Operate {
        return Err(error(
            StatusCode::FORBIDDEN,
            "your role is `view`: writes need role `operate`",
        ));
    }
    same_origin_and_csrf(req, app.tls)?;
    Ok(who.user)
}

/// The request body, at most `limit` bytes, arriving within [`BODY_TIMEOUT`] (a client
/// sending it slowly cannot hold its connection forever).
///
/// # Errors
/// 408 when the body is not complete in time; 413 when it is longer than `limit` (or broken).
#[allow(clippy::result_large_err)]
async fn read_body(req: Request, limit: usize) -> Result<axum::body::Bytes, Response> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(req.into_body(), limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is too long or broken",
        )),
        Err(_) => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
    }
}

#[allow(clippy::result_large_err)]
async fn body_json(req: Request) -> Result<Option<Json_>, Response> {
    let bytes = read_body(req, 4096).await?;
    Ok(serde_json::from_slice(&bytes).ok())
}

async fn run_command(app: &Inner, user: Arc<str>, request: WebRequest) -> Response {
    let (reply, answer) = oneshot::channel();
    let cmd = WebCommand {
        request,
        user,
        reply,
    };
    if app.commands.send(cmd).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping");
    }
    match tokio::time::timeout(Duration::from_secs(60), answer).await {
        Ok(Ok(body)) => Json(body).into_response(),
        _ => error(
            StatusCode::GATEWAY_TIMEOUT,
            "no outcome from the executor in time",
        ),
    }
}

/// `POST /api/command` `{"topic", "payload"}`: a configured command, as if sent over MQTT
/// (the ack also goes to its ack topic). Answers with the ack body.
async fn command(State(app): State<App>, req: Request) -> Response {
    let user = match may_write(&app, &req) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(body) = (match body_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    }) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send JSON {\"topic\": ..., \"payload\": ...}",
        );
    };
    let (Some(topic), Some(payload)) = (body["topic"].as_str(), body["payload"].as_str()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send JSON {\"topic\": ..., \"payload\": ...}",
        );
    };
    let request = WebRequest::Command {
        topic: topic.to_owned(),
        payload: payload.to_owned(),
    };
    run_command(&app, user, request).await
}

/// `POST /api/write` `{"point": "device.point", "value": 55}`: a value for a writable point,
/// range-checked, written and read back. Answers with the ack body.
async fn write(State(app): State<App>, req: Request) -> Response {
    let user = match may_write(&app, &req) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(body) = (match body_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    }) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send JSON {\"point\": ..., \"value\": ...}",
        );
    };
    let value = match &body["value"] {
        Json_::String(s) => s.clone(),
        Json_::Number(n) => n.to_string(),
        Json_::Bool(b) => b.to_string(),
        _ => String::new(),
    };
    let Some(point) = body["point"].as_str().filter(|_| !value.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send JSON {\"point\": ..., \"value\": ...}",
        );
    };
    let request = WebRequest::Point {
        point: point.to_owned(),
        value,
    };
    run_command(&app, user, request).await
}

/// `GET /api/events`: Server-Sent Events. `points` (every value at first, then the ones a poll
/// changed, each as in `/api/points`), `devices` (every device's status, as in `/api/devices`,
/// when one changed), `status` (the health board and recent acks, when they change; health and
/// device statuses are also looked at every [`STATUS_EVERY`] without any value change) and
/// `reload` (the mapping was reloaded: points may
/// have come or gone; the page loads again). A slow reader gets the latest values, never a
/// backlog.
async fn events(State(app): State<App>) -> Response {
    let changes = app.console.subscribe();
    let stop = app.shutdown.clone();
    let generation = app.console.generation();
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Stream_ {
        app,
        since: 0,
        last_status: String::new(),
        last_devices: String::new(),
        generation,
        tick,
    };
    let stream = futures_util::stream::unfold((state, changes), move |(mut st, mut changes)| {
        let stop = stop.clone();
        async move {
            if st.since != 0 {
                tokio::select! {
                    () = stop.cancelled() => return None,
                    r = changes.changed() => r.ok()?,
                    _ = st.tick.tick() => {}
                }
            }
            let app = &st.app;
            let (seq, values) = app.console.values_since(st.since, SystemTime::now());
            let devs = with_quarantine(app.console.devices_since(0));
            let devices = json!(devs).to_string();
            let status = json!({"health": health_json(app), "acks": acks_json()}).to_string();
            let mut evs = Vec::new();
            let now = app.console.generation();
            if now != st.generation {
                evs.push(Event::default().event("reload").data("{}"));
            }
            if !values.is_empty() {
                evs.push(
                    Event::default()
                        .event("points")
                        .data(json!({"seq": seq, "points": values}).to_string()),
                );
            }
            if devices != st.last_devices && !devs.is_empty() {
                evs.push(Event::default().event("devices").data(devices.clone()));
            }
            if status != st.last_status {
                evs.push(Event::default().event("status").data(status.clone()));
            }
            st.since = seq.max(1);
            st.last_status = status;
            st.last_devices = devices;
            st.generation = now;
            Some((
                futures_util::stream::iter(evs.into_iter().map(Ok::<_, std::convert::Infallible>)),
                (st, changes),
            ))
        }
    });
    use futures_util::StreamExt;
    Sse::new(stream.flatten())
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// How often an event stream looks at the health board and the device statuses on its own
/// (a broker or device failure shows even when no value changes); sent only when changed.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

/// One event stream's state between two wake-ups.
struct Stream_ {
    app: App,
    since: u64,
    last_status: String,
    last_devices: String,
    generation: u64,
    tick: tokio::time::Interval,
}

fn health_json(app: &Inner) -> Json_ {
    let h = crate::health::snapshot();
    json!({
        "mqtt_state": if h.mqtt_state.is_empty() { "connecting" } else { &h.mqtt_state },
        "mqtt_last_failure": h.mqtt_last_failure.as_ref().map(|(t, r)| json!({"at": crate::vocabulary::timestamp(*t), "reason": r})),
        "buffer_depth": h.buffer_depth,
        "buffer_oldest_age_s": h.buffer_age_seconds,
        "uptime_s": uptime(app),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_host_names_pass_the_open_console_check() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(v).unwrap());
            host_is_loopback(&m)
        };
        assert!(h("127.0.0.1:8080"));
        assert!(h("localhost:1"));
        assert!(h("[::1]:8080"));
        assert!(h("localhost"));
        assert!(!h("evil.example:8080"));
        assert!(!h("192.168.1.5"));
        assert!(!host_is_loopback(&HeaderMap::new()));
    }

    #[test]
    fn the_event_stream_says_quarantined_as_api_devices_does() {
        crate::health::quarantine("webfix-q-dev", true);
        let devs = with_quarantine(vec![
            json!({"name": "webfix-q-dev", "status": "error"}),
            json!({"name": "webfix-other", "status": "error"}),
        ]);
        assert_eq!(devs[0]["status"], "quarantined");
        assert_eq!(devs[1]["status"], "error");
    }

    #[test]
    fn origins_must_match_scheme_and_host_and_null_is_refused() {
        let h = |origin: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_static("gw:8080"));
            m.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            m
        };
        assert!(same_origin(&h("http://gw:8080"), false).is_ok());
        assert!(same_origin(&h("https://gw:8080"), true).is_ok());
        assert!(same_origin(&h("https://gw:8080"), false).is_err());
        assert!(same_origin(&h("http://gw:8080"), true).is_err());
        assert!(same_origin(&h("null"), false).is_err());
        assert!(same_origin(&h("http://evil:8080"), false).is_err());
    }
}
