//! A guard against small replies waiting for delayed ACKs (issue 12: with Nagle's algorithm on
//! onnxd's MQTT socket a round trip took up to 44 ms): 100 requests sent one at a time, each
//! after the previous reply, through a broker with `set_tcp_nodelay true` and a client with
//! Nagle off, must all be answered within one second. With Nagle back on onnxd's socket they
//! took 2.2 s here (every other round trip waits ~44 ms: 50 requests took 1.10 s, too close to
//! a threshold); with it off ~20 ms, so one second leaves a slow machine a wide margin.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::MqttOptions;
use rumqttc::NetworkOptions;

use super::common;
use super::harness::{self, json, start_daemon, Broker, Client};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_hundred_requests_one_at_a_time_take_under_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    common::copy_example_model(&dir.path().join("models/digits"));
    let mqtt = harness::url_setting(broker.port);
    let _daemon = start_daemon(dir.path(), "quick", None, &mqtt);
    let mut options = MqttOptions::new("round-trips", "127.0.0.1", broker.port);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    let status = "onnxd/quick/models/digits/status";
    let client = Client::with_options(options, &["client/quick", status]);
    while json(&client.next_on(status, WAIT))["state"] != "READY" {}
    let request = std::fs::read(common::models().join("digits/sample-request.json")).unwrap();
    let round_trip = |i: u32| {
        let properties = PublishProperties {
            response_topic: Some("client/quick".into()),
            correlation_data: Some(Bytes::copy_from_slice(&i.to_be_bytes())),
            ..Default::default()
        };
        client.publish("onnxd/quick/models/digits/infer", request.clone(), properties);
        let reply = client.next_on("client/quick", WAIT);
        let correlation = reply.properties.as_ref().and_then(|p| p.correlation_data.clone());
        assert_eq!(correlation.as_deref(), Some(&i.to_be_bytes()[..]));
        let body = json(&reply);
        assert!(body.get("error").is_none(), "error reply: {body}");
    };
    // The first requests pay lazy initialisation; they are not timed.
    (0..5).for_each(round_trip);
    let started = Instant::now();
    (5..105).for_each(round_trip);
    let took = started.elapsed();
    println!(
        "100 MQTT round trips one at a time: {took:?} ({:?} each)",
        took / 100
    );
    assert!(
        took < Duration::from_secs(1),
        "100 MQTT round trips one at a time took {took:?} ({:?} each); ~20 ms each means small \
         publishes wait for delayed ACKs: Nagle's algorithm is on (onnxd's MQTT socket, or the \
         broker without set_tcp_nodelay true)",
        took / 100
    );
}
