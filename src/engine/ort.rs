//! ONNX Runtime engine (`ort` 2.0.0-rc.15, `load-dynamic`).
//!
//! The library is found once per process by [`runtime`] in SPEC §5's order and initialised with
//! `ort::init_from` (which reports a missing or incompatible library as an error instead of
//! panicking); exactly one ORT `Environment` exists per process. Each model instance is its own
//! `Session`, built with the configured providers registered one at a time so that the
//! provider really in use — and the reason each other one failed — is known and reported.
//! Thread spinning is off unless configured, so an idle daemon burns no CPU.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::ep::{self, ExecutionProvider};
use ort::memory::Allocator;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{DynTensor, DynTensorValueType, DynValue, TensorElementType, ValueType};

use super::{
    catch_panic, pick_outputs, EngineError, EngineKind, EngineOptions, EngineSession, LoadedSessions,
    ModelFile, Provider, ProviderAttempt, Tensors,
};
use crate::tensor::{DType, Tensor, TensorData};

/// The process-wide ONNX Runtime: where its library came from and its environment.
pub struct OrtRuntime {
    /// Path of the loaded `libonnxruntime.so`.
    pub library: PathBuf,
    /// ORT's build information string.
    pub build_info: String,
    env: ort::environment::Environment,
}

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Initialises ONNX Runtime on first use and returns it. Later calls return the same runtime
/// whatever path they pass (ORT can be loaded once per process); failures are not cached,
/// so a library installed later is picked up.
pub fn runtime(explicit: Option<&Path>) -> Result<&'static OrtRuntime, EngineError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let library = find_library(explicit)?;
    let env = catch_panic(EngineKind::Ort, "init", || {
        let builder = ort::init_from(&library)
            .map_err(|e| EngineError::Library(format!("{}: {e}", library.display())))?;
        builder
            .with_name("onnxd")
            .with_telemetry(false)
            .build()
            .map_err(|e| EngineError::Library(format!("{}: {e}", library.display())))
    })
    .map_err(|e| match e {
        EngineError::Load { reason, .. } => EngineError::Library(reason),
        other => other,
    })?;
    let build_info = ort::info().to_string();
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    Ok(RUNTIME.get_or_init(|| OrtRuntime {
        library,
        build_info,
        env,
    }))
}

/// The library ONNX Runtime was loaded from, once a model loaded it (never loads it).
pub fn loaded_library() -> Option<&'static Path> {
    RUNTIME.get().map(|rt| rt.library.as_path())
}

/// Finds `libonnxruntime.so`: `engine.ort_library`, `$ORT_DYLIB_PATH`, `<exe dir>/lib/`,
/// `/usr/lib`, `/usr/local/lib`, then a Python `onnxruntime` package's `capi/` folder.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, EngineError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(EngineError::Library(format!(
                "engine.ort_library {} does not exist or is not a file",
                path.display()
            )))
        };
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(EngineError::Library(format!(
                "ORT_DYLIB_PATH={} is not a file",
                path.display()
            )))
        };
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("lib"));
    }
    dirs.extend(["/usr/lib", "/usr/local/lib"].map(PathBuf::from));
    if let Some(capi) = python_onnxruntime_capi() {
        dirs.push(capi);
    }
    dirs.iter().find_map(|d| library_in(d)).ok_or_else(|| {
        let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        EngineError::Library(format!(
            "libonnxruntime.so not found (set engine.ort_library or ORT_DYLIB_PATH; looked in {})",
            looked.join(", ")
        ))
    })
}

/// `libonnxruntime.so` in `dir`, else the highest-versioned `libonnxruntime.so.1.*`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join("libonnxruntime.so");
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("libonnxruntime.so.")?;
            let parts = version
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((parts, e.path()))
        })
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, p)| p)
}

/// The `capi/` folder of an installed Python `onnxruntime` package, if `python3` has one.
fn python_onnxruntime_capi() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import importlib.util as u, os; s = u.find_spec('onnxruntime'); print(os.path.join(os.path.dirname(s.origin), 'capi') if s else '')"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Execution providers compiled into the loaded library (not necessarily usable).
pub fn compiled_providers() -> Vec<&'static str> {
    let mut found = Vec::new();
    if ep::TensorRT::is_available().unwrap_or(false) {
        found.push(Provider::Tensorrt.ort_name());
    }
    if ep::CUDA::is_available().unwrap_or(false) {
        found.push(Provider::Cuda.ort_name());
    }
    found.push(Provider::Cpu.ort_name());
    found
}

/// Loads the sessions of a model: `options.instances`, on each of `options.gpus` when set.
pub fn load(model: &ModelFile, options: &EngineOptions) -> Result<LoadedSessions, EngineError> {
    runtime(options.ort_library.as_deref())?;
    model.info.check_expressible()?;
    let load_error = |reason: String| EngineError::Load {
        engine: EngineKind::Ort,
        reason,
    };
    let mut providers = options.providers.clone();
    let mut attempts = Vec::new();
    let mut sessions: Vec<Box<dyn EngineSession>> = Vec::new();
    let mut provider = String::new();
    while sessions.len() < options.total_instances() {
        let device = options.device_of(sessions.len());
        // A session builds its intra-op threads, which start on the CPUs of the thread that
        // builds it: on `[engine] cpus`. (The environment, built once above, stays off them.)
        let pinned = crate::cpus::while_pinned(&options.cpus, || {
            catch_panic(EngineKind::Ort, "session build", || {
                build_session(model, options, &providers, device).map_err(|e| load_error(e.to_string()))
            })
        });
        let built = pinned.map_err(|e| {
            load_error(format!(
                "cannot pin the loading thread to CPUs {}: {e}",
                options.cpus
            ))
        })??;
        match built {
            Built::Session(session, used, tried) => {
                if sessions.is_empty() {
                    attempts.extend(tried);
                    provider = used;
                }
                sessions.push(Box::new(OrtSession { session }));
            }
            // A GPU provider registered but the session could not be created on it (no device,
            // driver mismatch, engine build failure): note why and go on without it — unless
            // the model was placed on GPUs, which a CPU fallback would silently ignore.
            Built::ProviderFailed(failed, reason) if options.gpus.is_empty() => {
                attempts.push(ProviderAttempt {
                    provider: failed,
                    error: Some(reason),
                });
                providers.retain(|&p| p != failed);
            }
            Built::ProviderFailed(failed, reason) => {
                return Err(load_error(format!(
                    "gpus = {:?}: {} cannot run the model on GPU {device}: {reason}",
                    options.gpus,
                    failed.ort_name()
                )))
            }
            Built::Failed(reason) => return Err(load_error(reason)),
        }
    }
    if !options.gpus.is_empty() && provider == Provider::Cpu.ort_name() {
        let why: Vec<String> = attempts
            .iter()
            .filter_map(|a| Some(format!("{}: {}", a.provider.ort_name(), a.error.as_ref()?)))
            .collect();
        return Err(load_error(format!(
            "gpus = {:?}: no GPU execution provider could be used here ({}); remove `gpus` to run on the CPU",
            options.gpus,
            why.join("; ")
        )));
    }
    tracing::info!(model = %model.path.display(), provider = %provider, instances = sessions.len(), gpus = ?options.gpus, "loaded in ONNX Runtime");
    let gpus = (0..sessions.len())
        .filter(|_| !options.gpus.is_empty())
        .map(|i| options.device_of(i))
        .collect();
    Ok(LoadedSessions {
        engine: EngineKind::Ort,
        provider,
        attempts,
        sessions,
        gpus,
    })
}

enum Built {
    Session(Session, String, Vec<ProviderAttempt>),
    ProviderFailed(Provider, String),
    Failed(String),
}

fn build_session(
    model: &ModelFile,
    options: &EngineOptions,
    providers: &[Provider],
    device: i32,
) -> ort::Result<Built> {
    let runtime = RUNTIME.get().expect("runtime initialised before loading");
    let mut builder = Session::builder(&runtime.env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(options.threads_per_instance())?
        .with_inter_threads(1)?
        .with_intra_op_spinning(options.spinning)?
        .with_inter_op_spinning(options.spinning)?;
    let mut attempts = Vec::new();
    let mut in_use: Option<Provider> = None;
    for &provider in providers {
        let result = register(&mut builder, provider, model, options, device);
        match &result {
            // A library built without the provider (the CPU wheel): expected, not alarming.
            Err(e) if e.to_string().contains("not enabled in this build") => {
                tracing::info!(provider = provider.ort_name(), error = %e, "execution provider not registered")
            }
            Err(e) => {
                tracing::warn!(provider = provider.ort_name(), error = %e, "execution provider not registered")
            }
            Ok(()) => {}
        }
        if result.is_ok() && in_use.is_none() {
            in_use = Some(provider);
        }
        attempts.push(ProviderAttempt {
            provider,
            error: result.err().map(|e| e.to_string()),
        });
    }
    match builder.commit_from_file(&model.path) {
        Ok(session) => {
            let used = in_use.unwrap_or(Provider::Cpu).ort_name().to_string();
            Ok(Built::Session(session, used, attempts))
        }
        Err(e) => match in_use {
            Some(p) if p != Provider::Cpu => Ok(Built::ProviderFailed(p, e.to_string())),
            _ => Ok(Built::Failed(e.to_string())),
        },
    }
}

fn register(
    builder: &mut SessionBuilder,
    provider: Provider,
    model: &ModelFile,
    options: &EngineOptions,
    device: i32,
) -> ort::Result<()> {
    match provider {
        Provider::Tensorrt => {
            let cache = options
                .state_dir
                .join("cache")
                .join("trt")
                .join(&model.info.sha256);
            let _ = std::fs::create_dir_all(&cache);
            let cache = cache.display().to_string();
            ep::TensorRT::default()
                .with_device_id(device)
                .with_fp16(options.trt_fp16)
                .with_engine_cache(true)
                .with_engine_cache_path(&cache)
                .with_timing_cache(true)
                .with_timing_cache_path(&cache)
                .register(builder)
        }
        Provider::Cuda => ep::CUDA::default().with_device_id(device).register(builder),
        Provider::Cpu => ep::CPU::default().with_arena_allocator(true).register(builder),
    }
}

/// One ONNX Runtime session, owned by one inference thread.
struct OrtSession {
    session: Session,
}

impl EngineSession for OrtSession {
    fn run(&mut self, inputs: &Tensors, outputs: &[String]) -> Result<Tensors, EngineError> {
        catch_panic(EngineKind::Ort, "run", || {
            let values = inputs
                .iter()
                .map(|(name, t)| Ok((name.as_str(), to_ort(t)?)))
                .collect::<Result<Vec<_>, EngineError>>()?;
            let mut results = self.session.run(values).map_err(|e| EngineError::Run {
                engine: EngineKind::Ort,
                reason: e.to_string(),
            })?;
            pick_outputs(EngineKind::Ort, outputs, |name| results.remove(name), from_ort)
        })
    }
}

fn element_type(dtype: DType) -> TensorElementType {
    match dtype {
        DType::Bool => TensorElementType::Bool,
        DType::U8 => TensorElementType::Uint8,
        DType::U16 => TensorElementType::Uint16,
        DType::U32 => TensorElementType::Uint32,
        DType::U64 => TensorElementType::Uint64,
        DType::I8 => TensorElementType::Int8,
        DType::I16 => TensorElementType::Int16,
        DType::I32 => TensorElementType::Int32,
        DType::I64 => TensorElementType::Int64,
        DType::F16 => TensorElementType::Float16,
        DType::BF16 => TensorElementType::Bfloat16,
        DType::F32 => TensorElementType::Float32,
        DType::F64 => TensorElementType::Float64,
        DType::Bytes => TensorElementType::String,
    }
}

fn dtype_of(ty: TensorElementType) -> Option<DType> {
    DType::ALL.into_iter().find(|&d| element_type(d) == ty)
}

/// Copies a tensor into an ORT value.
fn to_ort(tensor: &Tensor) -> Result<DynValue, EngineError> {
    let input_error = |reason: String| EngineError::BadInput(reason);
    let shape: Vec<i64> = tensor.shape().iter().map(|&d| d as i64).collect();
    match tensor.data() {
        TensorData::Bytes(_) => {
            let strings = tensor
                .utf8_strings()
                .expect("BYTES tensor")
                .map_err(|e| input_error(e.to_string()))?;
            if let Some(index) = strings.iter().position(|s| s.contains('\0')) {
                return Err(input_error(format!(
                    "element {index}: BYTES element contains NUL, which ONNX Runtime string tensors cannot hold"
                )));
            }
            ort::value::Tensor::from_string_array((shape, &strings[..]))
                .map(|t| t.into_dyn())
                .map_err(|e| input_error(e.to_string()))
        }
        TensorData::Fixed(bytes) => {
            let mut value = DynTensor::new(&Allocator::default(), element_type(tensor.dtype()), shape)
                .map_err(|e| input_error(e.to_string()))?;
            if !bytes.is_empty() {
                // SAFETY: the tensor was just allocated on the CPU with exactly this dtype and
                // shape, and `Tensor` guarantees `bytes.len()` = element count × element size.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        value.data_ptr_mut().cast::<u8>(),
                        bytes.len(),
                    );
                }
            }
            Ok(value.into_dyn())
        }
    }
}

/// Copies an ORT output into a tensor.
fn from_ort(value: &DynValue) -> Result<Tensor, String> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(format!("output is {} which onnxd cannot carry", value.dtype()));
    };
    let dtype = dtype_of(*ty).ok_or_else(|| format!("output element type {ty:?} has no KServe datatype"))?;
    let tensor = value
        .view()
        .downcast::<DynTensorValueType>()
        .map_err(|e| e.to_string())?;
    let shape: Vec<usize> = tensor.shape().iter().map(|&d| d as usize).collect();
    if dtype == DType::Bytes {
        let (_, strings) = tensor.try_extract_strings().map_err(|e| e.to_string())?;
        return Tensor::from_strings(shape, strings.into_iter().map(String::into_bytes).collect())
            .map_err(|e| e.to_string());
    }
    let len = tensor.size().unwrap_or(0);
    let bytes = if len == 0 {
        Vec::new()
    } else {
        // SAFETY: CPU output tensor of `len` bytes (outputs of CPU-bound runs live on the host).
        unsafe { std::slice::from_raw_parts(tensor.data_ptr().cast::<u8>(), len) }.to_vec()
    };
    Tensor::from_raw(dtype, shape, bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_has_an_ort_element_type() {
        for d in DType::ALL {
            assert_eq!(dtype_of(element_type(d)), Some(d));
        }
    }

    #[test]
    fn missing_explicit_library_is_a_clear_error() {
        let err = find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ONNX Runtime unavailable: engine.ort_library /nonexistent/libonnxruntime.so does not exist or is not a file"
        );
    }
}
