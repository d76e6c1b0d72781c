//! Triton's binary tensor extension: a JSON header of `Inference-Header-Content-Length`
//! bytes, then each binary input. Input: the header length as the text of the HTTP header /
//! MQTT user property (one length byte, then the text), then the body. Seeds: the fixtures'
//! requests re-sent with every input binary (`make_seeds`).

fn main() {
    let info = onnxd_fuzz::signature();
    afl::fuzz!(|data: &[u8]| {
        let mut input = onnxd_fuzz::Input::new(data);
        let header = input.text();
        let Ok(length) = onnxd::codec::header_length(&header) else {
            return;
        };
        let body = bytes::Bytes::copy_from_slice(input.rest());
        if let Ok(payload) = onnxd::codec::Payload::parse(body, Some(length)) {
            onnxd_fuzz::exercise_payload(&payload, &info);
        }
    });
}
