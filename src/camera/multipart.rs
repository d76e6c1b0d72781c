//! Incremental parser of `multipart/x-mixed-replace` bodies (MJPEG over HTTP): bytes go in
//! as they arrive, whole parts come out. A part is delimited by its `Content-Length` header
//! when it has one, else by the next boundary. Cameras are lax about the boundary (declared
//! with or without the leading `--`, LF instead of CRLF), so the boundary is searched for
//! without its dashes and junk before it is skipped; a part whose `Content-Length` lied
//! yields bad bytes once (a corrupt frame) and the parser resynchronises on the next
//! boundary.

use bytes::{Buf, Bytes, BytesMut};

/// The `boundary` parameter of a `multipart/…` content type, without quotes.
pub(crate) fn boundary(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        let value = value.trim().trim_matches('"');
        (name.trim().eq_ignore_ascii_case("boundary") && !value.is_empty()).then_some(value)
    })
}

#[derive(Debug)]
enum State {
    /// Looking for the next boundary line.
    Boundary,
    /// Reading a part's header lines; the `Content-Length` seen so far.
    Headers(Option<usize>),
    /// Reading a part's body, of a known length or up to the next boundary.
    Body(Option<usize>),
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Parser {
    /// The boundary without leading dashes.
    boundary: Vec<u8>,
    buffer: BytesMut,
    state: State,
    /// Where the boundary search in an unsized body resumes.
    scanned: usize,
    /// Longest part, header line or junk accepted before the stream is given up.
    limit: usize,
}

impl Parser {
    /// A parser for parts separated by `boundary` (as declared in the content type), each at
    /// most `limit` bytes.
    pub(crate) fn new(boundary: &str, limit: usize) -> Parser {
        Parser {
            boundary: boundary.trim_start_matches('-').as_bytes().to_vec(),
            buffer: BytesMut::new(),
            state: State::Boundary,
            scanned: 0,
            limit,
        }
    }

    /// Appends received bytes.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next complete part's body, `None` until more bytes are pushed. `Err`: the stream
    /// cannot go on (closing boundary, part or junk over the limit).
    pub(crate) fn next_part(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            match self.state {
                State::Boundary => {
                    let Some(at) = find(&self.buffer, &self.boundary, 0) else {
                        return self.within_limit("no boundary").map(|()| None);
                    };
                    let after = at + self.boundary.len();
                    if self.buffer[after..].starts_with(b"--") {
                        return Err("the server closed the multipart stream (final boundary)".into());
                    }
                    let Some(line_end) = self.buffer[after..].iter().position(|&b| b == b'\n') else {
                        return self.within_limit("boundary line").map(|()| None);
                    };
                    self.buffer.advance(after + line_end + 1);
                    self.state = State::Headers(None);
                }
                State::Headers(length) => {
                    let Some(line_end) = self.buffer.iter().position(|&b| b == b'\n') else {
                        return self.within_limit("header line").map(|()| None);
                    };
                    let line = self.buffer.split_to(line_end + 1);
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim();
                    self.state = if line.is_empty() {
                        self.scanned = 0;
                        State::Body(length)
                    } else {
                        State::Headers(content_length(line).or(length))
                    };
                }
                State::Body(Some(length)) => {
                    if length > self.limit {
                        return Err(format!(
                            "part of {length} bytes is over the limit of {}",
                            self.limit
                        ));
                    }
                    if self.buffer.len() < length {
                        return Ok(None);
                    }
                    self.state = State::Boundary;
                    return Ok(Some(self.buffer.split_to(length).freeze()));
                }
                State::Body(None) => {
                    let from = self.scanned.saturating_sub(self.boundary.len());
                    let Some(at) = find(&self.buffer, &self.boundary, from) else {
                        self.scanned = self.buffer.len();
                        return self.within_limit("part without Content-Length").map(|()| None);
                    };
                    // The body ends before the delimiter's dashes and the line break before them.
                    let mut end = at;
                    while end > 0 && self.buffer[end - 1] == b'-' {
                        end -= 1;
                    }
                    let body = &self.buffer[..end];
                    let body_len = body
                        .strip_suffix(b"\r\n")
                        .or_else(|| body.strip_suffix(b"\n"))
                        .unwrap_or(body)
                        .len();
                    let mut taken = self.buffer.split_to(at);
                    taken.truncate(body_len);
                    self.state = State::Boundary;
                    return Ok(Some(taken.freeze()));
                }
            }
        }
    }

    /// `Ok` while the unparsed bytes fit in the limit.
    fn within_limit(&self, waiting_for: &str) -> Result<(), String> {
        if self.buffer.len() > self.limit {
            return Err(format!(
                "{} bytes without a complete {waiting_for}: not the declared multipart stream",
                self.buffer.len()
            ));
        }
        Ok(())
    }
}

/// The value of a `Content-Length` header line.
fn content_length(line: &str) -> Option<usize> {
    let (name, value) = line.split_once(':')?;
    name.trim()
        .eq_ignore_ascii_case("content-length")
        .then(|| value.trim().parse().ok())?
}

/// Position of `needle` in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|at| from + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream of parts, with or without Content-Length, CRLF or LF line ends.
    fn stream(parts: &[(&[u8], bool)], eol: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (body, sized) in parts {
            out.extend_from_slice(format!("--frame{eol}Content-Type: image/jpeg{eol}").as_bytes());
            if *sized {
                out.extend_from_slice(format!("Content-Length: {}{eol}", body.len()).as_bytes());
            }
            out.extend_from_slice(eol.as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(eol.as_bytes());
        }
        out
    }

    fn parse_in_pieces(data: &[u8], boundary: &str, piece: usize) -> Vec<Bytes> {
        let mut parser = Parser::new(boundary, 1 << 20);
        let mut parts = Vec::new();
        for chunk in data.chunks(piece) {
            parser.push(chunk);
            while let Some(part) = parser.next_part().unwrap() {
                parts.push(part);
            }
        }
        parts
    }

    #[test]
    fn reads_the_boundary_parameter() {
        assert_eq!(
            boundary("multipart/x-mixed-replace; boundary=frame"),
            Some("frame")
        );
        assert_eq!(
            boundary("multipart/x-mixed-replace;Boundary=\"--my b\""),
            Some("--my b")
        );
        assert_eq!(boundary("multipart/x-mixed-replace"), None);
        assert_eq!(boundary("multipart/x-mixed-replace; boundary="), None);
    }

    #[test]
    fn parts_with_and_without_length_in_any_split() {
        let bodies: [&[u8]; 3] = [
            b"\xff\xd8first\r\n--frame\r\n\xff\xd9",
            b"second-",
            b"\xff\xd8third\xff\xd9",
        ];
        for eol in ["\r\n", "\n"] {
            // The first body contains a line that looks like a delimiter: it needs its length.
            let data = stream(&[(bodies[0], true), (bodies[1], false), (bodies[2], false)], eol);
            // A third part is only complete once the next boundary arrives.
            let data = [data, b"--frame\r\n".to_vec()].concat();
            for boundary in ["frame", "--frame"] {
                for piece in [1, 2, 7, data.len()] {
                    let parts = parse_in_pieces(&data, boundary, piece);
                    assert_eq!(parts, bodies, "eol {eol:?} boundary {boundary} piece {piece}");
                }
            }
        }
    }

    #[test]
    fn resynchronises_after_a_wrong_length_and_skips_junk() {
        let mut data = b"junk before\r\n".to_vec();
        data.extend(stream(&[(b"0123456789", false)], "\r\n"));
        // Declares 4 bytes for a 10-byte body: the rest is skipped up to the next boundary.
        data.extend_from_slice(b"--frame\r\nContent-Length: 4\r\n\r\nabcdefghij\r\n");
        data.extend(stream(&[(b"last", true)], "\r\n"));
        assert_eq!(
            parse_in_pieces(&data, "frame", 3),
            [&b"0123456789"[..], b"abcd", b"last"]
        );
    }

    #[test]
    fn gives_up_on_closing_boundary_and_oversize_data() {
        let mut parser = Parser::new("frame", 64);
        parser.push(b"--frame--\r\n");
        assert!(parser.next_part().unwrap_err().contains("closed"));

        let mut parser = Parser::new("frame", 64);
        parser.push(&[b'x'; 65]);
        assert!(parser
            .next_part()
            .unwrap_err()
            .contains("not the declared multipart stream"));

        let mut parser = Parser::new("frame", 64);
        parser.push(b"--frame\r\nContent-Length: 65\r\n\r\n");
        assert!(parser.next_part().unwrap_err().contains("over the limit"));
    }
}
