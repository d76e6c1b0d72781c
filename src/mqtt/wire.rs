//! One broker connection at the packet level: TCP (Nagle off) or TLS (rustls through
//! `tokio-rustls`), the CONNECT / CONNACK exchange, then MQTT 5 packets read and written with
//! `rumqttc`'s codec (`mqttbytes`). No session logic lives here: packet ids, acknowledgements
//! and retries belong to [`super::session`] and [`super::publisher`].
//!
//! Reading is cancel-safe (bytes read stay in the link's buffer until a whole packet is
//! there), so the session can wait for a packet and for its own commands at once; writing is
//! never cancelled by the session.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::tokio_rustls::TlsConnector;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, LastWill, Login, Packet,
};
use rumqttc::v5::mqttbytes::Error as CodecError;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where and how to connect.
#[derive(Clone)]
pub struct Settings {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS client configuration; plain TCP when `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The CONNECT packet (client id, keep alive, session, properties).
    pub connect: Connect,
    /// Last Will.
    pub will: Option<LastWill>,
    /// User name and password.
    pub login: Option<Login>,
    /// Largest packet accepted from the broker (also announced in CONNECT).
    pub max_incoming: u32,
    /// How long the TCP, TLS and CONNECT/CONNACK exchange may take.
    pub connect_timeout: Duration,
}

impl Settings {
    /// A plain-TCP client with a clean start, no login and no Last Will, announcing
    /// `max_packet` as the largest packet it accepts (the load generator's and tools').
    pub fn plain(host: String, port: u16, client_id: String, keep_alive: u16, max_packet: u32) -> Settings {
        let mut properties = ConnectProperties::new();
        properties.max_packet_size = Some(max_packet);
        Settings {
            host,
            port,
            tls: None,
            connect: Connect {
                keep_alive,
                client_id,
                clean_start: true,
                properties: Some(properties),
            },
            will: None,
            login: None,
            max_incoming: max_packet,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// How often to ping: the keep alive announced in CONNECT.
    pub fn keep_alive(&self) -> Duration {
        keep_alive_of(self.connect.keep_alive)
    }
}

/// A keep alive (announced, or imposed by the broker) as a ping interval; 0 (none) pings
/// hourly.
pub fn keep_alive_of(secs: u16) -> Duration {
    Duration::from_secs(if secs == 0 { 3600 } else { secs.into() })
}

/// Why the connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Socket or TLS I/O failed.
    #[error("broker connection: {0}")]
    Io(#[from] std::io::Error),
    /// The host is not a valid TLS server name.
    #[error("'{0}' is not a valid TLS server name")]
    ServerName(String),
    /// Connecting took longer than the connection timeout.
    #[error("no CONNACK within {0:?}")]
    Timeout(Duration),
    /// The broker refused the connection.
    #[error("the broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    /// The first packet from the broker was not a CONNACK.
    #[error("expected CONNACK from the broker, got {0}")]
    NotConnAck(&'static str),
    /// The broker sent bytes that are not a valid MQTT 5 packet (or one over the size limit).
    #[error("malformed packet from the broker: {0}")]
    Malformed(CodecError),
    /// A packet could not be encoded (too large for the broker).
    #[error("cannot encode a packet: {0}")]
    Encode(CodecError),
    /// The broker closed the connection.
    #[error("the broker closed the connection")]
    Closed,
}

/// A byte stream to the broker.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An established MQTT connection.
pub struct Link {
    stream: Box<dyn Stream>,
    incoming: BytesMut,
    outgoing: BytesMut,
    max_incoming: u32,
    max_outgoing: Option<u32>,
}

/// Connects, sends CONNECT and waits for a successful CONNACK.
pub async fn connect(settings: &Settings) -> Result<(Link, ConnAck), WireError> {
    tokio::time::timeout(settings.connect_timeout, handshake(settings))
        .await
        .map_err(|_| WireError::Timeout(settings.connect_timeout))?
}

async fn handshake(settings: &Settings) -> Result<(Link, ConnAck), WireError> {
    let tcp = TcpStream::connect((settings.host.as_str(), settings.port)).await?;
    // Nagle off: a small response must not wait for the broker's delayed ACK.
    tcp.set_nodelay(true)?;
    let stream: Box<dyn Stream> = match &settings.tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = ServerName::try_from(settings.host.clone())
                .map_err(|_| WireError::ServerName(settings.host.clone()))?;
            Box::new(TlsConnector::from(config.clone()).connect(name, tcp).await?)
        }
    };
    let mut link = Link {
        stream,
        incoming: BytesMut::with_capacity(16 << 10),
        outgoing: BytesMut::with_capacity(16 << 10),
        max_incoming: settings.max_incoming,
        max_outgoing: None,
    };
    link.send(Packet::Connect(
        settings.connect.clone(),
        settings.will.clone(),
        settings.login.clone(),
    ))?;
    link.flush().await?;
    match link.read().await? {
        Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => {
            link.max_outgoing = ack.properties.as_ref().and_then(|p| p.max_packet_size);
            Ok((link, ack))
        }
        Packet::ConnAck(ack) => Err(WireError::Refused(ack.code)),
        other => Err(WireError::NotConnAck(packet_name(&other))),
    }
}

impl Link {
    /// The next packet from the broker. Cancel-safe.
    pub async fn read(&mut self) -> Result<Packet, WireError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(packet);
            }
            if self.stream.read_buf(&mut self.incoming).await? == 0 {
                return Err(WireError::Closed);
            }
        }
    }

    /// The next packet, and every other whole one already read with it (so that what is
    /// written in answer to them can go out in one flush). Cancel-safe, as [`Link::read`].
    pub async fn read_ready(&mut self) -> Result<Vec<Packet>, WireError> {
        let mut packets = vec![self.read().await?];
        while let Some(packet) = self.buffered()? {
            packets.push(packet);
        }
        Ok(packets)
    }

    /// The next packet if the bytes read so far hold a whole one; never waits for the socket.
    pub fn buffered(&mut self) -> Result<Option<Packet>, WireError> {
        match Packet::read(&mut self.incoming, Some(self.max_incoming)) {
            Ok(packet) => Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(more)) => {
                self.incoming.reserve(more);
                Ok(None)
            }
            Err(e) => Err(WireError::Malformed(e)),
        }
    }

    /// Encodes a packet into the write buffer (sent by [`Link::flush`]); an error leaves the
    /// buffer as it was, so the connection stays usable.
    pub fn send(&mut self, packet: Packet) -> Result<(), WireError> {
        let mark = self.outgoing.len();
        packet
            .write(&mut self.outgoing, self.max_outgoing)
            .map(|_| ())
            .map_err(|e| {
                self.outgoing.truncate(mark);
                WireError::Encode(e)
            })
    }

    /// Writes out what [`Link::send`] buffered (nothing to do when nothing is).
    pub async fn flush(&mut self) -> Result<(), WireError> {
        if self.outgoing.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.outgoing).await?;
        self.outgoing.clear();
        self.stream.flush().await?;
        Ok(())
    }

    /// The broker's maximum packet size, when it announced one.
    pub fn max_outgoing(&self) -> Option<u32> {
        self.max_outgoing
    }
}

/// A packet's name, for messages.
pub fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Auth(_) => "AUTH",
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PingReq(_) => "PINGREQ",
        Packet::PingResp(_) => "PINGRESP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::Disconnect(_) => "DISCONNECT",
    }
}
