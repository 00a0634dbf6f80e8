//! Who is asking: users with argon2 password hashes (a session cookie after login), bearer
//! tokens for scripts, or nobody on a console without users (loopback only); failed attempts
//! rate-limited per client address (each attempt counted before its argon2 check, so parallel
//! attempts cannot slip past the limit), at most [`MAX_VERIFYING`] password checks at once
//! (argon2 costs 19 MiB each); CSRF tokens per session.
//!
//! Secrets never leave this file: passwords are checked and dropped, tokens are compared by
//! their SHA-256, session ids and CSRF tokens are random (the OS generator), and none of them
//! is logged.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};

use crate::model::{WebRole, WebSecret, WebUser};

/// The session cookie's name.
pub const COOKIE: &str = "fieldgate_session";
/// A session ends this long after login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions held; the oldest goes first.
const MAX_SESSIONS: usize = 256;
/// Most sessions of one user; that user's oldest goes first (one user logging in again and
/// again cannot end other users' sessions).
pub const MAX_SESSIONS_PER_USER: usize = 8;
/// Failed logins (or bad tokens) counted over this window...
pub const FAIL_WINDOW: Duration = Duration::from_secs(60);
/// ...at most this many per client address before it is refused with 429. There is no limit
/// over all addresses together: one address could then lock every other user (and every
/// bearer token) out. The CPU and memory that logins cost are bounded by [`MAX_VERIFYING`].
pub const FAILS_PER_CLIENT: usize = 5;
/// Most argon2 password checks running at once (each holds 19 MiB for tens of
/// milliseconds); a login arriving while they run is answered 503 at once.
pub const MAX_VERIFYING: usize = 2;
/// Shortest bearer token accepted (`fieldgate web token` makes 64 hex digits); a shorter one
/// is refused without being looked up.
pub const MIN_TOKEN_LEN: usize = 32;
/// The user name of a console without users (loopback only).
pub const LOCAL_USER: &str = "local";

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A session cookie; writes must carry this CSRF token.
    Session { csrf: String },
    /// A bearer token (never sent by a browser on its own: no CSRF token needed).
    Bearer,
    /// A console without users, and no session yet.
    Open,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Who {
    pub user: Arc<str>,
    pub role: WebRole,
    pub via: Via,
}

#[derive(Debug, Clone)]
struct Session {
    user: Arc<str>,
    role: WebRole,
    csrf: String,
    expires: Instant,
}

/// Why a request is not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401: no or wrong credentials.
    Unauthorized,
    /// 429: too many failures; try again after this long.
    Limited(Duration),
    /// 503: [`MAX_VERIFYING`] password checks are already running; try again.
    Busy,
}

#[derive(Debug, Default)]
struct Limiter {
    per_client: HashMap<IpAddr, VecDeque<Instant>>,
}

impl Limiter {
    fn prune(q: &mut VecDeque<Instant>, now: Instant) {
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > FAIL_WINDOW)
        {
            q.pop_front();
        }
    }

    /// `Some(retry after)` when `ip` may not try now.
    fn limited(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let q = self.per_client.get_mut(&ip)?;
        Self::prune(q, now);
        (q.len() >= FAILS_PER_CLIENT).then(|| {
            q.front().map_or(FAIL_WINDOW, |t| {
                FAIL_WINDOW.saturating_sub(now.duration_since(*t))
            })
        })
    }

    /// Count an attempt of `ip` as failed before it is checked (checked and counted under one
    /// lock: parallel attempts cannot all pass the limit); [`Limiter::refund`] takes it back
    /// when it succeeds.
    ///
    /// # Errors
    /// `ip` is limited: try again after this long.
    fn reserve(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if let Some(d) = self.limited(ip, now) {
            return Err(d);
        }
        self.fail(ip, now);
        Ok(())
    }

    /// Take back one attempt of `ip` counted by [`Limiter::reserve`] (it succeeded, or was not
    /// checked).
    fn refund(&mut self, ip: IpAddr) {
        if let Some(q) = self.per_client.get_mut(&ip) {
            q.pop_back();
        }
    }

    fn fail(&mut self, ip: IpAddr, now: Instant) {
        if self.per_client.len() > 4096 {
            self.per_client.retain(|_, q| {
                Self::prune(q, now);
                !q.is_empty()
            });
        }
        self.per_client.entry(ip).or_default().push_back(now);
    }
}

/// The users, the sessions and the limiter of one console. `Debug` shows counts only (session
/// ids and CSRF tokens are secrets).
pub struct Auth {
    users: Vec<WebUser>,
    sessions: Mutex<HashMap<String, Session>>,
    limiter: Mutex<Limiter>,
    verifying: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("users", &self.users.len())
            .field("sessions", &self.sessions().len())
            .finish_non_exhaustive()
    }
}

/// 32 random bytes from the OS, as 64 hex digits.
fn random_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    crate::outputs::tls::hex(&b)
}

/// Equal, in time that does not depend on where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A password's argon2id hash in PHC string format, with a random salt (argon2's default
/// parameters: 19 MiB, 2 passes, 1 lane, RFC 9106 / OWASP's recommendation).
///
/// # Errors
/// The hasher failed (it does not for a password of ordinary length).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A new bearer token (64 hex digits) and its users-file secret, `sha256:<hex>`.
pub fn new_token() -> (String, String) {
    let t = random_token();
    let digest = crate::outputs::tls::sha256(t.as_bytes());
    (t, format!("sha256:{}", crate::outputs::tls::hex(&digest)))
}

fn verify(hash: &str, password: &str) -> bool {
    use argon2::PasswordVerifier;
    argon2::password_hash::PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl Auth {
    pub fn new(users: Vec<WebUser>) -> Self {
        Auth {
            users,
            sessions: Mutex::default(),
            limiter: Mutex::default(),
            verifying: tokio::sync::Semaphore::new(MAX_VERIFYING),
        }
    }

    /// No users: the console is open (on loopback).
    pub fn is_open(&self) -> bool {
        self.users.is_empty()
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, Limiter> {
        self.limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `ip` is refused for now, and for how long.
    pub fn limited(&self, ip: IpAddr) -> Option<Duration> {
        self.limiter().limited(ip, Instant::now())
    }

    /// A new session for `user`: its id (the cookie's value) and CSRF token.
    pub fn open_session(&self, user: Arc<str>, role: WebRole) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        let now = Instant::now();
        let mut s = self.sessions();
        s.retain(|_, v| v.expires > now);
        let mut own: Vec<(&String, Instant)> = s
            .iter()
            .filter(|(_, v)| v.user == user)
            .map(|(k, v)| (k, v.expires))
            .collect();
        if own.len() >= MAX_SESSIONS_PER_USER {
            own.sort_by_key(|(_, e)| *e);
            let old: Vec<String> = own[..=own.len() - MAX_SESSIONS_PER_USER]
                .iter()
                .map(|(k, _)| (*k).clone())
                .collect();
            for k in old {
                s.remove(&k);
            }
        }
        if s.len() >= MAX_SESSIONS
            && let Some(oldest) = s
                .iter()
                .min_by_key(|(_, v)| v.expires)
                .map(|(k, _)| k.clone())
        {
            s.remove(&oldest);
        }
        s.insert(
            id.clone(),
            Session {
                user,
                role,
                csrf: csrf.clone(),
                expires: now + SESSION_LIFETIME,
            },
        );
        (id, csrf)
    }

    /// End the session `id`.
    pub fn close_session(&self, id: &str) {
        self.sessions().remove(id);
    }

    /// Check a login (blocking: argon2 takes tens of milliseconds by design; call it off the
    /// async threads). The attempt is counted against `ip` before the check and taken back
    /// when it succeeds.
    ///
    /// # Errors
    /// `Limited` when `ip` failed too often; `Busy` when [`MAX_VERIFYING`] checks are already
    /// running (not counted); `Unauthorized` for an unknown user or a wrong password (the same
    /// answer for both).
    pub fn login(&self, ip: IpAddr, user: &str, password: &str) -> Result<Who, Denied> {
        self.limiter()
            .reserve(ip, Instant::now())
            .map_err(Denied::Limited)?;
        let Ok(_permit) = self.verifying.try_acquire() else {
            self.limiter().refund(ip);
            return Err(Denied::Busy);
        };
        let found = self
            .users
            .iter()
            .find(|u| &*u.name == user && matches!(u.secret, WebSecret::Password(_)));
        let ok = match found {
            Some(WebUser {
                secret: WebSecret::Password(hash),
                ..
            }) => verify(hash, password),
            // An unknown user costs the same hash as a known one: the answer's time does not
            // tell which names exist.
            _ => {
                static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                let dummy =
                    DUMMY.get_or_init(|| hash_password("not a password").unwrap_or_default());
                let _ = verify(dummy, password);
                false
            }
        };
        match found {
            Some(u) if ok => {
                self.limiter().refund(ip);
                Ok(Who {
                    user: Arc::clone(&u.name),
                    role: u.role,
                    via: Via::Bearer,
                })
            }
            _ => {
                crate::events::web_login(&crate::mappings::command::printable(user), ip, false);
                Err(Denied::Unauthorized)
            }
        }
    }

    /// Who sent a request with this `Authorization` header value and session cookie value.
    ///
    /// # Errors
    /// `Unauthorized` without valid credentials (a console with users), `Limited` for a client
    /// that failed too often (a bad bearer token counts as a failure).
    pub fn authenticate(
        &self,
        ip: IpAddr,
        authorization: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<Who, Denied> {
        if let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            if let Some(d) = self.limited(ip) {
                return Err(Denied::Limited(d));
            }
            let token = token.trim();
            let digest = crate::outputs::tls::sha256(token.as_bytes());
            let found = self
                .users
                .iter()
                .filter(|_| token.len() >= MIN_TOKEN_LEN)
                .find(|u| matches!(&u.secret, WebSecret::Token(t) if same(t, &digest)));
            return match found {
                Some(u) => Ok(Who {
                    user: Arc::clone(&u.name),
                    role: u.role,
                    via: Via::Bearer,
                }),
                None => {
                    self.limiter().fail(ip, Instant::now());
                    crate::events::web_token_refused(ip);
                    Err(Denied::Unauthorized)
                }
            };
        }
        if let Some(id) = cookie {
            let now = Instant::now();
            let s = self.sessions();
            if let Some(s) = s.get(id).filter(|s| s.expires > now) {
                return Ok(Who {
                    user: Arc::clone(&s.user),
                    role: s.role,
                    via: Via::Session {
                        csrf: s.csrf.clone(),
                    },
                });
            }
        }
        if self.is_open() {
            return Ok(Who {
                user: Arc::from(LOCAL_USER),
                role: WebRole::Operate,
                via: Via::Open,
            });
        }
        Err(Denied::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_fails_too_often_is_limited_and_others_are_not() {
        let hash = hash_password("right").unwrap();
        let auth = Auth::new(vec![WebUser {
            name: Arc::from("alice"),
            role: WebRole::View,
            secret: WebSecret::Password(hash),
        }]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(auth.login(ip, "alice", "right").is_ok());
        for _ in 0..FAILS_PER_CLIENT {
            assert_eq!(
                auth.login(ip, "alice", "wrong").unwrap_err(),
                Denied::Unauthorized
            );
        }
        // Limited now, even with the right password.
        assert!(matches!(
            auth.login(ip, "alice", "right"),
            Err(Denied::Limited(_))
        ));
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(auth.login(other, "alice", "right").is_ok());
    }

    #[test]
    fn tokens_and_sessions_authenticate() {
        let (token, stored) = new_token();
        let digest = stored.strip_prefix("sha256:").unwrap();
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).unwrap();
        }
        let auth = Auth::new(vec![WebUser {
            name: Arc::from("ci"),
            role: WebRole::Operate,
            secret: WebSecret::Token(d),
        }]);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let who = auth
            .authenticate(ip, Some(&format!("Bearer {token}")), None)
            .unwrap();
        assert_eq!(&*who.user, "ci");
        assert_eq!(
            auth.authenticate(ip, Some("Bearer nope"), None)
                .unwrap_err(),
            Denied::Unauthorized
        );
        assert_eq!(
            auth.authenticate(ip, None, None).unwrap_err(),
            Denied::Unauthorized
        );
        let (id, csrf) = auth.open_session(Arc::from("ci"), WebRole::Operate);
        let who = auth.authenticate(ip, None, Some(&id)).unwrap();
        assert_eq!(who.via, Via::Session { csrf });
        auth.close_session(&id);
        assert!(auth.authenticate(ip, None, Some(&id)).is_err());
    }

    fn alice() -> Auth {
        Auth::new(vec![WebUser {
            name: Arc::from("alice"),
            role: WebRole::View,
            secret: WebSecret::Password(hash_password("right").unwrap()),
        }])
    }

    #[test]
    fn parallel_wrong_logins_from_one_address_get_at_most_the_limit_of_401s() {
        let auth = alice();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let barrier = std::sync::Barrier::new(16);
        let answers: Vec<Result<Who, Denied>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        auth.login(ip, "alice", "wrong")
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unauthorized = answers
            .iter()
            .filter(|a| matches!(a, Err(Denied::Unauthorized)))
            .count();
        assert!(unauthorized <= FAILS_PER_CLIENT, "{answers:?}");
        assert!(answers.iter().all(|a| a.is_err()), "{answers:?}");
        // Another address (and its right password) is not locked out by this one.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(auth.login(other, "alice", "right").is_ok());
    }

    #[test]
    fn a_login_while_the_password_checks_are_all_busy_is_refused_at_once_and_not_counted() {
        let auth = alice();
        let held: Vec<_> = (0..MAX_VERIFYING)
            .map(|_| auth.verifying.try_acquire().unwrap())
            .collect();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..FAILS_PER_CLIENT + 1 {
            assert_eq!(auth.login(ip, "alice", "right").unwrap_err(), Denied::Busy);
        }
        drop(held);
        // The busy answers were not counted against the address.
        assert!(auth.login(ip, "alice", "right").is_ok());
    }

    #[test]
    fn many_failures_from_many_addresses_do_not_lock_out_a_fresh_address() {
        let auth = alice();
        for i in 0..40u8 {
            let ip = IpAddr::from([10, 1, 0, i]);
            for _ in 0..FAILS_PER_CLIENT {
                assert_eq!(
                    auth.login(ip, "alice", "wrong").unwrap_err(),
                    Denied::Unauthorized
                );
            }
        }
        assert!(
            auth.login(IpAddr::from([10, 2, 0, 1]), "alice", "right")
                .is_ok()
        );
    }

    #[test]
    fn a_short_bearer_token_is_refused_even_when_its_digest_is_listed() {
        let digest = crate::outputs::tls::sha256(b"test");
        let auth = Auth::new(vec![WebUser {
            name: Arc::from("ci"),
            role: WebRole::View,
            secret: WebSecret::Token(digest),
        }]);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            auth.authenticate(ip, Some("Bearer test"), None)
                .unwrap_err(),
            Denied::Unauthorized
        );
    }

    #[test]
    fn one_user_logging_in_again_and_again_ends_only_their_own_oldest_sessions() {
        let auth = alice();
        let (bob, _) = auth.open_session(Arc::from("bob"), WebRole::View);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let ids: Vec<String> = (0..MAX_SESSIONS + 10)
            .map(|_| auth.open_session(Arc::from("alice"), WebRole::View).0)
            .collect();
        assert!(auth.authenticate(ip, None, Some(&bob)).is_ok());
        assert_eq!(auth.sessions().len(), MAX_SESSIONS_PER_USER + 1);
        let last = &ids[ids.len() - MAX_SESSIONS_PER_USER..];
        for id in last {
            assert!(auth.authenticate(ip, None, Some(id)).is_ok());
        }
        assert!(auth.authenticate(ip, None, Some(&ids[0])).is_err());
    }
}
