//! What the node tells about itself, wired by the daemon between the serving core, the
//! cameras and MQTT: Home Assistant discovery and the state topics it reads
//! ([`discovery`]), the cameras' outputs with the latest annotated frame of each
//! ([`outputs`]), recent rates ([`rates`]) and the status page's data ([`status`]).
//!
//! [`NodeReport::start`] publishes discovery **before** the cameras start (so HA knows every
//! entity before the first frame's result), then [`NodeReport::run`] keeps it current: once a
//! second it compares what the node should announce with what it did (a model added or gone,
//! a camera changed by SIGHUP, a detector's labels), every [`rates::WINDOW`] it samples the
//! rates and publishes the state topics, and after HA's birth message (`online` on
//! `<discovery_prefix>/status`) it re-sends everything after a random delay of at most
//! [`crate::homeassistant::REDISCOVERY_DELAY_MAX`]. The birth topic is the one of the prefix
//! the daemon started with; SIGHUP applies the other `[homeassistant]` settings.

pub mod discovery;
pub mod outputs;
pub mod rates;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::camera::pipeline::{CameraRegistry, Outputs};
use crate::config::{CameraConfig, Config, HomeAssistantConfig};
use crate::mqtt::topics::Topics;
use crate::mqtt::Mqtt;
use crate::serving::Router;
use crate::web::StatusSource;
use discovery::Discovery;
use outputs::{CameraOutputs, CameraViews};
use rates::Rates;
use status::NodeStatus;

/// How often discovery is compared with what the node has.
const TICK: Duration = Duration::from_secs(1);

/// What the node is configured to announce (updated by SIGHUP).
#[derive(Clone, Debug)]
pub struct Desired {
    /// The cameras.
    pub cameras: Vec<CameraConfig>,
    /// `[homeassistant]`.
    pub homeassistant: HomeAssistantConfig,
}

impl Desired {
    fn of(config: &Config) -> Desired {
        Desired {
            cameras: config.camera.clone(),
            homeassistant: config.homeassistant.clone(),
        }
    }
}

/// The node's reporting: discovery, camera views, rates.
pub struct NodeReport {
    /// Each camera's latest annotated frame and detail.
    pub views: CameraViews,
    /// Recent rates.
    pub rates: Arc<Rates>,
    started: Instant,
    node_id: String,
    desired: watch::Sender<Desired>,
    discovery: Option<Discovery>,
    birth: Option<UnboundedReceiver<Bytes>>,
    publish_snapshots: bool,
}

impl NodeReport {
    /// Sets up reporting; with MQTT and `[homeassistant] enabled`, publishes discovery and
    /// the state topics now (call it before the cameras start). Inside the tokio runtime.
    pub fn start(config: &Config, mqtt: Option<&Mqtt>, router: &Arc<Router>) -> NodeReport {
        let rates = Arc::new(Rates::default());
        let started = Instant::now();
        let desired = Desired::of(config);
        let mut report = NodeReport {
            views: CameraViews::default(),
            rates: rates.clone(),
            started,
            node_id: config.node_id.clone(),
            desired: watch::channel(desired.clone()).0,
            discovery: None,
            birth: None,
            publish_snapshots: config.homeassistant.enabled,
        };
        let (Some(mqtt), Some(settings)) = (mqtt, &config.mqtt) else {
            return report;
        };
        let mut discovery = Discovery {
            sink: mqtt.sink(),
            topics: topics(config).expect("MQTT is configured"),
            node_id: config.node_id.clone(),
            configuration_url: discovery::configuration_url(config),
            router: router.clone(),
            rates,
            started,
            published: None,
            stats: BTreeMap::new(),
            node: None,
        };
        if config.homeassistant.enabled {
            discovery.publish_states(true);
            discovery.sync(&desired, true);
            let birth = crate::homeassistant::birth_topic(&config.homeassistant.discovery_prefix);
            report.birth = Some(mqtt.listen(&birth));
            tracing::info!(prefix = %config.homeassistant.discovery_prefix, client_id = %settings.client_id, "Home Assistant discovery published");
        }
        report.discovery = Some(discovery);
        report
    }

    /// Where the cameras' results, snapshots and states go.
    pub fn camera_outputs(&self, config: &Config, mqtt: Option<&Mqtt>) -> Arc<dyn Outputs> {
        Arc::new(CameraOutputs {
            mqtt: mqtt
                .zip(topics(config))
                .map(|(mqtt, topics)| (mqtt.sink(), topics)),
            views: self.views.clone(),
            publish_all_snapshots: self.publish_snapshots,
        })
    }

    /// The status page's data.
    pub fn status_source(
        &self,
        router: Arc<Router>,
        cameras: CameraRegistry,
        mqtt: Option<&Mqtt>,
    ) -> Arc<dyn StatusSource> {
        Arc::new(NodeStatus {
            node_id: self.node_id.clone(),
            started: self.started,
            router,
            rates: self.rates.clone(),
            cameras,
            views: self.views.clone(),
            desired: self.desired.subscribe(),
            mqtt: mqtt.map(|m| m.stats.clone()),
        })
    }

    /// Starts keeping everything current until `shutdown` (see the module documentation).
    pub fn run(&mut self, router: Arc<Router>, cameras: CameraRegistry, shutdown: CancellationToken) {
        let task = Task {
            discovery: self.discovery.take(),
            birth: self.birth.take(),
            rates: self.rates.clone(),
            router,
            cameras,
            desired: self.desired.subscribe(),
        };
        tokio::spawn(task.run(shutdown));
    }

    /// SIGHUP: the cameras and `[homeassistant]` of the re-read config.
    pub fn reload(&self, config: &Config) {
        self.desired.send_replace(Desired::of(config));
    }
}

fn topics(config: &Config) -> Option<Topics> {
    let mqtt = config.mqtt.as_ref()?;
    Some(Topics::new(
        &mqtt.topic_prefix,
        &config.node_id,
        &mqtt.share_group,
    ))
}

/// The periodic side of [`NodeReport`].
struct Task {
    discovery: Option<Discovery>,
    birth: Option<UnboundedReceiver<Bytes>>,
    rates: Arc<Rates>,
    router: Arc<Router>,
    cameras: CameraRegistry,
    desired: watch::Receiver<Desired>,
}

impl Task {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let window = (rates::WINDOW.as_millis() / TICK.as_millis()).max(1) as u64;
        let mut ticks = 0u64;
        let mut resend: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => ticks += 1,
                Ok(()) = self.desired.changed() => {}
                Some(payload) = next(&mut self.birth) => {
                    let prefix = self.desired.borrow().homeassistant.discovery_prefix.clone();
                    if discovery::is_birth(&prefix, &payload) && resend.is_none() {
                        let delay = crate::homeassistant::rediscovery_delay();
                        tracing::info!(delay_ms = delay.as_millis() as u64, "Home Assistant came online: discovery will be re-sent");
                        resend = Some(Instant::now() + delay);
                    }
                    continue;
                }
            }
            let sample = ticks % window == 0;
            if sample {
                self.rates.sample(&self.router, &self.cameras.snapshot());
            }
            let Some(discovery) = &mut self.discovery else {
                continue;
            };
            let force = resend.is_some_and(|at| Instant::now() >= at);
            if force {
                resend = None;
            }
            let desired = self.desired.borrow_and_update().clone();
            discovery.sync(&desired, force);
            if desired.homeassistant.enabled && (sample || force) {
                discovery.publish_states(force);
            }
        }
    }
}

/// The next message of an optional channel; never, without one (or once it closed).
async fn next(receiver: &mut Option<UnboundedReceiver<Bytes>>) -> Option<Bytes> {
    match receiver {
        Some(r) => match r.recv().await {
            Some(message) => Some(message),
            None => {
                *receiver = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}
