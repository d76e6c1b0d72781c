//! Writes the seed corpus of every fuzz target: `make_seeds OUT FIXTURES REPO` fills
//! `OUT/<target>/` from the test fixtures (`FIXTURES`, as `tests/fixtures/make_fixtures.py`
//! writes them), the repository's own files (`REPO`: the example model and configs) and
//! values built with onnxd's own encoders (outbox segments, wire forms, images), each in the
//! input format its target documents.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use onnxd::mqtt::outbox::{Entry, Outbox, OutboxLimits};
use onnxd::tensor::kserve::InferRequestBody;
use onnxd::tensor::Tensor;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;

/// Seeds larger than this are left out (AFL++ works best on small inputs).
const MAX_SEED: usize = 256 * 1024;

struct Seeds {
    out: PathBuf,
    count: usize,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        if bytes.len() > MAX_SEED {
            return;
        }
        let dir = self.out.join(target);
        std::fs::create_dir_all(&dir).expect("seed directory");
        std::fs::write(dir.join(name), bytes).expect("seed write");
        self.count += 1;
    }
}

fn files(dir: &Path, suffix: &str) -> Vec<(String, Vec<u8>)> {
    let mut found: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok().map(|n| (n, e.path())))
                .filter(|(n, _)| n.ends_with(suffix))
                .filter_map(|(n, p)| std::fs::read(p).ok().map(|b| (n, b)))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The framed form of a JSON request: every input with `data` sent binary.
fn framed(json: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut request: InferRequestBody = serde_json::from_slice(json).ok()?;
    let mut binary = Vec::new();
    for input in &mut request.inputs {
        let wire = input.to_tensor().ok()?.to_wire();
        input.data = None;
        let parameters = input.parameters.get_or_insert_with(Default::default);
        parameters.insert("binary_data_size".into(), wire.len().into());
        binary.extend_from_slice(&wire);
    }
    let mut body = serde_json::to_vec(&request).ok()?;
    let header = body.len();
    body.extend_from_slice(&binary);
    Some((body, header))
}

fn requests(seeds: &mut Seeds, fixtures: &Path, repo: &Path) {
    let mut jsons = files(fixtures, ".request.json");
    if let Ok(sample) = std::fs::read(repo.join("models/digits/sample-request.json")) {
        jsons.push(("digits.request.json".into(), sample));
    }
    jsons.push((
        "signature.request.json".into(),
        br#"{"id":"a","inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[[1,2,3,4],[5,6,7,8]]},{"name":"text","shape":[1],"datatype":"BYTES","data":["hi"]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"timeout":1000}}"#.to_vec(),
    ));
    for (name, json) in &jsons {
        seeds.put("kserve_json", name, json);
        if let Some((body, header)) = framed(json) {
            let text = header.to_string();
            let mut seed = vec![text.len() as u8];
            seed.extend_from_slice(text.as_bytes());
            seed.extend_from_slice(&body);
            seeds.put("kserve_framed", name, &seed);
            mqtt(seeds, name, &body, Some(&text));
        }
        mqtt(seeds, name, json, None);
    }
}

/// Both forms of the MQTT target for one payload.
fn mqtt(seeds: &mut Seeds, name: &str, payload: &[u8], header: Option<&str>) {
    let topic = "onnxd/fuzz/models/m/versions/1/infer";
    let mut fields = vec![0u8, topic.len() as u8];
    fields.extend_from_slice(topic.as_bytes());
    let properties: Vec<(String, String)> = header
        .map(|h| vec![("Inference-Header-Content-Length".to_string(), h.to_string())])
        .unwrap_or_default();
    fields.push(properties.len() as u8);
    for (k, v) in &properties {
        for s in [k, v] {
            fields.push(s.len() as u8);
            fields.extend_from_slice(s.as_bytes());
        }
    }
    fields.extend_from_slice(&[7, 5]);
    fields.extend_from_slice(b"r/x/y");
    fields.extend_from_slice(&[2, 0xC0, 0x01]);
    fields.extend_from_slice(&30u32.to_le_bytes());
    fields.extend_from_slice(payload);
    seeds.put("mqtt_envelope", &format!("{name}.fields"), &fields);
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec(), None);
    publish.pkid = 7;
    publish.properties = Some(PublishProperties {
        response_topic: Some("r/x/y".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\xC0\x01")),
        user_properties: properties,
        message_expiry_interval: Some(30),
        ..PublishProperties::default()
    });
    let mut packet = BytesMut::new();
    if publish.write(&mut packet).is_ok() {
        let mut seed = vec![1u8];
        seed.extend_from_slice(&packet);
        seeds.put("mqtt_envelope", &format!("{name}.packet"), &seed);
    }
}

fn raw_and_wire(seeds: &mut Seeds) {
    // FP32 [N, 4] with two rows; UINT8 [3, 4]; BYTES [1]; INT64 [N].
    let fp32: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let cases: [(&[u8], Vec<u8>); 4] = [
        (&[11, 2, 0, 4], fp32),
        (&[1, 2, 3, 4], (0..12).collect()),
        (
            &[13, 1, 1],
            Tensor::from_strings(vec![1], vec![b"hello".to_vec()])
                .unwrap()
                .to_wire(),
        ),
        (&[8, 1, 0], (0..3i64).flat_map(|i| i.to_le_bytes()).collect()),
    ];
    for (i, (spec, body)) in cases.iter().enumerate() {
        seeds.put("raw_body", &format!("raw{i}"), &[*spec, &body[..]].concat());
    }
    let strings = |items: &[&str]| items.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
    let wires: [(&[u8], Vec<Vec<u8>>); 3] = [
        (&[1, 3], strings(&["a", "", "ünïcode"])),
        (&[2, 2, 1], strings(&["xy", "z"])),
        (&[0], strings(&["scalar"])),
    ];
    for (i, (shape, elements)) in wires.into_iter().enumerate() {
        let dims: Vec<usize> = shape[1..].iter().map(|&d| d as usize).collect();
        let wire = Tensor::from_strings(dims, elements).unwrap().to_wire();
        seeds.put("bytes_wire", &format!("wire{i}"), &[shape, &wire[..]].concat());
    }
}

fn images(seeds: &mut Seeds) {
    let pixels = image::RgbImage::from_fn(13, 7, |x, y| image::Rgb([(x * 19) as u8, (y * 37) as u8, 128]));
    let settings: [&[u8]; 3] = [&[8, 8, 0, 0], &[16, 9, 1 + 3, 4 | 8], &[5, 7, 2 + 9, 1]];
    let formats = [
        (image::ImageFormat::Png, "png"),
        (image::ImageFormat::Jpeg, "jpg"),
        (image::ImageFormat::Bmp, "bmp"),
        (image::ImageFormat::WebP, "webp"),
    ];
    for (format, ext) in formats {
        let mut encoded = Cursor::new(Vec::new());
        if pixels.write_to(&mut encoded, format).is_err() {
            continue;
        }
        let encoded = encoded.into_inner();
        for (i, setting) in settings.iter().enumerate() {
            seeds.put("image", &format!("{i}.{ext}"), &[*setting, &encoded[..]].concat());
        }
        if ext == "jpg" {
            let stripped = onnxd::pipeline::decode::strip_huffman_tables(&encoded);
            seeds.put("image", "mjpeg.jpg", &[settings[0], &stripped[..]].concat());
        }
    }
}

const SIDECARS: [&str; 4] = [
    "versions = [1, 2]\nengine = \"tract\"\ninstances = 2\nmax_batch_size = 8\n[batching]\nmax_queue_delay_us = 100\npreferred = [4, 8]\nmax_queue_size = 16\ndefault_timeout_us = 5000\npreserve_ordering = true\n",
    "versions = \"latest\"\nlatest = 2\n[input]\nwidth = 32\nheight = 32\nresize = \"letterbox\"\ncolor = \"bgr\"\nlayout = \"nchw\"\ndtype = \"FP32\"\nscale = 0.00392156862745098\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\npad = 114\n[output]\nkind = \"classify\"\ntop_k = 2\n",
    "versions = \"all\"\n[output]\nkind = \"yolo\"\nconfidence = 0.25\niou = 0.45\n[validate]\nrtol = 0.001\natol = 0.0001\n[validate.warmup.inputs.images]\nshape = [1, 3, 32, 32]\nvalue = 0.5\n",
    "providers = [\"cuda\", \"cpu\"]\ngpus = [0, 1]\n[validate]\ninput = \"golden.request.json\"\nexpected = \"golden.expected.json\"\n",
];

fn text_files(seeds: &mut Seeds, repo: &Path) {
    if let Ok(toml) = std::fs::read(repo.join("models/digits/model.toml")) {
        seeds.put("model_toml", "digits.toml", &toml);
    }
    for (i, sidecar) in SIDECARS.iter().enumerate() {
        seeds.put("model_toml", &format!("sidecar{i}.toml"), sidecar.as_bytes());
    }
    for (name, path) in [
        ("config.toml", "config/onnxd.toml"),
        ("systemd.toml", "systemd/onnxd.toml"),
    ] {
        if let Ok(text) = std::fs::read(repo.join(path)) {
            seeds.put("config", name, &text);
        }
    }
}

fn models(seeds: &mut Seeds, fixtures: &Path, repo: &Path) {
    for (name, bytes) in files(fixtures, ".onnx") {
        seeds.put("model_facts", &name, &bytes);
    }
    if let Ok(bytes) = std::fs::read(repo.join("models/digits/model.onnx")) {
        seeds.put("model_facts", "digits.onnx", &bytes);
    }
}

fn outbox(seeds: &mut Seeds) {
    let dir = std::env::temp_dir().join(format!("onnxd-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut outbox = Outbox::open(&dir, OutboxLimits::default()).expect("outbox");
    for i in 0..4u8 {
        let entry = Entry {
            created_ms: 1_700_000_000_000 + u64::from(i),
            topic: format!("onnxd/n/models/m/result/{i}"),
            payload: vec![i; 3 + usize::from(i) * 5],
            retain: i == 3,
            content_type: (i % 2 == 0).then(|| "application/json".into()),
            correlation_data: (i != 1).then(|| vec![0xC0, i]),
            user_properties: (0..i).map(|k| (format!("k{k}"), "v".into())).collect(),
        };
        outbox.append(&entry).expect("append");
    }
    outbox.sync().expect("sync");
    drop(outbox);
    let segment = std::fs::read(dir.join(format!("{:020}.seg", 0))).expect("segment");
    let _ = std::fs::remove_dir_all(&dir);
    seeds.put("outbox", "segment", &[&[0u8, 0, 0][..], &segment].concat());
    seeds.put(
        "outbox",
        "torn",
        &[&[0u8, 0, 0][..], &segment[..segment.len() - 3]].concat(),
    );
    // The framed form: the same bodies with the headers left to the target.
    let mut bodies = vec![2u8, 0, 0];
    let mut rest = &segment[..];
    while rest.len() >= 8 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        bodies.extend_from_slice(&(len as u16).to_le_bytes());
        bodies.extend_from_slice(&rest[8..8 + len]);
        rest = &rest[8 + len..];
    }
    seeds.put("outbox", "framed", &bodies);
    let mut cursored = vec![1 | 4 | (2 << 3)];
    cursored.extend_from_slice(&1u64.to_le_bytes());
    cursored.extend_from_slice(&40u16.to_le_bytes());
    cursored.extend_from_slice(&segment);
    seeds.put("outbox", "cursor-split", &cursored);
}

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [out, fixtures, repo] = &args[..] else {
        eprintln!("usage: make_seeds OUT FIXTURES REPO");
        std::process::exit(2);
    };
    let mut seeds = Seeds {
        out: out.clone(),
        count: 0,
    };
    requests(&mut seeds, fixtures, repo);
    raw_and_wire(&mut seeds);
    images(&mut seeds);
    text_files(&mut seeds, repo);
    models(&mut seeds, fixtures, repo);
    outbox(&mut seeds);
    println!("{} seeds in {}", seeds.count, out.display());
}
