//! `web`: the console's listener, its users file, TLS files and limits.
//!
//! Refuses a listener beyond loopback without users (the console would be open to the
//! network), and reads the users file, each problem named with its own `file:line:col`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::Ctx;
use crate::config::raw::{DEFAULT_TREND_SAMPLES, RawWeb};
use crate::config::yaml::Located;
use crate::model::{Web, WebRole, WebSecret, WebUser};

/// The most trend samples per value (16 bytes each: 100 values at this length take 160 MB);
/// the bound stops a typo from asking for gigabytes.
const MAX_TREND_SAMPLES: usize = 100_000;

pub(super) fn compile(ctx: &mut Ctx, web: Option<&Located<RawWeb>>) -> Option<Web> {
    let w = web?;
    let listen = match w.listen.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            ctx.err(
                &w.listen,
                "web.listen",
                format!(
                    "`{}` is not an IP:port address (e.g. 127.0.0.1:8080)",
                    w.listen.value
                ),
            );
            return None;
        }
    };
    let users = match &w.users_file {
        Some(f) => match std::fs::read_to_string(&f.value) {
            Ok(text) => match parse_users(&text) {
                Ok(u) if u.is_empty() => {
                    ctx.err(
                        f,
                        "web.users_file",
                        format!("{}: no user or token in the file", f.value),
                    );
                    u
                }
                Ok(u) => u,
                Err(errors) => {
                    for (line, col, msg) in errors {
                        ctx.err(
                            f,
                            "web.users_file",
                            format!("{}:{line}:{col}: {msg}", f.value),
                        );
                    }
                    Vec::new()
                }
            },
            Err(e) => {
                ctx.err(f, "web.users_file", format!("cannot read {}: {e}", f.value));
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    if w.users_file.is_none() && !listen.ip().is_loopback() {
        ctx.err(
            &w.listen,
            "web.listen",
            format!(
                "`{listen}` is reachable from the network, but no users_file is given: anyone could use the console; add web.users_file, or listen on 127.0.0.1 and reach it through an SSH tunnel"
            ),
        );
    }
    let tls = w.tls.as_ref().map(|t| {
        let file = |ctx: &mut Ctx, f: &Located<String>, path: &str| -> PathBuf {
            if let Err(e) = std::fs::metadata(&f.value) {
                ctx.err(f, path, format!("cannot read {}: {e}", f.value));
            }
            PathBuf::from(&f.value)
        };
        (
            file(ctx, &t.cert_file, "web.tls.cert_file"),
            file(ctx, &t.key_file, "web.tls.key_file"),
        )
    });
    if tls.is_none() && w.users_file.is_some() && !listen.ip().is_loopback() {
        ctx.warn(
            &w.listen,
            "web.listen",
            "passwords and session cookies cross the network in clear text: add web.tls",
        );
    }
    let trend_samples = match &w.trend_samples {
        Some(n) if !(2..=MAX_TREND_SAMPLES).contains(&n.value) => {
            ctx.err(
                n,
                "web.trend_samples",
                format!(
                    "trend_samples must be between 2 and {MAX_TREND_SAMPLES}, not {}",
                    n.value
                ),
            );
            DEFAULT_TREND_SAMPLES
        }
        Some(n) => n.value,
        None => DEFAULT_TREND_SAMPLES,
    };
    Some(Web {
        listen,
        users,
        users_file: w.users_file.as_ref().map(|f| PathBuf::from(&f.value)),
        tls,
        allow_writes: w.allow_writes,
        trend_samples,
    })
}

/// Parse a users file: `user NAME ROLE HASH` or `token NAME ROLE sha256:HEX`, one per line,
/// blank lines and `#` comments ignored. Every problem as (line, column, message), 1-based.
///
/// # Errors
/// Every malformed line, a bad role, a hash that is not an argon2 PHC string, a token digest
/// that is not 64 hex digits, a name given twice.
pub fn parse_users(text: &str) -> Result<Vec<WebUser>, Vec<(usize, usize, String)>> {
    let mut users: Vec<WebUser> = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let content = line.split('#').next().unwrap_or("");
        // Fields with their 1-based columns.
        let mut fields = Vec::new();
        let mut start = None;
        for (j, c) in content.char_indices().chain([(content.len(), ' ')]) {
            match (c.is_whitespace(), start) {
                (false, None) => start = Some(j),
                (true, Some(s)) => {
                    fields.push((s + 1, &content[s..j]));
                    start = None;
                }
                _ => {}
            }
        }
        if fields.is_empty() {
            continue;
        }
        if fields.len() != 4 {
            errors.push((
                n,
                fields[0].0,
                format!(
                    "expected 4 fields (`user NAME ROLE HASH` or `token NAME ROLE sha256:HEX`), found {}",
                    fields.len()
                ),
            ));
            continue;
        }
        let (kind, name, role, secret) = (fields[0], fields[1], fields[2], fields[3]);
        let role = match role.1 {
            "view" => WebRole::View,
            "operate" => WebRole::Operate,
            other => {
                errors.push((
                    n,
                    role.0,
                    format!("role must be `view` or `operate`, not `{other}`"),
                ));
                continue;
            }
        };
        if !name
            .1
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            errors.push((
                n,
                name.0,
                "a name may hold letters, digits and . _ - @ only".to_owned(),
            ));
            continue;
        }
        let parsed = match kind.1 {
            "user" => match argon2::password_hash::PasswordHash::new(secret.1) {
                Ok(h) if h.algorithm.as_str().starts_with("argon2") => {
                    Ok(WebSecret::Password(secret.1.to_owned()))
                }
                Ok(h) => Err(format!(
                    "the hash is {}, not argon2 (make one with `fieldgate web passwd {}`)",
                    h.algorithm, name.1
                )),
                Err(e) => Err(format!(
                    "not an argon2 hash in PHC string format ({e}); make one with `fieldgate web passwd {}`",
                    name.1
                )),
            },
            "token" => match secret.1.strip_prefix("sha256:").and_then(unhex32) {
                Some(d) => Ok(WebSecret::Token(d)),
                None => Err(format!(
                    "a token is stored as sha256:<64 hex digits> (make one with `fieldgate web token {}`)",
                    name.1
                )),
            },
            other => {
                errors.push((
                    n,
                    kind.0,
                    format!("an entry starts with `user` or `token`, not `{other}`"),
                ));
                continue;
            }
        };
        match parsed {
            Ok(secret) => {
                if users.iter().any(|u| *u.name == *name.1) {
                    errors.push((n, name.0, format!("`{}` is given twice", name.1)));
                    continue;
                }
                users.push(WebUser {
                    name: Arc::from(name.1),
                    role,
                    secret,
                });
            }
            Err(m) => errors.push((n, secret.0, m)),
        }
    }
    if errors.is_empty() {
        Ok(users)
    } else {
        Err(errors)
    }
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_tokens_parse_and_every_bad_line_is_reported() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$Ww1C3b0hvgeUJKhyVcIxyAe/8c5pgyVHuQyuPLX8ZZ8";
        let tok = "ab".repeat(32);
        let text = format!(
            "# console users\nuser alice operate {hash}\n\ntoken ci view sha256:{tok} # for CI\n"
        );
        let u = parse_users(&text).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(&*u[0].name, "alice");
        assert_eq!(u[0].role, WebRole::Operate);
        assert_eq!(u[1].secret, WebSecret::Token([0xab; 32]));

        let bad = format!(
            "user bob admin {hash}\nuser carol view plaintext\ntoken x view sha256:12\nuser alice\nuser alice view {hash}\nuser alice view {hash}\n"
        );
        let e = parse_users(&bad).unwrap_err();
        let at: Vec<(usize, usize)> = e.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(at, vec![(1, 10), (2, 17), (3, 14), (4, 1), (6, 6)], "{e:?}");
        assert!(e[0].2.contains("`view` or `operate`"), "{e:?}");
        assert!(e[1].2.contains("fieldgate web passwd carol"), "{e:?}");
    }
}
