//! Where the cameras' results, snapshots and states go ([`CameraOutputs`], the daemon's
//! [`Outputs`]): their MQTT topics when MQTT is on (SPEC §6), and the latest annotated frame
//! and state detail of each camera in memory ([`CameraViews`]) for the status page.
//!
//! Snapshots are published retained on `P/cameras/<c>/snapshot` (only the latest matters, so
//! they never go through the outbox); a removed camera's retained topics are cleared and its
//! views forgotten.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::camera::pipeline::Outputs;
use crate::mqtt::topics::Topics;
use crate::mqtt::Sink;

/// What the status page shows of one camera besides its counters.
#[derive(Clone, Debug, Default)]
pub struct CameraView {
    /// The latest annotated frame.
    pub snapshot: Option<Bytes>,
    /// The latest status detail (JSON `{state, source, model, error, reconnects}`).
    pub detail: Option<serde_json::Value>,
}

/// The latest view of every camera, by name.
#[derive(Clone, Debug, Default)]
pub struct CameraViews(Arc<RwLock<BTreeMap<String, CameraView>>>);

impl CameraViews {
    /// The view of `camera` (empty when it has none).
    pub fn get(&self, camera: &str) -> CameraView {
        let views = self.0.read().unwrap_or_else(|e| e.into_inner());
        views.get(camera).cloned().unwrap_or_default()
    }

    fn update(&self, camera: &str, change: impl FnOnce(&mut CameraView)) {
        let mut views = self.0.write().unwrap_or_else(|e| e.into_inner());
        change(views.entry(camera.to_string()).or_default());
    }

    fn remove(&self, camera: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(camera);
    }
}

/// The camera outputs of the daemon.
pub struct CameraOutputs {
    /// MQTT, when it is on.
    pub mqtt: Option<(Sink, Topics)>,
    /// The views the status page reads.
    pub views: CameraViews,
    /// Publish every camera's snapshots (Home Assistant discovery is on).
    pub publish_all_snapshots: bool,
}

impl Outputs for CameraOutputs {
    fn result(&self, camera: &str, body: Vec<u8>) {
        if let Some((sink, topics)) = &self.mqtt {
            sink.publish(topics.camera_result(camera), body, "application/json");
        }
    }

    fn snapshot(&self, camera: &str, jpeg: Bytes, publish: bool) {
        if publish {
            if let Some((sink, topics)) = &self.mqtt {
                sink.retain(topics.camera_snapshot(camera), jpeg.to_vec());
            }
        }
        self.views.update(camera, |view| view.snapshot = Some(jpeg));
    }

    fn publish_snapshots(&self) -> bool {
        self.publish_all_snapshots
    }

    fn status(&self, camera: &str, online: bool, detail: Vec<u8>) {
        let parsed = serde_json::from_slice(&detail).ok();
        self.views.update(camera, |view| view.detail = parsed);
        if let Some((sink, topics)) = &self.mqtt {
            let topic = topics.camera_status(camera);
            sink.retain(format!("{topic}/detail"), detail);
            let state: &[u8] = if online { b"online" } else { b"offline" };
            sink.retain(topic, state.to_vec());
        }
    }

    fn removed(&self, camera: &str) {
        self.views.remove(camera);
        if let Some((sink, topics)) = &self.mqtt {
            let topic = topics.camera_status(camera);
            sink.retain(format!("{topic}/detail"), Vec::new());
            sink.retain(topic, Vec::new());
            sink.retain(topics.camera_snapshot(camera), Vec::new());
        }
    }
}
