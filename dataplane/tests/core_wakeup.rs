//! Messages from other threads reach an idle core, with each backend that waits on poll(2) or
//! io_uring: a core sleeps without a timeout when it has no connection, so a lost wake-up leaves
//! a message in its queue for ever, and the test's bounded wait for the answer fails.
//!
//! The senders go in lockstep with the core: each message is sent the moment the answer to the
//! previous one arrives, while the core finishes that turn and gets ready to sleep, the window
//! in which a wake-up can be lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../tests/common/prerequisite.rs"]
mod prerequisite;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ant_quic_dataplane::{Application, BackendKind, Connections, Node, NodeConfig};

/// Round trips per sender.
const ROUND_TRIPS: u32 = 5_000;
/// The longest one answer may take: far more than a wake-up needs on a loaded machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Answers every message on the channel of its sender.
struct Echo {
    answers: Arc<Mutex<Vec<mpsc::Sender<u32>>>>,
}

impl Application<(usize, u32)> for Echo {
    fn on_message(&mut self, _conns: &mut Connections<'_>, (sender, sequence): (usize, u32)) {
        if let Some(answer) = self.answers.lock().unwrap().get(sender) {
            let _ = answer.send(sequence);
        }
    }
}

/// `senders` threads each send `ROUND_TRIPS` messages to a one-core node, one at a time, and
/// wait for each answer.
fn lockstep(backend: BackendKind, senders: usize) {
    let (answer_tx, answer_rx): (Vec<_>, Vec<_>) = (0..senders).map(|_| mpsc::channel()).unzip();
    let answers = Arc::new(Mutex::new(answer_tx));
    let mut config = NodeConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), None);
    config.cores = Some(1);
    config.backend = Some(backend);
    let apps = Arc::new(move |_core: usize| {
        Box::new(Echo { answers: Arc::clone(&answers) }) as Box<dyn Application<(usize, u32)>>
    });
    let node = Node::start(config, apps).unwrap();
    let started = Instant::now();
    let threads: Vec<_> = answer_rx
        .into_iter()
        .enumerate()
        .map(|(sender, answers)| {
            let messenger = node.messenger();
            std::thread::spawn(move || {
                for sequence in 0..ROUND_TRIPS {
                    messenger.send_message(0, (sender, sequence)).unwrap();
                    match answers.recv_timeout(ANSWER_WITHIN) {
                        Ok(answer) => assert_eq!(answer, sequence, "answers out of order"),
                        Err(_) => {
                            panic!("{backend}: message {sequence} of sender {sender} never answered: lost wake-up")
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    eprintln!("{backend}: {senders} × {ROUND_TRIPS} round trips in {:?}", started.elapsed());
    node.shutdown_now();
    node.join().unwrap();
}

#[test]
fn portable_core_answers_every_message_sent_as_it_goes_to_sleep() {
    lockstep(BackendKind::Portable, 1);
    lockstep(BackendKind::Portable, 3);
}

#[test]
fn io_uring_core_answers_every_message_sent_as_it_goes_to_sleep() {
    if !prerequisite::require_ok(ant_quic_dataplane::backend::uring::probe(), "io_uring").unwrap() {
        return;
    }
    lockstep(BackendKind::IoUring, 1);
    lockstep(BackendKind::IoUring, 3);
}
