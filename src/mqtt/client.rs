//! The broker connection settings from `[mqtt]`: TLS with a pinned CA and client certificate
//! through rustls/ring, user name and password, a persistent session with expiry, Last Will
//! `offline` on `P/status`, a receive maximum, and a packet limit above `max_payload_bytes`.
//! [`super::wire`] connects with them; [`super::session`] keeps the connection.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Connect, ConnectProperties, LastWill, Login};
use rumqttc::v5::mqttbytes::QoS;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::topics::Topics;
use super::wire::Settings;
use crate::config::MqttConfig;

/// Keep alive announced to the broker (a PINGREQ at least this often).
const KEEP_ALIVE_SECS: u16 = 30;
/// How long connecting (TCP, TLS, CONNECT/CONNACK) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests the broker may send before onnxd acknowledges any (MQTT 5 receive maximum).
const RECEIVE_MAXIMUM: u16 = 256;
/// Room above `max_payload_bytes` for the rest of a packet, so an oversize payload still
/// reaches onnxd and gets an error reply instead of being dropped by the broker.
const PACKET_HEADROOM: u64 = 64 << 10;

/// A configuration problem of `[mqtt]` the config check could not see (the TLS settings
/// rustls refuses).
#[derive(Debug, thiserror::Error)]
#[error("mqtt.{key}: {message}")]
pub struct ConfigError {
    key: &'static str,
    message: String,
}

fn config_error(key: &'static str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        key,
        message: message.to_string(),
    }
}

/// Connection settings for a validated `[mqtt]` (its files were read when the config loaded).
pub fn settings(config: &MqttConfig, topics: &Topics) -> Result<Settings, ConfigError> {
    let max_incoming = u32::try_from(config.max_payload_bytes + PACKET_HEADROOM).unwrap_or(u32::MAX);
    let mut properties = ConnectProperties::new();
    properties.session_expiry_interval = Some(config.session_expiry_secs);
    properties.receive_maximum = Some(RECEIVE_MAXIMUM);
    properties.max_packet_size = Some(max_incoming);
    let connect = Connect {
        keep_alive: KEEP_ALIVE_SECS,
        client_id: config.client_id.clone(),
        clean_start: false,
        properties: Some(properties),
    };
    let will = LastWill::new(topics.status(), "offline", QoS::AtLeastOnce, true, None);
    let login = config
        .credentials
        .as_ref()
        .map(|(user, password)| Login::new(user.clone(), password.expose().to_string()));
    let tls = match config.broker.tls {
        true => Some(Arc::new(tls_config(config)?)),
        false => None,
    };
    Ok(Settings {
        host: config.broker.host.clone(),
        port: config.broker.port,
        tls,
        connect,
        will: Some(will),
        login,
        max_incoming,
        connect_timeout: CONNECT_TIMEOUT,
    })
}

fn tls_config(config: &MqttConfig) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca {
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| config_error("ca_file", e))?;
                roots.add(cert).map_err(|e| config_error("ca_file", e))?;
            }
        }
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("url", e))?
            .with_root_certificates(roots);
    let Some(identity) = &config.identity else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = CertificateDer::pem_slice_iter(&identity.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error("client_cert", e))?;
    let key = PrivateKeyDer::from_pem_slice(identity.key.expose().as_bytes())
        .map_err(|e| config_error("client_key", e))?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| config_error("client_cert", e))
}
