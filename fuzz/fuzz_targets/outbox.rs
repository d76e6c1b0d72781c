//! The MQTT outbox's crash recovery: whatever a power loss or a bad disk left in the segment
//! files and the cursor, `Outbox::open` must cut the torn tail, hand out only intact records,
//! and keep what is appended after it across the next restart. Input: a flags byte (1: write
//! the cursor file from the next 8 bytes, 2: frame the rest as records with correct lengths
//! and CRCs — each a `u16` body length and the body — so mutations reach the body decoder,
//! 4: split the result into two segment files at a `u16` offset), then the bytes. Seeds: real
//! segment files the outbox wrote (`make_seeds`).

use std::path::Path;
use std::time::Duration;

use onnxd::mqtt::outbox::{Entry, Outbox, OutboxLimits};

/// Records with correct headers from `[u16 length][body]` chunks; a short last chunk is a
/// torn tail.
fn framed(mut input: onnxd_fuzz::Input<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let len = input.u16() as usize;
        let body = input.take(len);
        if body.is_empty() {
            return out;
        }
        if body.len() < len {
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(body);
            return out;
        }
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        out.extend_from_slice(body);
    }
}

fn write_files(dir: &Path, data: &[u8]) {
    let mut input = onnxd_fuzz::Input::new(data);
    let flags = input.u8();
    if flags & 1 != 0 {
        let mut cursor = b"OBXC".to_vec();
        cursor.extend_from_slice(input.take(8));
        cursor.resize(12, 0);
        cursor.extend_from_slice(&crc32fast::hash(&cursor).to_le_bytes());
        std::fs::write(dir.join("cursor"), cursor).expect("scratch write");
    }
    let split = input.u16() as usize;
    let bytes = if flags & 2 != 0 {
        framed(input)
    } else {
        input.rest().to_vec()
    };
    let seg = |first: u64| dir.join(format!("{first:020}.seg"));
    if flags & 4 != 0 && split < bytes.len() {
        std::fs::write(seg(0), &bytes[..split]).expect("scratch write");
        std::fs::write(seg(u64::from(flags >> 3)), &bytes[split..]).expect("scratch write");
    } else {
        std::fs::write(seg(0), &bytes).expect("scratch write");
    }
}

fn main() {
    let dir = onnxd_fuzz::scratch("outbox");
    let limits = OutboxLimits {
        ttl: Duration::from_secs(u64::MAX / 4),
        ..OutboxLimits::default()
    };
    let marker = Entry {
        created_ms: 1,
        topic: "fuzz/after-recovery".into(),
        payload: b"kept".to_vec(),
        retain: false,
        content_type: None,
        correlation_data: Some(b"c".to_vec()),
        user_properties: vec![("k".into(), "v".into())],
    };
    afl::fuzz!(|data: &[u8]| {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        write_files(&dir, data);
        let Ok(mut outbox) = Outbox::open(&dir, limits) else {
            return;
        };
        let mut handed = 0;
        while let Ok(batch) = outbox.pending(16) {
            if batch.is_empty() {
                break;
            }
            for (seq, _) in batch.iter().step_by(2) {
                outbox.ack(*seq);
            }
            handed += batch.len();
            assert!(handed <= 1 << 20, "pending never ends");
        }
        outbox.rewind();
        let seq = outbox.append(&marker).expect("append after recovery");
        outbox.sync().expect("sync");
        drop(outbox);
        let mut again = Outbox::open(&dir, limits).expect("reopen");
        let mut found = false;
        while let Ok(batch) = again.pending(64) {
            if batch.is_empty() {
                break;
            }
            found |= batch.iter().any(|(s, e)| *s == seq && *e == marker);
        }
        assert!(found, "the record appended after recovery survives a restart");
    });
}
