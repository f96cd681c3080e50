//! The leader's heartbeat clock: a period that wakes the Raft thread once
//! per heartbeat and at no other time.
//!
//! # Why not `tokio::time::interval`
//!
//! tokio keeps timers in a hierarchical wheel whose first level holds the
//! next 64 ms in 1 ms slots. A deadline that lies past the next 64 ms
//! boundary sits in the second level, and the runtime wakes at that
//! boundary to move it down, then again at the deadline. A 50 ms period
//! (the default heartbeat when this was measured) crosses a boundary on
//! about four beats in five: on an idle leader that was some fifteen of its
//! eighty wake-ups a second, each doing nothing. A 100 ms period crosses
//! one on every beat.
//!
//! # Design
//!
//! On Linux a `timerfd` with the period as its interval is registered with
//! the Raft thread's I/O driver: the kernel makes it readable at each
//! expiry, and [`Beat::tick`] reads it (which resets its count of
//! expiries). The beats keep their phase; those missed while the thread was
//! busy fold into one, like `MissedTickBehavior::Skip`. Elsewhere, or if
//! the timerfd cannot be made or read, it is tokio's interval with `Skip`.
//!
//! # Invariants
//!
//! - Beats fall on `start + k × period` (`CLOCK_MONOTONIC`, which does not
//!   jump with the wall clock). [`Beat::tick`] returns once however many of
//!   them passed since it last returned, and waits when none has.

use std::time::Duration;

use tokio::time::MissedTickBehavior;

/// A periodic wake-up.
pub struct Beat {
    clock: Clock,
    period: Duration,
}

enum Clock {
    #[cfg(target_os = "linux")]
    TimerFd(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>),
    Interval(tokio::time::Interval),
}

impl Beat {
    /// A beat every `period`, the first one `period` from now. Must be
    /// called on the runtime that will await it.
    pub fn every(period: Duration) -> Self {
        #[cfg(target_os = "linux")]
        match timerfd(period) {
            Ok(fd) => {
                return Self {
                    clock: Clock::TimerFd(fd),
                    period,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no timerfd for the heartbeat; using tokio's timer")
            }
        }
        Self {
            clock: Clock::Interval(interval(period)),
            period,
        }
    }

    /// Waits for the next beat.
    pub async fn tick(&mut self) {
        #[cfg(target_os = "linux")]
        if let Clock::TimerFd(fd) = &self.clock {
            match timerfd_tick(fd).await {
                Ok(()) => return,
                Err(e) => {
                    // Cannot happen on a timerfd; looping on it would spin
                    // the thread, so the beat goes on with tokio's timer.
                    tracing::warn!(error = %e, "the heartbeat timerfd failed; using tokio's timer");
                    self.clock = Clock::Interval(interval(self.period));
                }
            }
        }
        if let Clock::Interval(interval) = &mut self.clock {
            interval.tick().await;
        }
    }
}

/// Waits until the timerfd has expired at least once and reads it.
#[cfg(target_os = "linux")]
async fn timerfd_tick(fd: &tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>) -> std::io::Result<()> {
    loop {
        let Ok(mut ready) = fd.readable().await else {
            // The driver is shutting down: nothing more to pace.
            return std::future::pending().await;
        };
        let mut expirations = [0u8; 8];
        match ready.try_io(|fd| {
            rustix::io::read(fd.get_ref(), &mut expirations).map_err(std::io::Error::from)
        }) {
            Ok(Ok(8)) => {
                // Read: not readable again before the next expiry (a newer
                // readiness event is not cleared by this).
                ready.clear_ready();
                return Ok(());
            }
            Ok(Ok(n)) => {
                return Err(std::io::Error::other(format!("read {n} bytes of 8")));
            }
            Ok(Err(e)) => return Err(e),
            // EAGAIN: the readiness was stale, and try_io cleared it.
            Err(_would_block) => continue,
        }
    }
}

/// tokio's interval, first tick a period from now, missed ticks skipped.
fn interval(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    interval
}

#[cfg(target_os = "linux")]
fn timerfd(period: Duration) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use rustix::time::{
        timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags,
        TimerfdTimerFlags, Timespec,
    };
    let fd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    let spec = Timespec {
        tv_sec: period.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: period.subsec_nanos().into(),
    };
    timerfd_settime(
        &fd,
        TimerfdTimerFlags::empty(),
        &Itimerspec {
            it_interval: spec,
            it_value: spec,
        },
    )?;
    // SAFETY: an `OwnedFd` is an open descriptor that stays open, and
    // refers to the same timer, until it is dropped; it is moved into the
    // `AsyncFd`, which drops it after deregistering.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lower bounds only: a loaded machine makes beats late, never early.
    /// So this fails if missed beats burst or a beat comes early; it cannot
    /// tell a kept phase from `Delay` (which is never earlier).
    #[tokio::test]
    async fn missed_beats_fold_into_one_and_none_comes_early() {
        let period = Duration::from_millis(200);
        let start = std::time::Instant::now();
        let mut beat = Beat::every(period);
        beat.tick().await;
        let first = start.elapsed();
        assert!(
            first >= period,
            "the first beat comes a period in: {first:?}"
        );
        // The beats at 2 and 3 periods are missed while the thread is busy.
        std::thread::sleep(period * 5 / 2);
        beat.tick().await;
        // Both folded into that one: the next beat is the one at 4
        // periods, not the second missed one (which would come at once).
        beat.tick().await;
        let next = start.elapsed();
        assert!(next >= period * 4, "missed beats fold into one: {next:?}");
    }
}
