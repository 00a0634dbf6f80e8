//! Loading a mapping file: read, parse (shape), compile (meaning), report every problem.
//!
//! `load` is the only entry point. Every problem carries `file:line:col`, the path of the
//! key and a message; all of them are reported, not only the first. Must not be imported by
//! the model or the pure core (tests aside): it sits above them.

mod compile;
pub use compile::{parse_users, read_key_file};
pub mod raw;
pub mod sources;
pub mod templates;
pub mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::model::Model;

// `Issue` lives in the model (a model carries its warnings); this path stays for the
// compiler and `check`.
pub use crate::model::Issue;

/// Every problem found in one file.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", Issues(path, issues))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
}

struct Issues<'a>(&'a Path, &'a [Issue]);

impl fmt::Display for Issues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let file = issue.file.as_deref().unwrap_or(self.0);
            write!(f, "{}:{}:{}: ", file.display(), issue.line, issue.col)?;
            if !issue.path.is_empty() {
                write!(f, "{}: ", issue.path)?;
            }
            f.write_str(&issue.message)?;
        }
        Ok(())
    }
}

/// Read and compile a mapping file, taking `${VAR}` values from the process environment.
pub fn load(path: &Path) -> Result<Model, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    // `${HOSTNAME}`: the environment's, else the kernel's (a login shell sets HOSTNAME but does
    // not export it, and systemd does not set it).
    if vars.get("HOSTNAME").is_none_or(|h| h.trim().is_empty()) {
        vars.insert("HOSTNAME".to_owned(), hostname());
    }
    load_str(path, &text, vars, &host_id())
}

/// This box's host name (`/proc/sys/kernel/hostname`), or `gateway` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

/// This box, for the default MQTT client id: the host name and the first 8 digits of
/// `/etc/machine-id`, so that two boxes with the same host name still differ and a box keeps
/// its id across reboots.
pub fn host_id() -> String {
    let hostname = hostname();
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let machine: String = machine.trim().chars().take(8).collect();
    if machine.is_empty() {
        hostname
    } else {
        format!("{hostname}-{machine}")
    }
}

/// The default MQTT client id: `fieldgate-<host_id>-<instance>`, where `<instance>` is six hex
/// digits of the SHA-256 of the mapping file's absolute path and the status topic (after
/// `${VAR}` interpolation). Two gateways on one box (two mappings, or one mapping run twice
/// with different variables) get different ids, and a broker does not hand one's session to
/// the other (MQTT 3.1.1 section 3.1.4: a second CONNECT with the same id disconnects the first
/// client). The same instance keeps its id across restarts, as long as the file stays where it
/// is and the status topic stays the same.
pub fn default_client_id(host_id: &str, mapping: &Path, status_topic: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(mapping.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(status_topic.as_bytes());
    let digest = h.finalize();
    format!(
        "fieldgate-{host_id}-{}",
        crate::outputs::tls::hex(&digest[..3])
    )
}

/// The mapping file's path as the default client id uses it: canonical (symbolic links
/// resolved) when the file exists, else made absolute against the working directory.
fn instance_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
}

/// Compile mapping text; `path` is used in messages and for the default client id.
pub fn load_str(
    path: &Path,
    text: &str,
    vars: HashMap<String, String>,
    hostname: &str,
) -> Result<Model, ConfigError> {
    let invalid = |issues| ConfigError::Invalid {
        path: path.to_owned(),
        issues,
    };
    // systemd's StateDirectory= (the first, if several are listed).
    let state_directory = vars
        .get("STATE_DIRECTORY")
        .and_then(|d| d.split(':').next())
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    // `${CONFIG_ID}` reads as empty until the id is known (it cannot contain itself); the
    // environment's own CONFIG_ID, if any, wins.
    let mut vars = vars;
    let own_id = vars.contains_key("CONFIG_ID");
    if !own_id {
        vars.insert("CONFIG_ID".to_owned(), String::new());
    }
    // Templates and includes (issue 18): the `templates` block is shielded from environment
    // interpolation, the included files are read, and devices are expanded from their
    // templates before the compiler sees them.
    let mut sources = sources::Sources::new(path);
    let text = sources.shield(0, text, false);
    // The configuration id hashes the mapping as written: its variables unexpanded.
    // Hashed at once and dropped: the document is not kept beside the typed parse below.
    let main_hash =
        yaml::parse::<serde_json::Value>(&sources::shielded_fragment(&text), HashMap::new())
            .ok()
            .map(|doc| config_id_start(&doc));
    let mut raw: raw::RawConfig = yaml::parse(&text, vars.clone()).map_err(invalid)?;
    let mut issues = Vec::new();
    let mut library = std::mem::take(&mut raw.templates);
    let includes = std::mem::take(&mut raw.include);
    sources::include_all(
        &mut sources,
        &includes,
        0,
        &mut vec![0],
        &mut library,
        &mut issues,
    );
    let identity = crate::model::Identity {
        config_id: Arc::from(
            main_hash.map_or_else(String::new, |h| config_id_finish(h, sources.includes())),
        ),
        hostname: Arc::from(vars.get("HOSTNAME").map_or(hostname, String::as_str)),
    };
    if !own_id && text.contains("CONFIG_ID") {
        // Read again with the id in place (the includes and templates are already taken).
        vars.insert("CONFIG_ID".to_owned(), identity.config_id.to_string());
        raw = yaml::parse(&text, vars.clone()).map_err(invalid)?;
        raw.templates.clear();
        raw.include.clear();
    }
    let env = vars;
    let mut expansion = templates::expand(&mut raw, &library, &sources, &mut issues);
    let instance = instance_path(path);
    let compiled = compile::compile(
        raw,
        hostname,
        &instance,
        state_directory.as_deref(),
        &env,
        identity,
    );
    let found = match compiled {
        Ok(mut model) if issues.is_empty() && !expansion.has_issues() => {
            model.warnings = expansion.annotate(std::mem::take(&mut model.warnings), &sources);
            sources.localise(&mut model.warnings);
            model.library = expansion.library(&sources);
            return Ok(model);
        }
        Ok(_) => Vec::new(),
        Err(found) => found,
    };
    let found: Vec<Issue> = found
        .into_iter()
        .filter(|i| !expansion.follows_from_broken(i))
        .collect();
    issues.extend(expansion.annotate(found, &sources));
    issues.sort_by_key(|i| (i.line, i.col));
    sources.localise(&mut issues);
    Err(invalid(issues))
}

/// The configuration id: the first 12 hex digits of a SHA-256 over the mapping as written
/// (`main`, parsed with its `${VAR}`s and template placeholders left as written, not their
/// values), then each included file the same way, in include order. Each is made canonical
/// first: every number and boolean as text (`1883` and `"1883"` are the same), the inline
/// `mqtt.password` left out (the id is published; it must not let anyone test guesses of a
/// password), and written as JSON with sorted keys. So comments, key order, quoting and layout
/// do not change it, nor do the values of variables (the same mapping on every box of a fleet
/// has the same id, whatever its host name or addresses); a changed value, key or template
/// does. `check` prints it; the identity message carries it. Empty when the mapping does not
/// parse (it then does not load either).
pub fn config_id(main: Option<&serde_json::Value>, includes: &[PathBuf]) -> String {
    let Some(main) = main else {
        return String::new();
    };
    config_id_finish(config_id_start(main), includes)
}

/// The first half of [`config_id`]: the hash over the main document, so that the caller can
/// drop the document before the typed parse (at 10,000 points it is ~14 MB of JSON values).
/// Written straight into the hash, not copied: the bytes are those of `serde_json::to_vec` of
/// the canonical copy described at [`config_id`].
fn config_id_start(main: &serde_json::Value) -> sha2::Sha256 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let _ = serde_json::to_writer(
        HashWriter(&mut h),
        &Canonical {
            value: main,
            at: Level::Top,
        },
    );
    h
}

/// The second half of [`config_id`]: each included file, then the 12 hex digits.
fn config_id_finish(mut h: sha2::Sha256, includes: &[PathBuf]) -> String {
    use sha2::Digest;
    for file in includes {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let doc: serde_json::Value =
            yaml::parse(&sources::shielded_fragment(&text), HashMap::new())
                .unwrap_or(serde_json::Value::Null);
        h.update([0]);
        let _ = serde_json::to_writer(
            HashWriter(&mut h),
            &Canonical {
                value: &doc,
                at: Level::Below,
            },
        );
    }
    crate::outputs::tls::hex(&h.finalize()[..6])
}

/// `std::io::Write` into a SHA-256, for serialising straight into it.
struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A document as [`config_id`] hashes it: numbers and booleans as strings, and the top-level
/// `mqtt` object without its `password`. Serialises to the same JSON as the transformed copy
/// would (keys in the map's sorted order).
struct Canonical<'a> {
    value: &'a serde_json::Value,
    at: Level,
}

/// Where a [`Canonical`] value sits: the document, its `mqtt` object, or anywhere else.
#[derive(Clone, Copy, PartialEq)]
enum Level {
    Top,
    Mqtt,
    Below,
}

impl serde::Serialize for Canonical<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        use serde_json::Value;
        let below = |value| Canonical {
            value,
            at: Level::Below,
        };
        match self.value {
            Value::Number(n) => s.serialize_str(&n.to_string()),
            Value::Bool(b) => s.serialize_str(if *b { "true" } else { "false" }),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&below(v))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut m = s.serialize_map(None)?;
                for (k, v) in map {
                    match (self.at, k.as_str()) {
                        (Level::Mqtt, "password") => {}
                        (Level::Top, "mqtt") => m.serialize_entry(
                            k,
                            &Canonical {
                                value: v,
                                at: Level::Mqtt,
                            },
                        )?,
                        _ => m.serialize_entry(k, &below(v))?,
                    }
                }
                m.end()
            }
            other => other.serialize(s),
        }
    }
}

/// The JSON Schema of a mapping file, from the config types (their `///` docs are the
/// descriptions). Numbers and booleans also accept a `${VAR}` string, since interpolation
/// happens before the types are checked. Shipped as `docs/schemas/mapping.schema.json`.
pub fn schema() -> serde_json::Value {
    finish_schema(
        serde_json::to_value(schemars::schema_for!(raw::RawConfig)).unwrap_or_default(),
        "fieldgate mapping file",
        true,
    )
}

/// The JSON Schema of an included file of templates (a device library such as
/// `mappings/devices/*.yaml`): `include` and `templates` only. Shipped as
/// `docs/schemas/device-library.schema.json`. No `${VAR}` here: inside templates `${...}` is a
/// placeholder, filled in in texts only.
pub fn library_schema() -> serde_json::Value {
    finish_schema(
        serde_json::to_value(schemars::schema_for!(raw::RawFragment)).unwrap_or_default(),
        "fieldgate device library (an included file of templates)",
        false,
    )
}

/// A generated schema with its title and, with `variables`, `${VAR}` allowed for numbers and
/// booleans.
fn finish_schema(mut schema: serde_json::Value, title: &str, variables: bool) -> serde_json::Value {
    fn allow_variables(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for child in map.values_mut() {
                    allow_variables(child);
                }
                let typed = |t: &serde_json::Value| {
                    matches!(t.as_str(), Some("integer" | "number" | "boolean"))
                };
                let needs = match map.get("type") {
                    Some(t @ serde_json::Value::String(_)) => typed(t),
                    Some(serde_json::Value::Array(ts)) => ts.iter().any(typed),
                    _ => false,
                };
                if needs {
                    let inner = serde_json::Value::Object(std::mem::take(map));
                    map.insert(
                        "anyOf".into(),
                        serde_json::json!([inner, { "$ref": "#/$defs/Variable" }]),
                    );
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(allow_variables),
            _ => {}
        }
    }
    schema["title"] = title.into();
    if !variables {
        return schema;
    }
    allow_variables(&mut schema);
    schema["$defs"]["Variable"] = serde_json::json!({
        "type": "string",
        "description": "${VAR} or ${VAR:-default}, replaced from the environment when the file is loaded.",
        "pattern": "\\$\\{[A-Za-z_][A-Za-z0-9_]*([:]?[-?+][^}]*)?\\}"
    });
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed hash equals the hash of the canonical copy it replaced (clone, numbers and
    /// booleans as text, `mqtt.password` removed, `serde_json::to_vec`): published ids and the
    /// golden cases' ids stay what they were.
    #[test]
    fn the_streamed_config_id_hashes_the_canonical_copy() {
        use sha2::{Digest, Sha256};
        fn as_text(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                    *v = serde_json::Value::String(v.to_string());
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(as_text),
                serde_json::Value::Object(map) => map.values_mut().for_each(as_text),
                _ => {}
            }
        }
        let doc = serde_json::json!({
            "mqtt": {"host": "h", "port": 1883, "password": "secret", "tls": {"verify": true}},
            "devices": [{"name": "d", "points": [
                {"address": 40001, "scale": 0.1, "x": null, "big": 1e21, "small": -2.5e-8, "one": 1.0}
            ]}],
            "password": "kept at the top",
            "b": false,
        });
        let mut copy = doc.clone();
        copy["mqtt"].as_object_mut().unwrap().remove("password");
        as_text(&mut copy);
        let expected = Sha256::digest(serde_json::to_vec(&copy).unwrap());
        assert_eq!(
            config_id(Some(&doc), &[]),
            crate::outputs::tls::hex(&expected[..6])
        );
        let mut other = doc.clone();
        other["mqtt"]["password"] = serde_json::json!("another");
        assert_eq!(config_id(Some(&doc), &[]), config_id(Some(&other), &[]));
        other["mqtt"]["port"] = serde_json::json!(1884);
        assert_ne!(config_id(Some(&doc), &[]), config_id(Some(&other), &[]));
    }

    #[test]
    fn the_default_client_id_differs_per_instance_and_is_stable() {
        let a = default_client_id("box-1234abcd", Path::new("/etc/fieldgate/m.yaml"), "site/a");
        assert!(a.starts_with("fieldgate-box-1234abcd-"), "{a}");
        assert_eq!(a.len(), "fieldgate-box-1234abcd-".len() + 6, "{a}");
        // The same instance again: the same id.
        assert_eq!(
            a,
            default_client_id("box-1234abcd", Path::new("/etc/fieldgate/m.yaml"), "site/a")
        );
        // Another status topic, or another file: another id.
        let b = default_client_id("box-1234abcd", Path::new("/etc/fieldgate/m.yaml"), "site/b");
        let c = default_client_id("box-1234abcd", Path::new("/etc/fieldgate/n.yaml"), "site/a");
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn an_explicit_client_id_is_kept() {
        let yaml = "mqtt:\n  host: h\n  client_id: cabinet-7\n  status_topic: s\n\
                    devices:\n  - name: d\n    tcp: { host: 127.0.0.1 }\n    points: [{ name: x, kind: coil, address: 0 }]\n";
        let m = load_str(Path::new("m.yaml"), yaml, HashMap::new(), "h").unwrap();
        assert_eq!(m.mqtt.client_id, "cabinet-7");
        let default = yaml.replace("  client_id: cabinet-7\n", "");
        let m = load_str(Path::new("m.yaml"), &default, HashMap::new(), "h").unwrap();
        assert!(
            m.mqtt.client_id.starts_with("fieldgate-h-"),
            "{}",
            m.mqtt.client_id
        );
    }
}
