//! Dynamic batching with Triton's semantics, in front of a model version's instance threads.
//!
//! Requests wait in one queue per version (so a batch always runs on one version). Each
//! instance thread takes the next batch itself — no batcher thread, no extra hand-off: the
//! oldest request, then, in order, every waiting request whose inputs have the same dtypes and
//! non-batch dimensions and that asks for the same outputs, while the total stays within
//! `max_batch_size` (requests may carry batch > 1). Requests that cannot join stay queued, in
//! order, for the next batch — a neighbour never fails them. With `max_queue_delay` the thread
//! waits (no longer than the oldest request's delay) for a fuller batch; a batch that reaches
//! `max_batch_size` or a preferred size goes at once. With preferred sizes, the largest
//! preferred size the queue can form is taken, else the largest possible.
//!
//! A request past its deadline when a batch is formed is answered `expired` instead of run.
//! `preserve_ordering` answers in arrival order: batches never skip a request, and answers
//! of batches finished out of order (several instances) are held until the earlier ones.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::EngineError;
use crate::tensor::{Tensor, Tensors};

/// Whether this process may run on more than one CPU (an affinity mask or a cgroup quota of
/// one leaves one): with one, a poller would only take turns with the thread it waits for.
pub(super) fn several_cpus() -> bool {
    static SEVERAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SEVERAL.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()) > 1)
}

/// Longest an idle instance thread polls for the next request before it sleeps. A poll that
/// catches a request saves the same wake-up however long it ran, so the CPU it costs per
/// request is capped: a client on the same host or LAN segment (HTTP or gRPC round trips of
/// 40–90 µs) is caught; a round trip through an MQTT broker (~150 µs) is not polled for.
pub const MAX_IDLE_POLL: Duration = Duration::from_micros(100);

/// How long an idle instance thread polls (yielding) for the next request before it sleeps,
/// learnt from the gaps between requests. A request that finds its thread asleep pays a
/// futex wake-up and the thread's return to a core — tens of microseconds on virtual machines,
/// more than a small model's inference — so the queue polls for as long as the recent gaps
/// suggest the next request will take to come (1.5 × the last gap it could have caught, up to
/// [`MAX_IDLE_POLL`]), and polls less after each gap longer than that: a client waiting on each
/// answer (its round trip, 40–90 µs over loopback) is caught while it sends; sparse traffic
/// costs no polling. A fixed window misses clients whose round trip is just above it on every
/// request, and polls in vain on every request of sparse traffic. With one CPU the poller would
/// only take turns with the thread it waits for: no polling then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdlePoll {
    window: Duration,
    max: Duration,
}

impl IdlePoll {
    /// Polls up to `max`, starting at a quarter of it.
    pub fn new(max: Duration) -> IdlePoll {
        IdlePoll { window: max / 4, max }
    }

    /// The daemon's: [`MAX_IDLE_POLL`] with several CPUs, none with one.
    pub fn for_this_machine() -> IdlePoll {
        IdlePoll::new(if several_cpus() {
            MAX_IDLE_POLL
        } else {
            Duration::ZERO
        })
    }

    /// How long to poll now.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Learns from one idle spell: `gap` from going idle to the next request's arrival.
    pub fn observe(&mut self, gap: Duration) {
        if gap <= self.max {
            self.window = self.window.max((gap * 3 / 2).min(self.max));
        } else {
            self.window -= self.window / 4;
        }
    }
}

/// How a version batches (from the sidecar's `max_batch_size` and `[batching]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Largest batch; 0 or 1 = one request per execution.
    pub max_batch_size: usize,
    /// Longest a request waits for a fuller batch.
    pub max_queue_delay: Duration,
    /// Preferred batch sizes (ascending).
    pub preferred: Vec<usize>,
    /// Most requests waiting; more are refused as overloaded.
    pub max_queue_size: usize,
    /// A request waiting longer than this is answered `expired`.
    pub default_timeout: Option<Duration>,
    /// Answers in arrival order.
    pub preserve_ordering: bool,
    /// Whether `max_batch_size` is a limit on requests (asked for, as Triton) or only on
    /// batching (defaulted: a larger request runs alone).
    pub enforce_max: bool,
}

impl BatchPolicy {
    /// One request per execution, queue bounded by `max_queue_size`.
    pub fn unbatched(max_queue_size: usize) -> BatchPolicy {
        BatchPolicy {
            max_batch_size: 0,
            max_queue_delay: Duration::ZERO,
            preferred: Vec::new(),
            max_queue_size,
            default_timeout: None,
            preserve_ordering: false,
            enforce_max: false,
        }
    }

    /// Whether requests are combined.
    pub fn batches(&self) -> bool {
        self.max_batch_size > 1
    }
}

/// How the execution that answered a request went.
#[derive(Clone, Debug, Default)]
pub struct Execution {
    /// The request's own batch size (rows).
    pub rows: usize,
    /// Total batch size of the execution (the sum of its requests' batch sizes).
    pub batch_size: usize,
    /// Shared by the requests of an execution of several: set by the first of them counted
    /// ([`Execution::count_once`]). `None` for an execution of one request.
    pub counted: Option<Arc<AtomicBool>>,
    /// CPU time the inference thread spent in the engine (the whole batch's): unlike the wall
    /// time, not lengthened while the OS ran something else on its core. Zero unless the
    /// model measures it (`LoadedModel::measure_cpu`).
    pub cpu_time: Duration,
}

impl Execution {
    /// True for exactly one of the execution's requests: the first to ask. Executions are
    /// counted through their answered requests, so one whose first request fails afterwards
    /// (post-processing) or is dropped (its client left) still counts, once.
    pub fn count_once(&self) -> bool {
        self.counted
            .as_ref()
            .is_none_or(|counted| !counted.swap(true, Ordering::Relaxed))
    }
}

/// Result of one request, with where its time went.
#[derive(Debug)]
pub struct JobResult {
    /// Outputs, or why the run failed.
    pub outputs: Result<Tensors, EngineError>,
    /// Time spent waiting in the queue.
    pub queue_time: Duration,
    /// Time spent in the engine (the whole batch's).
    pub compute_time: Duration,
    /// The execution it ran in.
    pub execution: Execution,
}

/// A queued request.
pub struct Job {
    /// Inputs, validated and in model order.
    pub inputs: Tensors,
    /// Outputs asked for.
    pub outputs: Vec<String>,
    /// Its batch size (dimension 0), 1 when the model does not batch.
    pub rows: usize,
    /// When it was queued.
    pub enqueued: Instant,
    /// Not run after this.
    pub deadline: Option<Instant>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<JobResult>,
    seq: u64,
}

impl Job {
    /// A request to queue.
    pub fn new(
        inputs: Tensors,
        outputs: Vec<String>,
        rows: usize,
        deadline: Option<Instant>,
        reply: oneshot::Sender<JobResult>,
    ) -> Job {
        Job {
            inputs,
            outputs,
            rows,
            enqueued: Instant::now(),
            deadline,
            reply,
            seq: 0,
        }
    }

    /// Whether `other` can run in the same execution.
    fn joins(&self, other: &Job) -> bool {
        self.outputs == other.outputs
            && self.inputs.len() == other.inputs.len()
            && self
                .inputs
                .iter()
                .zip(&other.inputs)
                .all(|((_, a), (_, b))| a.dtype() == b.dtype() && a.shape().get(1..) == b.shape().get(1..))
    }
}

struct State {
    jobs: VecDeque<Job>,
    closed: bool,
    next_seq: u64,
    /// Instance threads blocked on `ready` (a push wakes one only when there is one: the
    /// futex call is saved while they poll).
    sleeping: usize,
    /// How long an idle instance thread polls before it sleeps.
    poll: IdlePoll,
}

/// The queue of one version, shared by its instance threads.
pub struct BatchQueue {
    policy: BatchPolicy,
    state: Mutex<State>,
    ready: Condvar,
    order: Option<Reorder>,
}

impl BatchQueue {
    /// An empty, open queue.
    pub fn new(policy: BatchPolicy) -> BatchQueue {
        let order = policy.preserve_ordering.then(Reorder::default);
        BatchQueue {
            policy,
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
                next_seq: 0,
                sleeping: 0,
                poll: IdlePoll::for_this_machine(),
            }),
            ready: Condvar::new(),
            order,
        }
    }

    /// The same queue without the idle poll: its threads sleep as soon as it is empty. For a
    /// shadow candidate's queue: nobody waits for its copies, so polling would only take CPU
    /// that serving needs.
    pub fn without_idle_poll(mut self) -> BatchQueue {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        state.poll = IdlePoll::new(Duration::ZERO);
        self
    }

    /// The policy.
    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a request; a full queue is [`EngineError::Overloaded`], a closed one
    /// [`EngineError::Unavailable`] (`name` names the model in both).
    pub fn push(&self, mut job: Job, name: &str) -> Result<(), EngineError> {
        if let Some(timeout) = self.policy.default_timeout {
            let by_policy = job.enqueued + timeout;
            job.deadline = Some(job.deadline.map_or(by_policy, |d| d.min(by_policy)));
        }
        let mut state = self.lock();
        if state.closed {
            return Err(EngineError::Unavailable(name.to_string()));
        }
        if state.jobs.len() >= self.policy.max_queue_size.max(1) {
            return Err(EngineError::Overloaded(name.to_string()));
        }
        job.seq = state.next_seq;
        state.next_seq += 1;
        state.jobs.push_back(job);
        let wake = state.sleeping > 0;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No more requests; the instance threads finish what is queued, then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// The next batch (see the module documentation), waiting for requests; `None` once the
    /// queue is closed and empty. Expired requests are answered here, not returned.
    pub fn next_batch(&self) -> Option<Vec<Job>> {
        let idle_since = Instant::now();
        let mut idle = false;
        let mut state = self.lock();
        loop {
            self.expire(&mut state);
            if state.jobs.is_empty() {
                if state.closed {
                    return None;
                }
                idle = true;
                if idle_since.elapsed() < state.poll.window() {
                    drop(state);
                    std::thread::yield_now();
                    state = self.lock();
                } else {
                    state.sleeping += 1;
                    state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                    state.sleeping -= 1;
                }
                continue;
            }
            if std::mem::take(&mut idle) {
                let gap = state.jobs[0].enqueued.saturating_duration_since(idle_since);
                state.poll.observe(gap);
            }
            let (count, full) = self.candidates(&state.jobs);
            let oldest = state.jobs[0].enqueued;
            let waited = oldest.elapsed();
            if full || state.closed || waited >= self.policy.max_queue_delay {
                return Some(self.take(&mut state, count));
            }
            let left = self.policy.max_queue_delay - waited;
            state.sleeping += 1;
            state = self
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            state.sleeping -= 1;
        }
    }

    /// Answers, and removes, queued requests past their deadline.
    fn expire(&self, state: &mut State) {
        let now = Instant::now();
        if !state.jobs.iter().any(|j| j.deadline.is_some_and(|d| now >= d)) {
            return;
        }
        let (expired, kept): (VecDeque<Job>, VecDeque<Job>) = std::mem::take(&mut state.jobs)
            .into_iter()
            .partition(|j| j.deadline.is_some_and(|d| now >= d));
        state.jobs = kept;
        for job in expired {
            let queue_time = now - job.enqueued;
            self.answer(
                job,
                JobResult {
                    outputs: Err(EngineError::Expired),
                    queue_time,
                    compute_time: Duration::ZERO,
                    execution: Execution::default(),
                },
            );
        }
    }

    /// How many requests (in queue order, compatible with the first) the next batch takes,
    /// and whether it should go now (full, or a preferred size).
    fn candidates(&self, jobs: &VecDeque<Job>) -> (usize, bool) {
        let policy = &self.policy;
        if !policy.batches() {
            return (1, true);
        }
        let first = &jobs[0];
        if first.rows >= policy.max_batch_size {
            // Already as large as a batch may grow (a larger one only under a defaulted maximum).
            return (1, true);
        }
        let mut rows = first.rows;
        let mut count = 1;
        let mut best_preferred = policy.preferred.contains(&rows).then_some(count);
        for job in jobs.iter().skip(1) {
            if !first.joins(job) {
                if policy.preserve_ordering {
                    break;
                }
                continue;
            }
            if rows + job.rows > policy.max_batch_size {
                break;
            }
            rows += job.rows;
            count += 1;
            if policy.preferred.contains(&rows) {
                best_preferred = Some(count);
            }
        }
        let full = rows == policy.max_batch_size;
        match best_preferred {
            Some(preferred) if !full => (preferred, true),
            _ => (count, full),
        }
    }

    /// Removes the first `count` compatible requests (the same walk as `candidates`).
    fn take(&self, state: &mut State, count: usize) -> Vec<Job> {
        let first = state.jobs.pop_front().expect("not empty");
        let mut batch = Vec::with_capacity(count);
        let mut i = 0;
        while batch.len() + 1 < count && i < state.jobs.len() {
            if first.joins(&state.jobs[i]) {
                batch.push(state.jobs.remove(i).expect("in range"));
            } else {
                i += 1;
            }
        }
        batch.insert(0, first);
        batch
    }

    /// Answers a request, in arrival order when the policy preserves it.
    pub fn answer(&self, job: Job, result: JobResult) {
        match &self.order {
            None => {
                // The requester may have gone away; its result is then dropped.
                let _ = job.reply.send(result);
            }
            Some(order) => order.release(job.seq, job.reply, result),
        }
    }
}

/// An answer waiting for its turn.
type Held = (oneshot::Sender<JobResult>, JobResult);

/// Answers held until every earlier request was answered (`preserve_ordering`): the next
/// sequence number to release and the answers that arrived early.
#[derive(Default)]
struct Reorder {
    state: Mutex<(u64, BTreeMap<u64, Held>)>,
}

impl Reorder {
    fn release(&self, seq: u64, reply: oneshot::Sender<JobResult>, result: JobResult) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (next, held) = &mut *state;
        held.insert(seq, (reply, result));
        while let Some((reply, result)) = held.remove(next) {
            let _ = reply.send(result);
            *next += 1;
        }
    }
}

/// The inputs of a batch: each input of every request stacked along dimension 0.
pub fn stack(batch: &[Job]) -> Result<Tensors, EngineError> {
    let first = &batch[0];
    first
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let parts: Vec<&Tensor> = batch.iter().map(|job| &job.inputs[i].1).collect();
            let stacked = Tensor::concat(&parts).map_err(|e| EngineError::BadInput(e.to_string()))?;
            Ok((name.clone(), stacked))
        })
        .collect()
}

/// A batch's outputs cut back into each request's rows (shared, not copied).
pub fn split(outputs: &Tensors, batch: &[Job]) -> Result<Vec<Tensors>, String> {
    let total: usize = batch.iter().map(|j| j.rows).sum();
    if let Some((name, t)) = outputs.iter().find(|(_, t)| t.shape().first() != Some(&total)) {
        return Err(format!(
            "output '{name}' has shape {:?}: its first dimension is not the batch ({total}), so a batch cannot be split; set max_batch_size = 0 for this model",
            t.shape()
        ));
    }
    let mut start = 0;
    let mut parts = Vec::with_capacity(batch.len());
    for job in batch {
        let part = outputs
            .iter()
            .map(|(name, t)| Ok((name.clone(), t.rows(start, job.rows).map_err(|e| e.to_string())?)))
            .collect::<Result<Tensors, String>>()?;
        parts.push(part);
        start += job.rows;
    }
    Ok(parts)
}

/// The batch size a request carries: dimension 0 of its inputs, which must agree.
pub fn rows_of(inputs: &Tensors) -> Result<usize, String> {
    let mut rows = None;
    for (name, tensor) in inputs {
        let Some(&n) = tensor.shape().first() else {
            return Err(format!(
                "input '{name}' is a scalar: a batching model needs a batch dimension"
            ));
        };
        match rows {
            None => rows = Some(n),
            Some(r) if r != n => {
                return Err(format!(
                    "inputs disagree on the batch size (dimension 0): '{name}' has {n}, others {r}"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(rows.unwrap_or(1))
}

#[cfg(test)]
mod tests;
