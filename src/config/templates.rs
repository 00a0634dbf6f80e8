//! Templates: each device that says `template: <name>` gets the template's points, derived
//! values and commands, with `${device}`, `${unit}` and the template's parameters filled in.
//! Runs on the raw file before `compile`, so what a template gives is checked exactly like what
//! a device writes itself; `check --expand` prints the result.
//!
//! A template's values keep their template's positions (line space of `sources`), so a problem
//! inside a template is reported at the template's line and column; [`Expansion::annotate`]
//! adds the device that used it. This must not read files (that is `sources`) or check what the
//! expanded points mean (that is `compile`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::Issue;
use super::raw::{RawCommand, RawConfig, RawDerived, RawPoint, RawTemplate};
use super::sources::{PLACEHOLDER, Sources};
use super::yaml::Located;
use crate::model::{Library, TemplateInfo};

/// One device made from a template: what [`Expansion::annotate`] needs to name it.
#[derive(Debug)]
struct Use {
    template: usize,
    device: String,
    /// Where the device says `template:`.
    at: (u32, u32),
    /// Key paths of what the template gave the device: `devices[<name>]`, `derived[<name>]`,
    /// `commands[<i>]`, each with the path a problem in it is reported at (the device's own for
    /// its points; the template's derived value or command, `templates[<t>].commands[<j>]`, for
    /// the others, whose global index or name would not say which).
    prefixes: Vec<(String, String)>,
    /// Template points the device drops, and those it overrides.
    dropped: Vec<String>,
    overridden: Vec<String>,
}

/// What expanding left for later: who used which template.
#[derive(Debug, Default)]
pub struct Expansion {
    uses: Vec<Use>,
    /// `(name, line in the line space, points)` of every template.
    templates: Vec<(String, u32, usize)>,
    /// Devices whose template could not be applied: problems the compiler finds in them
    /// follow from that one and are not repeated.
    broken: Vec<String>,
    /// Problems found while filling in a template's placeholders, with the use (index into
    /// `uses`) they were found for.
    inside: Vec<(Issue, usize)>,
}

/// The values of one device's placeholders.
struct Fill<'a> {
    values: HashMap<&'a str, String>,
}

impl Fill<'_> {
    /// `s` with every placeholder filled in; an unknown or unclosed one is an issue.
    fn text(&self, s: &Located<String>, path: &str, issues: &mut Vec<Issue>) -> Located<String> {
        let mut out = String::with_capacity(s.value.len());
        let mut rest = s.value.as_str();
        while let Some(at) = rest.find(PLACEHOLDER) {
            out.push_str(&rest[..at]);
            let after = &rest[at + PLACEHOLDER.len_utf8()..];
            let Some(end) = after.find('}').filter(|_| after.starts_with('{')) else {
                out.push('$');
                rest = after;
                continue;
            };
            let name = &after[1..end];
            match self.values.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    let mut known: Vec<String> = self
                        .values
                        .keys()
                        .filter(|k| parameter_name_ok(k) || **k == "device" || **k == "unit")
                        .map(|k| format!("${{{k}}}"))
                        .collect();
                    known.sort();
                    issues.push(Issue {
                        line: s.line,
                        col: s.col,
                        path: path.to_owned(),
                        message: format!(
                            "unknown placeholder `${{{name}}}` (known here: {})",
                            known.join(", ")
                        ),
                        file: None,
                    });
                    out.push_str(&format!("${{{name}}}"));
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Located {
            value: out,
            line: s.line,
            col: s.col,
        }
    }

    /// A text that takes no placeholder (a point's name or unit): a `${` in it is an issue.
    fn plain(&self, s: &str, line: u32, col: u32, path: &str, issues: &mut Vec<Issue>) {
        if s.contains(PLACEHOLDER) {
            issues.push(Issue {
                line,
                col,
                path: path.to_owned(),
                message: "placeholders are filled in only in topics, metric names, derived names and point references".to_owned(),
                file: None,
            });
        }
    }
}

/// A template's point for one device.
fn point(
    p: &Located<RawPoint>,
    fill: &Fill<'_>,
    path: &str,
    issues: &mut Vec<Issue>,
) -> Located<RawPoint> {
    let mut p = p.clone();
    fill.plain(
        &p.name,
        p.name.line,
        p.name.col,
        &format!("{path}.name"),
        issues,
    );
    if let Some(u) = &p.value.unit {
        fill.plain(u, p.line, p.col, &format!("{path}.unit"), issues);
    }
    if let Some(publish) = &mut p.value.publish {
        publish.value.topic = fill.text(&publish.topic, &format!("{path}.publish.topic"), issues);
    }
    if let Some(m) = &p.value.metric {
        p.value.metric = Some(fill.text(m, &format!("{path}.metric"), issues));
    }
    p
}

/// A template's derived value for one device.
fn derived(
    d: &Located<RawDerived>,
    fill: &Fill<'_>,
    path: &str,
    issues: &mut Vec<Issue>,
) -> Located<RawDerived> {
    let mut d = d.clone();
    d.value.name = fill.text(&d.name, &format!("{path}.name"), issues);
    d.value.pack_bits = d
        .pack_bits
        .iter()
        .enumerate()
        .map(|(i, b)| fill.text(b, &format!("{path}.pack_bits[{i}]"), issues))
        .collect();
    d.value.publish.value.topic =
        fill.text(&d.publish.topic, &format!("{path}.publish.topic"), issues);
    d
}

/// A template's command for one device.
fn command(
    c: &Located<RawCommand>,
    fill: &Fill<'_>,
    path: &str,
    issues: &mut Vec<Issue>,
) -> Located<RawCommand> {
    let mut c = c.clone();
    c.value.topic = fill.text(&c.topic, &format!("{path}.topic"), issues);
    if let Some(a) = &c.value.ack_topic {
        c.value.ack_topic = Some(fill.text(a, &format!("{path}.ack_topic"), issues));
    }
    if let Some(w) = &c.value.write {
        c.value.write = Some(fill.text(w, &format!("{path}.write"), issues));
    }
    if let Some(payloads) = &mut c.value.payloads {
        for (name, writes) in payloads.iter_mut() {
            for (i, w) in writes.iter_mut().enumerate() {
                w.value.point = fill.text(
                    &w.point,
                    &format!("{path}.payloads.{name}[{i}].point"),
                    issues,
                );
            }
        }
    }
    c
}

fn issue<T>(at: &Located<T>, path: impl Into<String>, message: impl Into<String>) -> Issue {
    Issue {
        line: at.line,
        col: at.col,
        path: path.into(),
        message: message.into(),
        file: None,
    }
}

/// Template names: unique; parameter names: letters, digits and `_`, not `device` or `unit`.
fn check_templates(templates: &[Located<RawTemplate>], sources: &Sources, issues: &mut Vec<Issue>) {
    let mut first: HashMap<&str, &Located<RawTemplate>> = HashMap::new();
    for t in templates {
        let path = format!("templates[{}]", t.name.value);
        if t.name.is_empty() {
            issues.push(issue(
                &t.name,
                format!("{path}.name"),
                "a template needs a name",
            ));
        } else if let Some(f) = first.get(t.name.as_str()) {
            issues.push(issue(
                &t.name,
                format!("{path}.name"),
                format!(
                    "template `{}` is already defined at {}",
                    t.name.value,
                    sources.place(f.name.line, f.name.col)
                ),
            ));
        } else {
            first.insert(&t.name.value, t);
        }
        for (p, v) in &t.parameters {
            if let Some(d) = &v.default
                && let Some(problem) = bad_parameter_value(d)
            {
                issues.push(issue(v, format!("{path}.parameters.{p}.default"), problem));
            }
            if !parameter_name_ok(p) {
                issues.push(issue(
                    v,
                    format!("{path}.parameters.{p}"),
                    format!(
                        "parameter name `{p}` must be letters, digits and `_`, and not `device` or `unit` (those are given)"
                    ),
                ));
            }
        }
    }
}

/// A parameter's name: letters, digits and `_`, and not one of the names every template has.
fn parameter_name_ok(p: &str) -> bool {
    !p.is_empty()
        && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && p != "device"
        && p != "unit"
}

/// Why a parameter's value (a default, or a device's) cannot be used, if it cannot: it is empty,
/// or holds `${` (a parameter's value is used as written, never filled in itself).
fn bad_parameter_value(v: &str) -> Option<String> {
    if v.trim().is_empty() {
        return Some("a parameter's value is empty: give the text it stands for".to_owned());
    }
    if v.contains(PLACEHOLDER) || v.contains("${") {
        return Some(format!(
            "`{}`: a parameter's value is used as written, `${{...}}` is not filled in inside it (write `${{device}}` or `${{unit}}` in the template's topics instead)",
            v.replace(PLACEHOLDER, "$")
        ));
    }
    None
}

/// Expand every device that names a template, in place: its points become the template's (with
/// its own overrides and drops), and the template's derived values and commands are added to
/// the file's. `templates` are the file's and the included ones.
pub fn expand(
    raw: &mut RawConfig,
    templates: &[Located<RawTemplate>],
    sources: &Sources,
    issues: &mut Vec<Issue>,
) -> Expansion {
    check_templates(templates, sources, issues);
    let by_name: HashMap<&str, usize> = templates
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut x = Expansion {
        templates: templates
            .iter()
            .map(|t| (t.name.value.clone(), t.line, t.points.len()))
            .collect(),
        ..Expansion::default()
    };
    let mut new_derived = Vec::new();
    let mut new_commands = Vec::new();
    // Templates without points that devices use.
    let mut empty = std::collections::BTreeSet::new();
    // Each template derived value's name and command's topic as filled in, by (template,
    // 'd' or 'c', index, value): its place in the template, and the devices it came out the
    // same for. Only the first device gets it; more than one is one problem at the template.
    #[allow(clippy::type_complexity)]
    let mut shared: BTreeMap<(usize, char, usize, String), (u32, u32, String, Vec<String>)> =
        BTreeMap::new();
    for (di, d) in raw.devices.iter_mut().enumerate() {
        let dname = if d.name.is_empty() {
            di.to_string()
        } else {
            d.name.value.clone()
        };
        let dpath = format!("devices[{dname}]");
        let Some(tname) = d.template.clone() else {
            if let Some((k, v)) = d.parameters.iter().next() {
                issues.push(issue(
                    v,
                    format!("{dpath}.parameters.{k}"),
                    "parameters are for a template: this device has no `template`",
                ));
            }
            if let Some(first) = d.drop.first() {
                issues.push(issue(
                    first,
                    format!("{dpath}.drop"),
                    "drop leaves out points of a template: this device has no `template`",
                ));
            }
            continue;
        };
        let Some(&ti) = by_name.get(tname.as_str()) else {
            x.broken.push(dpath.clone());
            if sources.include_failed() {
                // The template may be in the file that could not be read: that one problem is
                // reported, not one more per device.
                continue;
            }
            let mut known: Vec<&str> = by_name.keys().copied().collect();
            known.sort_unstable();
            let known = if known.is_empty() {
                "no templates are defined (write them under `templates`, or `include` a library)"
                    .to_owned()
            } else {
                format!("known: {}", known.join(", "))
            };
            issues.push(issue(
                &tname,
                format!("{dpath}.template"),
                format!("unknown template `{}`; {known}", tname.value),
            ));
            continue;
        };
        let t = &templates[ti];
        let mut values: HashMap<&str, String> = HashMap::new();
        values.insert("device", d.name.value.clone());
        values.insert("unit", d.unit.to_string());
        for (k, v) in &d.parameters {
            match t.parameters.get_key_value(k) {
                Some((k, _)) => {
                    if let Some(problem) = bad_parameter_value(v) {
                        issues.push(issue(v, format!("{dpath}.parameters.{k}"), problem));
                    }
                    values.insert(k.as_str(), v.value.clone());
                }
                None => {
                    let names: Vec<&str> = t.parameters.keys().map(String::as_str).collect();
                    issues.push(issue(
                        v,
                        format!("{dpath}.parameters.{k}"),
                        format!(
                            "template `{}` has no parameter `{k}`; its parameters: {}",
                            t.name.value,
                            if names.is_empty() {
                                "none".to_owned()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
        for (k, p) in &t.parameters {
            if values.contains_key(k.as_str()) {
                continue;
            }
            match &p.default {
                Some(v) => {
                    // A `${` in it is reported once, at the template.
                    values.insert(k.as_str(), v.replace(PLACEHOLDER, "$"));
                }
                None => {
                    issues.push(issue(
                        &tname,
                        format!("{dpath}.parameters"),
                        format!(
                            "template `{}` needs parameter `{k}`{}",
                            t.name.value,
                            p.description
                                .as_deref()
                                .map(|s| format!(" ({s})"))
                                .unwrap_or_default()
                        ),
                    ));
                    // Reported once here, not again at every use.
                    values.insert(k.as_str(), format!("${{{k}}}"));
                }
            }
        }
        let fill = Fill { values };
        // Problems inside the template, found for this device.
        let mut inside = Vec::new();
        // Drops and overrides name template points.
        let names: HashSet<&str> = t.points.iter().map(|p| p.name.as_str()).collect();
        let mut dropped = HashSet::new();
        for (i, n) in d.drop.iter().enumerate() {
            if !names.contains(n.as_str()) {
                issues.push(issue(
                    n,
                    format!("{dpath}.drop[{i}]"),
                    format!(
                        "template `{}` has no point `{}` to drop",
                        t.name.value, n.value
                    ),
                ));
            }
            if !dropped.insert(n.value.clone()) {
                issues.push(issue(
                    n,
                    format!("{dpath}.drop[{i}]"),
                    format!("point `{}` is dropped twice", n.value),
                ));
            }
        }
        let mut own: BTreeMap<String, Located<RawPoint>> = BTreeMap::new();
        let mut added = Vec::new();
        for p in std::mem::take(&mut d.value.points) {
            if names.contains(p.name.as_str()) && !own.contains_key(p.name.as_str()) {
                if dropped.contains(p.name.as_str()) {
                    issues.push(issue(
                        &p.name,
                        format!("{dpath}.points[{}]", p.name.value),
                        format!(
                            "point `{}` is both dropped and overridden: do one",
                            p.name.value
                        ),
                    ));
                }
                own.insert(p.name.value.clone(), p);
            } else {
                added.push(p);
            }
        }
        let overridden: Vec<String> = own.keys().cloned().collect();
        let mut points = Vec::with_capacity(t.points.len() + added.len());
        for p in &t.points {
            if dropped.contains(p.name.as_str()) {
                continue;
            }
            match own.remove(p.name.as_str()) {
                Some(mine) => points.push(mine),
                None => points.push(point(
                    p,
                    &fill,
                    &format!("{dpath}.points[{}]", p.name.value),
                    &mut inside,
                )),
            }
        }
        points.extend(added);
        d.value.points = points;
        if t.points.is_empty() {
            // Reported once, at the template.
            x.broken.push(dpath.clone());
            empty.insert(ti);
        }
        let mut prefixes = vec![(dpath.clone(), dpath.clone())];
        // A point this device drops that one of the template's derived values or commands
        // uses: the drop is refused, at the drop entry, and that one is not made.
        let mut refused: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut uses_dropped = |refs: &[&str], what: String| -> bool {
            let mut any = false;
            for (i, n) in d.drop.iter().enumerate() {
                let first = d.drop[..i].iter().all(|m| m.value != n.value);
                let full = format!("{}.{}", d.name.value, n.value);
                if first && refs.contains(&full.as_str()) {
                    refused.entry(i).or_default().push(what.clone());
                    any = true;
                }
            }
            any
        };
        for (i, dv) in t.derived.iter().enumerate() {
            let shown = format!("templates[{}].derived[{i}]", t.name.value);
            let e = derived(dv, &fill, &shown, &mut inside);
            let refs: Vec<&str> = e.pack_bits.iter().map(|b| b.value.as_str()).collect();
            if uses_dropped(&refs, format!("derived value `{}`", e.name.value)) {
                continue;
            }
            let same = shared
                .entry((ti, 'd', i, e.name.value.clone()))
                .or_insert_with(|| (dv.name.line, dv.name.col, shown.clone(), Vec::new()));
            same.3.push(d.name.value.clone());
            if same.3.len() > 1 {
                continue;
            }
            prefixes.push((format!("derived[{}]", e.name.value), shown));
            new_derived.push(e);
        }
        for (i, c) in t.commands.iter().enumerate() {
            let shown = format!("templates[{}].commands[{i}]", t.name.value);
            let e = command(c, &fill, &shown, &mut inside);
            let mut refs: Vec<&str> = e.write.iter().map(|w| w.value.as_str()).collect();
            for writes in e.payloads.iter().flat_map(|p| p.values()) {
                refs.extend(writes.iter().map(|w| w.point.value.as_str()));
            }
            if uses_dropped(&refs, format!("command `{}`", e.topic.value)) {
                continue;
            }
            let same = shared
                .entry((ti, 'c', i, e.topic.value.clone()))
                .or_insert_with(|| {
                    (
                        c.topic.line,
                        c.topic.col,
                        format!("{shown}.topic"),
                        Vec::new(),
                    )
                });
            same.3.push(d.name.value.clone());
            if same.3.len() > 1 {
                continue;
            }
            prefixes.push((
                format!("commands[{}]", raw.commands.len() + new_commands.len()),
                shown,
            ));
            new_commands.push(e);
        }
        for (i, users) in refused {
            let n = &d.drop[i];
            issues.push(issue(
                n,
                format!("{dpath}.drop[{i}]"),
                format!(
                    "point `{}` cannot be dropped: template `{}` uses it in {} (override the point instead of dropping it)",
                    n.value,
                    t.name.value,
                    users.join(" and ")
                ),
            ));
        }
        let index = x.uses.len();
        x.inside.extend(inside.into_iter().map(|i| (i, index)));
        x.uses.push(Use {
            template: ti,
            device: d.name.value.clone(),
            at: (tname.line, tname.col),
            prefixes,
            dropped: d.drop.iter().map(|n| n.value.clone()).collect(),
            overridden,
        });
    }
    for ti in empty {
        let t = &templates[ti];
        issues.push(issue(
            t,
            format!("templates[{}].points", t.name.value),
            "a template needs at least one point (the devices using it would have none)",
        ));
    }
    for ((_, kind, _, value), (line, col, path, devices)) in shared {
        if devices.len() < 2 {
            continue;
        }
        let what = if kind == 'd' {
            "derived value name"
        } else {
            "command topic"
        };
        let names: Vec<String> = devices.iter().map(|d| format!("`{d}`")).collect();
        issues.push(Issue {
            line,
            col,
            path: if kind == 'd' { format!("{path}.name") } else { path },
            message: format!(
                "{what} `{value}` comes out the same for the {} devices using this template ({}): write `${{device}}` in it so each device gets its own",
                devices.len(),
                names.join(", ")
            ),
            file: None,
        });
    }
    raw.derived.extend(new_derived);
    raw.commands.extend(new_commands);
    x
}

impl Expansion {
    /// Problems the compiler found that follow from a template that could not be applied.
    pub fn follows_from_broken(&self, issue: &Issue) -> bool {
        self.broken.iter().any(|p| under(&issue.path, p))
    }

    /// True when filling in a template found a problem.
    pub fn has_issues(&self) -> bool {
        !self.inside.is_empty()
    }

    /// `issues` (or warnings), with the problems found inside templates: each of those is
    /// reported at the template's place and names the device that used it, with that device's
    /// place. One problem inside a template found for several devices is reported once, naming
    /// them all.
    pub fn annotate(&mut self, issues: Vec<Issue>, sources: &Sources) -> Vec<Issue> {
        let mut out = Vec::new();
        let mut tagged = std::mem::take(&mut self.inside);
        for i in issues {
            let user = sources
                .in_templates(i.line)
                .then(|| {
                    self.uses
                        .iter()
                        .position(|u| u.prefixes.iter().any(|(p, _)| under(&i.path, p)))
                })
                .flatten();
            match user {
                Some(u) => tagged.push((i, u)),
                None => out.push(i),
            }
        }
        // The same problem at the same place, whichever device it was found for.
        let mut groups: Vec<(Issue, String, String, Vec<usize>)> = Vec::new();
        for (mut i, u) in tagged {
            let use_ = &self.uses[u];
            let (rest, shown) = use_
                .prefixes
                .iter()
                .find_map(|(p, shown)| {
                    i.path
                        .strip_prefix(p.as_str())
                        .filter(|r| r.is_empty() || r.starts_with(['.', '[']))
                        .map(|r| (r.to_owned(), shown.clone()))
                })
                .unwrap_or_else(|| (i.path.clone(), String::new()));
            if !shown.is_empty() && !shown.starts_with("devices[") {
                i.path = format!("{shown}{rest}");
            }
            // The device's own name in the message (`m1.relay`) does not make it another
            // problem.
            let message = without_word(&i.message, &use_.device);
            match groups
                .iter_mut()
                .find(|(g, r, m, _)| (g.line, g.col, m, r) == (i.line, i.col, &message, &rest))
            {
                Some((_, _, _, users)) => users.push(u),
                None => groups.push((i, rest, message, vec![u])),
            }
        }
        for (mut i, _, _, users) in groups {
            let first = &self.uses[users[0]];
            let _ = write!(
                i.message,
                " (in template `{}`, used by device `{}` at {}",
                self.templates[first.template].0,
                first.device,
                sources.place(first.at.0, first.at.1)
            );
            if users.len() > 1 {
                let others: Vec<String> = users[1..]
                    .iter()
                    .map(|&u| format!("`{}`", self.uses[u].device))
                    .collect();
                let _ = write!(i.message, ", and by {}", others.join(", "));
            }
            i.message.push(')');
            out.push(i);
        }
        out
    }

    /// The templates and includes, for `check`.
    pub fn library(&self, sources: &Sources) -> Library {
        Library {
            includes: sources.includes().to_vec(),
            templates: self
                .templates
                .iter()
                .enumerate()
                .map(|(ti, (name, line, points))| {
                    let (f, l) = sources.locate(*line);
                    TemplateInfo {
                        name: name.clone(),
                        file: sources.file(f).to_owned(),
                        line: l,
                        points: *points,
                        used_by: self
                            .uses
                            .iter()
                            .filter(|u| u.template == ti)
                            .map(|u| u.device.clone())
                            .collect(),
                    }
                })
                .collect(),
            changes: self
                .uses
                .iter()
                .filter(|u| !u.dropped.is_empty() || !u.overridden.is_empty())
                .map(|u| (u.device.clone(), u.dropped.clone(), u.overridden.clone()))
                .collect(),
        }
    }
}

/// `text` with every whole-word `word` (not inside a longer name) written as `\u{0}`.
fn without_word(text: &str, word: &str) -> String {
    if word.is_empty() {
        return text.to_owned();
    }
    let name_char = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(name_char) || after.is_some_and(name_char) {
            out.push_str(word);
        } else {
            out.push('\u{0}');
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

/// True when `path` is `prefix` or a key below it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::{ConfigError, load_str};
    use crate::model::Model;

    const LIB: &str = "\
templates:
  - name: meter
    parameters:
      site: { description: topic prefix }
      phase: { default: L1 }
    points:
      - { name: voltage, kind: input_register, address: 0, type: f32, unit: V, publish: { topic: \"${site}/${device}/voltage\" } }
      - { name: current, kind: input_register, address: 6, type: f32, unit: A, publish: { topic: \"${site}/${device}/${phase}/current\" } }
      - { name: power, kind: input_register, address: 12, type: f32, unit: W, publish: { topic: \"${site}/u${unit}/power\" } }
      - { name: relay, kind: coil, address: 0, writable: true }
    derived:
      - { name: \"${device}_flags\", pack_bits: [\"${device}.relay\"], publish: { topic: \"${site}/${device}/flags\" } }
    commands:
      - { topic: \"${site}/${device}/relay/set\", write: \"${device}.relay\" }
";

    const HEAD: &str = "mqtt: { host: 127.0.0.1, client_id: gw, status_topic: s }\nbuses:\n  - { name: rs485, serial: { device: /dev/null } }\n";

    /// A mapping `main` next to `lib/meters.yaml` = `lib`, loaded with `vars`.
    fn load(main: &str, lib: &str, vars: &[(&str, &str)]) -> Result<Model, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::write(dir.path().join("lib/meters.yaml"), lib).unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, main).unwrap();
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        load_str(&path, main, vars, "h").map_err(|e| {
            let dir = format!("{}/", dir.path().display());
            match e {
                ConfigError::Invalid { .. } => e.to_string().replace(&dir, ""),
                ConfigError::Read { .. } => panic!("{e}"),
            }
        })
    }

    fn topics(m: &Model, device: &str) -> Vec<String> {
        let d = m.devices.iter().find(|d| &*d.name == device).unwrap();
        d.points
            .iter()
            .map(|&p| {
                let p = &m.points[p];
                format!(
                    "{}@{}={}",
                    p.name,
                    p.address,
                    p.publish
                        .as_ref()
                        .map_or("-".into(), |r| r.topic.to_string())
                )
            })
            .collect()
    }

    #[test]
    fn parameters_defaults_device_and_unit_are_filled_in() {
        let main = format!(
            "{HEAD}include: [lib/meters.yaml]\ndevices:\n  - {{ name: m1, bus: rs485, unit: 7, template: meter, parameters: {{ site: \"${{SITE}}\" }} }}\n  - {{ name: m2, bus: rs485, unit: 8, template: meter, parameters: {{ site: b, phase: L3 }} }}\n"
        );
        let m = load(&main, LIB, &[("SITE", "plant")]).unwrap();
        assert_eq!(
            topics(&m, "m1"),
            [
                "voltage@0=plant/m1/voltage",
                "current@6=plant/m1/L1/current",
                "power@12=plant/u7/power",
                "relay@0=-"
            ]
        );
        assert_eq!(topics(&m, "m2")[1], "current@6=b/m2/L3/current");
        // Each device gets the template's derived value and command, named for it.
        let derived: Vec<&str> = m.derived.iter().map(|d| &*d.name).collect();
        assert_eq!(derived, ["m1_flags", "m2_flags"]);
        assert_eq!(&*m.derived[1].publish.topic, "b/m2/flags");
        let commands: Vec<&str> = m.commands.iter().map(|c| &*c.topic).collect();
        assert_eq!(commands, ["plant/m1/relay/set", "b/m2/relay/set"]);
        // check shows the include and who used the template.
        assert_eq!(m.library.includes.len(), 1);
        assert!(m.library.includes[0].ends_with("lib/meters.yaml"));
        assert_eq!(m.library.templates[0].used_by, ["m1", "m2"]);
        assert_eq!(m.library.templates[0].line, 2);
    }

    #[test]
    fn a_device_overrides_drops_and_adds_points() {
        let main = format!(
            "{HEAD}include: [lib/meters.yaml]\ndevices:\n  - name: m1\n    bus: rs485\n    template: meter\n    parameters: {{ site: a }}\n    drop: [power, relay]\n    points:\n      - {{ name: extra, kind: input_register, address: 70, type: f32, publish: {{ topic: a/m1/hz }} }}\n      - {{ name: current, kind: input_register, address: 8, type: f32, publish: {{ topic: a/m1/i }} }}\n"
        );
        // The derived value and command refer to the dropped relay: drop them from the library.
        let lib = LIB.split("    derived:").next().unwrap();
        let m = load(&main, lib, &[]).unwrap();
        assert_eq!(
            topics(&m, "m1"),
            [
                "voltage@0=a/m1/voltage",
                "current@8=a/m1/i",
                "extra@70=a/m1/hz"
            ]
        );
    }

    #[test]
    fn mistakes_in_using_a_template_are_reported_where_the_device_says_them() {
        let main = format!(
            "{HEAD}include: [lib/meters.yaml]\ndevices:\n  - {{ name: m1, bus: rs485, unit: 1, template: metre }}\n  - {{ name: m2, bus: rs485, unit: 2, template: meter, parameters: {{ sit: a }}, drop: [pwr] }}\n  - {{ name: m3, bus: rs485, unit: 3, parameters: {{ site: a }}, points: [{{ name: x, kind: coil, address: 0 }}] }}\n"
        );
        let e = load(&main, LIB, &[]).unwrap_err();
        assert_eq!(
            e,
            "m.yaml:6:48: devices[m1].template: unknown template `metre`; known: meter\n\
             m.yaml:7:48: devices[m2].parameters: template `meter` needs parameter `site` (topic prefix)\n\
             m.yaml:7:74: devices[m2].parameters.sit: template `meter` has no parameter `sit`; its parameters: phase, site\n\
             m.yaml:7:86: devices[m2].drop[0]: template `meter` has no point `pwr` to drop\n\
             m.yaml:8:58: devices[m3].parameters.site: parameters are for a template: this device has no `template`"
        );
    }

    #[test]
    fn problems_inside_a_template_name_the_template_place_and_the_device() {
        // An unknown placeholder, found while expanding.
        let lib = LIB.replace("${site}/u${unit}/power", "${site}/${serial}/power");
        let main = format!(
            "{HEAD}include: [lib/meters.yaml]\ndevices:\n  - {{ name: m1, bus: rs485, template: meter, parameters: {{ site: a }} }}\n"
        );
        let e = load(&main, &lib, &[]).unwrap_err();
        assert_eq!(
            e,
            "lib/meters.yaml:9:97: devices[m1].points[power].publish.topic: unknown placeholder `${serial}` (known here: ${device}, ${phase}, ${site}, ${unit}) (in template `meter`, used by device `m1` at m.yaml:6:39)"
        );
        // A problem the compiler finds in a template's point: the template's line and column,
        // and the device.
        let lib = LIB.replace("address: 12, type: f32", "address: 12, type: bool");
        let e = load(&main, &lib, &[]).unwrap_err();
        assert!(
            e.starts_with("lib/meters.yaml:9:65: devices[m1].points[power].type: "),
            "{e}"
        );
        assert!(
            e.ends_with("(in template `meter`, used by device `m1` at m.yaml:6:39)"),
            "{e}"
        );
        // One mistake, three devices: reported once, naming them all.
        let three = format!(
            "{HEAD}include: [lib/meters.yaml]\ndevices:\n  - {{ name: m1, bus: rs485, unit: 1, template: meter, parameters: {{ site: a }} }}\n  - {{ name: m2, bus: rs485, unit: 2, template: meter, parameters: {{ site: a }} }}\n  - {{ name: m3, bus: rs485, unit: 3, template: meter, parameters: {{ site: a }} }}\n"
        );
        let lib = LIB.replace("address: 12, type: f32", "address: 12, type: bool");
        let e = load(&three, &lib, &[]).unwrap_err();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.starts_with("lib/meters.yaml:9:65: devices[m1].points[power].type: "),
            "{e}"
        );
        assert!(
            e.ends_with(
                "(in template `meter`, used by device `m1` at m.yaml:6:48, and by `m2`, `m3`)"
            ),
            "{e}"
        );
        // A topic without ${device}: the second device collides with the first.
        let lib = LIB.replace("${site}/${device}/voltage", "${site}/voltage");
        let two = format!(
            "{HEAD}include: [lib/meters.yaml]\ndevices:\n  - {{ name: m1, bus: rs485, unit: 1, template: meter, parameters: {{ site: a }} }}\n  - {{ name: m2, bus: rs485, unit: 2, template: meter, parameters: {{ site: a }} }}\n"
        );
        let e = load(&two, &lib, &[]).unwrap_err();
        assert_eq!(
            e,
            "lib/meters.yaml:7:98: devices[m2].points[voltage].publish.topic: topic `a/voltage` is already published by devices[m1].points[voltage].publish.topic (in template `meter`, used by device `m2` at m.yaml:7:48)"
        );
    }

    #[test]
    fn templates_in_the_mapping_file_read_no_environment_variables() {
        let main = format!(
            "{HEAD}templates:\n  - name: t\n    points:\n      - {{ name: v, kind: input_register, address: 0, publish: {{ topic: \"${{SITE}}/${{device}}\" }} }}\ndevices:\n  - {{ name: d, bus: rs485, template: t }}\n"
        );
        let e = load(&main, "templates: []\n", &[("SITE", "plant")]).unwrap_err();
        assert_eq!(
            e,
            "m.yaml:7:72: devices[d].points[v].publish.topic: unknown placeholder `${SITE}` (known here: ${device}, ${unit}) (in template `t`, used by device `d` at m.yaml:9:38)"
        );
    }

    #[test]
    fn include_cycles_duplicates_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("a.yaml"), "include: [b.yaml]\ntemplates: []\n").unwrap();
        std::fs::write(
            p.join("b.yaml"),
            "include: [a.yaml]\ntemplates:\n  - { name: t, points: [] }\n",
        )
        .unwrap();
        std::fs::write(
            p.join("c.yaml"),
            "templates:\n  - { name: t, points: [], colour: red }\n",
        )
        .unwrap();
        let main = format!(
            "{HEAD}include: [a.yaml, nope.yaml, c.yaml]\ntemplates:\n  - {{ name: t, points: [] }}\ndevices:\n  - {{ name: d, bus: rs485, points: [{{ name: x, kind: coil, address: 0 }}] }}\n"
        );
        let path = p.join("m.yaml");
        std::fs::write(&path, &main).unwrap();
        let e = load_str(&path, &main, HashMap::new(), "h")
            .unwrap_err()
            .to_string()
            .replace(&format!("{}/", p.display()), "");
        assert_eq!(
            e,
            "m.yaml:4:19: include[1]: cannot read `nope.yaml`: No such file or directory (os error 2)\n\
             b.yaml:1:11: include[0]: include cycle: a.yaml -> b.yaml -> a.yaml (a file must not include itself, directly or through others)\n\
             b.yaml:3:13: templates[t].name: template `t` is already defined at m.yaml:6:13\n\
             c.yaml:2:28: templates[t].colour: unknown field `colour`, expected one of name, description, parameters, points, derived, commands"
        );
    }

    /// The configuration id covers the included templates (a changed value changes it, a
    /// comment does not), and `${CONFIG_ID}` in the mapping is filled in with it.
    #[test]
    fn the_configuration_id_covers_included_templates() {
        let main = format!(
            "{HEAD}include: [lib/meters.yaml]\ndevices:\n  - {{ name: m1, bus: rs485, unit: 7, template: meter, parameters: {{ site: \"a-${{CONFIG_ID}}\" }} }}\n"
        );
        let id = |lib: &str| {
            let m = load(&main, lib, &[]).unwrap();
            let id = m.identity.config_id.to_string();
            assert_eq!(id.len(), 12);
            let topic = m.points[0].publish.as_ref().map(|p| p.topic.to_string());
            assert_eq!(topic, Some(format!("a-{id}/m1/voltage")));
            id
        };
        let base = id(LIB);
        assert_eq!(id(&format!("# the meters of site a\n{LIB}")), base);
        assert_ne!(id(&LIB.replace("address: 6", "address: 8")), base);
    }

    #[test]
    fn a_device_name_in_a_message_is_found_as_a_whole_word_only() {
        use super::without_word;
        assert_eq!(
            without_word("point `m1.relay` of m1, not m10 or am1", "m1"),
            "point `\u{0}.relay` of \u{0}, not m10 or am1"
        );
        assert_eq!(without_word("abc", ""), "abc");
    }

    /// `check --expand` is what runs: written back as a mapping, it compiles to the same
    /// devices, points, read plans, derived values and commands.
    #[test]
    fn the_expanded_mapping_compiles_to_the_same_model() {
        let main = format!(
            "{HEAD}include: [lib/meters.yaml]\ndevices:\n  - {{ name: m1, bus: rs485, unit: 7, poll_interval: 2s, template: meter, parameters: {{ site: a }} }}\n  - {{ name: m2, tcp: {{ host: 10.0.0.2, port: 1502 }}, template: meter, parameters: {{ site: b }}, drop: [voltage] }}\n"
        );
        // A unit that is no plain YAML scalar, and a literal `${` in a topic, read back as they are.
        let lib = LIB
            .replace("unit: A", "unit: \"%\"")
            .replace("${site}/${device}/voltage", "${site}/${device}/$${p}: $$v");
        let m = load(&main, &lib, &[]).unwrap();
        let expanded = crate::check::expanded(&m);
        assert!(expanded.contains("unit: \"%\""), "{expanded}");
        assert!(expanded.contains("\"a/m1/$${p}: $$v\""), "{expanded}");
        assert!(
            expanded.contains("# dropped: voltage; overridden: none"),
            "{expanded}"
        );
        let again = format!("{HEAD}{expanded}");
        let m2 = load(&again, "templates: []\n", &[]).unwrap();
        let without_notes = |s: String| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            without_notes(crate::check::expanded(&m2)),
            without_notes(expanded)
        );
        // The configuration id differs: the two texts differ (includes, templates).
        let summary = |m: &Model| {
            crate::check::summary(m)
                .replace(&crate::check::library(m), "")
                .replace(&*m.identity.config_id, "")
        };
        assert_eq!(summary(&m2), summary(&m));
        assert_eq!(m2.points.len(), 7);
        assert_eq!(
            m2.points[0].publish.as_ref().map(|p| p.topic.to_string()),
            Some("a/m1/${p}: $v".to_owned())
        );
    }

    /// The shipped twenty meters (SDM630 template, units `%` among them): the expanded output,
    /// under the example's own `mqtt` and `buses`, loads and compiles to the same 680 points.
    #[test]
    fn the_shipped_twenty_meters_expand_to_a_mapping_that_loads_the_same() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/twenty-meters.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let m = load_str(&path, &text, HashMap::new(), "h").unwrap();
        let expanded = crate::check::expanded(&m);
        assert!(expanded.contains("unit: \"%\""), "{expanded}");
        let head: String = text
            .lines()
            .filter(|l| {
                l.starts_with("mqtt:")
                    || l.starts_with("buses:")
                    || l.starts_with("  - { name: rs485")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let again = format!("{head}{expanded}");
        let m2 = load_str(
            &path.with_file_name("expanded.yaml"),
            &again,
            HashMap::new(),
            "h",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.points.len(), 680);
        assert_eq!(m2.points.len(), 680);
        let without_notes = |s: String| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            without_notes(crate::check::expanded(&m2)),
            without_notes(expanded)
        );
        // Another file name: another default client id; the rest is the same.
        let summary = |m: &Model| -> Vec<String> {
            crate::check::summary(m)
                .replace(&crate::check::library(m), "")
                .replace(&*m.identity.config_id, "")
                .lines()
                .filter(|l| !l.starts_with("mqtt:"))
                .map(str::to_owned)
                .collect()
        };
        let (a, b) = (summary(&m), summary(&m2));
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a, b);
        }
    }
}
