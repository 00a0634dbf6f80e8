//! The Sparkplug B birth/death sequence number (`bdSeq`), kept in the state directory so that
//! it survives restarts and kill -9.
//!
//! Sparkplug 3.0 (tck-id-topics-nbirth-bdseq-increment, -nbirth-bdseq-matching): every MQTT
//! CONNECT registers an NDEATH will carrying bdSeq, and the NBIRTH of that connection carries
//! the same value; the next CONNECT carries the next value, 0-255, wrapping. A node that
//! restarts at 0 looks to a host like an old session and is dropped, so the value is written
//! to disk (write, fsync, rename) before the CONNECT that uses it.
//!
//! Must not: know anything of payloads or the session beyond the number.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file in the state directory.
pub const FILE: &str = "sparkplug-bdseq";

/// The bdSeq counter; see the module docs.
#[derive(Debug)]
pub struct BdSeq {
    path: PathBuf,
    next: u64,
}

impl BdSeq {
    /// Open the counter in `dir` (created if missing). The file holds the bdSeq of the last
    /// CONNECT; the next is one more. Missing: 0. Unreadable: 0, with a warning.
    pub fn open(dir: &Path) -> BdSeq {
        let path = dir.join(FILE);
        let next = match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(last) => (last + 1) % 256,
                Err(_) => {
                    tracing::warn!(path = %path.display(), "sparkplug bdSeq file unreadable; starting at 0");
                    0
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "sparkplug bdSeq file unreadable; starting at 0");
                0
            }
        };
        BdSeq { path, next }
    }

    /// The bdSeq for the next CONNECT, stored before it is returned.
    ///
    /// # Errors
    /// The value could not be stored (the state directory is not a writable directory): the
    /// caller must not CONNECT with it, since after a restart the node would reuse an old
    /// bdSeq (or start at 0) and hosts would drop it. The counter does not advance, so the
    /// next attempt retries the same value.
    pub fn take(&mut self) -> std::io::Result<u64> {
        let v = self.next;
        self.store(v)?;
        self.next = (v + 1) % 256;
        Ok(v)
    }

    /// Where the counter is kept, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn store(&self, v: u64) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{v}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_counts_on_across_opens_and_wraps_at_256() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = BdSeq::open(dir.path());
        let mut take = move || b.take().unwrap();
        assert_eq!((take(), take()), (0, 1));
        let mut b = BdSeq::open(dir.path());
        assert_eq!(
            b.take().unwrap(),
            2,
            "a restart goes on from the last CONNECT"
        );
        std::fs::write(dir.path().join(FILE), "255\n").unwrap();
        let mut b = BdSeq::open(dir.path());
        assert_eq!((b.take().unwrap(), b.take().unwrap()), (0, 1));
    }

    #[test]
    fn a_bdseq_that_cannot_be_stored_is_not_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        // The "state directory" is a file: nothing can be stored below it.
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let mut b = BdSeq::open(&file);
        assert!(b.take().is_err());
        assert!(b.take().is_err(), "and it does not advance");
        // Once the directory is usable, the counter goes on from where it stood.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(b.take().unwrap(), 0);
        assert_eq!(b.take().unwrap(), 1);
    }
}
