//! Sans-IO protocol cores of the DKV node. Today: [`replication`], the
//! replicated log that the key-value state machine will sit on.
//!
//! ```text
//!  election core (outside)                       driver (tokio, or the simulator)
//!  ───────────────────────                       ────────────────────────────────
//!  Persist(promise)        ──► replica.fence(epoch)
//!  Elected{epoch, summaries}──► replica.become_leader(now, epoch, summaries)
//!  Leader{name, epoch}     ──► replica.follow(now, name, addr, epoch)
//!  SteppedDown{epoch}      ──► replica.step_down(epoch)
//!  LeaderLost              ──► replica.forget_leader()
//!                                  │
//!  handle_message(now, from, msg) ─┤          ┌──────────────┐
//!  handle_timeout(now) ────────────┼────────► │   Replica    │── poll_timeout()
//!  propose(now, payload) ──────────┘          └──────────────┘
//!                                                    │ poll_output(), in order
//!        SaveEpoch / Truncate / Append (write) ◄─────┤
//!        Sync (fsync everything written above) ◄─────┤
//!        Send { to, msg }  (only after the Sync) ◄───┤
//!        Committed { upto } / Summary(bytes) / CannotLead
//!                                                    ▼
//!  Summary(bytes) ──► election.set_summary(bytes);  CannotLead ──► election.step_down(now)
//! ```
//!
//! Nothing here does I/O, reads a clock or draws randomness: time comes in
//! as arguments, and a run replays exactly.
//!
//! # Example
//!
//! Three replicas on a perfect network, driven by hand: `n0` is told it won
//! epoch 1 (by the election, in a real node), a proposal is replicated, and
//! every replica reports it committed.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//!
//! use clustron_dkv::core::{Config, Output, Recovered, Replica};
//! use clustron_election::NodeName;
//!
//! let name = |i: usize| NodeName::new(format!("n{i}")).unwrap();
//! let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16));
//! let voters: Vec<_> = (0..3).map(|i| (name(i), addr(i))).collect();
//! let now = Instant::now();
//! let mut replicas: Vec<Replica> = (0..3)
//!     .map(|i| Replica::new(Config::lan(), name(i), voters.clone(), [], Recovered::default(), now))
//!     .collect();
//! replicas[0].fence(1); // the election persisted its own promise for epoch 1
//! replicas[0].become_leader(now, 1, vec![]);
//! let index = replicas[0].propose(now, b"hello".to_vec()).unwrap();
//!
//! let mut committed = [0u64; 3];
//! loop {
//!     let mut sent = Vec::new();
//!     for (i, replica) in replicas.iter_mut().enumerate() {
//!         while let Some(output) = replica.poll_output() {
//!             match output {
//!                 // A real driver writes these to its log and fsyncs at `Sync`,
//!                 // before performing any later output.
//!                 Output::SaveEpoch(_) | Output::Truncate { .. } | Output::Append(_) | Output::Sync => {}
//!                 Output::Send { to, msg } => sent.push((addr(i), to, msg)),
//!                 Output::Committed { upto } => committed[i] = upto,
//!                 // Hand summaries to the election; step it down on CannotLead.
//!                 Output::Summary(_) | Output::CannotLead { .. } => {}
//!             }
//!         }
//!     }
//!     if sent.is_empty() {
//!         break;
//!     }
//!     for (from, to, msg) in sent {
//!         replicas[(to.port() - 7000) as usize].handle_message(now, from, msg);
//!     }
//! }
//! assert_eq!(committed, [index; 3]);
//! assert_eq!(replicas[2].entry(index).unwrap().payload, b"hello");
//! ```

pub mod replication;

pub use replication::{
    Config, ConfigError, Entry, EntryKind, Message, Output, ProposeError, Recovered, Replica,
    Summary,
};
