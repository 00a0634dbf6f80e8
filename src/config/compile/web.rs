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
        let pair = (
            file(ctx, &t.cert_file, "web.tls.cert_file"),
            file(ctx, &t.key_file, "web.tls.key_file"),
        );
        // Both readable: build the server configuration as `run` does (rustls on ring), so
        // that `check` refuses what `run` would.
        if pair.0.exists()
            && pair.1.exists()
            && let Err((which, e)) = crate::web::server_tls(&pair.0, &pair.1)
        {
            match which {
                crate::web::TlsFile::Cert => ctx.err(&t.cert_file, "web.tls.cert_file", e),
                crate::web::TlsFile::Key => ctx.err(&t.key_file, "web.tls.key_file", e),
            }
        }
        pair
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
        let secret_col = secret.0;
        let parsed = match kind.1 {
            "user" => check_argon2(secret.1)
                .map(|()| WebSecret::Password(secret.1.to_owned()))
                .map_err(|e| format!("{e}; make one with `fieldgate web passwd {}`", name.1)),
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
                if let WebSecret::Token(d) = &secret
                    && let Some(other) = users
                        .iter()
                        .find(|u| matches!(&u.secret, WebSecret::Token(t) if t == d))
                {
                    errors.push((
                        n,
                        secret_col,
                        format!(
                            "the same token as `{}`: one token is one caller (make another with `fieldgate web token {}`)",
                            other.name, name.1
                        ),
                    ));
                    continue;
                }
                users.push(WebUser {
                    name: Arc::from(name.1),
                    role,
                    secret,
                });
            }
            Err(m) => errors.push((n, secret_col, m)),
        }
    }
    if errors.is_empty() {
        Ok(users)
    } else {
        Err(errors)
    }
}

/// The most memory an argon2 hash of the users file may ask for per check (KiB): 256 MiB.
/// `fieldgate web passwd` uses 19 MiB; a larger cost times the concurrent checks could exhaust
/// a small gateway.
pub const MAX_ARGON2_M_COST: u32 = 256 * 1024;

/// A users-file password hash is one this build can verify: an argon2 (argon2id, argon2i,
/// argon2d) PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`, RFC 9106 and the PHC string
/// format) whose version and parameters the argon2 crate accepts, with a hash, and whose memory
/// cost is at most [`MAX_ARGON2_M_COST`].
///
/// # Errors
/// What is wrong, in words (the caller adds how to make a good one).
fn check_argon2(text: &str) -> Result<(), String> {
    if !text.starts_with("$argon2") {
        let scheme = text
            .strip_prefix('$')
            .and_then(|t| t.split('$').next())
            .filter(|t| !t.is_empty());
        return Err(match scheme {
            Some(s) => format!("not an argon2 hash (its scheme is `{s}`)"),
            None => "not an argon2 hash (expected `$argon2id$v=19$m=...`)".to_owned(),
        });
    }
    let h = argon2::password_hash::PasswordHash::new(text)
        .map_err(|e| format!("not an argon2 hash in PHC string format ({e})"))?;
    argon2::Algorithm::try_from(h.algorithm)
        .map_err(|_| format!("not an argon2 hash (algorithm `{}`)", h.algorithm))?;
    if let Some(v) = h.version {
        argon2::Version::try_from(v).map_err(|_| format!("argon2 version {v} is unknown"))?;
    }
    if h.hash.is_none() {
        return Err("the argon2 string holds no hash".to_owned());
    }
    let params = argon2::Params::try_from(&h)
        .map_err(|e| format!("invalid argon2 parameters ({e}): nobody could log in"))?;
    if params.m_cost() > MAX_ARGON2_M_COST {
        return Err(format!(
            "argon2 memory cost m={} KiB is more than {MAX_ARGON2_M_COST} KiB",
            params.m_cost()
        ));
    }
    Ok(())
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

    #[test]
    fn bad_argon2_parameters_a_bcrypt_hash_and_a_shared_token_are_refused() {
        let tok = "cd".repeat(32);
        let bad = format!(
            "user a view $argon2id$v=19$m=1,t=2,p=1$c2FsdHNhbHRzYWx0$Ww1C3b0hvgeUJKhyVcIxyAe/8c5pgyVHuQyuPLX8ZZ8\n\
             user b view $2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\n\
             token c view sha256:{tok}\n\
             token d view sha256:{tok}\n\
             user e view $argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$Ww1C3b0hvgeUJKhyVcIxyAe/8c5pgyVHuQyuPLX8ZZ8\n"
        );
        let e = parse_users(&bad).unwrap_err();
        assert_eq!(e.len(), 4, "{e:?}");
        assert_eq!((e[0].0, e[0].1), (1, 13), "{e:?}");
        assert!(e[0].2.contains("invalid argon2 parameters"), "{e:?}");
        assert_eq!(e[1].0, 2);
        assert!(
            e[1].2.contains("not an argon2 hash (its scheme is `2b`)"),
            "{e:?}"
        );
        assert_eq!(e[2].0, 4);
        assert!(e[2].2.contains("the same token as `c`"), "{e:?}");
        assert_eq!(e[3].0, 5);
        assert!(e[3].2.contains("memory cost"), "{e:?}");
    }
}
