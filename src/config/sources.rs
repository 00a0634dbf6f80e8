//! The files a mapping is made of: the mapping file and the fragments it includes (`include:`),
//! read here, with one line space over all of them.
//!
//! Line space: line `n` of the `k`-th file read (the mapping file is 0) is
//! `k * LINES_PER_FILE + n`, the way rustc's `SourceMap` gives every file its own range of one
//! position space. A [`Located`] value from an included file so carries its file through the
//! compiler unchanged, and [`Sources::localise`] turns an issue's line back into the file and
//! its own line when the issues are reported.
//!
//! Templates: inside a `templates` section (and in the whole of an included fragment) `${...}`
//! is a template placeholder, not an environment variable. [`shield`] hides each `${` of those
//! lines from the parser's interpolation by writing [`PLACEHOLDER`] for its `$` (one character
//! for one, so every column stays); `templates` turns the placeholders into values.
//!
//! This reads files; it does not check what they mean (that is `templates` and `compile`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Issue;
use super::raw::{RawFragment, RawTemplate};
use super::yaml::{Located, parse_at};

/// Lines per file in the mapping's line space: no mapping file is this long.
pub const LINES_PER_FILE: u32 = 1_000_000;

/// What `$` of a template placeholder `${name}` is read as (a private-use character, which no
/// mapping has a reason to hold).
pub const PLACEHOLDER: char = '\u{E000}';

/// Most files one mapping may be made of (the line space holds 4294).
const MAX_FILES: usize = 1000;

/// Largest file that may be included, in bytes (4 MiB: the whole SunSpec model library as
/// templates is far less).
pub const MAX_INCLUDE_BYTES: u64 = 4 * 1024 * 1024;

/// The files read so far, by their index in the line space.
#[derive(Debug)]
pub struct Sources {
    /// Each file as it is named in messages: the mapping's path, and each include joined to
    /// the directory of the file that includes it.
    files: Vec<PathBuf>,
    /// Each file's canonical path (to find cycles and files included twice).
    canonical: Vec<PathBuf>,
    /// The lines (in the line space, inclusive) of each `templates` section.
    template_lines: Vec<(u32, u32)>,
    /// True when an include could not be read or parsed: its templates are unknown, so a
    /// device naming an unknown template may be naming one of them.
    failed: bool,
}

impl Sources {
    /// The sources of a mapping file, before anything is read.
    pub fn new(mapping: &Path) -> Self {
        Sources {
            files: vec![mapping.to_owned()],
            canonical: vec![std::fs::canonicalize(mapping).unwrap_or_else(|_| mapping.to_owned())],
            template_lines: Vec::new(),
            failed: false,
        }
    }

    /// True when an included file could not be read or parsed (its problem is reported).
    pub fn include_failed(&self) -> bool {
        self.failed
    }

    /// The file a line of the line space is in (its index), and the line in that file.
    pub fn locate(&self, line: u32) -> (usize, u32) {
        ((line / LINES_PER_FILE) as usize, line % LINES_PER_FILE)
    }

    /// A file's name as messages give it.
    pub fn file(&self, index: usize) -> &Path {
        self.files
            .get(index)
            .map_or(Path::new("?"), PathBuf::as_path)
    }

    /// Every included file, in the order read.
    pub fn includes(&self) -> &[PathBuf] {
        &self.files[1..]
    }

    /// `file:line:col` of a position in the line space.
    pub fn place(&self, line: u32, col: u32) -> String {
        let (f, l) = self.locate(line);
        format!("{}:{l}:{col}", self.file(f).display())
    }

    /// True when the line is inside a `templates` section or an included fragment.
    pub fn in_templates(&self, line: u32) -> bool {
        self.template_lines
            .iter()
            .any(|&(a, b)| (a..=b).contains(&line))
    }

    /// Each issue with its own file (when not the mapping file) and its line in that file.
    pub fn localise(&self, issues: &mut [Issue]) {
        for i in issues {
            let (f, l) = self.locate(i.line);
            if f > 0 {
                i.file = Some(self.file(f).to_owned());
                i.line = l;
            }
        }
    }

    /// `text` of file `index` with the `${` of its templates (all of it when `fragment`)
    /// shielded from environment interpolation; notes where its templates are.
    pub fn shield(&mut self, index: usize, text: &str, fragment: bool) -> String {
        let base = index as u32 * LINES_PER_FILE;
        let (out, region) = shield(text, fragment);
        if let Some((a, b)) = region {
            self.template_lines.push((base + a, base + b));
        }
        out
    }
}

/// An included file's `text` with every `${` shielded, as it is parsed (for the configuration
/// id).
pub fn shielded_fragment(text: &str) -> String {
    shield(text, true).0
}

/// `text` with the `$` of every `${` (but not `$${`) inside the top-level `templates:` block,
/// or everywhere when `whole`, written as [`PLACEHOLDER`]; and that block's first and last line
/// (1-based). The block runs from the line `templates:` starts at column 1 to the line before
/// the next top-level key.
fn shield(text: &str, whole: bool) -> (String, Option<(u32, u32)>) {
    let mut out = String::with_capacity(text.len() + 16);
    let mut region: Option<(u32, u32)> = None;
    let mut inside = false;
    let mut last = 0u32;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let n = i as u32 + 1;
        last = n;
        let top_level_key = line.starts_with(|c: char| !c.is_whitespace() && c != '#' && c != '-');
        if top_level_key {
            if inside {
                region = region.map(|(a, _)| (a, n - 1));
            }
            inside = line.starts_with("templates:");
            if inside {
                region = Some((n, n));
            }
        }
        if whole || inside {
            let mut prev = '\0';
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' && prev != '$' && chars.peek() == Some(&'{') {
                    out.push(PLACEHOLDER);
                } else {
                    out.push(c);
                }
                prev = c;
            }
        } else {
            out.push_str(line);
        }
    }
    if whole {
        return (out, Some((1, last.max(1))));
    }
    if inside {
        region = region.map(|(a, _)| (a, last));
    }
    (out, region)
}

/// `path` with `a/../` and `./` taken out, as messages show it (`lib/../lib/a.yaml` is
/// `lib/a.yaml`); symbolic links are not followed, so this is for showing only.
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        return PathBuf::from(".");
    }
    out.iter().collect()
}

/// The text of an included file: refused (with the reason, naming `shown`) unless, symbolic
/// links resolved (`canonical`), it is a regular file of at most [`MAX_INCLUDE_BYTES`]. Read
/// through a limit too, so a file growing meanwhile cannot exhaust memory; a directory, a
/// device (`/dev/zero`) or a FIFO (which would block `check` for ever) is never opened.
pub fn read_include(canonical: &Path, shown: &Path) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(canonical)
        .map_err(|e| format!("cannot read `{}`: {e}", shown.display()))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, FIFO or socket)"
        };
        return Err(format!(
            "cannot include `{}`: it is {what}; an include names a YAML file of templates",
            shown.display()
        ));
    }
    let too_big = || {
        format!(
            "cannot include `{}`: it is larger than {} MiB, the most an included file may be",
            shown.display(),
            MAX_INCLUDE_BYTES / (1024 * 1024)
        )
    };
    if meta.len() > MAX_INCLUDE_BYTES {
        return Err(too_big());
    }
    let file = std::fs::File::open(canonical)
        .map_err(|e| format!("cannot read `{}`: {e}", shown.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_INCLUDE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read `{}`: {e}", shown.display()))?;
    if bytes.len() as u64 > MAX_INCLUDE_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|_| {
        format!(
            "cannot include `{}`: it is not UTF-8 text, so not a YAML file of templates",
            shown.display()
        )
    })
}

/// Parse problems of an included file, told without its contents: the parser's position and
/// key path stay, and a message quoting a value of the file (`invalid type: string "…"`) is
/// replaced by a generic reason. An include may name any file (`/etc/shadow`); its text must
/// not end up in a log.
fn without_contents(mut issues: Vec<Issue>) -> Vec<Issue> {
    const GENERIC: &str = "this is not a YAML file of templates as `fieldgate schema --library` describes (a syntax error, or a value of the wrong type, here)";
    let word = |s: &str| {
        s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))
    };
    for i in &mut issues {
        if !word(&i.path) {
            // A key of the file that is no key a fragment has (a line of /etc/shadow).
            i.path = String::new();
            i.message = GENERIC.to_owned();
        } else if i.message.contains(['"', '\'']) {
            i.message = GENERIC.to_owned();
        }
    }
    issues
}

/// Read the fragments `includes` names (relative to the file `from`), and theirs, adding their
/// templates to `templates`. `chain` holds the canonical paths of the files being included,
/// outermost first: an include of one of them is a cycle. A file included twice by different
/// paths (a diamond) is read once.
pub fn include_all(
    sources: &mut Sources,
    includes: &[Located<String>],
    from: usize,
    chain: &mut Vec<usize>,
    templates: &mut Vec<Located<RawTemplate>>,
    issues: &mut Vec<Issue>,
) {
    for (i, inc) in includes.iter().enumerate() {
        let key = format!("include[{i}]");
        let dir = sources.file(from).parent().unwrap_or(Path::new(""));
        let path = tidy(&dir.join(&inc.value));
        let mut issue = |message: String| {
            issues.push(Issue {
                line: inc.line,
                col: inc.col,
                path: key.clone(),
                message,
                file: None,
            });
        };
        if inc.value.trim().is_empty() {
            issue("an include names a file: write its path, relative to this file".into());
            continue;
        }
        let canonical = match std::fs::canonicalize(&path) {
            Ok(c) => c,
            Err(e) => {
                issue(format!("cannot read `{}`: {e}", path.display()));
                sources.failed = true;
                continue;
            }
        };
        if let Some(at) = chain
            .iter()
            .position(|&f| sources.canonical[f] == canonical)
        {
            let mut names: Vec<String> = chain[at..]
                .iter()
                .map(|&f| sources.file(f).display().to_string())
                .collect();
            names.push(path.display().to_string());
            issue(format!(
                "include cycle: {} (a file must not include itself, directly or through others)",
                names.join(" -> ")
            ));
            continue;
        }
        if sources.canonical.contains(&canonical) {
            continue;
        }
        if sources.files.len() >= MAX_FILES {
            issue(format!("more than {MAX_FILES} files are included"));
            sources.failed = true;
            continue;
        }
        let text = match read_include(&canonical, &path) {
            Ok(t) => t,
            Err(message) => {
                issue(message);
                sources.failed = true;
                continue;
            }
        };
        let index = sources.files.len();
        sources.files.push(path);
        sources.canonical.push(canonical);
        let shielded = sources.shield(index, &text, true);
        let fragment: RawFragment =
            match parse_at(&shielded, HashMap::new(), index as u32 * LINES_PER_FILE) {
                Ok(f) => f,
                Err(found) => {
                    issues.extend(without_contents(found));
                    sources.failed = true;
                    continue;
                }
            };
        chain.push(index);
        include_all(sources, &fragment.include, index, chain, templates, issues);
        chain.pop();
        templates.extend(fragment.templates);
    }
}

/// Every file a mapping is made of: the mapping itself and each file it includes, directly or
/// through others (canonical paths, each once), for `run --watch`. Best effort: a file that
/// cannot be read or parsed ends the search there (loading it reports why).
pub fn files_of(mapping: &Path) -> Vec<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Includes {
        #[serde(default)]
        include: Vec<String>,
    }
    let mut files = vec![std::fs::canonicalize(mapping).unwrap_or_else(|_| mapping.to_owned())];
    let mut next = 0;
    while next < files.len() && files.len() < MAX_FILES {
        let file = files[next].clone();
        next += 1;
        let text = if next == 1 {
            std::fs::read_to_string(&file).ok()
        } else {
            read_include(&file, &file).ok()
        };
        let Some(text) = text else {
            continue;
        };
        if !text.contains("include") {
            continue;
        }
        // The mapping's includes may name environment variables; fragments read none.
        let vars = if next == 1 {
            std::env::vars().collect()
        } else {
            HashMap::new()
        };
        let (shielded, _) = shield(&text, next > 1);
        let Ok(found) = super::yaml::parse::<Includes>(&shielded, vars) else {
            continue;
        };
        let dir = file.parent().unwrap_or(Path::new("")).to_owned();
        for inc in found.include {
            if let Ok(c) = std::fs::canonicalize(dir.join(inc))
                && !files.contains(&c)
            {
                files.push(c);
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_templates_block_is_shielded_and_columns_stay() {
        let text = "mqtt: { host: \"${H}\" }\ntemplates:\n- name: t\n  # ${c}\n  x: a/${device}/$${lit}\ndevices:\n  - ${D}\n";
        let (out, region) = shield(text, false);
        assert_eq!(region, Some((2, 5)));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "mqtt: { host: \"${H}\" }");
        assert_eq!(lines[4], "  x: a/\u{E000}{device}/$${lit}");
        assert_eq!(
            lines[4].chars().count(),
            "  x: a/${device}/$${lit}".chars().count()
        );
        assert_eq!(lines[6], "  - ${D}");
        let (all, region) = shield("templates: []\na: ${x}\n", true);
        assert_eq!(region, Some((1, 2)));
        assert!(all.contains("\u{E000}{x}"));
        // The block may run to the end of the file.
        assert_eq!(shield("a: 1\ntemplates:\n  - x\n", false).1, Some((2, 3)));
        assert_eq!(shield("a: 1\n", false).1, None);
    }

    #[test]
    fn lines_of_included_files_are_found_again() {
        let mut s = Sources::new(Path::new("m.yaml"));
        s.files.push("lib/a.yaml".into());
        s.canonical.push("/x/lib/a.yaml".into());
        let mut issues = vec![
            Issue {
                line: 7,
                col: 3,
                path: String::new(),
                message: String::new(),
                file: None,
            },
            Issue {
                line: LINES_PER_FILE + 12,
                col: 5,
                path: String::new(),
                message: String::new(),
                file: None,
            },
        ];
        assert_eq!(s.place(LINES_PER_FILE + 12, 5), "lib/a.yaml:12:5");
        s.localise(&mut issues);
        assert_eq!((issues[0].line, issues[0].file.as_deref()), (7, None));
        assert_eq!(
            (issues[1].line, issues[1].file.as_deref()),
            (12, Some(Path::new("lib/a.yaml")))
        );
    }

    #[test]
    fn only_regular_files_of_a_sane_size_are_included() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let refused = |path: &Path| read_include(path, Path::new("shown")).unwrap_err();
        assert_eq!(
            refused(p),
            "cannot include `shown`: it is a directory; an include names a YAML file of templates"
        );
        assert!(
            refused(Path::new("/dev/zero")).contains("not a regular file"),
            "{}",
            refused(Path::new("/dev/zero"))
        );
        let fifo = p.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(refused(&fifo).contains("not a regular file"));
        let big = p.join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_INCLUDE_BYTES as usize + 1]).unwrap();
        assert_eq!(
            refused(&big),
            "cannot include `shown`: it is larger than 4 MiB, the most an included file may be"
        );
        std::fs::write(&big, "templates: []\n").unwrap();
        assert_eq!(read_include(&big, &big).unwrap(), "templates: []\n");
        // A file that is no YAML of templates: its position, not its contents.
        let issues = without_contents(vec![Issue {
            line: 1,
            col: 1,
            path: "root:$6$x:19000".into(),
            message: "unknown field `root:$6$x:19000`".into(),
            file: None,
        }]);
        assert_eq!(issues[0].path, "");
        assert!(!issues[0].message.contains("root"));
    }

    #[test]
    fn the_files_of_a_mapping_are_found_through_its_includes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("lib")).unwrap();
        std::fs::write(p.join("m.yaml"), "include: [lib/a.yaml]\nmqtt: {}\n").unwrap();
        std::fs::write(p.join("lib/a.yaml"), "include: [b.yaml, ../lib/a.yaml]\n").unwrap();
        std::fs::write(p.join("lib/b.yaml"), "templates: []\n").unwrap();
        let files = files_of(&p.join("m.yaml"));
        let names: Vec<String> = files
            .iter()
            .map(|f| {
                f.strip_prefix(p.canonicalize().unwrap())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["m.yaml", "lib/a.yaml", "lib/b.yaml"]);
    }
}
