//! HTTP(S) cameras. One GET decides the kind from the response's content type:
//! `multipart/…` (`x-mixed-replace`: MJPEG) is read as a stream, part after part, until it
//! ends; anything else is a snapshot, and each later frame is a new GET, paced at `fps`.
//! Credentials in the URL are sent as HTTP Basic authentication (reqwest takes them out of
//! the URL); digest authentication is not supported. HTTPS certificates are checked against
//! the Mozilla roots (webpki-roots), so a camera's self-signed certificate is refused.
//!
//! Every wait (connection, response head, each body chunk) is bounded by
//! [`SourceOptions::timeout`]: a server that stops sending is [`SourceError::Stalled`] after
//! it, one that closes the connection is [`SourceError::Failed`] at once.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use reqwest::header::CONTENT_TYPE;
use reqwest::Response;

use super::multipart::{self, Parser};
use super::{
    decode, error_chain, redact, Frame, FrameFuture, FrameSource, Pacer, SourceError, SourceOptions,
    MAX_ENCODED_BYTES,
};

/// An HTTP snapshot URL or MJPEG stream (see the module documentation).
pub(crate) struct HttpSource {
    /// The URL as configured, credentials included.
    url: String,
    /// The URL redacted.
    shown: String,
    client: reqwest::Client,
    options: SourceOptions,
    pacer: Pacer,
    /// The open MJPEG stream, if the URL is one and it is connected.
    stream: Option<Stream>,
}

struct Stream {
    response: Response,
    parser: Parser,
}

impl HttpSource {
    /// Checks the URL and builds the client; connects on the first frame.
    pub(crate) fn new(url: &str, options: &SourceOptions) -> Result<HttpSource, SourceError> {
        reqwest::Url::parse(url).map_err(|e| SourceError::invalid(url, format!("not a URL: {e}")))?;
        let client = reqwest::Client::builder()
            .connect_timeout(options.timeout)
            .build()
            .map_err(|e| SourceError::invalid(url, error_chain(&e)))?;
        Ok(HttpSource {
            url: url.to_string(),
            shown: redact(url),
            client,
            options: options.clone(),
            pacer: Pacer::new(options),
            stream: None,
        })
    }

    async fn frame(&mut self) -> Result<Frame, SourceError> {
        let stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                self.pacer.tick().await;
                let mut response = self.get().await?;
                match self.stream_boundary(&response)? {
                    Some(boundary) => Stream {
                        response,
                        parser: Parser::new(&boundary, MAX_ENCODED_BYTES),
                    },
                    None => {
                        let image = self.body(&mut response).await?;
                        return decode(&self.shown, image, Instant::now()).await;
                    }
                }
            }
        };
        // On an error the stream is dropped here: the next call reconnects.
        let (part, stream) = self.part(stream).await?;
        self.stream = Some(stream);
        decode(&self.shown, part, Instant::now()).await
    }

    async fn get(&self) -> Result<Response, SourceError> {
        let sent = tokio::time::timeout(self.options.timeout, self.client.get(&self.url).send()).await;
        let response = sent
            .map_err(|_| SourceError::stalled(&self.shown, self.options.timeout))?
            .map_err(|e| SourceError::failed(&self.shown, error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(SourceError::failed(
                &self.shown,
                format!("HTTP status {}", response.status()),
            ));
        }
        Ok(response)
    }

    /// The boundary if the response is a multipart stream.
    fn stream_boundary(&self, response: &Response) -> Result<Option<String>, SourceError> {
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if !content_type.to_ascii_lowercase().starts_with("multipart/") {
            return Ok(None);
        }
        match multipart::boundary(content_type) {
            Some(boundary) => Ok(Some(boundary.to_string())),
            None => Err(SourceError::failed(
                &self.shown,
                format!("content type {content_type:?} has no boundary parameter"),
            )),
        }
    }

    /// The next chunk of a response body; `None` at its end.
    async fn chunk(&self, response: &mut Response) -> Result<Option<Bytes>, SourceError> {
        tokio::time::timeout(self.options.timeout, response.chunk())
            .await
            .map_err(|_| SourceError::stalled(&self.shown, self.options.timeout))?
            .map_err(|e| SourceError::failed(&self.shown, error_chain(&e)))
    }

    /// A whole (snapshot) body, at most [`MAX_ENCODED_BYTES`].
    async fn body(&self, response: &mut Response) -> Result<Bytes, SourceError> {
        let mut body = BytesMut::new();
        while let Some(chunk) = self.chunk(response).await? {
            if body.len() + chunk.len() > MAX_ENCODED_BYTES {
                return Err(SourceError::failed(
                    &self.shown,
                    format!("snapshot over {MAX_ENCODED_BYTES} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// The next part of the stream, with the stream to continue from.
    async fn part(&self, mut stream: Stream) -> Result<(Bytes, Stream), SourceError> {
        loop {
            if let Some(part) = stream
                .parser
                .next_part()
                .map_err(|reason| SourceError::failed(&self.shown, reason))?
            {
                return Ok((part, stream));
            }
            match self.chunk(&mut stream.response).await? {
                Some(chunk) => stream.parser.push(&chunk),
                None => return Err(SourceError::failed(&self.shown, "the server closed the stream")),
            }
        }
    }
}

impl FrameSource for HttpSource {
    fn next_frame(&mut self) -> FrameFuture<'_> {
        Box::pin(self.frame())
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }
}
