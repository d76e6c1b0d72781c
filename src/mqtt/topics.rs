//! The topic layout of SPEC §6: `P = <topic_prefix>/<node_id>` (this daemon) and
//! `F = <topic_prefix>` (the fleet). Builds every topic onnxd publishes, the filters it
//! subscribes to, and parses a request topic back into model and version.

/// Topics of one daemon.
#[derive(Clone, Debug)]
pub struct Topics {
    node: String,
    fleet: String,
    share_group: Option<String>,
}

/// What a request topic names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTarget {
    /// Model name.
    pub model: String,
    /// Version asked for (`…/versions/<v>/infer`); `Err` holds a segment that is not a number.
    pub version: Result<Option<u64>, String>,
}

impl Topics {
    /// Topics for `prefix`, `node_id` and an optional shared-subscription group.
    pub fn new(prefix: &str, node_id: &str, share_group: &str) -> Topics {
        Topics {
            node: format!("{prefix}/{node_id}"),
            fleet: prefix.to_string(),
            share_group: (!share_group.is_empty()).then(|| share_group.to_string()),
        }
    }

    /// `P/status`: retained `online` / `offline` (the Last Will) / `stopped`.
    pub fn status(&self) -> String {
        format!("{}/status", self.node)
    }

    /// `P/models/<m>/status`: the model's retained state JSON.
    pub fn model_status(&self, model: &str) -> String {
        format!("{}/models/{model}/status", self.node)
    }

    /// `P/node`: the node's retained summary JSON (Home Assistant's models-ready sensor).
    pub fn node_info(&self) -> String {
        format!("{}/node", self.node)
    }

    /// `P/models/<m>/stats`: the model's retained rate and latency JSON.
    pub fn model_stats(&self, model: &str) -> String {
        format!("{}/models/{model}/stats", self.node)
    }

    /// `P/models/<m>/result`: where responses go when the request names no response topic.
    pub fn result(&self, model: &str) -> String {
        format!("{}/models/{model}/result", self.node)
    }

    /// `P/cameras/<c>/result`: a camera's per-frame results.
    pub fn camera_result(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/result", self.node)
    }

    /// `P/cameras/<c>/status`: retained `online` / `offline`; JSON details on `…/status/detail`.
    pub fn camera_status(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/status", self.node)
    }

    /// `P/cameras/<c>/snapshot`: a JPEG of a frame with detections (`snapshot = true`).
    pub fn camera_snapshot(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/snapshot", self.node)
    }

    /// The filters to subscribe to: this daemon's requests, and the fleet's pool requests
    /// through `$share/<group>/…` when a share group is set.
    pub fn request_filters(&self) -> Vec<String> {
        let mut filters = vec![
            format!("{}/models/+/infer", self.node),
            format!("{}/models/+/versions/+/infer", self.node),
        ];
        if let Some(group) = &self.share_group {
            filters.push(format!("$share/{group}/{}/models/+/infer", self.fleet));
            filters.push(format!("$share/{group}/{}/models/+/versions/+/infer", self.fleet));
        }
        filters
    }

    /// The model and version a request topic names; `None` when it is not a request topic.
    pub fn parse_request(&self, topic: &str) -> Option<RequestTarget> {
        let rest = topic
            .strip_prefix(&self.node)
            .or_else(|| topic.strip_prefix(&self.fleet))?
            .strip_prefix("/models/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (model, version) = match parts.as_slice() {
            [model, "infer"] => (*model, Ok(None)),
            [model, "versions", v, "infer"] => (*model, v.parse().map(Some).map_err(|_| v.to_string())),
            _ => return None,
        };
        Some(RequestTarget {
            model: model.to_string(),
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics_of_the_node_and_the_fleet_parse() {
        let t = Topics::new("onnxd", "cam1", "pool");
        assert_eq!(t.status(), "onnxd/cam1/status");
        assert_eq!(t.result("digits"), "onnxd/cam1/models/digits/result");
        assert_eq!(
            t.parse_request("onnxd/cam1/models/digits/infer"),
            Some(RequestTarget {
                model: "digits".into(),
                version: Ok(None)
            })
        );
        assert_eq!(
            t.parse_request("onnxd/cam1/models/digits/versions/3/infer")
                .unwrap()
                .version,
            Ok(Some(3))
        );
        assert_eq!(
            t.parse_request("onnxd/cam1/models/digits/versions/x/infer")
                .unwrap()
                .version,
            Err("x".to_string())
        );
        assert_eq!(
            t.parse_request("onnxd/models/digits/infer").unwrap().model,
            "digits"
        );
        assert_eq!(t.parse_request("onnxd/cam1/models/digits/result"), None);
        assert_eq!(t.parse_request("other/models/digits/infer"), None);
        assert!(t
            .request_filters()
            .contains(&"$share/pool/onnxd/models/+/infer".to_string()));
        assert_eq!(Topics::new("onnxd", "n", "").request_filters().len(), 2);
    }
}
