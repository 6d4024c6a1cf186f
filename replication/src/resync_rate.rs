//! Resync rate control and progress (part of `resync`).
//!
//! Owns: how many bytes the sync target may request at a given moment, and
//! the done/total/rate/ETA numbers shown in status. Must never: read a clock
//! (time is `now_ms`) or allow more than `c-max-rate`.
//!
//! Fixed rate: a token bucket filled at `resync-rate` KiB/s, holding at most
//! one step's worth plus one request, so an idle period does not turn into a
//! burst. Variable rate (`c-plan-ahead` > 0): every [`RATE_STEP_MS`] the
//! controller looks at what the source delivered in the last step and how
//! much is in flight, and plans to reach the wanted amount in flight (the
//! `c-fill-target`, or what one plan-ahead period at the current delivery rate
//! would need) spread over the plan-ahead steps; the result is capped by
//! `c-max-rate`. While application I/O is active, resync above `c-min-rate`
//! pauses for that step (`c-min-rate` 0: never).

use std::collections::VecDeque;

use super::{Samples, BLOCK_BYTES};

/// The controller's step length.
pub const RATE_STEP_MS: u64 = 100;

/// Rate settings (from the `disk` section of the resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateConfig {
    pub resync_rate_kib: u32,
    /// 0 disables the variable-rate controller.
    pub c_plan_ahead_ms: u32,
    pub c_fill_target_bytes: u64,
    /// 0 = no limit.
    pub c_max_rate_kib: u32,
    pub c_min_rate_kib: u32,
}

/// What "no `c-max-rate`" means per step: 1 GiB (10 GiB/s).
const UNLIMITED_BYTES_PER_STEP: u64 = 1 << 30;

fn kib_per_step(kib_per_s: u32) -> u64 {
    u64::from(kib_per_s) * 1024 * RATE_STEP_MS / 1000
}

/// Decides how many bytes of resync requests may be sent now.
#[derive(Debug)]
pub struct RateController {
    cfg: RateConfig,
    last_step_ms: Option<u64>,
    tokens_bytes: u64,
    last_acked_bytes: u64,
    /// Planned corrections per future step (variable rate).
    plan: VecDeque<i64>,
    /// Allowance left in the current step (variable rate).
    step_allowance_bytes: u64,
    delivered: Samples,
}

impl RateController {
    pub fn new(cfg: RateConfig) -> Self {
        let steps =
            usize::try_from((u64::from(cfg.c_plan_ahead_ms) / RATE_STEP_MS).max(1)).unwrap_or(1);
        Self {
            cfg,
            last_step_ms: None,
            tokens_bytes: 0,
            last_acked_bytes: 0,
            plan: VecDeque::from(vec![0; steps]),
            step_allowance_bytes: 0,
            delivered: Samples::default(),
        }
    }

    /// Bytes that may be requested now. `in_flight_bytes`: requested, not yet
    /// delivered; `acked_bytes_total`: delivered since the resync started;
    /// `app_io_active`: application I/O is competing for the disks.
    pub fn budget(
        &mut self,
        now_ms: u64,
        in_flight_bytes: u64,
        acked_bytes_total: u64,
        app_io_active: bool,
    ) -> u64 {
        self.delivered.push(now_ms, acked_bytes_total);
        let Some(last) = self.last_step_ms else {
            self.last_step_ms = Some(now_ms);
            self.last_acked_bytes = acked_bytes_total;
            self.tokens_bytes = kib_per_step(self.cfg.resync_rate_kib).max(BLOCK_BYTES);
            self.step_allowance_bytes = self.tokens_bytes.min(self.max_per_step_bytes());
            return self.allowance();
        };
        let steps_passed = now_ms.saturating_sub(last) / RATE_STEP_MS;
        if steps_passed > 0 {
            self.last_step_ms = Some(last + steps_passed * RATE_STEP_MS);
            let acked_in_step = acked_bytes_total.saturating_sub(self.last_acked_bytes);
            self.last_acked_bytes = acked_bytes_total;
            if self.cfg.c_plan_ahead_ms == 0 {
                let per_step = kib_per_step(self.cfg.resync_rate_kib);
                self.tokens_bytes = self
                    .tokens_bytes
                    .saturating_add(per_step.saturating_mul(steps_passed))
                    .min(per_step + BLOCK_BYTES);
            } else {
                // Unused allowance carries over (capped), so a plan below
                // one block per step still makes progress.
                let planned = self.plan_step(acked_in_step, in_flight_bytes);
                self.step_allowance_bytes = (self.step_allowance_bytes + planned)
                    .min(self.max_per_step_bytes() + BLOCK_BYTES);
            }
            // `c-min-rate` 0 disables throttling (as in DRBD).
            let min_rate = u64::from(self.cfg.c_min_rate_kib) * 1024;
            if app_io_active && min_rate > 0 && self.rate_bytes_per_s() > min_rate {
                self.tokens_bytes = 0;
                self.step_allowance_bytes = 0;
            }
        }
        self.allowance()
    }

    fn allowance(&self) -> u64 {
        if self.cfg.c_plan_ahead_ms == 0 {
            self.tokens_bytes
        } else {
            self.step_allowance_bytes
        }
    }

    /// Records that `bytes` of requests were sent.
    pub fn spent(&mut self, bytes: u64) {
        self.tokens_bytes = self.tokens_bytes.saturating_sub(bytes);
        self.step_allowance_bytes = self.step_allowance_bytes.saturating_sub(bytes);
    }

    fn plan_step(&mut self, acked_in_step: u64, in_flight_bytes: u64) -> u64 {
        let steps = i64::try_from(self.plan.len()).unwrap_or(1);
        let want = if self.cfg.c_fill_target_bytes > 0 {
            self.cfg.c_fill_target_bytes
        } else {
            // Keep one plan-ahead period of deliveries in flight (at least
            // one step of `resync-rate` to get going).
            let steps_u64 = u64::try_from(self.plan.len()).unwrap_or(1);
            acked_in_step
                .saturating_mul(steps_u64)
                .max(kib_per_step(self.cfg.resync_rate_kib))
        };
        // Values stay far below i64::MAX: `want` and the plan are bounded
        // by a few steps of `max_per_step_bytes`.
        let want = want.min(
            self.max_per_step_bytes()
                .saturating_mul(u64::try_from(self.plan.len()).unwrap_or(1) + 1),
        );
        let planned: i64 = self.plan.iter().fold(0i64, |a, p| a.saturating_add(*p));
        let correction = to_i64(want)
            .saturating_sub(to_i64(in_flight_bytes))
            .saturating_sub(planned);
        let per_step = correction / steps;
        self.plan
            .iter_mut()
            .for_each(|p| *p = p.saturating_add(per_step));
        let now = self.plan.pop_front().unwrap_or(0);
        self.plan.push_back(0);
        let request = to_i64(acked_in_step).saturating_add(now).max(0);
        let request = u64::try_from(request).unwrap_or(0);
        request.min(self.max_per_step_bytes())
    }

    /// `c-max-rate` per step (0 = no limit).
    fn max_per_step_bytes(&self) -> u64 {
        match self.cfg.c_max_rate_kib {
            0 => UNLIMITED_BYTES_PER_STEP,
            kib => kib_per_step(kib).max(BLOCK_BYTES),
        }
    }

    /// Delivery rate over the recent window, bytes per second.
    pub fn rate_bytes_per_s(&self) -> u64 {
        self.delivered.per_second()
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Resync progress for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub total_blocks: u64,
    pub done_blocks: u64,
    pub rate_bytes_per_s: u64,
    /// None until a rate is known.
    pub eta_s: Option<u64>,
}

impl Progress {
    /// Done as a percentage with one decimal, rounded down (never 100.0
    /// before the end).
    pub fn percent_tenths(&self) -> u64 {
        if self.total_blocks == 0 {
            return 1000;
        }
        let tenths = u128::from(self.done_blocks) * 1000 / u128::from(self.total_blocks);
        u64::try_from(tenths).unwrap_or(1000)
    }
}

/// Tracks remaining blocks over time.
#[derive(Debug, Clone, Default)]
pub struct ProgressMeter {
    total_blocks: u64,
    done: Samples,
}

impl ProgressMeter {
    pub fn new(total_blocks: u64) -> Self {
        Self {
            total_blocks,
            done: Samples::default(),
        }
    }

    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    /// Records `remaining_blocks` at `now_ms` and returns the progress.
    pub fn update(&mut self, now_ms: u64, remaining_blocks: u64) -> Progress {
        let done_blocks = self.total_blocks.saturating_sub(remaining_blocks);
        self.done.push(now_ms, done_blocks);
        let rate_bytes_per_s = self.done.per_second().saturating_mul(BLOCK_BYTES);
        let remaining_bytes = remaining_blocks.saturating_mul(BLOCK_BYTES);
        let eta_s = (rate_bytes_per_s > 0).then(|| remaining_bytes.div_ceil(rate_bytes_per_s));
        Progress {
            total_blocks: self.total_blocks,
            done_blocks,
            rate_bytes_per_s,
            eta_s,
        }
    }
}
