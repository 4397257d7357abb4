//! The dynamic batcher: joins concurrent requests along the batch dimension, runs them on
//! dedicated worker threads (never on async runtime threads) and splits the results.
//!
//! A bounded queue feeds the workers; when it is full, [`Batcher::submit`] refuses the request
//! at once instead of letting latency grow without bound. The queue is bounded twice: by
//! requests (`queue_capacity`) and by the bytes they hold (`max_queued_bytes`), since a
//! thousand requests of 64 MiB each would otherwise be "only" a thousand. A request holds its
//! bytes from acceptance until it is answered, and may carry at most `max_request_rows` rows.
//!
//! Each worker owns one ONNX Runtime session (a "model instance", as Triton calls it), takes
//! the first waiting request, then keeps taking requests until the batch is full or
//! `max_delay` has passed since it started.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use ort::session::Session;
use ort::value::TensorRef;
use tokio::sync::oneshot;

use super::model::ModelSignature;
use super::{Error, Result};

/// How the batcher forms batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    /// Most rows in one batch.
    pub max_batch_size: usize,
    /// How long a batch waits for more requests once its first request is taken.
    pub max_delay: Duration,
    /// Requests that may wait in the queue; more are refused.
    pub queue_capacity: usize,
    /// Most rows one request may carry. A request larger than `max_batch_size` runs as a batch
    /// of its own (the tuned batch size is not the client's business); this bounds it.
    pub max_request_rows: usize,
    /// Bytes that accepted, unanswered requests may hold (input and output values); more are
    /// refused with [`Error::QueueBytesFull`]. Never less than one full batch per worker, so
    /// that every worker can always be busy.
    pub max_queued_bytes: usize,
    /// Whether idle workers poll their queue, and blocking callers their answer, briefly
    /// before they sleep (lower latency at low load, a busier CPU). Worth it only on cores
    /// that neither the inference threads nor the async runtime serving requests need.
    pub spin: bool,
}

/// How long an idle worker polls before parking: waking a parked thread on another core costs
/// tens of microseconds, longer than a small policy model's inference.
const SPIN_BEFORE_PARKING: Duration = Duration::from_micros(50);

/// The longest a blocking caller polls for its answer; it polls for about as long as a batch
/// takes, so that a larger batch than the smallest does not end every wait in a sleep.
const LONGEST_WAIT_SPIN: Duration = Duration::from_millis(1);

/// What one request gets back.
#[derive(Debug)]
pub struct Response {
    /// One buffer per model output, `rows × row length` values each.
    pub outputs: Vec<Vec<f32>>,
    /// Rows in the batch the request ran in (its own included).
    pub batch_rows: usize,
    /// Time spent waiting in the queue.
    pub queued: Duration,
}

struct Request {
    input: Vec<f32>,
    rows: usize,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Response>>,
    /// Released when the request is dropped: after its answer is sent, on every path.
    _bytes: Reservation,
}

/// Bytes a request holds against the queue's byte bound, given back on drop.
struct Reservation {
    queued: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Handle to the queue and its workers. Dropping it (or [`Batcher::shutdown`]) closes the
/// queue; workers finish every request already accepted, then exit.
#[derive(Debug)]
pub struct Batcher {
    queue: Option<Sender<Request>>,
    workers: Vec<JoinHandle<()>>,
    signature: Arc<ModelSignature>,
    settings: BatchSettings,
    in_flight: Arc<AtomicUsize>,
    /// Bytes held by accepted, unanswered requests.
    queued_bytes: Arc<AtomicUsize>,
    /// How long the last batch ran, µs: how long a waiting caller is worth polling for.
    last_batch_micros: Arc<AtomicU64>,
}

impl Batcher {
    /// Starts one worker thread per session.
    ///
    /// # Errors
    /// When a worker thread cannot be spawned.
    pub fn start(
        sessions: Vec<Session>,
        signature: ModelSignature,
        mut settings: BatchSettings,
    ) -> Result<Self> {
        let (queue, receiver) = crossbeam_channel::bounded(settings.queue_capacity.max(1));
        let full_batch = request_bytes(&signature, settings.max_batch_size);
        settings.max_queued_bytes = settings
            .max_queued_bytes
            .max(full_batch.saturating_mul(sessions.len().max(1)));
        let signature = Arc::new(signature);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let last_batch_micros = Arc::new(AtomicU64::new(0));
        let workers = sessions
            .into_iter()
            .enumerate()
            .map(|(index, session)| {
                let worker = Worker {
                    session,
                    receiver: receiver.clone(),
                    signature: Arc::clone(&signature),
                    settings,
                    in_flight: Arc::clone(&in_flight),
                    last_batch_micros: Arc::clone(&last_batch_micros),
                    buffer: Vec::new(),
                };
                std::thread::Builder::new()
                    .name(format!("ort-worker-{index}"))
                    .spawn(move || worker.run())
                    .map_err(Error::Worker)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            queue: Some(queue),
            workers,
            signature,
            settings,
            in_flight,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            last_batch_micros,
        })
    }

    /// The model signature requests must fit.
    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// The batching settings.
    pub fn settings(&self) -> BatchSettings {
        self.settings
    }

    /// Requests waiting in the queue, not yet taken by a worker.
    pub fn queue_depth(&self) -> usize {
        self.queue.as_ref().map_or(0, Sender::len)
    }

    /// Requests accepted and not yet answered (queued or running).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Bytes held by accepted, unanswered requests (see [`BatchSettings::max_queued_bytes`]).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// Queues `rows` rows of input (row-major, `rows × input row length` values).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when the input does not fit the model or has more rows than
    /// `max_request_rows`, [`Error::QueueFull`] or [`Error::QueueBytesFull`] when the queue is
    /// full, [`Error::Stopped`] after shutdown.
    pub fn submit(
        &self,
        input: Vec<f32>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Result<Response>>> {
        self.check_input(&input, rows)?;
        let queue = self.queue.as_ref().ok_or(Error::Stopped)?;
        let reservation = self.reserve(request_bytes(&self.signature, rows))?;
        let (reply, receiver) = oneshot::channel();
        let request = Request {
            input,
            rows,
            enqueued: Instant::now(),
            deadline,
            reply,
            _bytes: reservation,
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        match queue.try_send(request) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(_)) => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                Err(Error::QueueFull(queue.len()))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                Err(Error::Stopped)
            }
        }
    }

    /// Whether `rows` rows are within the per-request cap and `input` holds exactly that many.
    fn check_input(&self, input: &[f32], rows: usize) -> Result<()> {
        let max = self.settings.max_request_rows;
        if rows == 0 || rows > max {
            return Err(Error::InvalidRequest(format!(
                "a request has {rows} rows; this server takes 1 to {max} rows per request \
                 (--max-request-rows)"
            )));
        }
        let needed = rows.checked_mul(self.signature.input.row_len());
        if needed != Some(input.len()) {
            return Err(Error::InvalidRequest(format!(
                "input {:?} has {} values; {rows} rows of shape {:?} need {}",
                self.signature.input.name,
                input.len(),
                self.signature.input.row_shape,
                needed.map_or_else(|| "more than usize::MAX".into(), |n| n.to_string())
            )));
        }
        Ok(())
    }

    /// Takes `bytes` from the byte bound, or refuses. An empty queue takes any one request, so
    /// that nothing is refused for ever.
    fn reserve(&self, bytes: usize) -> Result<Reservation> {
        let limit = self.settings.max_queued_bytes;
        self.queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                let total = queued.saturating_add(bytes);
                (queued == 0 || total <= limit).then_some(total)
            })
            .map_err(|queued| Error::QueueBytesFull {
                queued_bytes: queued,
                request_bytes: bytes,
                limit_bytes: limit,
            })?;
        Ok(Reservation {
            queued: Arc::clone(&self.queued_bytes),
            bytes,
        })
    }

    /// Runs one request and waits for it, from async code.
    ///
    /// # Errors
    /// As [`Batcher::submit`], plus inference failures and expired deadlines.
    pub async fn infer(
        &self,
        input: Vec<f32>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<Response> {
        self.submit(input, rows, deadline)?
            .await
            .map_err(|_| Error::Stopped)?
    }

    /// Runs one request and waits for it, from a plain thread (never an async runtime thread).
    /// With spinning on, the caller polls for its answer for about twice the last batch's time
    /// before it sleeps: being woken on another core costs longer than a small model's
    /// inference.
    ///
    /// # Errors
    /// As [`Batcher::infer`].
    pub fn infer_blocking(
        &self,
        input: Vec<f32>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<Response> {
        let mut reply = self.submit(input, rows, deadline)?;
        if self.settings.spin {
            let last_batch = Duration::from_micros(self.last_batch_micros.load(Ordering::Relaxed));
            let until =
                Instant::now() + (last_batch * 2).clamp(SPIN_BEFORE_PARKING, LONGEST_WAIT_SPIN);
            loop {
                match reply.try_recv() {
                    Ok(answer) => return answer,
                    Err(oneshot::error::TryRecvError::Closed) => return Err(Error::Stopped),
                    Err(oneshot::error::TryRecvError::Empty) if Instant::now() < until => {
                        std::hint::spin_loop();
                    }
                    Err(oneshot::error::TryRecvError::Empty) => break,
                }
            }
        }
        reply.blocking_recv().map_err(|_| Error::Stopped)?
    }

    /// Closes the queue and waits until the workers have answered every accepted request.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.queue = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bytes `rows` rows hold while queued: their input and their answer, float32 each.
/// Saturating: the bound then refuses what cannot be counted.
fn request_bytes(signature: &ModelSignature, rows: usize) -> usize {
    let values_per_row = signature
        .outputs
        .iter()
        .fold(signature.input.row_len(), |sum, o| {
            sum.saturating_add(o.row_len())
        });
    rows.saturating_mul(values_per_row)
        .saturating_mul(std::mem::size_of::<f32>())
}

struct Worker {
    session: Session,
    receiver: Receiver<Request>,
    signature: Arc<ModelSignature>,
    settings: BatchSettings,
    in_flight: Arc<AtomicUsize>,
    last_batch_micros: Arc<AtomicU64>,
    /// Reused across batches so joining requests does not allocate in steady state.
    buffer: Vec<f32>,
}

impl Worker {
    fn run(mut self) {
        let mut carried: Option<Request> = None;
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => match self.next_request() {
                    Some(request) => request,
                    None => return, // queue closed and drained
                },
            };
            let mut rows = first.rows;
            let mut batch = vec![first];
            let close_at = Instant::now() + self.settings.max_delay;
            while rows < self.settings.max_batch_size {
                let next = if self.settings.max_delay.is_zero() {
                    self.receiver.try_recv().ok()
                } else {
                    self.receiver.recv_deadline(close_at).ok()
                };
                let Some(request) = next else { break };
                if rows + request.rows > self.settings.max_batch_size {
                    carried = Some(request);
                    break;
                }
                rows += request.rows;
                batch.push(request);
            }
            let answered = batch.len();
            let started = Instant::now();
            self.run_batch(batch);
            let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.last_batch_micros.store(took, Ordering::Relaxed);
            self.in_flight.fetch_sub(answered, Ordering::Relaxed);
        }
    }

    /// The next request, polling for a moment before parking when spinning is on.
    fn next_request(&self) -> Option<Request> {
        if self.settings.spin {
            let until = Instant::now() + SPIN_BEFORE_PARKING;
            while Instant::now() < until {
                match self.receiver.try_recv() {
                    Ok(request) => return Some(request),
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
                    Err(crossbeam_channel::TryRecvError::Empty) => std::hint::spin_loop(),
                }
            }
        }
        self.receiver.recv().ok()
    }

    fn run_batch(&mut self, batch: Vec<Request>) {
        let started = Instant::now();
        let (live, expired): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|r| r.deadline.is_none_or(|d| d > started));
        for request in expired {
            let waited = started - request.enqueued;
            let _ = request.reply.send(Err(Error::DeadlineExceeded(waited)));
        }
        if live.is_empty() {
            return;
        }
        let rows: usize = live.iter().map(|r| r.rows).sum();
        match self.infer(&live, rows) {
            Ok(per_request) => {
                for (request, outputs) in live.into_iter().zip(per_request) {
                    let queued = started - request.enqueued;
                    let _ = request.reply.send(Ok(Response {
                        outputs,
                        batch_rows: rows,
                        queued,
                    }));
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for request in live {
                    let _ = request.reply.send(Err(Error::Inference(reason.clone())));
                }
            }
        }
    }

    /// Runs the joined batch and splits each output back into the requests' rows.
    fn infer(&mut self, live: &[Request], rows: usize) -> Result<Vec<Vec<Vec<f32>>>> {
        let failed = |e: ort::Error| Error::Inference(e.to_string());
        let mut shape = Vec::with_capacity(self.signature.input.row_shape.len() + 1);
        shape.push(rows as i64);
        shape.extend_from_slice(&self.signature.input.row_shape);
        // One request needs no copy; several are joined in the reused buffer.
        let data: &[f32] = if let [only] = live {
            &only.input
        } else {
            self.buffer.clear();
            for request in live {
                self.buffer.extend_from_slice(&request.input);
            }
            &self.buffer
        };
        let tensor = TensorRef::from_array_view((shape, data)).map_err(failed)?;
        let input_name = self.signature.input.name.as_str();
        let outputs = self
            .session
            .run(ort::inputs![input_name => tensor])
            .map_err(failed)?;
        let mut per_request: Vec<Vec<Vec<f32>>> = live
            .iter()
            .map(|_| Vec::with_capacity(self.signature.outputs.len()))
            .collect();
        for spec in &self.signature.outputs {
            let value = outputs
                .get(&spec.name)
                .ok_or_else(|| Error::Inference(format!("output {:?} missing", spec.name)))?;
            let (_, values) = value.try_extract_tensor::<f32>().map_err(failed)?;
            let row_len = spec.row_len();
            let mut offset = 0;
            for (request, outputs) in live.iter().zip(&mut per_request) {
                let len = request.rows * row_len;
                let part = values.get(offset..offset + len).ok_or_else(|| {
                    Error::Inference(format!(
                        "output {:?} has fewer rows than the batch",
                        spec.name
                    ))
                })?;
                outputs.push(part.to_vec());
                offset += len;
            }
        }
        Ok(per_request)
    }
}
