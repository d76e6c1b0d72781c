//! The outbox's record codec (format version 1, all integers little-endian): a record is
//! `len: u32` (body length), `crc: u32` (CRC-32/ISO-HDLC of the body, as `crc32fast` computes
//! it) and the body: `version: u8 = 1`, `created_ms: u64`, `flags: u8` (bit 0 retain, bit 1
//! content type present, bit 2 correlation data present), `topic`, `content_type` (only if
//! flagged), `correlation_data` (only if flagged), the user property count (`u32`) and that
//! many `key`, `value` pairs, then `payload`. Each string or byte field is a `u32` length and
//! the bytes (strings UTF-8). Decoding never panics: anything malformed is `None`.

/// Bytes before each record body: length and CRC.
pub(super) const HEADER: usize = 8;
/// Version byte at the start of each record body.
const FORMAT_VERSION: u8 = 1;
const FLAG_RETAIN: u8 = 1;
const FLAG_CONTENT_TYPE: u8 = 2;
const FLAG_CORRELATION: u8 = 4;

/// One message to publish later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Wall clock when the message was produced, ms since the UNIX epoch (for the TTL).
    pub created_ms: u64,
    /// MQTT topic.
    pub topic: String,
    /// Message payload.
    pub payload: Vec<u8>,
    /// MQTT retain flag.
    pub retain: bool,
    /// MQTT 5 content type.
    pub content_type: Option<String>,
    /// MQTT 5 correlation data.
    pub correlation_data: Option<Vec<u8>>,
    /// MQTT 5 user properties, in order.
    pub user_properties: Vec<(String, String)>,
}

/// Encoded size of a record (header included).
pub(super) fn encoded_len(e: &Entry) -> u64 {
    let field = |len: usize| 4 + len as u64;
    let mut len = (HEADER + 1 + 8 + 1) as u64 + field(e.topic.len()) + field(e.payload.len()) + 4;
    len += e.content_type.as_ref().map_or(0, |s| field(s.len()));
    len += e.correlation_data.as_ref().map_or(0, |d| field(d.len()));
    len += e
        .user_properties
        .iter()
        .map(|(k, v)| field(k.len()) + field(v.len()))
        .sum::<u64>();
    len
}

/// Encodes a record into `buf`; the caller checked that the body fits a `u32` length, so
/// every field does too.
pub(super) fn encode_record(e: &Entry, buf: &mut Vec<u8>) {
    fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
        buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        buf.extend_from_slice(bytes);
    }
    buf.clear();
    buf.extend_from_slice(&[0; HEADER]);
    buf.push(FORMAT_VERSION);
    buf.extend_from_slice(&e.created_ms.to_le_bytes());
    let mut flags = 0;
    if e.retain {
        flags |= FLAG_RETAIN;
    }
    if e.content_type.is_some() {
        flags |= FLAG_CONTENT_TYPE;
    }
    if e.correlation_data.is_some() {
        flags |= FLAG_CORRELATION;
    }
    buf.push(flags);
    put(buf, e.topic.as_bytes());
    if let Some(content_type) = &e.content_type {
        put(buf, content_type.as_bytes());
    }
    if let Some(data) = &e.correlation_data {
        put(buf, data);
    }
    buf.extend_from_slice(&(e.user_properties.len() as u32).to_le_bytes());
    for (key, value) in &e.user_properties {
        put(buf, key.as_bytes());
        put(buf, value.as_bytes());
    }
    put(buf, &e.payload);
    let body_len = (buf.len() - HEADER) as u32;
    let crc = crc32fast::hash(&buf[HEADER..]);
    buf[..4].copy_from_slice(&body_len.to_le_bytes());
    buf[4..HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a whole record (header + body); `None` if the length, CRC or body is wrong.
pub(super) fn decode_record(record: &[u8]) -> Option<Entry> {
    let (header, body) = record.split_at_checked(HEADER)?;
    let (len, crc) = header.split_at(4);
    if u32::from_le_bytes(len.try_into().ok()?) as usize != body.len()
        || u32::from_le_bytes(crc.try_into().ok()?) != crc32fast::hash(body)
    {
        return None;
    }
    decode_body(body)
}

/// Decodes a record body whose CRC matched; `None` if it is malformed.
fn decode_body(body: &[u8]) -> Option<Entry> {
    let mut r = BodyReader(body);
    if r.u8()? != FORMAT_VERSION {
        return None;
    }
    let created_ms = r.u64()?;
    let flags = r.u8()?;
    if flags & !(FLAG_RETAIN | FLAG_CONTENT_TYPE | FLAG_CORRELATION) != 0 {
        return None;
    }
    let topic = r.string()?;
    let content_type = if flags & FLAG_CONTENT_TYPE != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let correlation_data = if flags & FLAG_CORRELATION != 0 {
        Some(r.bytes()?.to_vec())
    } else {
        None
    };
    let count = r.u32()?;
    let mut user_properties = Vec::new();
    for _ in 0..count {
        user_properties.push((r.string()?, r.string()?));
    }
    let payload = r.bytes()?.to_vec();
    r.0.is_empty().then_some(Entry {
        created_ms,
        topic,
        payload,
        retain: flags & FLAG_RETAIN != 0,
        content_type,
        correlation_data,
        user_properties,
    })
}

/// Little-endian reader over a record body.
struct BodyReader<'a>(&'a [u8]);

impl<'a> BodyReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()?;
        self.take(len as usize)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}
