//! The synchronous fallback engine: a few worker threads doing `pread`/`pwrite`,
//! `fdatasync` and `fallocate`/ioctls on the O_DIRECT descriptor.
//!
//! Owns: its worker threads and their job queue. Must never: run a callback
//! inside `submit` (callers may hold locks there).
//!
//! Used when io_uring cannot be set up (old kernel, seccomp, container policy).
//! Workers take jobs from one queue, so at most `workers` ops run at once;
//! ordering between overlapping writes is the pipeline's job.

use super::{execute_blocking, BackingFile, BackingOp, IoDone};
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Upper bound on worker threads, whatever the queue depth.
const WORKERS_MAX: u32 = 8;

type Job = (BackingOp, IoDone);

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    stopping: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("jobs", &self.jobs.len())
            .field("stopping", &self.stopping)
            .finish()
    }
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// Worker-thread engine over blocking system calls.
#[derive(Debug)]
pub struct SyncEngine {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl SyncEngine {
    /// Starts `min(queue_depth, 8)` workers on `file`.
    pub fn start(file: Arc<BackingFile>, queue_depth: u32) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 0..queue_depth.clamp(1, WORKERS_MAX) {
            let shared = Arc::clone(&shared);
            let file = Arc::clone(&file);
            let handle = std::thread::Builder::new()
                .name(format!("drbdd-sync-io-{i}"))
                .spawn(move || worker(&shared, &file))?;
            workers.push(handle);
        }
        Ok(SyncEngine {
            shared,
            workers: Mutex::new(workers),
        })
    }

    /// Queues `op`; a worker runs it and then `done`.
    pub fn submit(&self, op: BackingOp, done: IoDone) {
        let mut q = self.shared.queue.lock().expect("sync engine queue lock");
        if q.stopping {
            drop(q);
            // Never run the callback inside submit.
            std::thread::spawn(move || done(Err(io::Error::from_raw_os_error(libc::ESHUTDOWN))));
            return;
        }
        tracing::trace!(?op, "sync engine queued");
        q.jobs.push_back((op, done));
        drop(q);
        self.shared.wake.notify_one();
    }

    /// Lets queued jobs finish, then stops and joins the workers.
    pub fn shutdown(&self) {
        self.shared
            .queue
            .lock()
            .expect("sync engine queue lock")
            .stopping = true;
        self.shared.wake.notify_all();
        let me = std::thread::current().id();
        let handles = std::mem::take(&mut *self.workers.lock().expect("sync engine workers lock"));
        for h in handles {
            // A callback may drop the last owner on a worker thread: never join ourselves.
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }
}

impl Drop for SyncEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(shared: &Shared, file: &BackingFile) {
    loop {
        let job = {
            let mut q = shared.queue.lock().expect("sync engine queue lock");
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break Some(job);
                }
                if q.stopping {
                    break None;
                }
                q = shared.wake.wait(q).expect("sync engine queue lock");
            }
        };
        let Some((op, done)) = job else { return };
        done(execute_blocking(file, op));
    }
}
