//! The KServe V2 wire forms every transport shares (HTTP, MQTT, cameras and the CLI): a payload
//! is classified and its JSON parsed once ([`Payload::parse`]), decoded into tensors against
//! the model version that will run it ([`Payload::decode`]), and responses are encoded by one
//! encoder ([`encode`]) — JSON, or Triton's binary tensor extension. Transports keep only their
//! own framing: HTTP headers and status codes, MQTT user properties, topics and acks.
//!
//! Payload forms, the same for every transport:
//!
//! | header length | body | form |
//! |---|---|---|
//! | none | an image (JPEG, PNG, BMP, WebP by magic bytes) | [`PayloadKind::Image`] |
//! | none | anything else | [`PayloadKind::Json`]: a V2 request |
//! | 0 | an image | [`PayloadKind::Image`] |
//! | 0 | anything else | [`PayloadKind::Raw`]: the single input's bytes |
//! | n > 0 | JSON header of n bytes, then binary inputs | [`PayloadKind::Framed`] |

pub mod request;
pub mod response;

pub use request::{CodecError, Payload, PayloadKind};
pub use response::{encode, Encoding, Reply};

/// Name of the header (HTTP) or user property (MQTT 5) holding the JSON header's length.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Parses an `Inference-Header-Content-Length` value.
pub fn header_length(value: &str) -> Result<usize, CodecError> {
    value.trim().parse().map_err(|_| {
        CodecError(format!(
            "Inference-Header-Content-Length is not a number: {value:?}"
        ))
    })
}
