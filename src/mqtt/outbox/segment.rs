//! The outbox's files: segment files `NNNNNNNNNNNNNNNNNNNN.seg` (named by their first [`Seq`],
//! 20 zero-padded digits, records only ever appended) and the `cursor` file (`"OBXC"`, the first
//! undelivered seq, a CRC-32 of those 12 bytes; replaced atomically). [`recover`] reads them
//! back after a crash or power loss: the first record whose length runs past its file, whose
//! CRC fails or whose body does not decode is the torn tail — its file is truncated there and
//! every later segment deleted.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::{decode_record, HEADER};
use super::{io_error, OutboxError, Rec, Segment, Seq};

pub(super) const SEGMENT_SUFFIX: &str = ".seg";
pub(super) const CURSOR_FILE: &str = "cursor";
pub(super) const CURSOR_TMP: &str = "cursor.tmp";
pub(super) const CURSOR_MAGIC: &[u8; 4] = b"OBXC";

pub(super) fn segment_path(dir: &Path, first: Seq) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_SUFFIX}"))
}

pub(super) fn parse_segment_name(name: &str) -> Option<Seq> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

pub(super) fn truncate_to(file: &mut File, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    file.seek(SeekFrom::Start(len)).map(|_| ())
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The cursor file's content; `None` (logged unless absent) means "replay everything".
pub(super) fn read_cursor(path: &Path) -> Option<Seq> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "outbox: cursor unreadable, replaying everything on disk");
            return None;
        }
    };
    let valid = bytes.len() == 16
        && bytes[..4] == CURSOR_MAGIC[..]
        && crc32fast::hash(&bytes[..12]).to_le_bytes() == bytes[12..16];
    if !valid {
        tracing::warn!(path = %path.display(), "outbox: cursor corrupt, replaying everything on disk");
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[4..12]);
    let seq = u64::from_le_bytes(seq);
    if seq > LARGEST_FIRST {
        tracing::warn!(path = %path.display(), seq, "outbox: cursor past any reachable record, replaying everything on disk");
        return None;
    }
    Some(seq)
}

pub(super) fn write_cursor(dir: &Path, cursor: Seq) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(CURSOR_MAGIC);
    bytes.extend_from_slice(&cursor.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    let tmp = dir.join(CURSOR_TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(CURSOR_FILE))?;
    sync_dir(dir)
}

/// Result of scanning a segment file: its intact records (offset, size, created_ms) and the
/// length they cover.
pub(super) struct Scan {
    recs: Vec<(u64, u32, u64)>,
    good_len: u64,
    file_len: u64,
}

/// Reads a segment file up to its first torn or corrupt record.
pub(super) fn scan_segment(path: &Path) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut recs = Vec::new();
    let mut pos = 0u64;
    let mut record = Vec::new();
    while file_len - pos >= HEADER as u64 {
        let mut header = [0u8; HEADER];
        reader.read_exact(&mut header)?;
        let body_len = u64::from(u32::from_le_bytes([header[0], header[1], header[2], header[3]]));
        if body_len > file_len - pos - HEADER as u64 {
            break;
        }
        let size = HEADER + body_len as usize;
        record.clear();
        record.extend_from_slice(&header);
        record.resize(size, 0);
        reader.read_exact(&mut record[HEADER..])?;
        let Some(entry) = decode_record(&record) else {
            break;
        };
        recs.push((pos, size as u32, entry.created_ms));
        pos += size as u64;
    }
    Ok(Scan {
        recs,
        good_len: pos,
        file_len,
    })
}

/// What the segment files hold once torn tails are cut: the segments, the index of the
/// records from `cursor` on, and what recovery changed on disk.
#[derive(Default)]
pub(super) struct Recovered {
    pub closed: VecDeque<Segment>,
    pub index: VecDeque<Rec>,
    pub next_seq: Seq,
    pub undelivered: u64,
    pub bytes: u64,
    pub torn_bytes_cut: u64,
    pub changed: bool,
}

/// The largest sequence number a trusted segment file name or cursor may hold: 2^63, more
/// records than a billion a second for 290 years, so counting on from it never overflows.
const LARGEST_FIRST: Seq = 1 << 63;

/// Scans the segment files `firsts` (sorted) of `dir`: indexes the intact records from
/// `cursor` on, truncates a torn tail and deletes every later segment (and segments that
/// overlap the previous one or were never written).
pub(super) fn recover(dir: &Path, firsts: &[Seq], cursor: Seq) -> Result<Recovered, OutboxError> {
    let mut found = Recovered::default();
    let mut torn = false;
    for &first in firsts {
        let path = segment_path(dir, first);
        if torn || first < found.next_seq || first > LARGEST_FIRST {
            // After a torn tail, overlapping the previous segment, or named by a number no
            // outbox reaches (its sequence numbers would overflow): not trustworthy.
            let len = fs::metadata(&path)
                .map_err(|e| io_error("reading", &path, e))?
                .len();
            fs::remove_file(&path).map_err(|e| io_error("deleting", &path, e))?;
            found.torn_bytes_cut += len;
            torn = true;
            found.changed = true;
            continue;
        }
        let scan = scan_segment(&path).map_err(|e| io_error("reading", &path, e))?;
        if scan.good_len < scan.file_len {
            torn = true;
            found.changed = true;
            found.torn_bytes_cut += scan.file_len - scan.good_len;
            if scan.good_len > 0 {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_error("opening", &path, e))?;
                file.set_len(scan.good_len)
                    .map_err(|e| io_error("truncating", &path, e))?;
                file.sync_all().map_err(|e| io_error("syncing", &path, e))?;
            }
        }
        if scan.recs.is_empty() {
            // Created but never written (or nothing intact): its name still counts.
            fs::remove_file(&path).map_err(|e| io_error("deleting", &path, e))?;
            found.changed = true;
            found.next_seq = found.next_seq.max(first);
            continue;
        }
        for (i, &(offset, size, created_ms)) in scan.recs.iter().enumerate() {
            let seq = first + i as u64;
            if seq >= cursor {
                found.index.push_back(Rec {
                    seq,
                    segment: first,
                    offset,
                    size,
                    created_ms,
                    done: false,
                });
                found.undelivered += 1;
                found.bytes += u64::from(size);
            }
        }
        let count = scan.recs.len() as u64;
        found.closed.push_back(Segment {
            first,
            count,
            bytes: scan.good_len,
        });
        found.next_seq = first + count;
    }
    Ok(found)
}
