//! The outbound buffer: every QoS 1/2 publication the gateway accepted, kept until the broker
//! acknowledged it. In memory always; on disk too when a path is configured, so that it survives
//! restarts, kill -9 and power cuts.
//!
//! On disk it is an append-only log in segment files (`<first seq>.seg`, 20 digits) under one
//! directory. Each segment starts with the magic `FGQ1`, then records:
//!
//! ```text
//! len: u32 LE | crc32(body): u32 LE | body (len bytes)
//! body = 1 | seq u64 | created_ms i64 | qos u8 | retain u8 | topic_len u16 | topic | payload
//!      | 2 | done_through u64          (every seq <= this was acknowledged or dropped)
//!      | 3 | seq u64                   (this one seq, above the watermark, was acknowledged
//!                                        out of order or dropped by the bounds)
//! ```
//!
//! Appends are written (`write(2)`) as each batch arrives, so a killed process loses nothing;
//! `sync` makes them durable (`fdatasync`), batched to bound flash wear: a power cut can lose
//! what arrived since the last sync. Recovery reads every segment and keeps every good record:
//! past a damaged one (a flipped bit, a bad sector) it looks for the next record whose length,
//! kind and CRC check out, and reads on from there; the publications in the damaged bytes are
//! counted as lost (the seqs missing above the watermark). A torn tail of the last segment is
//! cut off. A segment that cannot be read is moved aside, with the error (an empty one, created
//! but never written, is removed); a directory that cannot be listed is moved aside whole. The
//! gateway always starts.
//!
//! When the disk refuses a write (full, read-only, an I/O error), what was half written is cut
//! off, and the buffer keeps publications in memory only, encoding nothing for the disk, so it
//! does not grow. Every [`RETRY_SYNCS`]th sync it tries again: a fresh segment with every
//! publication still held. The same happens at once when a sync finds a segment file deleted.
//!
//! Bounds in rows and bytes: when a push would exceed them the oldest entries are dropped and
//! counted. This module does no networking and takes time as an argument.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::vocabulary::Qos;

const MAGIC: &[u8; 4] = b"FGQ1";
const KIND_PUBLISH: u8 = 1;
const KIND_DONE: u8 = 2;
const KIND_GONE: u8 = 3;
/// Largest body a record may claim; anything larger is corruption.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Memory and bound accounting per entry, on top of topic and payload.
pub const ENTRY_OVERHEAD: usize = 48;
/// While the disk refuses writes, every this many syncs (3.2 s at the default 200 ms) the
/// buffer tries to write what it holds to a fresh segment.
pub const RETRY_SYNCS: u32 = 16;

/// One buffered publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: Qos,
    pub retain: bool,
    /// When the value was read, ms since the Unix epoch.
    pub created_ms: i64,
}

impl Entry {
    pub fn cost(&self) -> usize {
        self.topic.len() + self.payload.len() + ENTRY_OVERHEAD
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Publish(Entry),
    /// Every seq up to this one is acknowledged or dropped (the watermark).
    Done(u64),
    /// This seq, above the watermark, is acknowledged or dropped: recovery neither delivers
    /// it again nor counts it lost.
    Gone(u64),
}

/// Append the record's bytes to `out` (the layout in the module docs).
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Publish(e) => encode_publish(e, out),
        Record::Done(seq) => encode_with(out, |body| {
            body.push(KIND_DONE);
            body.extend_from_slice(&seq.to_le_bytes());
        }),
        Record::Gone(seq) => encode_with(out, |body| {
            body.push(KIND_GONE);
            body.extend_from_slice(&seq.to_le_bytes());
        }),
    }
}

/// Append a publication's record to `out`, as [`encode`] does for [`Record::Publish`], without
/// a copy of the entry.
fn encode_publish(e: &Entry, out: &mut Vec<u8>) {
    encode_with(out, |body| {
        body.push(KIND_PUBLISH);
        body.extend_from_slice(&e.seq.to_le_bytes());
        body.extend_from_slice(&e.created_ms.to_le_bytes());
        body.push(e.qos.level());
        body.push(u8::from(e.retain));
        let topic = e.topic.as_bytes();
        let tlen = u16::try_from(topic.len()).unwrap_or(u16::MAX);
        body.extend_from_slice(&tlen.to_le_bytes());
        body.extend_from_slice(&topic[..usize::from(tlen)]);
        body.extend_from_slice(&e.payload);
    });
}

/// Frame the body that `write` appends to `out`: its length and CRC go in front of it, filled
/// in once it is written. The body is written where it stays, so a record costs no allocation
/// of its own (`out` keeps its capacity from batch to batch).
fn encode_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let header = out.len();
    out.extend_from_slice(&[0; 8]);
    write(out);
    let body = &out[header + 8..];
    let len = (body.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(body).to_le_bytes();
    out[header..header + 4].copy_from_slice(&len);
    out[header + 4..header + 8].copy_from_slice(&crc);
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let (&kind, rest) = body.split_first()?;
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    match kind {
        KIND_PUBLISH => {
            let seq = u64_at(rest, 0)?;
            let created_ms = u64_at(rest, 8)? as i64;
            let qos = match rest.get(16)? {
                0 => Qos::AtMostOnce,
                1 => Qos::AtLeastOnce,
                2 => Qos::ExactlyOnce,
                _ => return None,
            };
            let retain = match rest.get(17)? {
                0 => false,
                1 => true,
                _ => return None,
            };
            let tlen = usize::from(u16::from_le_bytes(rest.get(18..20)?.try_into().ok()?));
            let topic = std::str::from_utf8(rest.get(20..20 + tlen)?).ok()?;
            let payload = rest.get(20 + tlen..)?;
            Some(Record::Publish(Entry {
                seq,
                topic: Arc::from(topic),
                payload: Bytes::copy_from_slice(payload),
                qos,
                retain,
                created_ms,
            }))
        }
        KIND_DONE if rest.len() == 8 => Some(Record::Done(u64_at(rest, 0)?)),
        KIND_GONE if rest.len() == 8 => Some(Record::Gone(u64_at(rest, 0)?)),
        _ => None,
    }
}

/// What [`decode_segment`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    pub records: Vec<Record>,
    /// Bytes up to the end of the last good record (the file is cut here).
    pub good_len: usize,
    /// Damaged bytes between good records (or a damaged header), skipped.
    pub skipped_bytes: usize,
    /// What follows the last good record is one whole publication record that fails its
    /// check: a publication lost to damage, not a torn write.
    pub damaged_tail: bool,
    /// The segment did not start with the magic, nor with a good record after it: nothing in
    /// it can be trusted.
    pub bad_header: bool,
}

/// The record framed at `at`, and its length with the frame, if one is there: a length in
/// bounds, a known kind of the right size, the CRC, and a body that decodes.
fn record_at(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
    let head = bytes.get(at..at + 8)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > MAX_BODY {
        return None;
    }
    let body = bytes.get(at + 8..at + 8 + len)?;
    // The kind and size first: scanning damaged bytes for the next record then rarely
    // computes a CRC.
    match body[0] {
        KIND_PUBLISH if len >= 21 => {}
        KIND_DONE | KIND_GONE if len == 9 => {}
        _ => return None,
    }
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some((decode_body(body)?, 8 + len))
}

/// Decode one segment file's bytes: every good record, reading on past damaged bytes from
/// the next record that checks out (see the module docs). Never panics, whatever the bytes.
pub fn decode_segment(bytes: &[u8]) -> Decoded {
    let mut skipped_bytes = 0;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        // A damaged header in front of a good first record is damage like any other; without
        // one, this is not a segment.
        if record_at(bytes, MAGIC.len()).is_none() {
            return Decoded {
                bad_header: true,
                ..Decoded::default()
            };
        }
        skipped_bytes = MAGIC.len();
    }
    let mut at = MAGIC.len();
    let mut good_len = at;
    let mut records = Vec::new();
    while at < bytes.len() {
        if let Some((record, n)) = record_at(bytes, at) {
            records.push(record);
            at += n;
            good_len = at;
            continue;
        }
        match (at + 1..bytes.len()).find(|&p| record_at(bytes, p).is_some()) {
            Some(next) => {
                skipped_bytes += next - at;
                at = next;
            }
            // Nothing good follows: a torn tail.
            None => break,
        }
    }
    Decoded {
        damaged_tail: damaged_tail(bytes, good_len),
        records,
        good_len,
        skipped_bytes,
        bad_header: false,
    }
}

/// Whether the bytes after `good_len` are one whole publication record (a length of at least
/// its fixed part; a watermark record is 9 bytes) that fails its check: damage to a record
/// written in full, not one torn by a crash mid-write.
fn damaged_tail(bytes: &[u8], good_len: usize) -> bool {
    let Some(head) = bytes.get(good_len..good_len + 8) else {
        return false;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    len >= 21 && good_len + 8 + len == bytes.len()
}

// The settings are plain data of the model; this path stays for the config compiler.
pub use crate::model::StoreSettings;

/// What opening the store found, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Publications recovered, still to be delivered.
    pub recovered: usize,
    /// Bytes cut off torn tails.
    pub truncated_bytes: usize,
    /// Damaged bytes between good records, skipped.
    pub skipped_bytes: usize,
    /// Publications lost to unreadable data: seqs above the watermark that no readable record
    /// holds (at most this many: a lost watermark record makes done ones count too).
    pub lost: u64,
    /// Files or directories moved aside because they could not be read, and why.
    pub moved_aside: Vec<(PathBuf, String)>,
    /// The disk could not be used at all; the buffer runs in memory.
    pub memory_only_because: Option<String>,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    /// Highest publication seq written to it (0: none).
    last_seq: u64,
    path: PathBuf,
}

#[derive(Debug)]
struct Log {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    active: File,
    active_len: usize,
    segment_limit: usize,
    /// Encoded, not yet written.
    pending: Vec<u8>,
    /// Written, not yet synced.
    unsynced: bool,
    /// The `done_through` last written.
    done_written: u64,
    /// The disk refused a write: nothing is encoded for it until a fresh segment takes what
    /// the buffer holds. Counts syncs since, for [`RETRY_SYNCS`].
    refused: Option<u32>,
}

/// The disk's copy of the buffer was written anew (see [`Store::sync`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Publications held, now on disk again.
    pub held: usize,
    /// Why: the disk had refused writes, or a segment file had been deleted.
    pub because: &'static str,
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    acked: bool,
}

/// The buffer. Entries are kept in seq order; acknowledged ones leave from the front.
#[derive(Debug)]
pub struct Store {
    slots: VecDeque<Slot>,
    /// Slots not acknowledged.
    unacked: usize,
    bytes: usize,
    next_seq: u64,
    /// Every seq <= this was acknowledged or dropped.
    done_through: u64,
    max_rows: usize,
    max_bytes: usize,
    log: Option<Log>,
    /// Drops since the buffer last had room, for one log line per episode.
    dropping: u64,
    /// Seqs below this are in flight (see [`Store::set_in_flight_below`]).
    in_flight_below: u64,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

fn move_aside(path: &Path, why: &dyn std::fmt::Display, recovery: &mut Recovery) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{stamp}"));
    let aside = PathBuf::from(aside);
    if std::fs::rename(path, &aside).is_ok() {
        recovery.moved_aside.push((aside, why.to_string()));
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Store {
    /// Open (and recover) the store. Never fails: what cannot be read is moved aside, and if
    /// the disk cannot be used at all the buffer runs in memory (see [`Recovery`]).
    pub fn open(settings: &StoreSettings) -> (Store, Recovery) {
        let mut store = Store {
            slots: VecDeque::new(),
            unacked: 0,
            bytes: 0,
            next_seq: 1,
            done_through: 0,
            max_rows: settings.max_rows.max(1),
            max_bytes: settings.max_bytes.max(1),
            log: None,
            dropping: 0,
            in_flight_below: 0,
        };
        let mut recovery = Recovery::default();
        let Some(dir) = &settings.path else {
            return (store, recovery);
        };
        let segment_limit = settings.segment_bytes.max(MAGIC.len() + 1);
        match store.recover(dir, segment_limit, &mut recovery) {
            Ok(()) => {}
            Err(first) => {
                // The directory itself is unusable: move it aside and start afresh there.
                move_aside(dir, &first, &mut recovery);
                store.slots.clear();
                store.unacked = 0;
                store.bytes = 0;
                if let Err(second) = store.recover(dir, segment_limit, &mut recovery) {
                    store.log = None;
                    recovery.memory_only_because = Some(format!("{first}; then {second}"));
                }
            }
        }
        recovery.recovered = store.slots.len();
        store.enforce_bounds();
        (store, recovery)
    }

    fn recover(&mut self, dir: &Path, segment_limit: usize, rec: &mut Recovery) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                // A FIFO would block the open forever, a directory fail the read: only
                // regular files (or links to them) are segments.
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => names.push((first, path)),
                    Ok(_) => move_aside(&path, &"not a regular file", rec),
                    Err(e) => move_aside(&path, &e, rec),
                }
            }
        }
        names.sort();
        let mut entries: Vec<Entry> = Vec::new();
        let mut done = 0u64;
        let mut gone = std::collections::BTreeSet::new();
        let mut max_seq = 0u64;
        let mut segments = VecDeque::new();
        let count = names.len();
        for (i, (first_seq, path)) in names.into_iter().enumerate() {
            let mut bytes = Vec::new();
            // One segment that cannot be read goes aside; the others are still read.
            if let Err(e) = File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
                move_aside(&path, &e, rec);
                continue;
            }
            if bytes.is_empty() {
                // Created, and the process stopped before its header was written: nothing
                // was ever in it.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let decoded = decode_segment(&bytes);
            if decoded.bad_header {
                move_aside(&path, &"no segment header", rec);
                continue;
            }
            rec.skipped_bytes += decoded.skipped_bytes;
            if decoded.damaged_tail && i + 1 == count {
                // Its seq is not readable, and no later record shows it missing (in an older
                // segment, the next segment's first seq does).
                rec.lost += 1;
            }
            if decoded.good_len < bytes.len() {
                rec.truncated_bytes += bytes.len() - decoded.good_len;
                if i + 1 == count {
                    // A torn tail of the last segment: cut it off so appends follow good data.
                    OpenOptions::new()
                        .write(true)
                        .open(&path)?
                        .set_len(decoded.good_len as u64)?;
                }
            }
            let mut last_seq = 0;
            for r in decoded.records {
                match r {
                    Record::Publish(e) => {
                        last_seq = last_seq.max(e.seq);
                        max_seq = max_seq.max(e.seq);
                        entries.push(e);
                    }
                    Record::Done(s) => done = done.max(s),
                    Record::Gone(s) => {
                        gone.insert(s);
                    }
                }
            }
            segments.push_back(Segment {
                first_seq,
                last_seq,
                path,
            });
        }
        entries.retain(|e| e.seq > done && !gone.contains(&e.seq));
        entries.sort_by_key(|e| e.seq);
        entries.dedup_by_key(|e| e.seq);
        // Every seq from the watermark up was written once, in order: a missing one that is
        // not gone was in bytes that could not be read.
        let mut expect = done + 1;
        for e in &entries {
            let gap = e.seq - expect;
            if gap > 0 {
                rec.lost += gap - gone.range(expect..e.seq).count() as u64;
            }
            expect = e.seq + 1;
        }
        self.done_through = done;
        self.next_seq = max_seq.max(done) + 1;
        for e in entries {
            self.bytes += e.cost();
            self.unacked += 1;
            self.slots.push_back(Slot {
                entry: e,
                acked: false,
            });
        }
        // Append to a fresh segment: a recovered one may end in a cut tail on a bad sector.
        let first_seq = self.next_seq;
        let path = dir.join(segment_name(first_seq));
        let (active, active_len) = open_segment(&path)?;
        segments.retain(|s| s.path != path);
        segments.push_back(Segment {
            first_seq,
            last_seq: 0,
            path,
        });
        sync_dir(dir);
        self.log = Some(Log {
            dir: dir.to_path_buf(),
            segments,
            active,
            active_len,
            segment_limit,
            pending: Vec::new(),
            unsynced: false,
            done_written: 0,
            refused: None,
        });
        // Record the recovered watermark in the new segment, so older ones can go.
        self.queue_done_record();
        self.compact();
        Ok(())
    }

    /// Number of entries not yet acknowledged.
    pub fn len(&self) -> usize {
        self.unacked
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes held (topic + payload + per-entry overhead).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The bound in entries.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// Whether entries survive a restart: the buffer has a directory on disk (see
    /// [`Store::disk_refused`] for whether the disk takes writes now).
    pub fn is_durable(&self) -> bool {
        self.log.is_some()
    }

    /// Whether the disk refused a write and the buffer holds new publications in memory only
    /// until a fresh segment takes them (see [`Store::sync`]).
    pub fn disk_refused(&self) -> bool {
        self.log.as_ref().is_some_and(|l| l.refused.is_some())
    }

    /// Creation time (ms) of the oldest entry not yet acknowledged.
    pub fn oldest_created_ms(&self) -> Option<i64> {
        self.slots
            .iter()
            .find(|s| !s.acked)
            .map(|s| s.entry.created_ms)
    }

    /// Accept a publication: give it the next seq, encode it for the disk, and drop the oldest
    /// entries if the bounds are exceeded. Returns the seq and how many were dropped.
    pub fn push(
        &mut self,
        topic: Arc<str>,
        payload: Bytes,
        qos: Qos,
        retain: bool,
        created_ms: i64,
    ) -> (u64, u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry {
            seq,
            topic,
            payload,
            qos,
            retain,
            created_ms,
        };
        if let Some(log) = &mut self.log
            && log.refused.is_none()
        {
            encode_publish(&entry, &mut log.pending);
            if let Some(s) = log.segments.back_mut() {
                s.last_seq = seq;
            }
        }
        self.bytes += entry.cost();
        self.unacked += 1;
        self.slots.push_back(Slot {
            entry,
            acked: false,
        });
        let dropped = self.enforce_bounds();
        (seq, dropped)
    }

    fn enforce_bounds(&mut self) -> u64 {
        let mut dropped = 0;
        while self.unacked > 0 && (self.unacked > self.max_rows || self.bytes > self.max_bytes) {
            // The oldest entry not already on its way to the broker (dropping one in flight
            // would count as lost what may still arrive), but never the newest: when all
            // older ones are in flight, the oldest of all goes.
            let floor = self.in_flight_below;
            let older = self.slots.len().saturating_sub(1);
            let idx = self
                .slots
                .iter()
                .take(older)
                .position(|s| !s.acked && s.entry.seq >= floor)
                .or_else(|| self.slots.iter().position(|s| !s.acked));
            let Some(slot) = idx.and_then(|i| self.slots.get_mut(i)) else {
                break;
            };
            // A tombstone: done, its payload freed; it leaves when it reaches the front.
            slot.acked = true;
            let before = slot.entry.cost();
            slot.entry.payload = Bytes::new();
            let seq = slot.entry.seq;
            self.bytes -= before - slot.entry.cost();
            self.unacked -= 1;
            dropped += 1;
            self.pop_acked();
            self.queue_gone_record(seq);
        }
        self.dropping += dropped;
        dropped
    }

    /// Entries below `seq` have been handed to the live connection: the bounds drop them
    /// only when nothing else is left to drop. 0 when there is no connection.
    pub fn set_in_flight_below(&mut self, seq: u64) {
        self.in_flight_below = seq;
    }

    /// Whether the buffer dropped entries since it last had room.
    pub fn is_dropping(&self) -> bool {
        self.dropping > 0
    }

    /// Drops counted since the buffer last had room; reset (returning the total) once the
    /// buffer is below half its bounds again.
    pub fn drop_episode_over(&mut self) -> Option<u64> {
        if self.dropping > 0
            && self.unacked <= self.max_rows / 2
            && self.bytes <= self.max_bytes / 2
        {
            return Some(std::mem::take(&mut self.dropping));
        }
        None
    }

    fn pop_acked(&mut self) {
        while let Some(front) = self.slots.front() {
            if !front.acked {
                break;
            }
            self.done_through = self.done_through.max(front.entry.seq);
            self.bytes -= front.entry.cost();
            self.slots.pop_front();
        }
        if self.slots.is_empty() {
            self.done_through = self.done_through.max(self.next_seq - 1);
        }
    }

    /// The broker acknowledged `seq`. Unknown or already-dropped seqs are ignored.
    pub fn ack(&mut self, seq: u64) {
        let mut found = false;
        if let Some(i) = self.index_of(seq)
            && let Some(slot) = self.slots.get_mut(i)
            && !slot.acked
        {
            slot.acked = true;
            self.unacked -= 1;
            found = true;
        }
        self.pop_acked();
        if found {
            self.queue_gone_record(seq);
        }
    }

    /// `seq` is acknowledged or dropped: on disk too, unless the watermark covers it (the
    /// usual case: acknowledgements come in order, MQTT 3.1.1 section 4.6).
    fn queue_gone_record(&mut self, seq: u64) {
        if seq <= self.done_through {
            return;
        }
        if let Some(log) = &mut self.log
            && log.refused.is_none()
        {
            encode(&Record::Gone(seq), &mut log.pending);
        }
    }

    /// The slot index of `seq`. Held seqs are contiguous (a dropped entry stays as a tombstone
    /// until it reaches the front), except after a recovery that lost publications to damaged
    /// data: then a binary search finds it.
    fn index_of(&self, seq: u64) -> Option<usize> {
        let first = self.slots.front()?.entry.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        if self.slots.get(i).is_some_and(|s| s.entry.seq == seq) {
            return Some(i);
        }
        self.slots.binary_search_by_key(&seq, |s| s.entry.seq).ok()
    }

    /// The first entry with a seq of at least `from` that is not acknowledged.
    pub fn next_unacked(&self, from: u64) -> Option<&Entry> {
        let first = self.slots.front()?.entry.seq;
        let guess = usize::try_from(from.saturating_sub(first)).unwrap_or(usize::MAX);
        // The guess is exact while seqs are contiguous; past a gap it overshoots.
        let skip = match self.slots.get(guess) {
            Some(s) if s.entry.seq == from || from <= first => guess,
            _ => self.slots.partition_point(|s| s.entry.seq < from),
        };
        self.slots
            .iter()
            .skip(skip)
            .find(|s| !s.acked)
            .map(|s| &s.entry)
    }

    /// The seq of the oldest entry held (acknowledged or not), or the next seq if empty.
    pub fn front_seq(&self) -> u64 {
        self.slots.front().map_or(self.next_seq, |s| s.entry.seq)
    }

    fn queue_done_record(&mut self) {
        let done = self.done_through;
        if let Some(log) = &mut self.log
            && log.refused.is_none()
            && log.done_written != done
        {
            encode(&Record::Done(done), &mut log.pending);
            log.done_written = done;
        }
    }

    /// Hand what was pushed to the kernel (`write(2)`, no fsync): it now survives the process
    /// being killed. Cheap; call after each batch.
    ///
    /// # Errors
    /// The disk refused the write: what was half written is cut off, and from now on the
    /// buffer holds new publications in memory only (see [`Store::sync`]). Only the write that
    /// finds the disk refusing fails; later ones do nothing.
    pub fn write(&mut self) -> io::Result<()> {
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        if log.pending.is_empty() || log.refused.is_some() {
            return Ok(());
        }
        if let Err(e) = log.active.write_all(&log.pending) {
            log.refuse();
            return Err(e);
        }
        log.active_len += log.pending.len();
        log.pending.clear();
        log.unsynced = true;
        Ok(())
    }

    /// Make everything written durable (`fdatasync`), record the acknowledged watermark,
    /// delete segments that hold nothing undelivered, and start a new segment when the active
    /// one is full. Call every sync interval.
    ///
    /// While the disk refuses writes, every [`RETRY_SYNCS`]th call tries a fresh segment with
    /// every publication held; a segment file found deleted does the same at once. Returns
    /// what was written anew when that succeeded.
    ///
    /// # Errors
    /// The write or fsync failed (the buffer now holds new publications in memory only), or
    /// a segment could not be started. Failed retries are not errors: the disk is known to
    /// refuse.
    pub fn sync(&mut self) -> io::Result<Option<Rewritten>> {
        if let Some(log) = &mut self.log {
            if let Some(n) = &mut log.refused {
                *n += 1;
                if *n < RETRY_SYNCS {
                    return Ok(None);
                }
                return Ok(self.rewrite("the disk takes writes again"));
            }
            if log.files_missing() {
                log.refuse();
                return self.rewrite("a segment file was deleted").map_or_else(
                    || {
                        Err(io::Error::other(
                            "a segment file was deleted, and a fresh one cannot be written",
                        ))
                    },
                    |r| Ok(Some(r)),
                );
            }
        }
        self.queue_done_record();
        self.write()?;
        let next_seq = self.next_seq;
        let done = self.done_through;
        let Some(log) = &mut self.log else {
            return Ok(None);
        };
        if log.unsynced {
            if let Err(e) = log.active.sync_data() {
                log.refuse();
                return Err(e);
            }
            log.unsynced = false;
        }
        if log.active_len >= log.segment_limit {
            let path = log.dir.join(segment_name(next_seq));
            let (active, len) = open_segment(&path)?;
            log.active = active;
            log.active_len = len;
            log.segments.push_back(Segment {
                first_seq: next_seq,
                last_seq: 0,
                path,
            });
            sync_dir(&log.dir);
            // The new segment starts with the watermark, so older segments can go.
            encode(&Record::Done(done), &mut log.pending);
            log.done_written = done;
        }
        self.compact();
        Ok(None)
    }

    /// Write the watermark and every publication held to a fresh segment, and take writes
    /// again. `None`, and the disk still refused, when that failed.
    fn rewrite(&mut self, because: &'static str) -> Option<Rewritten> {
        let next_seq = self.next_seq;
        let done = self.done_through;
        let log = self.log.as_mut()?;
        let path = log.dir.join(segment_name(next_seq));
        let mut pending = std::mem::take(&mut log.pending);
        pending.clear();
        encode(&Record::Done(done), &mut pending);
        let mut held = 0;
        let mut last_seq = 0;
        for s in &self.slots {
            if s.acked {
                // Acknowledged out of order, or dropped: not to be delivered (nor counted
                // lost) after a restart.
                encode(&Record::Gone(s.entry.seq), &mut pending);
                continue;
            }
            encode_publish(&s.entry, &mut pending);
            held += 1;
            last_seq = s.entry.seq;
        }
        let written = open_segment(&path).and_then(|(mut f, len)| {
            let result = f.write_all(&pending).and_then(|()| f.sync_data());
            if result.is_err() {
                let _ = f.set_len(len as u64);
            }
            result.map(|()| (f, len + pending.len()))
        });
        pending.clear();
        log.pending = pending;
        let Ok((active, active_len)) = written else {
            log.refused = Some(0);
            return None;
        };
        // The same file when nothing was pushed since the refused one was started; and
        // forget files deleted under us.
        let before = log
            .segments
            .iter()
            .find(|s| s.path == path)
            .map(|s| s.last_seq);
        log.segments.retain(|s| s.path != path && s.path.exists());
        log.segments.push_back(Segment {
            first_seq: next_seq,
            last_seq: last_seq.max(before.unwrap_or(0)),
            path,
        });
        sync_dir(&log.dir);
        log.active = active;
        log.active_len = active_len;
        log.unsynced = false;
        log.done_written = done;
        log.refused = None;
        self.compact();
        Some(Rewritten { held, because })
    }

    /// Delete every segment but the active one whose publications are all done.
    fn compact(&mut self) {
        let done = self.done_through;
        let Some(log) = &mut self.log else {
            return;
        };
        let mut removed = false;
        while log.segments.len() > 1 {
            let Some(s) = log.segments.front() else {
                break;
            };
            if s.last_seq > done {
                break;
            }
            let _ = std::fs::remove_file(&s.path);
            log.segments.pop_front();
            removed = true;
        }
        if removed {
            sync_dir(&log.dir);
        }
    }

    /// Number of segment files, for tests and metrics.
    pub fn segment_count(&self) -> usize {
        self.log.as_ref().map_or(0, |l| l.segments.len())
    }

    /// The first seq of the oldest segment file, for tests.
    pub fn oldest_segment_seq(&self) -> Option<u64> {
        self.log
            .as_ref()
            .and_then(|l| l.segments.front())
            .map(|s| s.first_seq)
    }
}

impl Log {
    /// The disk refused a write: cut off what may have been half written, and encode nothing
    /// more until [`Store::rewrite`].
    fn refuse(&mut self) {
        let _ = self.active.set_len(self.active_len as u64);
        self.pending.clear();
        self.unsynced = false;
        self.refused = Some(0);
    }

    /// Whether a segment file was deleted (or the active one unlinked) under the gateway.
    fn files_missing(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.active.metadata().is_ok_and(|m| m.nlink() == 0)
            || self.segments.iter().any(|s| !s.path.exists())
    }
}

fn open_segment(path: &Path) -> io::Result<(File, usize)> {
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        if let Err(e) = f.write_all(MAGIC).and_then(|()| f.sync_data()) {
            // A full disk: leave no empty segment behind for every retry.
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        return Ok((f, MAGIC.len()));
    }
    Ok((f, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, rows: usize, bytes: usize) -> StoreSettings {
        StoreSettings {
            path: Some(dir.to_path_buf()),
            max_rows: rows,
            max_bytes: bytes,
            segment_bytes: StoreSettings::segment_bytes_for(bytes),
        }
    }

    fn push(s: &mut Store, i: u32) -> u64 {
        s.push(
            Arc::from(format!("t/{}", i % 3).as_str()),
            Bytes::from(format!("v{i}")),
            Qos::AtLeastOnce,
            i.is_multiple_of(2),
            1_700_000_000_000 + i64::from(i),
        )
        .0
    }

    /// A store on disk in a fresh directory, with `n` publications pushed and synced.
    fn synced(n: u32) -> (tempfile::TempDir, StoreSettings, Store) {
        let dir = tempfile::tempdir().unwrap();
        let set = settings(dir.path(), 1000, 1 << 20);
        let (mut s, _) = Store::open(&set);
        for i in 0..n {
            push(&mut s, i);
        }
        s.sync().unwrap();
        (dir, set, s)
    }

    fn seqs(s: &Store) -> Vec<u64> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(e) = s.next_unacked(from) {
            out.push(e.seq);
            from = e.seq + 1;
        }
        out
    }

    #[test]
    fn records_round_trip() {
        let e = Entry {
            seq: 42,
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"{\"v\":1}"),
            qos: Qos::ExactlyOnce,
            retain: true,
            created_ms: -5,
        };
        let mut bytes = MAGIC.to_vec();
        encode(&Record::Publish(e.clone()), &mut bytes);
        encode(&Record::Done(7), &mut bytes);
        encode(&Record::Gone(9), &mut bytes);
        let d = decode_segment(&bytes);
        assert_eq!(
            d.records,
            vec![Record::Publish(e), Record::Done(7), Record::Gone(9)]
        );
        assert_eq!(d.good_len, bytes.len());
    }

    #[test]
    fn the_record_layout_is_the_documented_one() {
        // Segments written by earlier versions must still read: the bytes are pinned here.
        let e = Entry {
            seq: 3,
            topic: Arc::from("t"),
            payload: Bytes::from_static(b"7"),
            qos: Qos::AtLeastOnce,
            retain: false,
            created_ms: 1,
        };
        let mut bytes = vec![0xee];
        encode(&Record::Publish(e), &mut bytes);
        let body: Vec<u8> = [
            &[KIND_PUBLISH][..],
            &3u64.to_le_bytes(),
            &1i64.to_le_bytes(),
        ]
        .concat()
        .into_iter()
        .chain([1, 0, 1, 0, b't', b'7'])
        .collect();
        let mut want = vec![0xee];
        want.extend_from_slice(&(body.len() as u32).to_le_bytes());
        want.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        want.extend_from_slice(&body);
        assert_eq!(bytes, want);
        let mut done = Vec::new();
        encode(&Record::Done(9), &mut done);
        let body = [&[KIND_DONE][..], &9u64.to_le_bytes()].concat();
        assert_eq!(&done[..4], &9u32.to_le_bytes());
        assert_eq!(&done[4..8], &crc32fast::hash(&body).to_le_bytes());
        assert_eq!(&done[8..], &body[..]);
        let mut gone = Vec::new();
        encode(&Record::Gone(9), &mut gone);
        let body = [&[3u8][..], &9u64.to_le_bytes()].concat();
        assert_eq!(&gone[..4], &9u32.to_le_bytes());
        assert_eq!(&gone[4..8], &crc32fast::hash(&body).to_le_bytes());
        assert_eq!(&gone[8..], &body[..]);
    }

    #[test]
    fn torn_or_flipped_tail_keeps_the_good_prefix() {
        let mut bytes = MAGIC.to_vec();
        encode(&Record::Done(1), &mut bytes);
        let good = bytes.len();
        encode(&Record::Done(2), &mut bytes);
        for cut in good..bytes.len() {
            let d = decode_segment(&bytes[..cut]);
            assert_eq!(d.records, vec![Record::Done(1)], "cut at {cut}");
            assert_eq!(d.good_len, good);
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert_eq!(decode_segment(&flipped).records, vec![Record::Done(1)]);
        assert!(decode_segment(b"XXXX").bad_header);
    }

    #[test]
    fn a_damaged_record_is_skipped_and_the_records_after_it_kept() {
        let mut bytes = MAGIC.to_vec();
        let mut ends = Vec::new();
        for seq in 1..=6 {
            encode(&Record::Done(seq), &mut bytes);
            ends.push(bytes.len());
        }
        // Every byte of the third record, flipped in turn: the other five always survive.
        for at in ends[1]..ends[2] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            let d = decode_segment(&bad);
            let want: Vec<_> = [1, 2, 4, 5, 6].into_iter().map(Record::Done).collect();
            assert_eq!(d.records, want, "flipped byte {at}");
            assert_eq!(d.skipped_bytes, ends[2] - ends[1], "flipped byte {at}");
            assert_eq!(d.good_len, bytes.len());
        }
    }

    #[test]
    fn publications_in_damaged_bytes_are_counted_lost_and_the_rest_recovered() {
        let (dir, set, s) = synced(20);
        let seg = dir.path().join(segment_name(1));
        drop(s);
        // A bad sector: 40 bytes zeroed in the middle of the segment.
        let mut bytes = std::fs::read(&seg).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid..mid + 40].fill(0);
        std::fs::write(&seg, &bytes).unwrap();
        let (s, rec) = Store::open(&set);
        let got = seqs(&s);
        assert!(rec.lost >= 1, "{rec:?}");
        assert_eq!(got.len() as u64 + rec.lost, 20, "{got:?} {rec:?}");
        assert_eq!(
            got.last(),
            Some(&20),
            "the records after the damage are kept"
        );
        assert!(rec.skipped_bytes >= 40, "{rec:?}");
        assert_eq!(rec.truncated_bytes, 0);
        // Past the gap, each is still found and acknowledged.
        let mut s = s;
        for &q in got.iter().rev() {
            s.ack(q);
            assert!(s.next_unacked(q).is_none(), "{q} still unacknowledged");
        }
        assert!(s.is_empty());
        assert_eq!(push(&mut s, 99), 21);
    }

    #[test]
    fn damage_to_the_header_or_the_last_record_costs_only_that_and_is_counted() {
        let newest = |dir: &Path| dir.join(segment_name(1));
        // The last record, written whole, one bit flipped: lost and counted, not a torn tail.
        let (dir, set, s) = synced(10);
        drop(s);
        let mut bytes = std::fs::read(newest(dir.path())).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x10;
        std::fs::write(newest(dir.path()), &bytes).unwrap();
        let (s, rec) = Store::open(&set);
        assert_eq!(seqs(&s), (1..=9).collect::<Vec<_>>());
        assert_eq!(rec.lost, 1, "{rec:?}");
        // Torn mid-write instead: nothing was accepted whole, nothing counted.
        let (dir, set, s) = synced(10);
        drop(s);
        let seg = newest(dir.path());
        let len = std::fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let (s, rec) = Store::open(&set);
        assert_eq!(seqs(&s), (1..=9).collect::<Vec<_>>());
        assert_eq!(rec.lost, 0, "{rec:?}");
        // The header damaged: every record behind it is still read.
        let (dir, set, s) = synced(10);
        drop(s);
        let mut bytes = std::fs::read(newest(dir.path())).unwrap();
        bytes[1] ^= 0x01;
        std::fs::write(newest(dir.path()), &bytes).unwrap();
        let (s, rec) = Store::open(&set);
        assert_eq!(seqs(&s), (1..=10).collect::<Vec<_>>());
        assert!(rec.moved_aside.is_empty(), "{rec:?}");
        assert_eq!(rec.skipped_bytes, MAGIC.len());
    }

    #[test]
    fn a_fifo_named_like_a_segment_goes_aside_instead_of_blocking_the_start() {
        let (dir, set, s) = synced(3);
        drop(s);
        let fifo = dir.path().join(segment_name(999));
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (s, rec) = Store::open(&set);
        assert_eq!(seqs(&s), vec![1, 2, 3]);
        assert_eq!(rec.moved_aside.len(), 1, "{rec:?}");
        assert_eq!(rec.moved_aside[0].1, "not a regular file");
    }

    #[test]
    fn a_refused_write_holds_new_publications_in_memory_until_a_fresh_segment_takes_them() {
        let (_dir, set, mut s) = synced(3);
        // The disk refuses: the active segment now takes no writes.
        let log = s.log.as_mut().unwrap();
        let active = log.segments.back().unwrap().path.clone();
        log.active = File::open(&active).unwrap();
        for i in 3..10 {
            push(&mut s, i);
        }
        assert!(s.write().is_err(), "the refused write is reported");
        assert!(s.disk_refused());
        for i in 10..1000 {
            push(&mut s, i);
            s.write().unwrap();
        }
        assert!(
            s.log.as_ref().unwrap().pending.is_empty(),
            "nothing is encoded for a disk that refuses"
        );
        s.ack(1);
        // Acknowledged out of order: not written anew, and not lost either.
        s.ack(500);
        for _ in 1..RETRY_SYNCS {
            assert_eq!(s.sync().unwrap(), None);
        }
        let r = s.sync().unwrap().expect("a fresh segment takes them");
        assert_eq!(r.held, 998);
        assert!(!s.disk_refused());
        push(&mut s, 1000);
        s.sync().unwrap();
        drop(s);
        let (s, rec) = Store::open(&set);
        assert_eq!(
            seqs(&s),
            (2..=1001).filter(|&q| q != 500).collect::<Vec<_>>()
        );
        assert_eq!(rec.lost, 0, "{rec:?}");
    }

    #[test]
    fn entries_dropped_by_the_bounds_stay_dropped_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let set = settings(dir.path(), 4, 1 << 20);
        let (mut s, _) = Store::open(&set);
        for i in 0..2 {
            push(&mut s, i);
        }
        // 1 and 2 are on their way to the broker: the bounds drop the next oldest, 3 to 6,
        // behind them, so the watermark cannot cover the drops.
        s.set_in_flight_below(3);
        let dropped: u64 = (2..8)
            .map(|i| {
                s.push(
                    Arc::from("t"),
                    Bytes::from(format!("v{i}")),
                    Qos::AtLeastOnce,
                    false,
                    0,
                )
                .1
            })
            .sum();
        assert_eq!(dropped, 4);
        assert_eq!(seqs(&s), [1, 2, 7, 8]);
        s.sync().unwrap();
        drop(s);
        let (s, rec) = Store::open(&set);
        // Counted as dropped once: neither delivered after the restart nor counted lost.
        assert_eq!(seqs(&s), [1, 2, 7, 8]);
        assert_eq!(rec.lost, 0, "{rec:?}");
    }

    #[test]
    fn a_segment_deleted_under_the_gateway_is_written_anew_at_the_next_sync() {
        let (dir, set, mut s) = synced(5);
        for f in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        push(&mut s, 5);
        let r = s.sync().unwrap().expect("the deletion is noticed");
        assert_eq!(r.held, 6);
        assert_eq!(s.sync().unwrap(), None, "once");
        drop(s);
        let (s, rec) = Store::open(&set);
        assert_eq!(seqs(&s), (1..=6).collect::<Vec<_>>());
        assert_eq!(rec.lost, 0);
    }

    #[test]
    fn one_unreadable_segment_goes_aside_with_its_error_and_the_others_are_read() {
        let (dir, set, s) = synced(4);
        drop(s);
        // A "segment" that cannot be read as a file.
        std::fs::create_dir(dir.path().join(segment_name(999))).unwrap();
        let (s, rec) = Store::open(&set);
        assert_eq!(seqs(&s), vec![1, 2, 3, 4]);
        assert_eq!(rec.moved_aside.len(), 1, "{rec:?}");
        assert!(!rec.moved_aside[0].1.is_empty(), "the error is kept");
        assert!(
            rec.moved_aside[0].0.starts_with(dir.path()),
            "only the segment moved"
        );
    }

    #[test]
    fn unacknowledged_entries_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let set = settings(dir.path(), 1000, 1 << 20);
        let (mut s, _) = Store::open(&set);
        for i in 0..10 {
            push(&mut s, i);
        }
        s.ack(1);
        s.ack(2);
        s.ack(5); // out of order: 3 and 4 still pending
        s.write().unwrap();
        drop(s); // like kill -9: written, not synced, watermark not recorded
        let (s, rec) = Store::open(&set);
        // The watermark was never recorded, so 1 and 2 come back (duplicates are allowed);
        // the out-of-order acknowledgement of 5 was written as it came.
        assert_eq!(rec.recovered, 9);
        assert_eq!(rec.lost, 0);
        assert_eq!(seqs(&s), [1, 2, 3, 4, 6, 7, 8, 9, 10]);
        let mut s = s;
        for q in 1..=3 {
            s.ack(q);
        }
        s.sync().unwrap();
        drop(s);
        let (s, rec) = Store::open(&set);
        assert_eq!(seqs(&s), [4, 6, 7, 8, 9, 10]);
        assert_eq!(rec.recovered, 6);
        assert_eq!(rec.lost, 0);
        let e = s.next_unacked(0).unwrap();
        assert_eq!(&*e.topic, "t/0"); // i = 3 -> seq 4
        assert_eq!(e.created_ms, 1_700_000_000_003);
        assert!(!e.retain);
        // New seqs continue after the recovered ones.
        let mut s = s;
        assert_eq!(push(&mut s, 99), 11);
    }

    #[test]
    fn a_torn_tail_on_disk_is_cut_and_the_rest_recovered() {
        let (dir, set, s) = synced(5);
        drop(s);
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        // Tear the last record in half and add junk.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0xff; 5]).unwrap();
        drop(f);
        let (s, rec) = Store::open(&set);
        assert_eq!(seqs(&s), vec![1, 2, 3, 4]);
        assert!(rec.truncated_bytes > 0);
        assert!(rec.moved_aside.is_empty());
    }

    #[test]
    fn an_unreadable_segment_is_moved_aside_and_the_store_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(segment_name(1)), b"garbage").unwrap();
        // Created, never written (a crash before its header): removed, not an error.
        std::fs::write(dir.path().join(segment_name(500)), b"").unwrap();
        let (mut s, rec) = Store::open(&settings(dir.path(), 10, 1 << 20));
        assert_eq!(rec.moved_aside.len(), 1, "{rec:?}");
        assert!(!dir.path().join(segment_name(500)).exists());
        assert!(s.is_durable());
        assert_eq!(push(&mut s, 0), 1);
    }

    #[test]
    fn a_store_path_that_is_a_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue");
        std::fs::write(&path, b"not a directory").unwrap();
        let (s, rec) = Store::open(&settings(&path, 10, 1 << 20));
        assert_eq!(rec.moved_aside.len(), 1);
        assert!(s.is_durable());
        assert!(path.is_dir());
    }

    #[test]
    fn full_buffer_drops_the_oldest_and_counts_them() {
        let (mut s, _) = Store::open(&StoreSettings {
            path: None,
            max_rows: 5,
            max_bytes: 1 << 20,
            segment_bytes: 1 << 20,
        });
        let mut dropped = 0;
        for i in 0..12 {
            let (_, d) = s.push(
                Arc::from("t"),
                Bytes::from(vec![0; i]),
                Qos::AtLeastOnce,
                false,
                0,
            );
            dropped += d;
        }
        assert_eq!(dropped, 7);
        assert_eq!(seqs(&s), (8..=12).collect::<Vec<_>>());
        assert_eq!(s.drop_episode_over(), None);
        for q in 8..=11 {
            s.ack(q);
        }
        assert_eq!(s.drop_episode_over(), Some(7));
        // Bytes bound: every entry costs the overhead plus its topic and payload.
        let (mut s, _) = Store::open(&StoreSettings {
            path: None,
            max_rows: 1000,
            max_bytes: 3 * (ENTRY_OVERHEAD + 2),
            segment_bytes: 1 << 20,
        });
        let mut dropped = 0;
        for _ in 0..5 {
            dropped += s
                .push(
                    Arc::from("t"),
                    Bytes::from_static(b"x"),
                    Qos::AtLeastOnce,
                    false,
                    0,
                )
                .1;
        }
        assert_eq!(dropped, 2);
        assert_eq!(s.bytes(), 3 * (ENTRY_OVERHEAD + 2));
    }

    #[test]
    fn a_full_buffer_spares_what_is_in_flight() {
        let (mut s, _) = Store::open(&StoreSettings {
            path: None,
            max_rows: 5,
            max_bytes: 1 << 20,
            segment_bytes: 1 << 20,
        });
        for i in 0..5 {
            push(&mut s, i);
        }
        // 1 and 2 were handed to the connection.
        s.set_in_flight_below(3);
        assert_eq!(push(&mut s, 5), 6);
        assert_eq!(seqs(&s), vec![1, 2, 4, 5, 6]);
        // Acknowledged, they leave, and the dropped 3 with them.
        s.ack(1);
        s.ack(2);
        assert_eq!(s.front_seq(), 4);
        s.set_in_flight_below(7);
        push(&mut s, 6);
        push(&mut s, 7);
        push(&mut s, 8);
        assert_eq!(seqs(&s), vec![4, 5, 6, 8, 9]);
        // Everything in flight: the oldest goes after all.
        s.set_in_flight_below(10);
        push(&mut s, 9);
        assert_eq!(seqs(&s), vec![5, 6, 8, 9, 10]);
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let set = StoreSettings {
            segment_bytes: 64 * 1024,
            ..settings(dir.path(), 100_000, 1 << 30)
        };
        let (mut s, _) = Store::open(&set);
        let payload = Bytes::from(vec![b'x'; 1000]);
        for _ in 0..300 {
            s.push(Arc::from("t"), payload.clone(), Qos::AtLeastOnce, false, 0);
            s.sync().unwrap();
        }
        assert!(s.segment_count() > 2, "{}", s.segment_count());
        for q in 1..=200 {
            s.ack(q);
        }
        s.sync().unwrap();
        let first = s.oldest_segment_seq().unwrap();
        assert!(first > 1 && first <= 201, "{first}");
        drop(s);
        let (s, _) = Store::open(&set);
        assert_eq!(seqs(&s), (201..=300).collect::<Vec<_>>());
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 4, "{files} segment files left");
    }
}
