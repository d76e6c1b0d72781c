//! Inference threads: each engine session is owned by one dedicated thread fed by a bounded
//! channel (the text-embeddings-inference pattern), so `Session::run(&mut self)` never needs a
//! lock and inference never runs on async worker threads.
//!
//! [`LoadedModel`] is a model ready to serve: its [`ModelInfo`], how it was loaded (engine,
//! provider, the reason for the choice) and its [`InstancePool`]. Dropping it closes the queue;
//! the threads finish the jobs already queued, then exit and free their sessions.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use super::{EngineError, EngineKind, EngineSession, LoadedSessions, ModelInfo, ProviderAttempt, Tensors};

/// Result of one job, with where its time went.
#[derive(Debug)]
pub struct JobResult {
    /// Outputs, or why the run failed.
    pub outputs: Result<Tensors, EngineError>,
    /// Time spent waiting in the queue.
    pub queue_time: Duration,
    /// Time spent in the engine.
    pub compute_time: Duration,
}

struct Job {
    inputs: Tensors,
    outputs: Vec<String>,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<JobResult>,
}

/// N inference threads sharing one bounded queue.
pub struct InstancePool {
    name: String,
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl InstancePool {
    /// Starts one thread per session. `queue_capacity` bounds the jobs waiting for a thread.
    pub fn start(name: &str, sessions: Vec<Box<dyn EngineSession>>, queue_capacity: usize) -> InstancePool {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(queue_capacity.max(1));
        let threads = sessions
            .into_iter()
            .enumerate()
            .map(|(i, mut session)| {
                let queue = queue.clone();
                std::thread::Builder::new()
                    .name(format!("infer-{name}-{i}"))
                    .spawn(move || {
                        while let Some(job) = next_job(&queue) {
                            let started = Instant::now();
                            let outputs = if job.deadline.is_some_and(|d| started >= d) {
                                Err(EngineError::Expired)
                            } else {
                                session.run(&job.inputs, &job.outputs)
                            };
                            // The requester may have gone away; its result is then dropped.
                            let _ = job.reply.send(JobResult {
                                outputs,
                                queue_time: started - job.enqueued,
                                compute_time: started.elapsed(),
                            });
                        }
                    })
                    .expect("spawn inference thread")
            })
            .collect();
        InstancePool {
            name: name.to_string(),
            jobs: Some(jobs),
            threads,
        }
    }

    /// Queues a job; a full queue is an explicit [`EngineError::Overloaded`]. A job still
    /// queued at its `deadline` is not run: it fails with [`EngineError::Expired`].
    pub fn submit(
        &self,
        inputs: Tensors,
        outputs: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<JobResult>, EngineError> {
        let (reply, result) = oneshot::channel();
        let job = Job {
            inputs,
            outputs,
            enqueued: Instant::now(),
            deadline,
            reply,
        };
        let jobs = self.jobs.as_ref().expect("queue open until drop");
        match jobs.try_send(job) {
            Ok(()) => Ok(result),
            Err(TrySendError::Full(_)) => Err(EngineError::Overloaded(self.name.clone())),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Unavailable(self.name.clone())),
        }
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.jobs.as_ref().map_or(0, Sender::len)
    }
}

/// How long an inference thread keeps polling for the next job before it sleeps. Waking a
/// sleeping thread costs tens of microseconds on virtual machines — more than a small model's
/// whole inference — so a busy model's threads stay awake between back-to-back requests,
/// while an idle model's threads sleep (no CPU burnt when there is no work).
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(200);

fn next_job(queue: &Receiver<Job>) -> Option<Job> {
    let started = Instant::now();
    while started.elapsed() < SPIN_BEFORE_SLEEP {
        match queue.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    queue.recv().ok()
}

impl Drop for InstancePool {
    fn drop(&mut self) {
        self.jobs = None;
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
    pool: InstancePool,
}

impl LoadedModel {
    /// Starts the inference threads of loaded sessions.
    pub fn start(
        name: &str,
        info: Arc<ModelInfo>,
        loaded: LoadedSessions,
        reason: String,
        queue_capacity: usize,
    ) -> LoadedModel {
        LoadedModel {
            info,
            engine: loaded.engine,
            provider: loaded.provider,
            attempts: loaded.attempts,
            reason,
            pool: InstancePool::start(name, loaded.sessions, queue_capacity),
        }
    }

    /// Validates a request against the signature and queues it (see [`InstancePool::submit`]).
    pub fn submit(
        &self,
        inputs: Tensors,
        outputs: Option<&[String]>,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<JobResult>, EngineError> {
        let inputs = self.info.order_inputs(inputs)?;
        let outputs = self.info.select_outputs(outputs)?;
        self.pool.submit(inputs, outputs, deadline)
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
        while started.elapsed() < SPIN_BEFORE_SLEEP {
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
}
