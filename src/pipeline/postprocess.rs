//! Post-processing: a model's output tensors become the `"result"` of its response, as the
//! sidecar's `[output]` section describes it ([`OutputProcessing`]). The settings are checked
//! once per model version into a [`Postprocessor`]; per response it decodes the outputs into
//! [`Detection`]s: `{label, score}` for `classify`, `{label, score, box: [x1, y1, x2, y2]}`
//! for `yolo` and `ssd`, boxes in input-image pixels.
//!
//! - `classify`: the first output, `[1, C]` or `[C]`. Values that are not already
//!   probabilities (one is negative or not a number, or their sum is off 1 by more than
//!   1e-3) go through a softmax; the `top_k` highest (default 5) at or above
//!   `score_threshold` (default none), best first.
//! - `yolo`: the first output, `[1, A, B]`. The smaller of `A` and `B` is the attributes
//!   axis (`A` on a tie). Attributes first, `[1, 4+C, N]`, is YOLOv8's layout: per candidate
//!   `cx, cy, w, h` then `C` class scores. Attributes last, `[1, N, 5+C]`, is YOLOv5's:
//!   `cx, cy, w, h`, objectness, `C` class probabilities, and a class's score is objectness ×
//!   probability. Boxes are in model-input pixels. Each candidate keeps its best class (the
//!   first on a tie); those at or above `score_threshold` (default 0.25) with a finite box
//!   go, best first and at most [`MAX_NMS_CANDIDATES`], through class-aware greedy NMS: a
//!   candidate is dropped when its IoU with a kept box of the same class is above
//!   `iou_threshold` (default 0.45). The first `max_detections` (default 100) kept are
//!   reported.
//! - `ssd`: the TensorFlow Object Detection API convention: boxes `[1, N, 4]` as normalised
//!   `y1, x1, y2, x2`, scores `[1, N]`, float class ids `[1, N]` and optionally
//!   num_detections `[1]` (only the first that many rows count). Outputs are recognised by
//!   name (containing `box`, `score`, `class`, `num`, any case) where the shape fits; outputs
//!   whose name has none of these take the roles left, in that order, by shape. Boxes are
//!   already suppressed by the model, so no NMS: `score_threshold` (default 0.25), best
//!   first, `max_detections` (default 100). Class ids index the labels as they are (a
//!   1-based label map needs a placeholder first line).
//!
//! Boxes are mapped from model-input pixels to the original image through the
//! pre-processing [`Transform`] and clamped to it. Without a transform they stay in
//! model-input pixels, clamped to the input size when it is known; normalised `ssd` boxes
//! need the input size to become pixels, and without it (and without a transform) stay
//! normalised, clamped to 0–1. Labels are `labels[class]`, or the class index when the
//! labels are missing or too short. Candidates with a non-finite score or box are dropped;
//! no tensor shape makes this panic.
//!
//! Agreement with the NumPy references (`tests/postprocess.rs`, fixtures made by
//! `tests/fixtures/make_postprocess_fixtures.py`): the same detections for both YOLO layouts
//! (8400 and 25200 candidates, 80 classes, planted objects with duplicates) and SSD, and the
//! same classify top-k order; over the 226 results of its 8 cases scores differ by at most
//! 6e-9 and box corners by at most 8e-5 px (the test allows 1e-4 and 0.01 px).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pipeline::preprocess::Transform;
use crate::tensor::{decode_f64, DType, Tensor};

/// Classes reported by `classify` when the sidecar sets no `top_k`.
const DEFAULT_TOP_K: usize = 5;
/// Detector score threshold when the sidecar sets none.
const DEFAULT_SCORE_THRESHOLD: f32 = 0.25;
/// NMS IoU threshold when the sidecar sets none.
const DEFAULT_IOU_THRESHOLD: f32 = 0.45;
/// Detections reported when the sidecar sets no `max_detections`.
const DEFAULT_MAX_DETECTIONS: usize = 100;
/// How far the sum of values may be from 1 for `classify` to take them as probabilities.
const PROBABILITY_TOLERANCE: f64 = 1e-3;
/// Most candidates (the highest scores) that enter NMS, bounding its cost.
pub const MAX_NMS_CANDIDATES: usize = 30_000;

/// SSD output roles, in the order unnamed outputs take them, with the name keyword of each.
const SSD_ROLES: [&str; 4] = ["box", "score", "class", "num"];

/// What the `[output]` section asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No post-processing.
    None,
    /// Top-k classes of a classifier.
    Classify,
    /// YOLOv5/v8 detector outputs, decoded and suppressed here.
    Yolo,
    /// SSD (TensorFlow Object Detection API) detections, already suppressed by the model.
    Ssd,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::None, Kind::Classify, Kind::Yolo, Kind::Ssd];

    /// The sidecar's name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::None => "none",
            Kind::Classify => "classify",
            Kind::Yolo => "yolo",
            Kind::Ssd => "ssd",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of a response's `"result"`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    /// The class's label, or its index when there is no label for it.
    pub label: String,
    /// Probability (classify) or detection score.
    pub score: f32,
    /// `[x1, y1, x2, y2]` in input-image pixels (detectors only).
    #[serde(skip_serializing_if = "Option::is_none", rename = "box")]
    pub bbox: Option<[f32; 4]>,
}

/// `[output]` of a model's sidecar: post-processing of the model's outputs (the sidecar
/// embeds this type; its checks are [`Postprocessor::new`]'s).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputProcessing {
    /// `none`, `classify`, `yolo` or `ssd`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Classes reported by `classify`.
    pub top_k: Option<usize>,
    /// Minimum score kept.
    pub score_threshold: Option<f64>,
    /// NMS IoU threshold.
    pub iou_threshold: Option<f64>,
    /// Most detections reported.
    pub max_detections: Option<usize>,
    /// Labels file (relative to the model directory).
    pub labels: Option<String>,
}

fn default_kind() -> String {
    "none".into()
}

/// Why post-processing could not produce a result; each message says what was found and what
/// was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PostprocessError {
    /// An `[output]` setting is invalid.
    #[error("output.{key}: {message}")]
    Settings {
        /// The sidecar key under `[output]`.
        key: &'static str,
        /// What was wrong and what was expected.
        message: String,
    },
    /// An output the kind needs is not among the model's outputs.
    #[error("{kind} post-processing needs {expected}, but the model's outputs are {found}")]
    MissingOutput {
        /// The post-processing kind.
        kind: Kind,
        /// The outputs needed.
        expected: &'static str,
        /// The outputs given: names, dtypes and shapes.
        found: String,
    },
    /// An output has a shape the kind cannot read.
    #[error("{kind} post-processing: output \"{name}\" has shape {shape:?} (expected {expected})")]
    Shape {
        /// The post-processing kind.
        kind: Kind,
        /// The output's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The shapes accepted.
        expected: String,
    },
    /// An output is not a floating-point tensor.
    #[error("{kind} post-processing: output \"{name}\" is {dtype} (expected FP16, BF16, FP32 or FP64)")]
    DType {
        /// The post-processing kind.
        kind: Kind,
        /// The output's name.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// Normalised SSD boxes cannot go through a transform without the model's input size.
    #[error("ssd post-processing: boxes are normalised and must be mapped through the image transform, but the model's input size is unknown (expected the [input] width and height)")]
    InputSizeUnknown,
}

fn settings(key: &'static str, message: String) -> PostprocessError {
    PostprocessError::Settings { key, message }
}

/// The `[output]` settings of one model version, checked, with its labels. Cheap to share
/// (`&self` per response, no interior state).
#[derive(Clone, Debug)]
pub struct Postprocessor {
    kind: Kind,
    labels: Vec<String>,
    top_k: usize,
    score_threshold: f32,
    iou_threshold: f32,
    max_detections: usize,
    input_size: Option<(u32, u32)>,
}

/// A decoded box before it is reported: corners in model-output coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    bbox: [f32; 4],
    score: f32,
    class: usize,
}

/// A candidate, if its score reaches `threshold` and its box is finite.
fn candidate(bbox: [f32; 4], score: f32, class: usize, threshold: f32) -> Option<Candidate> {
    (score >= threshold && bbox.iter().all(|v| v.is_finite())).then_some(Candidate { bbox, score, class })
}

/// Sorts candidates best first (stable: ties keep output order).
fn by_score(candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
}

fn area(b: &[f32; 4]) -> f32 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes; 0 when the union is empty.
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let width = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let height = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let intersection = width * height;
    let union = area(a) + area(b) - intersection;
    if union > 0.0 {
        intersection / union
    } else {
        0.0
    }
}

/// Class-aware greedy NMS: best first (at most [`MAX_NMS_CANDIDATES`]), a candidate is kept
/// unless a kept box of its class overlaps it with IoU above `iou_threshold`; stops at
/// `max_detections` kept. Comparing only with kept boxes of the same class is the per-class
/// greedy algorithm, and stopping early keeps the same first `max_detections`.
fn nms(mut candidates: Vec<Candidate>, iou_threshold: f32, max_detections: usize) -> Vec<Candidate> {
    by_score(&mut candidates);
    candidates.truncate(MAX_NMS_CANDIDATES);
    let mut kept: Vec<Candidate> = Vec::new();
    for c in candidates {
        if kept.len() == max_detections {
            break;
        }
        if kept
            .iter()
            .all(|k| k.class != c.class || iou(&k.bbox, &c.bbox) <= iou_threshold)
        {
            kept.push(c);
        }
    }
    kept
}

/// Whether `values` already are probabilities: none negative (or NaN), summing to 1.
fn is_probabilities(values: &[f32]) -> bool {
    let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
    values.iter().all(|&v| v >= 0.0) && (sum - 1.0).abs() <= PROBABILITY_TOLERANCE
}

/// Numerically stable softmax, in place.
fn softmax(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = values.iter().map(|&v| f64::from(v - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    for (v, e) in values.iter_mut().zip(exps) {
        *v = (e / sum) as f32;
    }
}

/// The outputs as a message lists them.
fn describe(outputs: &[(String, Tensor)]) -> String {
    if outputs.is_empty() {
        return "none".into();
    }
    let list: Vec<String> = outputs
        .iter()
        .map(|(name, t)| format!("\"{name}\" {} {:?}", t.dtype(), t.shape()))
        .collect();
    list.join(", ")
}

/// The first output, which `classify` and `yolo` read.
fn first(kind: Kind, outputs: &[(String, Tensor)]) -> Result<&(String, Tensor), PostprocessError> {
    outputs.first().ok_or_else(|| PostprocessError::MissingOutput {
        kind,
        expected: "one output",
        found: describe(outputs),
    })
}

fn shape_error(kind: Kind, name: &str, shape: &[usize], expected: impl Into<String>) -> PostprocessError {
    PostprocessError::Shape {
        kind,
        name: name.into(),
        shape: shape.to_vec(),
        expected: expected.into(),
    }
}

/// The elements of a floating-point output as `f32`.
fn floats(kind: Kind, (name, tensor): &(String, Tensor)) -> Result<Vec<f32>, PostprocessError> {
    let dtype = tensor.dtype();
    match (tensor.raw_bytes(), dtype.size()) {
        (Some(bytes), Some(size)) if matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64) => {
            Ok(bytes
                .chunks_exact(size)
                .map(|c| decode_f64(dtype, c) as f32)
                .collect())
        }
        _ => Err(PostprocessError::DType {
            kind,
            name: name.clone(),
            dtype,
        }),
    }
}

/// Where YOLO's attributes are: candidate `n`'s attribute `a` is element
/// `n * candidate_stride + a * attribute_stride`.
struct YoloLayout {
    candidates: usize,
    attributes: usize,
    candidate_stride: usize,
    attribute_stride: usize,
    /// 4 (v8: no objectness) or 5 (v5: objectness at 4).
    first_class: usize,
}

impl YoloLayout {
    fn of(name: &str, shape: &[usize]) -> Result<YoloLayout, PostprocessError> {
        let error = || {
            shape_error(
                Kind::Yolo,
                name,
                shape,
                "[1, 4+C, N] (YOLOv8) or [1, N, 5+C] (YOLOv5) with C >= 1 classes; \
                 the smaller of the last two dimensions is the attributes axis",
            )
        };
        let &[1, a, b] = shape else {
            return Err(error());
        };
        let layout = if a <= b {
            YoloLayout {
                candidates: b,
                attributes: a,
                candidate_stride: 1,
                attribute_stride: b,
                first_class: 4,
            }
        } else {
            YoloLayout {
                candidates: a,
                attributes: b,
                candidate_stride: b,
                attribute_stride: 1,
                first_class: 5,
            }
        };
        if layout.attributes <= layout.first_class {
            return Err(error());
        }
        Ok(layout)
    }

    /// Each candidate's best class, if its score reaches `threshold`, as a corner box.
    fn candidates(&self, values: &[f32], threshold: f32) -> Vec<Candidate> {
        (0..self.candidates)
            .filter_map(|n| {
                let at = |a: usize| values[n * self.candidate_stride + a * self.attribute_stride];
                let objectness = if self.first_class == 5 { at(4) } else { 1.0 };
                let (class, score) =
                    (self.first_class..self.attributes).fold((0, f32::NEG_INFINITY), |best, a| {
                        let score = objectness * at(a);
                        if score > best.1 {
                            (a - self.first_class, score)
                        } else {
                            best
                        }
                    });
                let (cx, cy, w, h) = (at(0), at(1), at(2), at(3));
                let bbox = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
                candidate(bbox, score, class, threshold)
            })
            .collect()
    }
}

/// Whether an output's shape fits SSD role `role` (an index into [`SSD_ROLES`]).
fn fits_ssd_role(role: usize, shape: &[usize]) -> bool {
    match role {
        0 => matches!(shape, [1, _, 4]),
        1 | 2 => matches!(shape, [1, _]),
        _ => matches!(shape, [] | [1]),
    }
}

/// SSD outputs by role: boxes, scores, classes, num_detections; see the module doc.
fn ssd_outputs(outputs: &[(String, Tensor)]) -> [Option<&(String, Tensor)>; 4] {
    let mut roles = [None; 4];
    let mut unnamed = Vec::new();
    for output in outputs {
        let name = output.0.to_lowercase();
        let named: Vec<usize> = (0..SSD_ROLES.len())
            .filter(|&r| name.contains(SSD_ROLES[r]))
            .collect();
        if named.is_empty() {
            unnamed.push(output);
        } else if let Some(&r) = named
            .iter()
            .find(|&&r| roles[r].is_none() && fits_ssd_role(r, output.1.shape()))
        {
            roles[r] = Some(output);
        }
    }
    for output in unnamed {
        if let Some(r) =
            (0..SSD_ROLES.len()).find(|&r| roles[r].is_none() && fits_ssd_role(r, output.1.shape()))
        {
            roles[r] = Some(output);
        }
    }
    roles
}

/// How boxes reach the image: scaled (normalised to pixels), mapped through the transform,
/// clamped to `0..=bounds`.
struct Frame<'a> {
    scale: (f32, f32),
    transform: Option<&'a Transform>,
    bounds: Option<(f32, f32)>,
}

impl Frame<'_> {
    fn map(&self, [x1, y1, x2, y2]: [f32; 4]) -> [f32; 4] {
        let (sx, sy) = self.scale;
        let (a, b) = ((x1 * sx, y1 * sy), (x2 * sx, y2 * sy));
        let ((x1, y1), (x2, y2)) = match self.transform {
            Some(t) => (t.to_original(a.0, a.1), t.to_original(b.0, b.1)),
            None => (a, b),
        };
        match self.bounds {
            Some((w, h)) => [
                x1.clamp(0.0, w),
                y1.clamp(0.0, h),
                x2.clamp(0.0, w),
                y2.clamp(0.0, h),
            ],
            None => [x1, y1, x2, y2],
        }
    }
}

impl Postprocessor {
    /// Checks `[output]`: a known `kind`, thresholds from 0 to 1, `top_k` and
    /// `max_detections` of at least 1; settings the kind does not use are ignored. `labels`
    /// name the classes by index; `input_size` is the model input's width and height in
    /// pixels (known when images are pre-processed), which `ssd` needs to map its normalised
    /// boxes and which bounds boxes when there is no transform.
    pub fn new(
        output: &OutputProcessing,
        labels: Option<Vec<String>>,
        input_size: Option<(u32, u32)>,
    ) -> Result<Postprocessor, PostprocessError> {
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == output.kind)
            .ok_or_else(|| {
                settings(
                    "kind",
                    format!(
                        "expected one of \"none\", \"classify\", \"yolo\", \"ssd\", got \"{}\"",
                        output.kind
                    ),
                )
            })?;
        let unit = |key: &'static str, value: Option<f64>, default: f32| match value {
            None => Ok(default),
            Some(v) if (0.0..=1.0).contains(&v) => Ok(v as f32),
            Some(v) => Err(settings(key, format!("expected a number from 0 to 1, got {v}"))),
        };
        let count = |key: &'static str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(settings(key, "expected at least 1, got 0".into())),
            v => Ok(v.unwrap_or(default)),
        };
        let default_score = if kind == Kind::Classify {
            0.0
        } else {
            DEFAULT_SCORE_THRESHOLD
        };
        Ok(Postprocessor {
            kind,
            labels: labels.unwrap_or_default(),
            top_k: count("top_k", output.top_k, DEFAULT_TOP_K)?,
            score_threshold: unit("score_threshold", output.score_threshold, default_score)?,
            iou_threshold: unit("iou_threshold", output.iou_threshold, DEFAULT_IOU_THRESHOLD)?,
            max_detections: count("max_detections", output.max_detections, DEFAULT_MAX_DETECTIONS)?,
            input_size,
        })
    }

    /// The post-processing kind; for [`Kind::None`] a response carries no `"result"`.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The result of one response's outputs (name, tensor, in the model's order), best first;
    /// `transform` is the pre-processing's, mapping boxes back to the input image. Empty for
    /// [`Kind::None`].
    pub fn apply(
        &self,
        outputs: &[(String, Tensor)],
        transform: Option<&Transform>,
    ) -> Result<Vec<Detection>, PostprocessError> {
        match self.kind {
            Kind::None => Ok(Vec::new()),
            Kind::Classify => self.classify(outputs),
            Kind::Yolo => self.yolo(outputs, transform),
            Kind::Ssd => self.ssd(outputs, transform),
        }
    }

    fn label(&self, class: usize) -> String {
        self.labels
            .get(class)
            .cloned()
            .unwrap_or_else(|| class.to_string())
    }

    fn classify(&self, outputs: &[(String, Tensor)]) -> Result<Vec<Detection>, PostprocessError> {
        let output = first(Kind::Classify, outputs)?;
        let shape = output.1.shape();
        if !matches!(shape, [_] | [1, _]) {
            return Err(shape_error(Kind::Classify, &output.0, shape, "[1, C] or [C]"));
        }
        let mut scores = floats(Kind::Classify, output)?;
        if !is_probabilities(&scores) {
            softmax(&mut scores);
        }
        let mut ranked: Vec<(usize, f32)> = scores
            .into_iter()
            .enumerate()
            .filter(|&(_, s)| s >= self.score_threshold)
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(self.top_k);
        Ok(ranked
            .into_iter()
            .map(|(class, score)| Detection {
                label: self.label(class),
                score,
                bbox: None,
            })
            .collect())
    }

    fn yolo(
        &self,
        outputs: &[(String, Tensor)],
        transform: Option<&Transform>,
    ) -> Result<Vec<Detection>, PostprocessError> {
        let output = first(Kind::Yolo, outputs)?;
        let layout = YoloLayout::of(&output.0, output.1.shape())?;
        let values = floats(Kind::Yolo, output)?;
        let candidates = layout.candidates(&values, self.score_threshold);
        let kept = nms(candidates, self.iou_threshold, self.max_detections);
        Ok(self.detections(&kept, &self.frame(transform, false)?))
    }

    fn ssd(
        &self,
        outputs: &[(String, Tensor)],
        transform: Option<&Transform>,
    ) -> Result<Vec<Detection>, PostprocessError> {
        let [Some(boxes), Some(scores), Some(classes), num] = ssd_outputs(outputs) else {
            return Err(PostprocessError::MissingOutput {
                kind: Kind::Ssd,
                expected: "boxes [1, N, 4], scores [1, N] and classes [1, N] (named with \"box\", \
                           \"score\", \"class\", or by shape), optionally num_detections [1]",
                found: describe(outputs),
            });
        };
        // The shapes fit their roles (ssd_outputs): [1, N, 4] and [1, N].
        let n = boxes.1.shape()[1];
        for (name, tensor) in [scores, classes] {
            if tensor.shape()[1] != n {
                let expected = format!("[1, {n}]: one per box of \"{}\"", boxes.0);
                return Err(shape_error(Kind::Ssd, name, tensor.shape(), expected));
            }
        }
        let count = match num {
            // A saturating cast: NaN and negative counts are 0.
            Some(num) => floats(Kind::Ssd, num)?
                .first()
                .map_or(n, |&c| (c as usize).min(n)),
            None => n,
        };
        let frame = self.frame(transform, true)?;
        let (boxes, scores, classes) = (
            floats(Kind::Ssd, boxes)?,
            floats(Kind::Ssd, scores)?,
            floats(Kind::Ssd, classes)?,
        );
        let mut kept: Vec<Candidate> = (0..count)
            .filter(|&i| classes[i] >= 0.0)
            .filter_map(|i| {
                let b = &boxes[4 * i..4 * i + 4];
                candidate(
                    [b[1], b[0], b[3], b[2]],
                    scores[i],
                    classes[i].round() as usize,
                    self.score_threshold,
                )
            })
            .collect();
        by_score(&mut kept);
        kept.truncate(self.max_detections);
        Ok(self.detections(&kept, &frame))
    }

    /// Where boxes go: see [`Frame`] and the module doc.
    fn frame<'a>(
        &self,
        transform: Option<&'a Transform>,
        normalised: bool,
    ) -> Result<Frame<'a>, PostprocessError> {
        let input = self.input_size.map(|(w, h)| (w as f32, h as f32));
        let scale = match (normalised, input, transform) {
            (false, _, _) | (true, None, None) => (1.0, 1.0),
            (true, Some(size), _) => size,
            (true, None, Some(_)) => return Err(PostprocessError::InputSizeUnknown),
        };
        let image = transform.map(|t| (t.original_width() as f32, t.original_height() as f32));
        let bounds = image.or(if normalised { Some(scale) } else { input });
        Ok(Frame {
            scale,
            transform,
            bounds,
        })
    }

    fn detections(&self, kept: &[Candidate], frame: &Frame<'_>) -> Vec<Detection> {
        kept.iter()
            .map(|c| Detection {
                label: self.label(c.class),
                score: c.score,
                bbox: Some(frame.map(c.bbox)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::preprocess::ImageInput;
    use crate::pipeline::preprocess::Preprocessor;

    fn settings(toml: &str) -> OutputProcessing {
        toml::from_str(toml).unwrap()
    }

    fn post(toml: &str) -> Postprocessor {
        Postprocessor::new(&settings(toml), None, None).unwrap()
    }

    fn output(name: &str, shape: &[usize], values: &[f32]) -> (String, Tensor) {
        (name.into(), Tensor::from_values(shape.to_vec(), values).unwrap())
    }

    /// The transform of a `width x height` image pre-processed to `size x size` by `resize`.
    fn transform(width: u32, height: u32, size: u32, resize: &str) -> Transform {
        let input: ImageInput =
            toml::from_str(&format!("width = {size}\nheight = {size}\nresize = \"{resize}\"")).unwrap();
        let frame = vec![0; width as usize * height as usize * 3];
        Preprocessor::new(&input)
            .unwrap()
            .from_rgb(width, height, &frame)
            .unwrap()
            .transform
    }

    fn boxed(bbox: [f32; 4], score: f32, class: usize) -> Candidate {
        Candidate { bbox, score, class }
    }

    #[test]
    fn settings_are_checked_once() {
        let err = |toml: &str| {
            Postprocessor::new(&settings(toml), None, None)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("kind = \"segment\""),
            "output.kind: expected one of \"none\", \"classify\", \"yolo\", \"ssd\", got \"segment\""
        );
        assert_eq!(
            err("kind = \"yolo\"\niou_threshold = 1.5"),
            "output.iou_threshold: expected a number from 0 to 1, got 1.5"
        );
        assert!(err("kind = \"yolo\"\nscore_threshold = nan").starts_with("output.score_threshold"));
        assert_eq!(
            err("kind = \"classify\"\ntop_k = 0"),
            "output.top_k: expected at least 1, got 0"
        );
        assert!(err("kind = \"ssd\"\nmax_detections = 0").starts_with("output.max_detections"));
        assert_eq!(post("").kind(), Kind::None);
        assert_eq!(post("kind = \"ssd\"").kind(), Kind::Ssd);
        let none = post("kind = \"none\"").apply(&[], None).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn iou_of_disjoint_nested_and_degenerate_boxes() {
        assert_eq!(iou(&[0.0, 0.0, 2.0, 2.0], &[1.0, 0.0, 3.0, 2.0]), 2.0 / 6.0);
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]), 0.0);
        assert_eq!(iou(&[0.0, 0.0, 4.0, 4.0], &[1.0, 1.0, 3.0, 3.0]), 0.25);
        assert_eq!(iou(&[1.0, 1.0, 1.0, 5.0], &[1.0, 1.0, 1.0, 5.0]), 0.0);
        assert_eq!(iou(&[3.0, 3.0, 1.0, 1.0], &[0.0, 0.0, 4.0, 4.0]), 0.0);
    }

    #[test]
    fn nms_edge_cases() {
        let a = [10.0, 10.0, 50.0, 50.0];
        // Identical boxes of one class: only the best is kept.
        let kept = nms(
            vec![boxed(a, 0.5, 1), boxed(a, 0.9, 1), boxed(a, 0.7, 1)],
            0.45,
            100,
        );
        assert_eq!(kept, vec![boxed(a, 0.9, 1)]);
        // Identical boxes of different classes are all kept.
        let kept = nms(
            vec![boxed(a, 0.5, 1), boxed(a, 0.9, 2), boxed(a, 0.7, 3)],
            0.45,
            100,
        );
        assert_eq!(kept.iter().map(|c| c.class).collect::<Vec<_>>(), vec![2, 3, 1]);
        // Zero-area boxes overlap nothing (IoU 0, no NaN): all kept.
        let point = [5.0, 5.0, 5.0, 5.0];
        let line = [5.0, 0.0, 5.0, 9.0];
        let kept = nms(
            vec![boxed(point, 0.9, 0), boxed(point, 0.8, 0), boxed(line, 0.7, 0)],
            0.0,
            100,
        );
        assert_eq!(kept.len(), 3);
        // The threshold suppresses IoU above it, not equal to it.
        let b = [30.0, 10.0, 70.0, 50.0]; // IoU with a: 800 / 2400
        assert_eq!(
            nms(vec![boxed(a, 0.9, 0), boxed(b, 0.8, 0)], 1.0 / 3.0, 100).len(),
            2
        );
        assert_eq!(nms(vec![boxed(a, 0.9, 0), boxed(b, 0.8, 0)], 0.3, 100).len(), 1);
        // max_detections keeps the best, after suppression.
        let far = [100.0, 100.0, 120.0, 120.0];
        let kept = nms(
            vec![
                boxed(a, 0.9, 0),
                boxed(a, 0.8, 0),
                boxed(far, 0.7, 0),
                boxed(b, 0.1, 5),
            ],
            0.45,
            2,
        );
        assert_eq!(kept, vec![boxed(a, 0.9, 0), boxed(far, 0.7, 0)]);
        assert!(nms(Vec::new(), 0.45, 10).is_empty());
    }

    #[test]
    fn classify_softmaxes_logits_and_ranks_top_k() {
        let labels = Some(vec!["cat".to_string(), "dog".into()]);
        let p = Postprocessor::new(&settings("kind = \"classify\"\ntop_k = 2"), labels, None).unwrap();
        let result = p
            .apply(&[output("logits", &[1, 3], &[1.0, 3.0, 2.0])], None)
            .unwrap();
        let e = [1f32.exp(), 3f32.exp(), 2f32.exp()];
        let sum: f32 = e.iter().sum();
        assert_eq!(
            result.iter().map(|d| d.label.as_str()).collect::<Vec<_>>(),
            ["dog", "2"]
        );
        assert!((result[0].score - e[1] / sum).abs() < 1e-6 && (result[1].score - e[2] / sum).abs() < 1e-6);
        assert_eq!(result[0].bbox, None);
        // Probabilities stay as they are; FP16 and [C] are read; the threshold drops.
        let p = post("kind = \"classify\"\nscore_threshold = 0.2");
        let probs: Vec<half::f16> = [0.1f32, 0.6, 0.3]
            .iter()
            .map(|&v| half::f16::from_f32(v))
            .collect();
        let t = ("probs".to_string(), Tensor::from_values(vec![3], &probs).unwrap());
        let result = p.apply(&[t], None).unwrap();
        assert_eq!(
            result.iter().map(|d| d.label.as_str()).collect::<Vec<_>>(),
            ["1", "2"]
        );
        assert!((result[0].score - 0.6).abs() < 1e-3);
        // Large logits do not overflow; NaN never ranks.
        let big = post("kind = \"classify\"")
            .apply(&[output("y", &[2], &[1000.0, 999.0])], None)
            .unwrap();
        assert!(big.iter().all(|d| d.score.is_finite()) && big[0].label == "0");
        let nan = post("kind = \"classify\"")
            .apply(&[output("y", &[2], &[f32::NAN, 1.0])], None)
            .unwrap();
        assert!(nan.iter().all(|d| !d.score.is_nan()));
    }

    #[test]
    fn detections_serialise_with_a_box_key_only_for_detectors() {
        let classified = Detection {
            label: "cat".into(),
            score: 0.5,
            bbox: None,
        };
        assert_eq!(
            serde_json::to_string(&classified).unwrap(),
            r#"{"label":"cat","score":0.5}"#
        );
        let detected = Detection {
            bbox: Some([1.0, 2.0, 3.0, 4.0]),
            ..classified
        };
        assert_eq!(
            serde_json::to_string(&detected).unwrap(),
            r#"{"label":"cat","score":0.5,"box":[1.0,2.0,3.0,4.0]}"#
        );
    }

    /// A YOLO output of `rows` (cx, cy, w, h, scores...) in the v8 (transposed) layout.
    fn v8(rows: &[&[f32]]) -> (String, Tensor) {
        let (n, a) = (rows.len(), rows[0].len());
        let values: Vec<f32> = (0..a).flat_map(|i| rows.iter().map(move |r| r[i])).collect();
        output("output0", &[1, a, n], &values)
    }

    #[test]
    fn yolo_layouts_decode_suppress_and_map_back() {
        // v8: 5 candidates x (4 + 2 classes), attributes first.
        let rows: [&[f32]; 6] = [
            &[100.0, 300.0, 40.0, 40.0, 0.9, 0.1],
            &[102.0, 300.0, 40.0, 40.0, 0.8, 0.0], // duplicate of the first, suppressed
            &[100.0, 300.0, 40.0, 40.0, 0.1, 0.7], // same place, other class, kept
            &[300.0, 300.0, 20.0, 20.0, 0.2, 0.1], // below the threshold
            &[630.0, 150.0, 40.0, 40.0, 0.6, 0.0], // crosses the corner: clamped
            &[5.0, 5.0, f32::NAN, 4.0, 0.99, 0.0], // non-finite box: dropped
        ];
        let p = post("kind = \"yolo\"");
        let t = transform(1280, 720, 640, "letterbox"); // scale 2, pad_y 140
        let result = p.apply(&[v8(&rows)], Some(&t)).unwrap();
        let got: Vec<(&str, f32, [f32; 4])> = result
            .iter()
            .map(|d| (d.label.as_str(), d.score, d.bbox.unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("0", 0.9, [160.0, 280.0, 240.0, 360.0]),
                ("1", 0.7, [160.0, 280.0, 240.0, 360.0]),
                ("0", 0.6, [1220.0, 0.0, 1280.0, 60.0]),
            ]
        );
        // v5: candidates first (8 x 7: the smaller axis is the attributes'), objectness times
        // class probability.
        let mut values = vec![0.0; 8 * 7];
        values[..14].copy_from_slice(&[
            320.0, 320.0, 64.0, 64.0, 0.5, 0.9, 0.2, //
            320.0, 320.0, 64.0, 64.0, 1.0, 0.2, 0.3,
        ]);
        let p = Postprocessor::new(&settings("kind = \"yolo\""), None, Some((640, 640))).unwrap();
        let result = p.apply(&[output("output", &[1, 8, 7], &values)], None).unwrap();
        assert_eq!(result.len(), 2);
        assert_eq!((result[0].label.as_str(), result[0].score), ("0", 0.5 * 0.9));
        assert_eq!((result[1].label.as_str(), result[1].score), ("1", 0.3));
        assert_eq!(result[0].bbox, Some([288.0, 288.0, 352.0, 352.0]));
    }

    #[test]
    fn yolo_never_panics_on_any_shape_or_value() {
        let p = post("kind = \"yolo\"\nscore_threshold = 0.0");
        for shape in [
            &[][..],
            &[0],
            &[7],
            &[1, 0, 0],
            &[1, 84, 0],
            &[1, 0, 84],
            &[1, 5, 1],
            &[1, 5, 4],
            &[1, 4, 5],
            &[1, 6, 10],
            &[2, 6, 10],
            &[1, 6, 10, 1],
        ] {
            let values = vec![f32::NAN; shape.iter().product()];
            match p.apply(&[output("y", shape, &values)], None) {
                Ok(result) => assert!(result.is_empty(), "{shape:?}"),
                Err(e) => assert!(e.to_string().contains("expected [1, 4+C, N]"), "{shape:?}: {e}"),
            }
        }
        let err = p.apply(&[output("y", &[1, 5, 1], &[0.0; 5])], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "yolo post-processing: output \"y\" has shape [1, 5, 1] (expected [1, 4+C, N] (YOLOv8) or \
             [1, N, 5+C] (YOLOv5) with C >= 1 classes; the smaller of the last two dimensions is the \
             attributes axis)"
        );
        let ints = (
            "y".to_string(),
            Tensor::from_values(vec![1, 6, 10], &[0i64; 60]).unwrap(),
        );
        assert_eq!(
            p.apply(&[ints], None).unwrap_err().to_string(),
            "yolo post-processing: output \"y\" is INT64 (expected FP16, BF16, FP32 or FP64)"
        );
        assert_eq!(
            p.apply(&[], None).unwrap_err().to_string(),
            "yolo post-processing needs one output, but the model's outputs are none"
        );
        let classify = post("kind = \"classify\"");
        assert!(classify
            .apply(&[output("y", &[1, 0], &[])], None)
            .unwrap()
            .is_empty());
        for shape in [&[][..], &[2, 3], &[1, 1, 3]] {
            let values = vec![0.5; shape.iter().product()];
            let err = classify.apply(&[output("y", shape, &values)], None).unwrap_err();
            assert!(err.to_string().contains("(expected [1, C] or [C])"), "{err}");
        }
    }

    #[test]
    fn ssd_outputs_by_name_then_shape() {
        // Named in an unusual order, with an extra output of a known keyword but another shape.
        let outputs = [
            output("detection_multiclass_scores", &[1, 3, 2], &[0.0; 6]),
            output("num_detections", &[1], &[2.0]),
            output("detection_classes", &[1, 3], &[1.0, 3.0, 2.0]),
            output("detection_scores", &[1, 3], &[0.5, 0.9, 0.95]),
            output(
                "detection_boxes",
                &[1, 3, 4],
                &[0.1, 0.2, 0.5, 0.6, 0.0, 0.0, 1.0, 1.2, 0.0, 0.0, 0.1, 0.1],
            ),
        ];
        let labels = Some(vec!["background".to_string(), "person".into()]);
        let sidecar = settings("kind = \"ssd\"");
        let p = Postprocessor::new(&sidecar, labels.clone(), Some((300, 300))).unwrap();
        let t = transform(600, 300, 300, "stretch"); // x doubled
        let result = p.apply(&outputs, Some(&t)).unwrap();
        // num_detections = 2: the third row does not count.
        assert_eq!(result.len(), 2);
        assert_eq!((result[0].label.as_str(), result[0].score), ("3", 0.9));
        assert_eq!(result[0].bbox, Some([0.0, 0.0, 600.0, 300.0]));
        assert_eq!(result[1].label, "person");
        let [x1, y1, x2, y2] = result[1].bbox.unwrap();
        assert!(
            (x1 - 120.0).abs() < 1e-3 && (y1 - 30.0).abs() < 1e-3,
            "{:?}",
            result[1]
        );
        assert!(
            (x2 - 360.0).abs() < 1e-3 && (y2 - 150.0).abs() < 1e-3,
            "{:?}",
            result[1]
        );
    }

    #[test]
    fn ssd_outputs_found_by_shape_and_odd_values_dropped() {
        let t = transform(600, 300, 300, "stretch");
        // Unnamed: by shape, in the order boxes, scores, classes; no input size or transform:
        // boxes stay normalised.
        let unnamed = [
            output("a", &[1, 1, 4], &[0.1, 0.2, 0.5, 1.5]),
            output("b", &[1, 1], &[0.8]),
            output("c", &[1, 1], &[0.0]),
        ];
        let result = post("kind = \"ssd\"").apply(&unnamed, None).unwrap();
        assert_eq!((result[0].label.as_str(), result[0].score), ("0", 0.8));
        assert_eq!(result[0].bbox, Some([0.2, 0.1, 1.0, 0.5]));
        let err = post("kind = \"ssd\"").apply(&unnamed, Some(&t)).unwrap_err();
        assert_eq!(err, PostprocessError::InputSizeUnknown);
        let err = post("kind = \"ssd\"")
            .apply(&unnamed[..2], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("but the model's outputs are \"a\" FP32 [1, 1, 4], \"b\" FP32 [1, 1]"),
            "{err}"
        );
        let mismatch = [
            output("boxes", &[1, 1, 4], &[0.0; 4]),
            output("scores", &[1, 2], &[0.0; 2]),
            output("classes", &[1, 1], &[0.0]),
        ];
        let err = post("kind = \"ssd\"")
            .apply(&mismatch, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "ssd post-processing: output \"scores\" has shape [1, 2] (expected [1, 1]: one per box of \"boxes\")"
        );
        // NaN scores, NaN and negative class ids, NaN counts: dropped, no panic.
        let mut odd = vec![
            output(
                "boxes",
                &[1, 3, 4],
                &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0],
            ),
            output("scores", &[1, 3], &[f32::NAN, 0.9, 0.9]),
            output("classes", &[1, 3], &[1.0, -1.0, f32::NAN]),
        ];
        assert!(post("kind = \"ssd\"").apply(&odd, None).unwrap().is_empty());
        odd[2] = output("classes", &[1, 3], &[1.0; 3]);
        assert_eq!(post("kind = \"ssd\"").apply(&odd, None).unwrap().len(), 2);
        odd.push(output("num", &[1], &[f32::NAN]));
        assert!(post("kind = \"ssd\"").apply(&odd, None).unwrap().is_empty());
        let empty = [
            output("boxes", &[1, 0, 4], &[]),
            output("scores", &[1, 0], &[]),
            output("classes", &[1, 0], &[]),
        ];
        assert!(post("kind = \"ssd\"").apply(&empty, None).unwrap().is_empty());
    }
}
