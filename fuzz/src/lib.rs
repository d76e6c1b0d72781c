//! What the fuzz targets share: [`Input`] splits one fuzz input into fields (so AFL++ mutates
//! structure and content alike), [`scratch`] is a directory per fuzzing process for the
//! parsers that read files, and [`signature`] / [`spec`] are model signatures to decode
//! requests against. Each target lives in `fuzz_targets/`; `src/make_seeds.rs` writes their
//! seed corpora, and every seed format is documented on the target that reads it.

use std::path::PathBuf;

use onnxd::model::{ModelInfo, TensorSpec, ValueKind};
use onnxd::tensor::{DType, Dim};

/// A fuzz input read front to back; reads past the end give zeros and empty slices.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input(data)
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let got = self.take(2);
        b[..got.len()].copy_from_slice(got);
        u16::from_le_bytes(b)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let got = self.take(4);
        b[..got.len()].copy_from_slice(got);
        u32::from_le_bytes(b)
    }

    /// A field of one length byte and that many bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = self.u8() as usize;
        self.take(n)
    }

    /// A [`Self::chunk`] as text (invalid UTF-8 replaced).
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.chunk()).into_owned()
    }

    /// Whatever is left.
    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// A scratch directory of this fuzzing process, created on first use. Named after the fork
/// server (the parent), so the children AFL++ forks reuse one directory instead of leaving one
/// each; `scripts/fuzz` removes them.
pub fn scratch(target: &str) -> PathBuf {
    let base = std::env::var_os("ONNXD_FUZZ_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let dir = base.join(format!(
        "onnxd-fuzz-{target}-{}",
        std::os::unix::process::parent_id()
    ));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// One input or output: `dtype`, and per dimension one byte (0: symbolic, else its size).
pub fn spec(input: &mut Input<'_>, name: &str) -> TensorSpec {
    let dtype = DType::ALL[input.u8() as usize % DType::ALL.len()];
    let rank = input.u8() % 5;
    let dims = (0..rank)
        .map(|_| match input.u8() {
            0 => Dim::Symbolic(Some("N".into())),
            n => Dim::Fixed(u64::from(n)),
        })
        .collect();
    TensorSpec {
        name: name.into(),
        kind: ValueKind::Tensor(dtype),
        dims,
        rank_known: true,
    }
}

/// The signature most request seeds are written for: `x` FP32 `[N, 4]`, `text` BYTES `[1]`,
/// output `y` FP32 `[N, 4]`.
pub fn signature() -> ModelInfo {
    let tensor = |name: &str, dtype, dims: Vec<Dim>| TensorSpec {
        name: name.into(),
        kind: ValueKind::Tensor(dtype),
        dims,
        rank_known: true,
    };
    ModelInfo {
        inputs: vec![
            tensor(
                "x",
                DType::F32,
                vec![Dim::Symbolic(Some("N".into())), Dim::Fixed(4)],
            ),
            tensor("text", DType::Bytes, vec![Dim::Fixed(1)]),
        ],
        outputs: vec![tensor(
            "y",
            DType::F32,
            vec![Dim::Symbolic(Some("N".into())), Dim::Fixed(4)],
        )],
        ..ModelInfo::default()
    }
}

/// Everything the serving core does with a parsed request before the engine: its fields, the
/// tensors decoded against `info`, the signature check, and the response encoder on the
/// decoded tensors (JSON and binary) — so whatever a request can carry also goes back out.
pub fn exercise_payload(payload: &onnxd::codec::Payload, info: &ModelInfo) {
    let _ = (
        payload.kind(),
        payload.id(),
        payload.reply_to(),
        payload.timeout(),
    );
    let outputs = payload.outputs();
    let encoding = payload.encoding();
    let _ = payload.image();
    let Ok(tensors) = payload.decode(info) else {
        return;
    };
    let _ = onnxd::codec::request::image_in_tensors(&tensors);
    for (_, tensor) in &tensors {
        let wire = tensor.to_wire();
        let back = onnxd::tensor::Tensor::from_wire(tensor.dtype(), tensor.shape().to_vec(), &wire)
            .expect("a tensor's own wire form decodes");
        assert_eq!(&back, tensor, "wire form round trip");
        let _ = onnxd::tensor::kserve::tensor_to_json(tensor);
    }
    let _ = info.select_outputs(outputs.as_deref());
    let _ = info.order_inputs(tensors.clone());
    let reply = onnxd::codec::Reply {
        model: "fuzz",
        version: 1,
        id: payload.id(),
        engine: "none",
        provider: "none",
        inference_us: 0,
        result: None,
        outputs: &tensors,
    };
    let (body, header) = onnxd::codec::encode(&reply, &encoding, serde_json::Map::new());
    if let Some(length) = header {
        assert!(length <= body.len(), "header length within the body");
    }
}
