//! A small durable file of text lines in the state directory, for a profile's state that
//! must survive a restart (the Sparkplug store-and-forward values).
//!
//! Appends are one `write(2)` each, so a kill -9 loses nothing written (a power cut may lose
//! what the page cache held); a replacement is written to a temporary file, fsynced and
//! renamed over the old one. A torn last line (no newline) is ignored on reading.
//!
//! Must not: know what the lines mean.

use std::io::Write;
use std::path::{Path, PathBuf};

/// See the module docs.
#[derive(Debug)]
pub struct LineFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl LineFile {
    /// The file `name` in `dir` (created when first written).
    pub fn new(dir: &Path, name: &str) -> LineFile {
        LineFile {
            path: dir.join(name),
            file: None,
        }
    }

    /// Every complete line; none when the file is missing or unreadable (logged).
    pub fn read(&self) -> Vec<String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let complete = text.rfind('\n').map_or("", |end| &text[..end]);
                complete
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "state file unreadable");
                Vec::new()
            }
        }
    }

    /// Add `lines` at the end, in one write.
    pub fn append(&mut self, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let mut buf = String::new();
        for l in lines {
            buf.push_str(l);
            buf.push('\n');
        }
        let result = (|| {
            if self.file.is_none() {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                self.file = Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.path)?,
                );
            }
            match self.file.as_mut() {
                Some(f) => f.write_all(buf.as_bytes()),
                None => Ok(()),
            }
        })();
        if let Err(e) = result {
            self.file = None;
            tracing::error!(path = %self.path.display(), error = %e, "cannot write state file");
        }
    }

    /// Make the file exactly `lines` (write, fsync, rename).
    pub fn replace(&mut self, lines: &[String]) {
        self.file = None;
        let result = (|| {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            let mut buf = String::new();
            for l in lines {
                buf.push_str(l);
                buf.push('\n');
            }
            f.write_all(buf.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = result {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write state file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_replacements_read_back_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = LineFile::new(dir.path(), "x");
        assert!(f.read().is_empty());
        f.append(&["a".into(), "b".into()]);
        f.append(&["c".into()]);
        assert_eq!(f.read(), ["a", "b", "c"]);
        f.replace(&["d".into()]);
        f.append(&["e".into()]);
        assert_eq!(f.read(), ["d", "e"]);
        std::fs::write(dir.path().join("x"), "d\ne\nhalf").unwrap();
        assert_eq!(LineFile::new(dir.path(), "x").read(), ["d", "e"]);
    }
}
