//! One ublk hardware queue: the thread body libublk's `run_target` calls.
//!
//! Owns: the queue's local executor, one task per tag, and the doorbell task that
//! keeps an io_uring poll armed on the queue's eventfd. Must never: wait for the
//! target synchronously (every tag is its own task), or outlive its `UblkQueue`
//! with an io_uring operation that points into freed memory (the doorbell poll
//! carries no buffer; a direct read's tag buffer is leaked, not freed, when its
//! task is dropped mid-read, see `direct.rs`).

use crate::ops::IoDesc;
use crate::wake::{serve_request, Doorbell, RequestContext};
use drbdd_blockio::AlignedBuf;
use io_uring::{opcode, types};
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::{BufDesc, UblkUringData};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

/// Seconds without I/O after which libublk may release idle tag buffers.
const IDLE_SECS: u64 = 20;

/// Serves queue `qid` of `dev` until the device stops.
pub(crate) fn run_queue(qid: u16, dev: &UblkDev, ctx: RequestContext) {
    let dev_id = dev.dev_info.dev_id;
    let bell = match Doorbell::new() {
        Ok(b) => Arc::new(b),
        Err(e) => return tracing::error!(dev_id, qid, "ublk queue: cannot create eventfd: {e}"),
    };
    let queue = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => return tracing::error!(dev_id, qid, "ublk queue: setup failed: {e}"),
    };
    // The tag buffers are our own (`serve_tag`), not libublk `IoBuf`s, so libublk
    // never counts them as registered; tell the device this queue's buffers are
    // in place, or START_DEV would wait for this queue forever.
    dev.notify_buffer_registration_complete(false);
    let buf_bytes = usize::try_from(dev.dev_info.max_io_buf_bytes).unwrap_or(0);
    let ctx = Rc::new(ctx);
    let exe = Rc::new(smol::LocalExecutor::new());
    let mut tag_tasks = Vec::new();
    for tag in queue.tags() {
        let (q, ctx, bell) = (Rc::clone(&queue), Rc::clone(&ctx), Arc::clone(&bell));
        tag_tasks.push(exe.spawn(async move {
            match serve_tag(&q, tag, buf_bytes, &ctx, &bell).await {
                Ok(()) | Err(libublk::UblkError::QueueIsDown) => {}
                Err(e) => tracing::error!(dev_id, qid, tag, "ublk tag task failed: {e}"),
            }
        }));
    }
    // Not part of `done`: it never finishes by itself and is dropped with the executor.
    let _bell_task = exe.spawn(ring_doorbell_loop(Arc::clone(&bell)));
    let run_exe = Rc::clone(&exe);
    smol::block_on(exe.run(async {
        let run_ops = || while run_exe.try_tick() {};
        let done = || tag_tasks.iter().all(|t| t.is_finished());
        if let Err(e) =
            libublk::wait_and_handle_io_events(&queue, Some(IDLE_SECS), run_ops, done).await
        {
            tracing::error!(dev_id, qid, "ublk queue event loop failed: {e}");
        }
    }));
    tracing::debug!(dev_id, qid, "ublk queue stopped");
}

/// One tag: fetch a request, serve it, commit the result and fetch the next.
///
/// The tag's buffer is an [`AlignedBuf`] whose address goes to the kernel with
/// every FETCH / COMMIT_AND_FETCH: the kernel copies a write's data into it
/// before the request arrives and a read's data out of it at commit. Between
/// those two points the buffer is lent to the target (see `serve_request`);
/// the address handed to the kernel is always that of the buffer this task
/// holds at that moment, which stays allocated (owned by this task) until the
/// next command names another one.
async fn serve_tag(
    q: &UblkQueue<'_>,
    tag: u16,
    buf_bytes: usize,
    ctx: &RequestContext,
    bell: &Arc<Doorbell>,
) -> Result<(), libublk::UblkError> {
    let mut buf = AlignedBuf::with_capacity(buf_bytes, buf_bytes);
    q.submit_io_prep_cmd(tag, BufDesc::RawAddress(buf.as_ptr()), 0, None)
        .await?;
    loop {
        let desc = IoDesc::from(q.get_iod(tag));
        let (res, next) = serve_request(ctx, bell, desc, buf).await;
        buf = next;
        q.submit_io_commit_cmd(tag, BufDesc::RawAddress(buf.as_ptr()), res)
            .await?;
    }
}

/// Keeps a one-shot io_uring poll armed on the doorbell's eventfd so a
/// completion on another thread ends the queue thread's io_uring wait.
async fn ring_doorbell_loop(bell: Arc<Doorbell>) {
    let fd = bell.fd().as_raw_fd();
    loop {
        let poll_in = u32::try_from(libc::POLLIN).unwrap_or(1);
        let sqe = opcode::PollAdd::new(types::Fd(fd), poll_in).build();
        match ublk_submit_sqe_async(sqe, UblkUringData::Target as u64).await {
            Ok(res) if res >= 0 => bell.drain(),
            Ok(res) => return tracing::debug!("ublk doorbell poll ended: errno {}", -res),
            Err(e) => return tracing::debug!("ublk doorbell poll ended: {e}"),
        }
    }
}
