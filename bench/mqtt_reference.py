"""The Python MQTT inference daemon a user would write instead of onnxd: the baseline of
`scripts/bench-mqtt`. paho-mqtt (MQTT 5) + onnxruntime, Nagle off on its socket; takes KServe
V2 JSON requests (QoS 1) on `<prefix>/<node>/models/<model>/infer` and replies (QoS 1) on the
MQTT 5 response topic with the correlation data. Publishes a retained `online` on
`<prefix>/<node>/status` once subscribed, so a script can wait for it.

usage: mqtt_reference.py HOST:PORT MODEL.onnx MODEL_NAME NODE_ID [PREFIX]
"""

import json
import socket
import sys

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
          "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
KSERVE = {np.dtype(v): k for k, v in DTYPES.items()}


def main():
    broker, model_path, model_name, node = sys.argv[1:5]
    prefix = sys.argv[5] if len(sys.argv) > 5 else "onnxd"
    host, port = broker.rsplit(":", 1)
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    topic = f"{prefix}/{node}/models/{model_name}/infer"
    status = f"{prefix}/{node}/status"

    def on_connect(client, userdata, flags, reason, properties):
        # Nagle off: a small reply must not wait for the broker's delayed ACK.
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(topic, qos=1)

    def on_subscribe(client, userdata, mid, reasons, properties):
        client.publish(status, "online", qos=1, retain=True)

    def on_message(client, userdata, message):
        props = message.properties
        reply_to = getattr(props, "ResponseTopic", None)
        if not reply_to:
            return
        try:
            request = json.loads(message.payload)
            feeds = {i["name"]: np.asarray(i["data"], dtype=DTYPES[i["datatype"]]).reshape(i["shape"])
                     for i in request["inputs"]}
            names = [o.name for o in session.get_outputs()]
            outputs = session.run(names, feeds)
            body = {"model_name": model_name, "id": request.get("id"),
                    "outputs": [{"name": n, "shape": list(v.shape), "datatype": KSERVE[v.dtype],
                                 "data": v.ravel().tolist()} for n, v in zip(names, outputs)]}
        except Exception as e:  # every failure is a reply, as onnxd does
            body = {"error": f"{type(e).__name__}: {e}"}
        reply = Properties(PacketTypes.PUBLISH)
        if getattr(props, "CorrelationData", None) is not None:
            reply.CorrelationData = props.CorrelationData
        client.publish(reply_to, json.dumps(body), qos=1, properties=reply)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"reference-{node}",
                         protocol=mqtt.MQTTv5)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.will_set(status, "offline", qos=1, retain=True)
    client.connect(host, int(port), keepalive=30)
    client.loop_forever()


if __name__ == "__main__":
    main()
