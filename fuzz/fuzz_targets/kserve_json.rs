//! KServe V2 JSON requests (HTTP body or MQTT payload without a header length), parsed,
//! decoded against a signature and encoded back. Input: the request body as sent. Seeds: the
//! fixtures' `*.request.json`.

fn main() {
    let info = onnxd_fuzz::signature();
    afl::fuzz!(|data: &[u8]| {
        let body = bytes::Bytes::copy_from_slice(data);
        if let Ok(payload) = onnxd::codec::Payload::parse(body, None) {
            onnxd_fuzz::exercise_payload(&payload, &info);
        }
    });
}
