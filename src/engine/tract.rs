//! tract engine: pure-Rust CPU inference, always available.
//!
//! The model is built from the already-decoded protobuf with every input's datatype and shape
//! pinned from the ONNX signature; symbolic dimensions (the batch) stay symbolic, so one
//! optimised plan serves any batch size. Ops tract lacks fail at optimisation time with a
//! clean error (and panics inside tract are caught), so `auto` can fall back to ONNX Runtime.
//! The plan runs through `&self`; instances share it.

use std::sync::Arc;

use tract_onnx::prelude::{
    tract_ndarray, DatumType, InferenceFact, InferenceModelExt, IntoTValue, IntoTensor, TDim, TValue, TVec,
    Tensor as TractTensor, ToDim, TypedRunnableModel,
};
use tract_onnx::tract_core::model::IntoRunnable;

use super::{
    catch_panic, pick_outputs, EngineError, EngineKind, EngineOptions, EngineSession, LoadedSessions,
    ModelFile, Tensors,
};
use crate::tensor::{DType, Dim, Tensor, TensorData};

/// The provider name reported for tract.
pub const PROVIDER: &str = "tract-cpu";

/// The checks tract makes before building a plan: expressible values, no BF16.
pub fn precheck(model: &ModelFile) -> Result<(), EngineError> {
    model.info.check_expressible()?;
    if let Some(spec) = model
        .info
        .inputs
        .iter()
        .chain(&model.info.outputs)
        .find(|s| s.dtype() == Some(DType::BF16))
    {
        return Err(EngineError::Load {
            engine: EngineKind::Tract,
            reason: format!("'{}' is BF16 and tract has no BF16 tensors", spec.name),
        });
    }
    Ok(())
}

/// Loads a model in tract; instances share one optimised plan.
pub fn load(model: &ModelFile, options: &EngineOptions) -> Result<LoadedSessions, EngineError> {
    precheck(model)?;
    if !options.gpus.is_empty() {
        return Err(EngineError::Load {
            engine: EngineKind::Tract,
            reason: format!(
                "gpus = {:?}: tract runs on the CPU only; remove `gpus` or use ONNX Runtime with a GPU provider",
                options.gpus
            ),
        });
    }
    let plan = catch_panic(EngineKind::Tract, "load", || build_plan(model))?;
    let outputs: Arc<Vec<String>> = Arc::new(model.info.outputs.iter().map(|s| s.name.clone()).collect());
    let sessions = (0..options.instances.max(1))
        .map(|_| {
            Box::new(TractSession {
                plan: plan.clone(),
                outputs: Arc::clone(&outputs),
            }) as Box<dyn EngineSession>
        })
        .collect();
    tracing::info!(model = %model.path.display(), "loaded in tract");
    Ok(LoadedSessions {
        engine: EngineKind::Tract,
        provider: PROVIDER.to_string(),
        attempts: Vec::new(),
        sessions,
        gpus: Vec::new(),
    })
}

fn build_plan(model: &ModelFile) -> Result<Arc<TypedRunnableModel>, EngineError> {
    let fail = |e: tract_onnx::prelude::TractError| EngineError::Load {
        engine: EngineKind::Tract,
        reason: format!("{e:#}"),
    };
    let onnx = tract_onnx::onnx();
    let dir = model.path.parent().and_then(|p| p.to_str());
    let parsed = onnx.parse(&model.proto, dir).map_err(fail)?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(EngineError::Load {
            engine: EngineKind::Tract,
            reason: format!("unresolved inputs {:?}", parsed.unresolved_inputs),
        });
    }
    let mut graph = parsed.model;
    for (index, spec) in model.info.inputs.iter().enumerate() {
        let dtype = spec.dtype().expect("checked expressible");
        let datum = datum_type(dtype)?;
        let fact = if spec.rank_known {
            let dims: TVec<TDim> = spec
                .dims
                .iter()
                .enumerate()
                .map(|(axis, d)| match d {
                    Dim::Fixed(n) => (*n as i64).to_dim(),
                    Dim::Symbolic(Some(name)) => graph.sym(name).to_dim(),
                    Dim::Symbolic(None) => graph.sym(&format!("unk__{index}_{axis}")).to_dim(),
                })
                .collect();
            InferenceFact::dt_shape(datum, dims)
        } else {
            InferenceFact::dt(datum)
        };
        graph = graph.with_input_fact(index, fact).map_err(fail)?;
    }
    graph
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(fail)
}

fn datum_type(dtype: DType) -> Result<DatumType, EngineError> {
    Ok(match dtype {
        DType::Bool => DatumType::Bool,
        DType::U8 => DatumType::U8,
        DType::U16 => DatumType::U16,
        DType::U32 => DatumType::U32,
        DType::U64 => DatumType::U64,
        DType::I8 => DatumType::I8,
        DType::I16 => DatumType::I16,
        DType::I32 => DatumType::I32,
        DType::I64 => DatumType::I64,
        DType::F16 => DatumType::F16,
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::Bytes => DatumType::String,
        DType::BF16 => {
            return Err(EngineError::Load {
                engine: EngineKind::Tract,
                reason: "tract has no BF16 tensors".into(),
            })
        }
    })
}

/// One tract instance; the plan is shared and immutable.
struct TractSession {
    plan: Arc<TypedRunnableModel>,
    outputs: Arc<Vec<String>>,
}

impl EngineSession for TractSession {
    fn run(&mut self, inputs: &Tensors, outputs: &[String]) -> Result<Tensors, EngineError> {
        catch_panic(EngineKind::Tract, "run", || {
            let values = inputs
                .iter()
                .map(|(_, t)| to_tract(t).map(IntoTValue::into_tvalue))
                .collect::<Result<TVec<TValue>, _>>()?;
            let results = self.plan.run(values).map_err(|e| EngineError::Run {
                engine: EngineKind::Tract,
                reason: format!("{e:#}"),
            })?;
            let by_name = |name: &str| {
                let index = self.outputs.iter().position(|o| o == name)?;
                results.get(index)
            };
            pick_outputs(EngineKind::Tract, outputs, by_name, |v| from_tract(v))
        })
    }
}

fn to_tract(tensor: &Tensor) -> Result<TractTensor, EngineError> {
    let bad = |reason: String| EngineError::BadInput(reason);
    match tensor.data() {
        TensorData::Bytes(_) => {
            let strings = tensor
                .utf8_strings()
                .expect("BYTES tensor")
                .map_err(|e| bad(e.to_string()))?;
            tract_ndarray::ArrayD::from_shape_vec(tensor.shape(), strings)
                .map(IntoTensor::into_tensor)
                .map_err(|e| bad(e.to_string()))
        }
        TensorData::Fixed(bytes) => {
            let datum = datum_type(tensor.dtype()).map_err(|e| bad(e.to_string()))?;
            // SAFETY: `Tensor` guarantees the buffer holds exactly shape × element size bytes of
            // this dtype, and BOOL bytes are 0 or 1.
            unsafe { TractTensor::from_raw_dt(datum, tensor.shape(), bytes) }.map_err(|e| bad(e.to_string()))
        }
    }
}

fn from_tract(value: &TValue) -> Result<Tensor, String> {
    let shape = value.shape().to_vec();
    let dtype = match value.datum_type() {
        DatumType::Bool => DType::Bool,
        DatumType::U8 => DType::U8,
        DatumType::U16 => DType::U16,
        DatumType::U32 => DType::U32,
        DatumType::U64 => DType::U64,
        DatumType::I8 => DType::I8,
        DatumType::I16 => DType::I16,
        DatumType::I32 => DType::I32,
        DatumType::I64 => DType::I64,
        DatumType::F16 => DType::F16,
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::String => {
            let view = value.to_plain_array_view::<String>().map_err(|e| e.to_string())?;
            let elements = view.iter().map(|s| s.as_bytes().to_vec()).collect();
            return Tensor::from_strings(shape, elements).map_err(|e| e.to_string());
        }
        DatumType::TDim => {
            let view = value.to_plain_array_view::<TDim>().map_err(|e| e.to_string())?;
            let values = view
                .iter()
                .map(|d| d.to_i64().map_err(|e| format!("symbolic output value {d}: {e}")))
                .collect::<Result<Vec<i64>, _>>()?;
            return Tensor::from_values(shape, &values).map_err(|e| e.to_string());
        }
        other => return Err(format!("output type {other:?} has no KServe datatype")),
    };
    Tensor::from_raw(dtype, shape, value.as_bytes().to_vec()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_but_bf16_maps_to_tract() {
        for d in DType::ALL {
            assert_eq!(datum_type(d).is_ok(), d != DType::BF16, "{d}");
        }
    }

    #[test]
    fn fixed_tensors_round_trip_through_tract() {
        let t = Tensor::from_values(vec![2, 2], &[1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let back = from_tract(&to_tract(&t).unwrap().into_tvalue()).unwrap();
        assert_eq!(back, t);
        let s = Tensor::from_strings(vec![1], vec![b"x".to_vec()]).unwrap();
        assert_eq!(from_tract(&to_tract(&s).unwrap().into_tvalue()).unwrap(), s);
    }
}
