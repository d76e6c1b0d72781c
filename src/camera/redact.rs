//! Masking credentials in camera sources and in any text that may quote them (error
//! messages, ffmpeg and gst-launch output), so that no password reaches a log, an error or a
//! status string.

/// Names whose `name=value` value is masked: query parameters of snapshot URLs
/// (`?user=admin&pwd=…`) and element properties of gst pipelines (`rtspsrc user-pw=…`).
/// Compared without case.
const SECRET_NAMES: [&str; 11] = [
    "password",
    "passwd",
    "pwd",
    "pass",
    "user-pw",
    "token",
    "access_token",
    "secret",
    "key",
    "api_key",
    "apikey",
];

/// `url` (or any text containing URLs) with credentials masked: the user info of every
/// `scheme://user:pass@host` becomes `***` (`rtsp://***@host/…`), and so does the value of
/// every `password=`, `pwd=`, `token=`, `user-pw=` (etc.) parameter or property. Masking errs
/// on the side of too much: an `@` later in a URL (`?mail=a@b`) masks everything before it.
pub fn redact(url: &str) -> String {
    mask_secret_values(&mask_user_info(url))
}

/// Whether `c` ends a URL inside a text.
fn ends_token(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`')
}

fn mask_user_info(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let token = &tail[..tail.find(ends_token).unwrap_or(tail.len())];
        // A password may hold a quote: up to the next space, the authority (before the first
        // `/`) still ends at its `@`.
        let run = &tail[..tail.find(char::is_whitespace).unwrap_or(tail.len())];
        let authority = &run[..run.find('/').unwrap_or(run.len())];
        let user_info_end = token.rfind('@').or_else(|| authority.rfind('@'));
        // `scheme:///path` has no authority, hence no user info.
        match user_info_end.filter(|_| !token.starts_with('/')) {
            Some(user_info_end) => {
                out.push_str("***");
                rest = &tail[user_info_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Whether `c` separates `name=value` pairs (query strings, gst properties and caps).
fn separates(c: char) -> bool {
    c.is_whitespace() || matches!(c, '?' | '&' | ';' | ',' | '"' | '\'')
}

fn mask_secret_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find('=') {
        let equals = search + found;
        let name_start = text[..equals].rfind(separates).map_or(0, |at| at + 1);
        let name = &text[name_start..equals];
        let value_end = text[equals + 1..]
            .find(separates)
            .map_or(text.len(), |at| equals + 1 + at);
        if SECRET_NAMES
            .iter()
            .any(|secret| name.eq_ignore_ascii_case(secret))
        {
            out.push_str(&text[copied..=equals]);
            out.push_str("***");
            copied = value_end;
        }
        search = (equals + 1).max(copied);
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn masks_user_info() {
        let cases = [
            (
                "rtsp://user:pass@192.168.1.20/stream1",
                "rtsp://***@192.168.1.20/stream1",
            ),
            ("rtsp://admin@cam:554/x", "rtsp://***@cam:554/x"),
            ("rtsp://u:p@ss@cam/x", "rtsp://***@cam/x"),
            // Quotes in a password (they end a URL quoted in a text otherwise).
            ("rtsp://u:it's@cam/s", "rtsp://***@cam/s"),
            ("rtsp://u:\"q\"<x>@cam/s", "rtsp://***@cam/s"),
            ("'rtsp://u:it's@cam/s'", "'rtsp://***@cam/s'"),
            (
                "http://cam.local:8080/video?res=hd",
                "http://cam.local:8080/video?res=hd",
            ),
            ("file:///data/a@2x/*.jpg", "file:///data/a@2x/*.jpg"),
            ("v4l2:///dev/video0?width=1280", "v4l2:///dev/video0?width=1280"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
        }
    }

    #[test]
    fn masks_every_url_in_a_text() {
        let text = "[rtsp @ 0x5f] method DESCRIBE failed: rtsp://a:b@h/x: 401 (also 'http://c:d@e:80/y')";
        assert_eq!(
            redact(text),
            "[rtsp @ 0x5f] method DESCRIBE failed: rtsp://***@h/x: 401 (also 'http://***@e:80/y')"
        );
    }

    #[test]
    fn masks_secret_parameters_and_properties() {
        assert_eq!(
            redact("http://cam/snap.cgi?usr=admin&PWD=s3cret&x=1"),
            "http://cam/snap.cgi?usr=admin&PWD=***&x=1"
        );
        assert_eq!(
            redact("rtspsrc location=rtsp://u:p@h/x user-id=admin user-pw=secret ! decodebin"),
            "rtspsrc location=rtsp://***@h/x user-id=admin user-pw=*** ! decodebin"
        );
        assert_eq!(
            redact("x264enc key-int-max=30 bypass=1 token=abc"),
            "x264enc key-int-max=30 bypass=1 token=***"
        );
    }
}
