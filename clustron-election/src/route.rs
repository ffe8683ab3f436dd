//! Requests to whichever node leads: find the leader and its address, stamp
//! the request with its epoch, bound every attempt and the whole call by a
//! deadline, and retry only what is safe to retry.
//!
//! ```text
//!  ToLeader::request(make) ──► Election::wait_for_leader ──► make(epoch) ──► Channel::request_with_timeout
//!        ▲                                                                          │
//!        └── error that proves nothing was processed (or an idempotent request):   │
//!            back off, read the leader again, retry until the deadline ◄───────────┘
//! ```
//!
//! # The rules a product follows
//!
//! - **Fencing by epoch.** The request carries the epoch it was routed for
//!   (`make` gets it). The leader's handler checks it with
//!   [`Election::leads`] before acting and refuses otherwise, so a request
//!   routed to an old leadership is never applied by a newer one (or by a
//!   node that lost its lease meanwhile) without the sender knowing.
//! - **Refuse only what was not done.** A handler refuses a request (an
//!   `Err` from an [`Endpoint::serve`](clustron_transport::Endpoint::serve)
//!   handler, [`Reply::reject`](clustron_transport::Reply::reject)) only for
//!   routing reasons (not the leader, another epoch, not ready) and only
//!   before it changed anything: a refusal counts as "nothing processed" and
//!   is retried. Application errors go in the response type.
//! - **Retry blindly only what provably never left.** An error whose
//!   [`nothing_processed`](clustron_transport::Error::nothing_processed) is
//!   true (no connection, refused, rejected unprocessed) is retried, at the
//!   leader of the moment. A timeout or a lost connection may come after the
//!   leader applied the request: it is retried only when the policy says the
//!   request is idempotent ([`RetryPolicy::idempotent`]); otherwise the call
//!   ends with [`RouteError::Unknown`] and the product must find out (or make
//!   its requests idempotent, e.g. deduplicated by a client id and sequence
//!   number, as DKV's sessions do).

use std::fmt;
use std::time::Duration;

use clustron_transport::{Channel, Protocol};
use tokio::time::Instant;

use crate::driver::{Election, Leader};
use crate::voters::Epoch;

/// How [`ToLeader`] bounds and retries a call. Build one with struct
/// update syntax: `RetryPolicy { deadline, ..RetryPolicy::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Longest time for the whole call: waiting for a leader, every attempt
    /// and every pause. Default 5 s: a leader crash is repaired in about a
    /// lease (600 ms on a LAN) plus membership's detection, well within it.
    pub deadline: Duration,
    /// Longest wait for one attempt's answer, dial included (passed to
    /// [`Channel::request_with_timeout`], cut to what is left of the
    /// deadline). Default 1 s: a LAN round trip is far below it, and a dead
    /// leader is given up on soon enough to reach the next one.
    pub attempt_timeout: Duration,
    /// First pause between attempts; doubles on each retry. Default 20 ms,
    /// a few LAN round trips.
    pub backoff: Duration,
    /// Cap on the pause. Default 500 ms, under a lease, so the new leader
    /// is tried soon after it is elected.
    pub max_backoff: Duration,
    /// Whether the request may be sent again after an error that does not
    /// prove it was never processed (a timeout, a lost connection). Only for
    /// requests that are idempotent or that the leader deduplicates.
    /// Default false.
    pub idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(1),
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            idempotent: false,
        }
    }
}

impl RetryPolicy {
    /// The default policy with another overall deadline.
    pub fn with_deadline(deadline: Duration) -> Self {
        Self {
            deadline,
            ..Self::default()
        }
    }

    /// This policy, for a request that may be sent twice.
    pub fn idempotent(self) -> Self {
        Self {
            idempotent: true,
            ..self
        }
    }
}

/// A successful call: the response and who answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<R> {
    /// The leader's response.
    pub response: R,
    /// The leader that answered, with the epoch the request carried.
    pub leader: Leader,
    /// Attempts made, this one included (1 when the first one answered).
    pub attempts: u32,
}

/// Why a call to the leader failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No leader with a known address appeared within the deadline.
    /// Nothing was sent.
    #[error("no leader known within {waited:?}")]
    NoLeader {
        /// How long the call waited.
        waited: Duration,
    },
    /// Every attempt failed in a way that proves it was not processed, until
    /// the deadline. Nothing was applied; the caller may try again later.
    #[error("no leader answered within {waited:?} ({attempts} attempts; last: {last})")]
    DeadlineExceeded {
        /// How long the call took.
        waited: Duration,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: clustron_transport::Error,
    },
    /// An attempt failed after the request may have reached the leader's
    /// handler (a timeout, a lost connection), and the request is not marked
    /// idempotent, so it was not sent again. **The outcome is unknown.**
    #[error("outcome unknown at {} (epoch {}): {error}", leader.name, leader.epoch)]
    Unknown {
        /// The leader it was sent to.
        leader: Leader,
        /// What went wrong.
        error: clustron_transport::Error,
    },
    /// The election has stopped (the node is shutting down).
    #[error("the election has stopped")]
    Stopped,
}

impl RouteError {
    /// Whether the request was certainly not processed anywhere, so that
    /// sending it again cannot apply it twice.
    pub fn nothing_processed(&self) -> bool {
        !matches!(self, RouteError::Unknown { .. })
    }
}

/// Sends requests of protocol `P` to the current leader (see the module
/// docs for the rules). Cheap to clone.
pub struct ToLeader<P: Protocol> {
    election: Election,
    channel: Channel<P>,
    policy: RetryPolicy,
}

impl<P: Protocol> Clone for ToLeader<P> {
    fn clone(&self) -> Self {
        Self {
            election: self.election.clone(),
            channel: self.channel.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<P: Protocol> fmt::Debug for ToLeader<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToLeader")
            .field("channel", &self.channel)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<P: Protocol> ToLeader<P> {
    /// Routes `channel`'s requests to `election`'s leader with the default
    /// [`RetryPolicy`].
    pub fn new(election: &Election, channel: Channel<P>) -> Self {
        Self {
            election: election.clone(),
            channel,
            policy: RetryPolicy::default(),
        }
    }

    /// The same router with another policy.
    pub fn with_policy(self, policy: RetryPolicy) -> Self {
        Self { policy, ..self }
    }

    /// The same router for a request that may be sent twice
    /// ([`RetryPolicy::idempotent`]).
    pub fn idempotent(self) -> Self {
        let policy = self.policy.clone().idempotent();
        Self { policy, ..self }
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Sends `make(epoch)` to the leader of `epoch` and returns its answer.
    /// `make` is called again for every attempt, with the epoch of the
    /// leader that attempt goes to.
    pub async fn request(
        &self,
        mut make: impl FnMut(Epoch) -> P::Request,
    ) -> Result<Routed<P::Response>, RouteError> {
        let policy = &self.policy;
        let started = Instant::now();
        let end = started + policy.deadline;
        let mut pause = policy.backoff;
        let mut attempts = 0u32;
        let mut last: Option<clustron_transport::Error> = None;
        let give_up = |attempts, last: Option<clustron_transport::Error>| match last {
            Some(last) => RouteError::DeadlineExceeded {
                waited: started.elapsed(),
                attempts,
                last,
            },
            None => RouteError::NoLeader {
                waited: started.elapsed(),
            },
        };
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(give_up(attempts, last));
            }
            let Some(leader) = self.election.wait_for_leader(left).await else {
                if self.election.is_stopped() {
                    return Err(RouteError::Stopped);
                }
                return Err(give_up(attempts, last));
            };
            let Some(addr) = leader.addr else {
                // `wait_for_leader` returns only leaders with an address.
                continue;
            };
            let request = make(leader.epoch);
            attempts += 1;
            let left = end.saturating_duration_since(Instant::now());
            let after = policy
                .attempt_timeout
                .min(left)
                .max(Duration::from_millis(1));
            match self
                .channel
                .request_with_timeout(addr, &request, after)
                .await
            {
                Ok(response) => {
                    return Ok(Routed {
                        response,
                        leader,
                        attempts,
                    })
                }
                Err(error) if error.nothing_processed() || policy.idempotent => {
                    tracing::debug!(leader = %leader.name, epoch = %leader.epoch, %error, "retrying at the leader");
                    last = Some(error);
                }
                Err(error) => return Err(RouteError::Unknown { leader, error }),
            }
            let left = end.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(policy.max_backoff);
        }
    }
}
