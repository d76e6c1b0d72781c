//! Inference threads: each engine session is owned by one dedicated thread (the
//! text-embeddings-inference pattern), so `Session::run(&mut self)` never needs a lock and
//! inference never runs on async worker threads. The threads of a version share its
//! [`BatchQueue`]; each takes the next batch itself, runs it once, and answers every request in
//! it with its own rows of the outputs.
//!
//! [`LoadedModel`] is a model ready to serve: its [`ModelInfo`], how it was loaded (engine,
//! provider, the reason for the choice) and its [`InstancePool`]. Dropping it closes the queue;
//! the threads finish the jobs already queued, then exit and free their sessions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::cpus::CpuList;
use crate::heartbeat::Busy;

use super::batch::{rows_of, split, stack, BatchPolicy, BatchQueue, Execution, Job, JobResult};
use super::{EngineError, EngineKind, EngineSession, LoadedSessions, ModelInfo, ProviderAttempt, Tensors};

/// The CPU priority of a pool's inference threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// The priority of the thread that starts the pool (the daemon's).
    Serving,
    /// The lowest (nice 19), and no idle poll: the threads run on what serving leaves idle,
    /// as a shadow candidate's must. Unprivileged threads cannot raise their priority again,
    /// so leaving it means new threads ([`LoadedModel::with_priority`]).
    Background,
}

/// Lowest CPU priority a thread can take.
const BACKGROUND_NICE: i32 = 19;

/// N inference threads sharing one batch queue.
pub struct InstancePool {
    name: String,
    priority: Priority,
    /// Where the threads run (empty: anywhere).
    cpus: CpuList,
    queue: Arc<BatchQueue>,
    /// Per thread: when its current execution began (the watchdog's sign of progress).
    busy: Arc<[Busy]>,
    /// Whether executions read the thread's CPU clock (a system call each side: only while
    /// a shadow compares this version, see [`LoadedModel::measure_cpu`]).
    cpu_clock: Arc<AtomicBool>,
    /// Each thread hands its session back when it ends.
    threads: Vec<JoinHandle<Box<dyn EngineSession>>>,
}

impl InstancePool {
    /// Starts one thread per session on `cpus` (empty: anywhere), taking batches as `policy`
    /// says.
    pub fn start(
        name: &str,
        sessions: Vec<Box<dyn EngineSession>>,
        policy: BatchPolicy,
        priority: Priority,
        cpus: CpuList,
    ) -> InstancePool {
        let queue = Arc::new(match priority {
            Priority::Serving => BatchQueue::new(policy),
            Priority::Background => BatchQueue::new(policy).without_idle_poll(),
        });
        let busy: Arc<[Busy]> = sessions.iter().map(|_| Busy::default()).collect();
        let cpu_clock = Arc::new(AtomicBool::new(false));
        let threads = sessions
            .into_iter()
            .enumerate()
            .map(|(i, mut session)| {
                let queue = queue.clone();
                let busy = busy.clone();
                let cpu_clock = cpu_clock.clone();
                let cpus = cpus.clone();
                std::thread::Builder::new()
                    .name(format!("infer-{name}-{i}"))
                    .spawn(move || {
                        if let Err(e) = cpus.pin_this_thread() {
                            tracing::warn!(error = %e, %cpus, "cannot pin an inference thread to its CPUs");
                        }
                        if priority == Priority::Background {
                            // On Linux the nice value is per thread; `None` is this one.
                            if let Err(e) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
                                tracing::warn!(error = %e, "cannot lower an inference thread's priority");
                            }
                        }
                        while let Some(batch) = queue.next_batch() {
                            busy[i].start();
                            #[cfg(debug_assertions)]
                            stall_if_asked();
                            let clock = cpu_clock.load(Ordering::Relaxed);
                            run_batch(&queue, session.as_mut(), batch, clock);
                            busy[i].stop();
                        }
                        session
                    })
                    .expect("spawn inference thread")
            })
            .collect();
        InstancePool {
            name: name.to_string(),
            priority,
            cpus,
            queue,
            busy,
            cpu_clock,
            threads,
        }
    }

    /// Queues a request of `rows` rows; a full queue is an explicit
    /// [`EngineError::Overloaded`]. A request still queued at its `deadline` is not run: it
    /// fails with [`EngineError::Expired`].
    pub fn submit(
        &self,
        inputs: Tensors,
        outputs: Vec<String>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<JobResult>, EngineError> {
        let (reply, result) = oneshot::channel();
        self.queue
            .push(Job::new(inputs, outputs, rows, deadline, reply), &self.name)?;
        Ok(result)
    }

    /// Requests waiting for a thread.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// How long the longest execution running now has run (none running: `None`).
    pub fn longest_execution(&self) -> Option<Duration> {
        self.busy.iter().filter_map(Busy::running_for).max()
    }

    /// How requests are batched.
    pub fn policy(&self) -> &BatchPolicy {
        self.queue.policy()
    }
}

/// How long a caller waiting outside an async runtime ([`LoadedModel::infer_blocking`]) polls
/// for its answer before it sleeps: waking a sleeping thread costs tens of microseconds on
/// virtual machines — more than a small model's whole inference. None with one CPU.
fn spin_before_sleep() -> Duration {
    if super::batch::several_cpus() {
        Duration::from_micros(50)
    } else {
        Duration::ZERO
    }
}

/// Runs one batch on a session and answers each of its requests. One request runs as it
/// came; several are stacked (one copy of each input), run once, and their outputs split
/// (shared, not copied). An engine error on a batch is every request's error.
fn run_batch(queue: &BatchQueue, session: &mut dyn EngineSession, batch: Vec<Job>, cpu_clock: bool) {
    let started = Instant::now();
    let cpu_started = cpu_clock.then(thread_cpu_time);
    let batch_size: usize = batch.iter().map(|j| j.rows).sum();
    let outputs: Vec<Result<Tensors, EngineError>> = if let [job] = &batch[..] {
        vec![session.run(&job.inputs, &job.outputs)]
    } else {
        let run = stack(&batch).and_then(|inputs| session.run(&inputs, &batch[0].outputs));
        match run.and_then(|outputs| split(&outputs, &batch).map_err(EngineError::Batch)) {
            Ok(parts) => parts.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e); batch.len()],
        }
    };
    let compute_time = started.elapsed();
    let cpu_time = cpu_started.map_or(Duration::ZERO, |s| thread_cpu_time().saturating_sub(s));
    let counted = (batch.len() > 1).then(|| Arc::new(AtomicBool::new(false)));
    for (job, outputs) in batch.into_iter().zip(outputs) {
        let result = JobResult {
            outputs,
            queue_time: started - job.enqueued,
            compute_time,
            execution: Execution {
                rows: job.rows,
                batch_size,
                counted: counted.clone(),
                cpu_time,
            },
        };
        queue.answer(job, result);
    }
}

/// Test hook (debug builds only, [`STALL`]): once set, every inference thread that takes a
/// batch hangs in it, as one stuck in an engine would.
#[cfg(debug_assertions)]
pub static STALL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(debug_assertions)]
fn stall_if_asked() {
    if STALL.load(std::sync::atomic::Ordering::Relaxed) {
        loop {
            std::thread::park();
        }
    }
}

/// CPU time this thread has used. ONNX Runtime's calling thread takes part in (or spins
/// waiting for) the work of its intra-op threads, so per execution this follows the engine's
/// wall time less the time the thread was not running.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
}

impl InstancePool {
    /// Finishes the queued work and takes the sessions back from the threads.
    fn into_sessions(mut self) -> Vec<Box<dyn EngineSession>> {
        self.queue.close();
        self.threads.drain(..).filter_map(|t| t.join().ok()).collect()
    }
}

impl Drop for InstancePool {
    fn drop(&mut self) {
        self.queue.close();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A model loaded in an engine and ready to serve.
pub struct LoadedModel {
    /// Signature and file facts.
    pub info: Arc<ModelInfo>,
    /// Engine in use.
    pub engine: EngineKind,
    /// Provider in use.
    pub provider: String,
    /// Provider registrations tried.
    pub attempts: Vec<ProviderAttempt>,
    /// Why this engine was chosen (and what failed before it).
    pub reason: String,
    /// Instances (inference threads).
    pub instances: usize,
    /// GPUs the instances run on (empty: the CPU or the default device).
    pub gpus: Vec<i32>,
    pool: InstancePool,
}

impl LoadedModel {
    /// Starts the inference threads of loaded sessions, on `cpus` (empty: anywhere).
    pub fn start(
        name: &str,
        info: Arc<ModelInfo>,
        loaded: LoadedSessions,
        reason: String,
        policy: BatchPolicy,
        cpus: CpuList,
    ) -> LoadedModel {
        LoadedModel {
            info,
            engine: loaded.engine,
            provider: loaded.provider,
            attempts: loaded.attempts,
            reason,
            instances: loaded.sessions.len(),
            gpus: loaded.gpus,
            pool: InstancePool::start(name, loaded.sessions, policy, Priority::Serving, cpus),
        }
    }

    /// The same sessions taking requests as `policy` says (the queue is drained first).
    pub fn with_policy(self, policy: BatchPolicy) -> LoadedModel {
        let priority = self.pool.priority;
        self.restarted(policy, priority)
    }

    /// The same sessions on new threads of `priority` (the queue is drained first). Threads
    /// take the priority of the thread that starts them, so call it from a serving thread
    /// to return to [`Priority::Serving`].
    pub fn with_priority(self, priority: Priority) -> LoadedModel {
        let policy = self.pool.policy().clone();
        self.restarted(policy, priority)
    }

    fn restarted(mut self, policy: BatchPolicy, priority: Priority) -> LoadedModel {
        let name = self.pool.name.clone();
        let cpus = self.pool.cpus.clone();
        let placeholder = InstancePool::start(
            &name,
            Vec::new(),
            BatchPolicy::unbatched(1),
            priority,
            CpuList::default(),
        );
        let pool = std::mem::replace(&mut self.pool, placeholder);
        self.pool = InstancePool::start(&name, pool.into_sessions(), policy, priority, cpus);
        self
    }

    /// Validates a request against the signature (and, for a batching model, its batch size
    /// against `max_batch_size`) and queues it (see [`InstancePool::submit`]).
    pub fn submit(
        &self,
        inputs: Tensors,
        outputs: Option<&[String]>,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<JobResult>, EngineError> {
        let inputs = self.info.order_inputs(inputs)?;
        let outputs = self.info.select_outputs(outputs)?;
        let policy = self.pool.policy();
        let rows = if policy.batches() {
            let rows = rows_of(&inputs).map_err(EngineError::BadInput)?;
            if policy.enforce_max && rows > policy.max_batch_size {
                return Err(EngineError::BadInput(format!(
                    "the request's batch of {rows} exceeds the model's max_batch_size of {}",
                    policy.max_batch_size
                )));
            }
            rows
        } else {
            1
        };
        self.pool.submit(inputs, outputs, rows, deadline)
    }

    /// Runs a request and waits for it (for callers outside an async runtime).
    pub fn infer_blocking(
        &self,
        inputs: Tensors,
        outputs: Option<&[String]>,
    ) -> Result<JobResult, EngineError> {
        let mut result = self.submit(inputs, outputs, None)?;
        // Poll briefly before sleeping, for the same reason the inference threads do.
        let started = Instant::now();
        while started.elapsed() < spin_before_sleep() {
            match result.try_recv() {
                Ok(done) => return Ok(done),
                Err(oneshot::error::TryRecvError::Closed) => break,
                Err(oneshot::error::TryRecvError::Empty) => std::thread::yield_now(),
            }
        }
        result
            .blocking_recv()
            .map_err(|_| EngineError::Unavailable(self.pool.name.clone()))
    }

    /// Jobs waiting for an inference thread.
    pub fn queued(&self) -> usize {
        self.pool.queued()
    }

    /// How long the longest execution running now has run (see [`InstancePool`]).
    pub fn longest_execution(&self) -> Option<Duration> {
        self.pool.longest_execution()
    }

    /// Whether executions report their CPU time ([`super::batch::Execution::cpu_time`], zero
    /// while off): shadow comparisons turn it on for both versions compared. Off by default —
    /// reading a thread's CPU clock is a system call, ~1 µs per execution of a tiny model.
    pub fn measure_cpu(&self, on: bool) {
        self.pool.cpu_clock.store(on, Ordering::Relaxed);
    }

    /// How requests are batched.
    pub fn policy(&self) -> &BatchPolicy {
        self.pool.policy()
    }
}
