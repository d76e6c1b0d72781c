use super::*;

fn policy(max: usize) -> BatchPolicy {
    BatchPolicy {
        max_batch_size: max,
        ..BatchPolicy::unbatched(64)
    }
}

/// A job of `rows` rows of width `cols`, and the receiver of its answer.
fn job(rows: usize, cols: usize) -> (Job, oneshot::Receiver<JobResult>) {
    let x = Tensor::from_values(vec![rows, cols], &vec![rows as f32; rows * cols]).unwrap();
    let (reply, answer) = oneshot::channel();
    (
        Job::new(vec![("x".into(), x)], vec!["y".into()], rows, None, reply),
        answer,
    )
}

fn rows_of_batch(batch: &[Job]) -> Vec<usize> {
    batch.iter().map(|j| j.rows).collect()
}

#[test]
fn batches_take_compatible_requests_in_order_up_to_the_maximum() {
    let queue = BatchQueue::new(policy(8));
    let mut answers = Vec::new();
    for (rows, cols) in [(1, 4), (1, 4), (1, 6), (3, 4), (4, 4), (1, 6)] {
        let (j, a) = job(rows, cols);
        queue.push(j, "m").unwrap();
        answers.push(a);
    }
    // 1 + 1 + 3 = 5 rows of width 4 (the width-6 request waits); 4 more would pass 8.
    let first = queue.next_batch().unwrap();
    assert_eq!(rows_of_batch(&first), [1, 1, 3]);
    let second = queue.next_batch().unwrap();
    assert_eq!(
        (rows_of_batch(&second), second[0].inputs[0].1.shape()[1]),
        (vec![1, 1], 6)
    );
    assert_eq!(rows_of_batch(&queue.next_batch().unwrap()), [4]);
    assert!(queue.is_empty());
}

#[test]
fn a_preferred_size_goes_first_and_ordering_stops_at_a_misfit() {
    let mut preferring = policy(8);
    preferring.preferred = vec![2, 4];
    let queue = BatchQueue::new(preferring);
    for _ in 0..5 {
        queue.push(job(1, 4).0, "m").unwrap();
    }
    assert_eq!(rows_of_batch(&queue.next_batch().unwrap()), [1, 1, 1, 1]);
    let mut ordered = policy(8);
    ordered.preserve_ordering = true;
    let queue = BatchQueue::new(ordered);
    for (rows, cols) in [(1, 4), (1, 6), (1, 4)] {
        queue.push(job(rows, cols).0, "m").unwrap();
    }
    assert_eq!(
        queue.next_batch().unwrap().len(),
        1,
        "never skips the width-6 request"
    );
}

#[test]
fn a_full_queue_is_overloaded_and_a_closed_one_unavailable() {
    let mut small = policy(8);
    small.max_queue_size = 2;
    let queue = BatchQueue::new(small);
    queue.push(job(1, 4).0, "m").unwrap();
    queue.push(job(1, 4).0, "m").unwrap();
    assert!(matches!(
        queue.push(job(1, 4).0, "m"),
        Err(EngineError::Overloaded(_))
    ));
    queue.close();
    assert!(matches!(
        queue.push(job(1, 4).0, "m"),
        Err(EngineError::Unavailable(_))
    ));
    assert_eq!(queue.next_batch().unwrap().len(), 2, "queued work is still done");
    assert!(queue.next_batch().is_none());
}

#[test]
fn requests_past_their_deadline_or_the_default_timeout_expire() {
    let mut timed = policy(8);
    timed.default_timeout = Some(Duration::from_millis(20));
    let queue = BatchQueue::new(timed);
    let (j, mut expired) = job(1, 4);
    queue.push(j, "m").unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let (j, _fresh) = job(1, 4);
    queue.push(j, "m").unwrap();
    assert_eq!(queue.next_batch().unwrap().len(), 1);
    assert!(matches!(
        expired.try_recv().unwrap().outputs,
        Err(EngineError::Expired)
    ));
}

#[test]
fn the_queue_delay_waits_for_a_fuller_batch_but_a_full_one_goes_at_once() {
    let mut waiting = policy(2);
    waiting.max_queue_delay = Duration::from_millis(60);
    let queue = std::sync::Arc::new(BatchQueue::new(waiting));
    queue.push(job(1, 4).0, "m").unwrap();
    let started = Instant::now();
    let batch = queue.next_batch().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(batch.len(), 1);
    let (pushing, started) = (queue.clone(), Instant::now());
    queue.push(job(1, 4).0, "m").unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        pushing.push(job(1, 4).0, "m").unwrap();
    });
    assert_eq!(queue.next_batch().unwrap().len(), 2);
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn stacked_outputs_split_back_per_request() {
    let (a, _) = job(1, 2);
    let (b, _) = job(2, 2);
    let batch = vec![a, b];
    let stacked = stack(&batch).unwrap();
    assert_eq!(stacked[0].1.shape(), &[3, 2]);
    let parts = split(&stacked, &batch).unwrap();
    assert_eq!(parts[0][0].1, batch[0].inputs[0].1);
    assert_eq!(parts[1][0].1, batch[1].inputs[0].1);
    let wrong = vec![("y".to_string(), Tensor::from_values(vec![1], &[0f32]).unwrap())];
    assert!(split(&wrong, &batch).unwrap_err().contains("max_batch_size = 0"));
    assert_eq!(rows_of(&stacked), Ok(3));
}

#[test]
fn preserved_order_holds_answers_until_the_earlier_ones() {
    let mut ordered = policy(1);
    ordered.preserve_ordering = true;
    let queue = BatchQueue::new(ordered);
    let (j1, mut first) = job(1, 4);
    let (j2, mut second) = job(1, 4);
    queue.push(j1, "m").unwrap();
    queue.push(j2, "m").unwrap();
    let (one, two) = (queue.next_batch().unwrap(), queue.next_batch().unwrap());
    let result = || JobResult {
        outputs: Ok(Vec::new()),
        queue_time: Duration::ZERO,
        compute_time: Duration::ZERO,
        execution: Execution::default(),
    };
    queue.answer(two.into_iter().next().unwrap(), result());
    assert!(second.try_recv().is_err(), "held until the first is answered");
    queue.answer(one.into_iter().next().unwrap(), result());
    assert!(first.try_recv().is_ok() && second.try_recv().is_ok());
}

#[test]
fn idle_poll_covers_the_gaps_it_could_catch_and_fades_on_longer_ones() {
    let us = Duration::from_micros;
    let mut poll = IdlePoll::new(us(200));
    assert_eq!(poll.window(), us(50));
    poll.observe(us(80));
    assert_eq!(poll.window(), us(120), "1.5 × a gap within the limit");
    poll.observe(us(10));
    assert_eq!(poll.window(), us(120), "a shorter gap does not shrink it");
    poll.observe(us(190));
    assert_eq!(poll.window(), us(200), "never past the limit");
    for _ in 0..40 {
        poll.observe(Duration::from_millis(5));
    }
    assert!(poll.window() < us(1), "sparse traffic: {:?}", poll.window());
    poll.observe(us(60));
    assert_eq!(poll.window(), us(90), "one catchable gap brings it back");
    let mut none = IdlePoll::new(Duration::ZERO);
    none.observe(Duration::ZERO);
    none.observe(us(5));
    assert_eq!(none.window(), Duration::ZERO, "no polling with one CPU");
}

#[test]
fn a_queue_without_the_idle_poll_never_polls() {
    let queue = BatchQueue::new(policy(1)).without_idle_poll();
    let (j, _reply) = job(1, 4);
    queue.push(j, "m").unwrap();
    assert_eq!(queue.next_batch().unwrap().len(), 1);
    queue.lock().poll.observe(Duration::from_micros(20));
    assert_eq!(queue.lock().poll.window(), Duration::ZERO);
}

#[test]
fn an_idle_thread_polls_through_a_gap_it_learnt_and_learns_the_next() {
    let ms = Duration::from_millis;
    let queue = std::sync::Arc::new(BatchQueue::new(policy(1)));
    queue.lock().poll = IdlePoll::new(ms(4000)); // starts at a quarter: 1 s
    let waiter = std::thread::spawn({
        let queue = queue.clone();
        move || queue.next_batch().map(|b| b.len())
    });
    std::thread::sleep(ms(200));
    assert_eq!(
        queue.lock().sleeping,
        0,
        "within its window the thread polls, not sleeps"
    );
    let (j, _reply) = job(1, 4);
    queue.push(j, "m").unwrap();
    assert_eq!(waiter.join().unwrap(), Some(1));
    let window = queue.lock().poll.window();
    assert_eq!(
        window,
        ms(1000),
        "a 200 ms gap (× 1.5) is below the 1 s window: unchanged"
    );
    let waiter = std::thread::spawn({
        let queue = queue.clone();
        move || queue.next_batch().map(|b| b.len())
    });
    std::thread::sleep(ms(900));
    let (j, _reply) = job(1, 4);
    queue.push(j, "m").unwrap();
    assert_eq!(waiter.join().unwrap(), Some(1));
    let window = queue.lock().poll.window();
    assert!(
        window > ms(1000) && window <= ms(2000),
        "1.5 × the ~900 ms gap: {window:?}"
    );
}

#[test]
fn an_execution_is_counted_once_by_whichever_of_its_requests_asks_first() {
    assert!(Execution::default().count_once(), "an execution of one request");
    let counted = Some(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let batch: Vec<Execution> = (0..3)
        .map(|_| Execution {
            counted: counted.clone(),
            ..Execution::default()
        })
        .collect();
    // The first request failed after the run (never asks); the others count it, once.
    assert!(batch[2].count_once());
    assert!(!batch[1].count_once());
    assert!(!batch[0].count_once());
}
