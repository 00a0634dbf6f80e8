//! The one place that calls the YAML crate (serde-saphyr).
//!
//! Swapping the YAML library means changing this file only: [`parse`] and [`Located`], with the
//! one call into the crate in `from_str`. No other file may call the YAML crate, and nothing here
//! checks meaning (that is `compile/`).
//! `${VAR}` / `${VAR:-default}` interpolation is done by the parser itself, inside scalars
//! (quoted or not), so a variable's value can never change the document's structure. A
//! `${VAR}` with no value and no default is an error with its location, never an empty string:
//! [`unset_references`] finds them all before parsing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde::{Deserialize, Deserializer};

use super::Issue;

/// A value with the line and column (1-based) where it stands in the file.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub value: T,
    pub line: u32,
    pub col: u32,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Located {
            line: s.referenced.line() as u32 + LINE_BASE.with(std::cell::Cell::get),
            col: s.referenced.column() as u32,
            value: s.value,
        })
    }
}

/// The schema of a located value is the value's own.
impl<T: schemars::JsonSchema> schemars::JsonSchema for Located<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

thread_local! {
    /// Added to every line read on this thread while [`parse_at`] runs: the first line of the
    /// file in the mapping's line space (see `config::sources`), 0 for the mapping file.
    static LINE_BASE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// The message of the last error raised by one of our own `Deserialize` impls on this
    /// thread (see [`custom_error`]).
    static OWN_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The error for a value our own `Deserialize` impl refuses (a duration without a unit, an
/// unknown protocol version). Use it instead of `E::custom`: once any `${VAR}` has been
/// interpolated, the YAML crate replaces the text of such errors by "invalid interpolated
/// scalar value", lest it echo a variable's value; [`parse`] puts the message back when the
/// value it is about was written in the file, not interpolated.
pub fn custom_error<E: serde::de::Error>(message: String) -> E {
    OWN_ERROR.with(|e| *e.borrow_mut() = Some(message.clone()));
    E::custom(message)
}

/// The scalar (a key or a value) that starts at `line`:`col` (1-based) of `text`, unquoted:
/// `pol_interval` for `  pol_interval: 1s`, `input_registr` in `{ kind: input_registr }`.
fn token_at(text: &str, line: u32, col: u32) -> Option<String> {
    let src = text.lines().nth(line.checked_sub(1)? as usize)?;
    let rest: String = src.chars().skip(col.checked_sub(1)? as usize).collect();
    if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let inner = &rest[1..];
        return inner.find(q).map(|end| inner[..end].to_owned());
    }
    let mut end = rest.len();
    for (i, c) in rest.char_indices() {
        let next = rest[i + c.len_utf8()..].chars().next();
        let stop = match c {
            ':' => next.is_none_or(char::is_whitespace),
            ',' | '}' | ']' => true,
            '#' => rest[..i].ends_with(char::is_whitespace),
            _ => false,
        };
        if stop {
            end = i;
            break;
        }
    }
    let token = rest[..end].trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// Undo the crate's redaction where it hides what the file says, not a variable's value. The
/// crate redacts every unknown key, unknown variant and custom message in a section where any
/// `${VAR}` was interpolated, even when the bad scalar itself came from the file: then the
/// message would name "an interpolated field" instead of the misspelt key. The scalar at the
/// error's location is read back from the text; if it holds no `${`, it is not secret.
fn unredact(message: String, text: &str, line: u32, col: u32, own: Option<String>) -> String {
    let Some(token) = token_at(text, line, col).filter(|t| !t.contains("${")) else {
        return message;
    };
    for hidden in ["`an interpolated field`", "`an interpolated variant`"] {
        if message.contains(hidden) {
            return message.replacen(hidden, &format!("`{token}`"), 1);
        }
    }
    match own {
        Some(own) if message.contains("invalid interpolated scalar value") => own,
        _ => message,
    }
}

/// Parse `text` into `T`, interpolating `${VAR}` from `vars`. On failure, the issues with their
/// locations and the path of the key (`devices[tank].points[level].address`): every unset
/// variable, or else the first shape error.
pub fn parse<T: for<'de> Deserialize<'de>>(
    text: &str,
    vars: HashMap<String, String>,
) -> Result<T, Vec<Issue>> {
    let unset = unset_references(text, &vars);
    if !unset.is_empty() {
        return Err(unset);
    }
    let mut opts = serde_saphyr::options! { with_snippet: false };
    opts.property_map = Some(Rc::new(vars));
    opts.property_syntax = serde_saphyr::PropertySyntax::DockerCompose;
    let mut path = String::new();
    OWN_ERROR.with(|e| e.borrow_mut().take());
    let result = from_str(text, opts, &mut path);
    result.map_err(|e| {
        let (line, col) = e
            .location()
            .map(|l| (l.line() as u32, l.column() as u32))
            .unwrap_or((0, 0));
        let message = clean_message(e.to_string(), text, line, col);
        let own = OWN_ERROR.with(|e| e.borrow_mut().take());
        let mut message = unredact(message, text, line, col, own);
        let path = named_path(&clean_path(&path), text);
        // A point's address is read wide (to recognise 6-digit register numbers) but is a
        // 16-bit protocol address.
        if path.ends_with(".address") && message.starts_with("must be a whole number") {
            message = "must be a whole number 0-65535 (the protocol address)".to_owned();
        }
        vec![Issue {
            line,
            col,
            path,
            message,
            file: None,
        }]
    })
}

/// [`parse`] for a file whose lines start at `base` in the mapping's line space (an included
/// file): every [`Located`] line and every issue's line is `base` + its line in `text`.
pub fn parse_at<T: for<'de> Deserialize<'de>>(
    text: &str,
    vars: HashMap<String, String>,
    base: u32,
) -> Result<T, Vec<Issue>> {
    struct Reset(u32);
    impl Drop for Reset {
        fn drop(&mut self) {
            LINE_BASE.with(|b| b.set(self.0));
        }
    }
    let _reset = Reset(LINE_BASE.with(|b| b.replace(base)));
    parse(text, vars).map_err(|mut issues| {
        for i in &mut issues {
            i.line += base;
        }
        issues
    })
}

/// The one call into the YAML crate: `text` as one `T` document, read with `opts`; the key path
/// where it failed is written to `path` (`devices[0].points[1].address`). Always through
/// `serde_path_to_error`: a second, plain instantiation of every config type's deserializer
/// would add about a megabyte of code that no caller runs.
fn from_str<T: for<'de> Deserialize<'de>>(
    text: &str,
    opts: serde_saphyr::Options,
    path: &mut String,
) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::with_deserializer_from_str_with_options(text, opts, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            *path = e.path().to_string();
            e.into_inner()
        })
    })
}

/// The crate's message for the person editing the file: without the location (printed once, by
/// the caller) or advice meant for programmers, and with a hint for `${VAR}` inside a flow
/// collection.
fn clean_message(mut message: String, text: &str, line: u32, col: u32) -> String {
    // The crate prefixes "error: line L column C: " (or suffixes "at line L, column C");
    // we print the location ourselves, once.
    if let Some(rest) = message.strip_prefix("error: ") {
        message = rest.to_owned();
    }
    let prefix = format!("line {line} column {col}: ");
    if let Some(rest) = message.strip_prefix(&prefix) {
        message = rest.to_owned();
    }
    let suffix = format!(" at line {line}, column {col}");
    if let Some(rest) = message.strip_suffix(&suffix) {
        message = rest.to_owned();
    }
    // Advice addressed to programmers using the crate, not to the person editing the file.
    if let Some(rest) = message.strip_suffix(", set DuplicateKeyPolicy in Options if acceptable") {
        message = rest.to_owned();
    }
    message = in_the_files_words(message);
    // `{ port: ${PORT} }`: braces end a plain scalar inside a flow collection.
    if let Some(src) = text.lines().nth(line.saturating_sub(1) as usize)
        && let Some(at) = src.find("${")
        && src[..at].contains(['{', '['])
        && !src[..at].ends_with(['"', '\''])
    {
        message.push_str(" (inside { } or [ ], write \"${VAR}\" in quotes)");
    }
    message
}

/// The YAML crate's words for a wrong scalar, in the words of the file: the range of a number
/// instead of the Rust type's name, "empty" instead of `null`.
fn in_the_files_words(message: String) -> String {
    let range = |t: &str| match t {
        "u8" => Some("0-255"),
        "u16" => Some("0-65535"),
        "u32" => Some("0-4294967295"),
        "u64" => Some("0-18446744073709551615"),
        "i8" => Some("-128-127"),
        "i16" => Some("-32768-32767"),
        "i32" => Some("-2147483648-2147483647"),
        "i64" | "i128" => Some("a whole number"),
        _ => None,
    };
    if let Some(t) = message.strip_prefix("invalid ")
        && let Some(r) = range(t)
    {
        return if r == "a whole number" {
            "must be a whole number".to_owned()
        } else {
            format!("must be a whole number {r}")
        };
    }
    if message.starts_with("cannot deserialize null into ") {
        return "a value is needed here, not an empty one".to_owned();
    }
    message
}

/// Every `${NAME}` (no default) whose variable is not set, with its location. Comments are
/// skipped; `$${` is the escape for a literal `${`.
pub fn unset_references(text: &str, vars: &HashMap<String, String>) -> Vec<Issue> {
    let mut out = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let b = line.as_bytes();
        let (mut i, mut quote) = (0usize, None::<u8>);
        while i < b.len() {
            let c = b[i];
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'\'' || c == b'"' => quote = Some(c),
                None if c == b'#' && (i == 0 || b[i - 1].is_ascii_whitespace()) => break,
                None => {}
            }
            if c == b'$' && b.get(i + 1) == Some(&b'$') {
                i += 2;
                continue;
            }
            if c == b'$' && b.get(i + 1) == Some(&b'{') {
                let rest = &line[i + 2..];
                let end = rest.find('}').unwrap_or(rest.len());
                let inner = &rest[..end];
                let name_len = inner
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .unwrap_or(inner.len());
                // Only the bare form has no fallback; `:-`, `-`, `:?`, `?`, `:+`, `+` are handled
                // (or reported) by the parser.
                if name_len == inner.len() && name_len > 0 && !vars.contains_key(inner) {
                    out.push(Issue {
                        line: ln as u32 + 1,
                        col: line[..i].chars().count() as u32 + 1,
                        path: String::new(),
                        message: format!("${{{inner}}} is not set and has no default (write ${{{inner}:-default}} for one)"),
                        file: None,
                    });
                }
                i += 2 + end;
                continue;
            }
            i += 1;
        }
    }
    out
}

/// Fields wrapped in [`Located`]: their wrapper adds a `value` segment that users never wrote.
const LOCATED_FIELDS: &[&str] = &[
    "name",
    "address",
    "type",
    "bit",
    "length",
    "writable",
    "publish",
    "topic",
    "status_topic",
    "listen",
    "point",
    "write",
    "ack_topic",
    "pack_bits",
    "homeassistant",
    "sparkplug",
    "web",
    "tls",
    "users_file",
    "cert_file",
    "key_file",
    "trend_samples",
    // s7_devices: the `s7:` block and its located keys.
    "s7",
    "host",
    "rack",
    "slot",
    "local_tsap",
    "remote_tsap",
    "pdu_size",
];

/// Sections whose entries are a map by name (`homeassistant.devices.<device>.points.<point>`),
/// each entry [`Located`]: the name is shown as `[name]`, like a named list entry.
const NAMED_MAPS: &[&str] = &["devices", "points"];

/// Drop the segments serde_path_to_error sees but the user did not write: the `value` of a
/// [`Located`] wrapper, and the `?` of an unknown (duplicate) key.
fn clean_path(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    // Split "a[0].b.value" into ["a", "[0]", "b", "value"].
    let mut segs: Vec<String> = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        while let Some(i) = rest.find('[') {
            if i > 0 {
                segs.push(rest[..i].to_owned());
            }
            let j = rest[i..].find(']').map_or(rest.len(), |j| i + j + 1);
            segs.push(rest[i..j].to_owned());
            rest = &rest[j..];
        }
        if !rest.is_empty() {
            segs.push(rest.to_owned());
        }
    }
    let mut out = String::new();
    let mut after_key = false;
    for (i, seg) in segs.iter().enumerate() {
        let prev = i.checked_sub(1).map(|k| segs[k].as_str());
        let next = segs.get(i + 1).map(String::as_str);
        let wrapper = seg == "value"
            && (after_key
                || prev.is_some_and(|p| p.starts_with('[') || LOCATED_FIELDS.contains(&p)));
        after_key = false;
        if wrapper || seg == "?" {
            continue;
        }
        if !seg.starts_with('[')
            && prev.is_some_and(|p| NAMED_MAPS.contains(&p))
            && next == Some("value")
        {
            out.push_str(&format!("[{seg}]"));
            after_key = true;
            continue;
        }
        if !seg.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(seg);
    }
    out
}

#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    points: Option<Vec<Named>>,
}

#[derive(Deserialize)]
struct Names {
    #[serde(default)]
    devices: Option<Vec<Named>>,
    #[serde(default)]
    derived: Option<Vec<Named>>,
    #[serde(default)]
    templates: Option<Vec<Named>>,
    #[serde(default)]
    s7_devices: Option<Vec<Named>>,
}

/// Replace `devices[0]` / `templates[0]` / `points[1]` / `derived[2]` indexes by names when the file is at least
/// readable YAML, so a path reads `devices[tank].points[level].address`.
fn named_path(path: &str, text: &str) -> String {
    let opts =
        serde_saphyr::options! { duplicate_keys: serde_saphyr::DuplicateKeyPolicy::FirstWins };
    let Ok(names) = from_str::<Names>(text, opts, &mut String::new()) else {
        return path.to_owned();
    };
    let index = |seg: &str, key: &str| -> Option<usize> {
        seg.strip_prefix(key)?.strip_suffix(']')?.parse().ok()
    };
    let named = |list: Option<&Vec<Named>>, i: usize| {
        list.and_then(|l| l.get(i)).and_then(|n| n.name.clone())
    };
    let mut out = Vec::new();
    let mut device: Option<&Named> = None;
    // Segments as written: "devices[0]", "points[1]", "address".
    for seg in path.split('.') {
        let replaced = if let Some(i) = index(seg, "devices[") {
            device = names.devices.as_ref().and_then(|d| d.get(i));
            named(names.devices.as_ref(), i).map(|n| format!("devices[{n}]"))
        } else if let Some(i) = index(seg, "s7_devices[") {
            device = names.s7_devices.as_ref().and_then(|d| d.get(i));
            named(names.s7_devices.as_ref(), i).map(|n| format!("s7_devices[{n}]"))
        } else if let Some(i) = index(seg, "templates[") {
            device = names.templates.as_ref().and_then(|d| d.get(i));
            named(names.templates.as_ref(), i).map(|n| format!("templates[{n}]"))
        } else if let Some(i) = index(seg, "points[") {
            named(device.and_then(|d| d.points.as_ref()), i).map(|n| format!("points[{n}]"))
        } else if let Some(i) = index(seg, "derived[") {
            named(names.derived.as_ref(), i).map(|n| format!("derived[{n}]"))
        } else {
            None
        };
        out.push(replaced.unwrap_or_else(|| seg.to_owned()));
    }
    out.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_errors_speak_the_files_words() {
        assert_eq!(
            in_the_files_words("invalid u16".into()),
            "must be a whole number 0-65535"
        );
        assert_eq!(
            in_the_files_words("invalid i128".into()),
            "must be a whole number"
        );
        assert_eq!(
            in_the_files_words("cannot deserialize null into string; use Option<String>".into()),
            "a value is needed here, not an empty one"
        );
        assert_eq!(in_the_files_words("other".into()), "other");
    }

    #[test]
    fn unset_references_are_found_with_their_column() {
        let vars = HashMap::from([("SET".to_owned(), "x".to_owned())]);
        let text =
            "a: ${SET}\nb: { h: \"${NOPE}\", p: ${P:-1} }  # ${IN_COMMENT}\nc: $${LITERAL} ${X}y\n";
        let issues = unset_references(text, &vars);
        let at: Vec<_> = issues.iter().map(|i| (i.line, i.col)).collect();
        assert_eq!(at, [(2, 10), (3, 16)]);
        assert!(issues[0].message.contains("${NOPE}"));
    }

    #[test]
    fn tokens_are_read_back_from_the_text() {
        let text = "a:\n  pol_interval: 1s\n  p: { kind: input_registr, x: 1 }\n  \"q k\": 2 # c\n";
        assert_eq!(token_at(text, 2, 3).as_deref(), Some("pol_interval"));
        assert_eq!(token_at(text, 3, 14).as_deref(), Some("input_registr"));
        assert_eq!(token_at(text, 4, 3).as_deref(), Some("q k"));
        assert_eq!(token_at(text, 9, 1), None);
        assert_eq!(
            unredact(
                "unknown field `an interpolated field`, expected one of a".into(),
                text,
                2,
                3,
                None
            ),
            "unknown field `pol_interval`, expected one of a"
        );
    }

    /// A `${VAR}` earlier in a section used to hide the misspelt key and our own messages behind
    /// "an interpolated field" and "invalid interpolated scalar value".
    #[test]
    fn errors_after_an_interpolation_name_what_the_file_says() {
        let text = "mqtt: { host: h, status_topic: s }\ndevices:\n  - name: d\n    tcp: { host: h, port: \"${P:-502}\" }\n    pol_interval: 1s\n    points: []\n";
        let e = crate::config::load_str(std::path::Path::new("m.yaml"), text, HashMap::new(), "h")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("m.yaml:5:5: devices[d].pol_interval: unknown field `pol_interval`, expected one of name, tcp,"),
            "{e}"
        );
        let text = text.replace("pol_interval: 1s", "poll_interval: 1000");
        let e = crate::config::load_str(std::path::Path::new("m.yaml"), &text, HashMap::new(), "h")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "m.yaml:5:20: devices[d].poll_interval: a duration needs a unit: write 1000ms or 1s"
        );
        // A value that came from a variable stays hidden.
        let vars = HashMap::from([("POLL".to_owned(), "1000".to_owned())]);
        let text = text.replace("poll_interval: 1000", "poll_interval: ${POLL}");
        let e = crate::config::load_str(std::path::Path::new("m.yaml"), &text, vars, "h")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("1000"), "{e}");
    }

    #[test]
    fn wrapper_segments_are_dropped_but_real_value_keys_kept() {
        assert_eq!(
            clean_path("devices[0].value.points[1].value.address.value"),
            "devices[0].points[1].address"
        );
        assert_eq!(
            clean_path("commands[0].value.payloads.go[0].value.value"),
            "commands[0].payloads.go[0].value"
        );
        assert_eq!(
            clean_path("homeassistant.value.devices.tank.value.points.value.value.x"),
            "homeassistant.devices[tank].points[value].x"
        );
        assert_eq!(
            clean_path("devices[0].value.points[0].value.?"),
            "devices[0].points[0]"
        );
        assert_eq!(
            clean_path("s7_devices[0].s7.value.connection_type"),
            "s7_devices[0].s7.connection_type"
        );
        assert_eq!(
            clean_path("s7_devices[0].s7.value.remote_tsap.value"),
            "s7_devices[0].s7.remote_tsap"
        );
        assert_eq!(clean_path("."), "");
    }
}
