//! The resource actor's mailbox: a channel whose receiving thread can wait
//! for a message and for its peer sockets at the same time.
//!
//! The actor sleeps in `poll(2)` on an eventfd (the doorbell) and on its
//! sockets. A sender puts the message on an `mpsc` channel and rings the
//! doorbell only when the actor is parked, so a busy actor costs senders
//! no system call, and a sleeping one costs exactly one wake-up, whether
//! it is woken by a message or by a socket. That removes the reader thread
//! (and its hand-over wake-up) from every received packet.
//!
//! Owns: the channel, the doorbell and the parked flag. Must never: lose a
//! wake-up (a message sent while the actor parks is either seen by its
//! last look at the channel or rings the doorbell), or block a sender.

use super::ActorMsg;
use rustix::event::{eventfd, EventfdFlags};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, SendError, Sender, TryRecvError};
use std::sync::Arc;

/// The doorbell shared by senders and the actor.
#[derive(Debug)]
struct Doorbell {
    fd: OwnedFd,
    /// The actor is about to sleep or sleeps in `poll`.
    parked: AtomicBool,
}

impl Doorbell {
    fn ring(&self) {
        // Pairs with the fence in `Mailbox::park`: either the actor's last
        // look at the channel sees the message, or this sees `parked`.
        fence(Ordering::SeqCst);
        if self.parked.swap(false, Ordering::SeqCst) {
            // An eventfd write fails only when its counter would overflow,
            // and then it is readable anyway.
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct ActorTx {
    tx: Sender<ActorMsg>,
    bell: Arc<Doorbell>,
}

impl ActorTx {
    /// Queues `msg` and wakes the actor if it sleeps. Fails once the actor
    /// has ended (the message comes back).
    pub fn send(&self, msg: ActorMsg) -> Result<(), SendError<ActorMsg>> {
        self.tx.send(msg)?;
        self.bell.ring();
        Ok(())
    }
}

/// What [`Mailbox::next`] found.
#[derive(Debug)]
pub(super) enum Next {
    Msg(ActorMsg),
    Empty,
    /// Every sender is gone.
    Closed,
}

/// The receiving side, owned by the actor thread.
#[derive(Debug)]
pub(super) struct Mailbox {
    rx: Receiver<ActorMsg>,
    /// A message taken while parking (the last look), handed out next.
    held: Option<ActorMsg>,
    bell: Arc<Doorbell>,
}

/// A new mailbox and its first sender.
pub(super) fn mailbox() -> std::io::Result<(ActorTx, Mailbox)> {
    let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
    let bell = Arc::new(Doorbell {
        fd,
        parked: AtomicBool::new(false),
    });
    let (tx, rx) = channel();
    Ok((
        ActorTx {
            tx,
            bell: Arc::clone(&bell),
        },
        Mailbox {
            rx,
            held: None,
            bell,
        },
    ))
}

impl Mailbox {
    /// The next message without waiting.
    pub(super) fn next(&mut self) -> Next {
        if let Some(m) = self.held.take() {
            return Next::Msg(m);
        }
        match self.rx.try_recv() {
            Ok(m) => Next::Msg(m),
            Err(TryRecvError::Empty) => Next::Empty,
            Err(TryRecvError::Disconnected) => Next::Closed,
        }
    }

    /// Announces that the actor is about to sleep in `poll` with
    /// [`Mailbox::doorbell_fd`] in its set. False (and not parked) when a
    /// message arrived meanwhile: handle it instead of sleeping.
    pub(super) fn park(&mut self) -> bool {
        if self.held.is_some() {
            return false;
        }
        self.bell.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        match self.rx.try_recv() {
            Ok(m) => {
                self.held = Some(m);
                self.unpark(false);
                false
            }
            // A closed channel never rings: do not sleep on it.
            Err(TryRecvError::Disconnected) => {
                self.unpark(false);
                false
            }
            Err(TryRecvError::Empty) => true,
        }
    }

    /// After `poll` returned: no sender needs to ring any more, and the
    /// doorbell is reset when `poll` saw it ring (`rang`). A ring that
    /// lands after `poll` returned leaves it readable: the next `poll`
    /// returns at once and resets it then (a spurious wake-up, never a
    /// lost one). Not reading it when it did not ring saves a system call
    /// per wake-up by a socket or a disk completion.
    pub(super) fn unpark(&self, rang: bool) {
        self.bell.parked.store(false, Ordering::SeqCst);
        if rang {
            let mut b = [0u8; 8];
            // Nonblocking: EAGAIN if another reset got there first.
            let _ = rustix::io::read(&self.bell.fd, &mut b);
        }
    }

    /// The eventfd to poll for readability while parked.
    pub(super) fn doorbell_fd(&self) -> BorrowedFd<'_> {
        self.bell.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use std::sync::mpsc::sync_channel;

    fn probe() -> ActorMsg {
        let (reply, _rx) = sync_channel(1);
        ActorMsg::Status { reply }
    }

    /// Sleeps in poll on the doorbell until it rings (or `limit_s` passes,
    /// which the test reports as a lost wake-up).
    fn sleep_on_doorbell(mb: &Mailbox, limit_s: i64) -> bool {
        let mut fds = [PollFd::from_borrowed_fd(mb.doorbell_fd(), PollFlags::IN)];
        let t = Timespec {
            tv_sec: limit_s,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&t)).unwrap_or(0) == 1
    }

    #[test]
    fn a_message_sent_while_parked_rings_the_doorbell_once() {
        let (tx, mut mb) = mailbox().unwrap();
        assert!(matches!(mb.next(), Next::Empty));
        assert!(mb.park());
        tx.send(probe()).unwrap();
        tx.send(probe()).unwrap();
        assert!(sleep_on_doorbell(&mb, 10), "the doorbell did not ring");
        mb.unpark(true);
        assert!(matches!(mb.next(), Next::Msg(_)));
        assert!(matches!(mb.next(), Next::Msg(_)));
        assert!(matches!(mb.next(), Next::Empty));
        // Not parked: a send does not ring, the doorbell stays quiet.
        tx.send(probe()).unwrap();
        assert!(!sleep_on_doorbell(&mb, 0));
        assert!(matches!(mb.next(), Next::Msg(_)));
    }

    #[test]
    fn a_message_queued_before_parking_is_kept_and_parking_refused() {
        let (tx, mut mb) = mailbox().unwrap();
        tx.send(probe()).unwrap();
        assert!(!mb.park());
        assert!(matches!(mb.next(), Next::Msg(_)));
        assert!(matches!(mb.next(), Next::Empty));
        drop(tx);
        assert!(!mb.park(), "a closed mailbox must not be slept on");
        assert!(matches!(mb.next(), Next::Closed));
    }

    #[test]
    fn no_wake_up_is_lost_under_racing_senders() {
        const SENDERS: usize = 4;
        const EACH: usize = 2000;
        let (tx, mut mb) = mailbox().unwrap();
        let senders: Vec<_> = (0..SENDERS)
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for _ in 0..EACH {
                        tx.send(probe()).unwrap();
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        let mut got = 0;
        while got < SENDERS * EACH {
            match mb.next() {
                Next::Msg(_) => got += 1,
                Next::Closed => panic!("the test holds a sender"),
                Next::Empty => {
                    if mb.park() {
                        // Messages are still to come, and every send after
                        // `park` rings: only a lost wake-up sleeps to the limit.
                        let woke = sleep_on_doorbell(&mb, 60);
                        mb.unpark(woke);
                        assert!(woke, "lost wake-up after {got} messages");
                    }
                }
            }
        }
        for s in senders {
            s.join().unwrap();
        }
        assert!(matches!(mb.next(), Next::Empty));
    }
}
