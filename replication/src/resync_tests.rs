//! Proves the bitmap, its RLE round trip, linear request planning within the
//! window, that a reply older than an application write is discarded and the
//! block re-requested, the rate limits, and progress numbers.

use super::*;
use proptest::prelude::*;

#[test]
fn bitmap_ranges_round_to_whole_blocks() {
    let mut bm = SyncBitmap::for_size(10 * BLOCK_BYTES);
    bm.set_range(100, 5000); // touches blocks 0 and 1
    assert_eq!(bm.count(), 2);
    bm.clear_range(0, 6000); // covers only block 0 completely
    assert!(!bm.is_set(0) && bm.is_set(1));
    assert_eq!(bm.next_set(0), Some(1));
}

proptest! {
    #[test]
    fn bitmap_chunks_round_trip(bits in prop::collection::vec(any::<bool>(), 0..700), max_runs in 2usize..9) {
        let mut bm = SyncBitmap::new(bits.len() as u64);
        for (i, b) in bits.iter().enumerate() {
            if *b { bm.set_range(i as u64 * BLOCK_BYTES, BLOCK_BYTES); }
        }
        let mut copy = SyncBitmap::new(bits.len() as u64);
        let chunks = bm.to_chunks(max_runs);
        let ends_last = matches!(chunks.last(), Some(Packet::BitmapChunk { last: true, .. }));
        prop_assert!(ends_last);
        for c in chunks {
            let bytes = c.encode();
            let (decoded, _) = crate::wire::decode(&bytes).unwrap().unwrap();
            let Packet::BitmapChunk { start_bit, total_bits, runs, .. } = decoded else { panic!() };
            prop_assert!(copy.merge_chunk(start_bit, total_bits, &runs));
        }
        prop_assert_eq!(copy, bm);
    }
}

fn dirty(blocks: &[u64], total: u64) -> SyncBitmap {
    let mut bm = SyncBitmap::new(total);
    blocks
        .iter()
        .for_each(|b| bm.set_range(b * BLOCK_BYTES, BLOCK_BYTES));
    bm
}

#[test]
fn planner_requests_dirty_runs_in_linear_order_within_the_window() {
    let bm = dirty(&[1, 2, 3, 7, 9], 16);
    let mut p = ResyncPlanner::new(2, 64 * 1024);
    let reqs = p.next_requests(&bm, u64::MAX);
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (reqs[0].offset_bytes, reqs[0].len_bytes),
        (BLOCK_BYTES, 3 * 4096)
    );
    assert_eq!(reqs[1].offset_bytes, 7 * BLOCK_BYTES);
    assert!(p.next_requests(&bm, u64::MAX).is_empty(), "window is full");
}

#[test]
fn planner_respects_the_byte_budget_and_request_size() {
    let bm = dirty(&[0, 1, 2, 3, 4, 5], 8);
    let mut p = ResyncPlanner::new(8, 2 * 4096);
    let reqs = p.next_requests(&bm, 5 * BLOCK_BYTES);
    let lens: Vec<u32> = reqs.iter().map(|r| r.len_bytes).collect();
    assert_eq!(lens, vec![8192, 8192, 4096]);
}

#[test]
fn reply_older_than_an_application_write_is_discarded_and_rerequested() {
    let mut bm = dirty(&[4], 8);
    let mut p = ResyncPlanner::new(4, 4096);
    let req = p.next_requests(&bm, u64::MAX)[0];
    p.on_peer_write(4 * BLOCK_BYTES + 512, 512);
    assert_eq!(
        p.on_reply(req.id, req.offset_bytes, 4096),
        Some(ReplyVerdict::Discard)
    );
    assert!(bm.is_set(4), "block stays out of sync");
    let again = p.next_requests(&bm, u64::MAX);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].offset_bytes, 4 * BLOCK_BYTES);
    let verdict = p.on_reply(again[0].id, again[0].offset_bytes, 4096);
    assert_eq!(
        verdict,
        Some(ReplyVerdict::Write {
            offset_bytes: 4 * BLOCK_BYTES,
            len_bytes: 4096
        })
    );
    assert!(p.overlaps_writing(4 * BLOCK_BYTES, 512));
    p.write_done(again[0].id, &mut bm);
    assert!(p.is_finished(&bm));
}

#[test]
fn reply_with_wrong_range_or_unknown_id_is_rejected() {
    let bm = dirty(&[4], 8);
    let mut p = ResyncPlanner::new(4, 4096);
    let req = p.next_requests(&bm, u64::MAX)[0];
    assert_eq!(p.on_reply(req.id, 0, 4096), None);
    assert_eq!(p.on_reply(999, req.offset_bytes, 4096), None);
}

fn fixed(rate_kib: u32) -> RateConfig {
    RateConfig {
        resync_rate_kib: rate_kib,
        c_plan_ahead_ms: 0,
        c_fill_target_bytes: 0,
        c_max_rate_kib: 0,
        c_min_rate_kib: 0,
    }
}

#[test]
fn fixed_rate_allows_resync_rate_per_second() {
    let mut rc = RateController::new(fixed(1000)); // 1000 KiB/s
    let mut sent = 0;
    for step in 0..=10u64 {
        let budget = rc.budget(step * RATE_STEP_MS, 0, sent, false);
        rc.spent(budget);
        sent += budget;
    }
    // ~1 s worth plus the initial step, never a burst beyond that.
    assert!(
        (1_000_000..=1_126_400 + 2 * 102_400).contains(&sent),
        "sent {sent}"
    );
}

#[test]
fn variable_rate_never_exceeds_c_max_rate() {
    let cfg = RateConfig {
        resync_rate_kib: 250,
        c_plan_ahead_ms: 2000,
        c_fill_target_bytes: 0,
        c_max_rate_kib: 10_000,
        c_min_rate_kib: 250,
    };
    let mut rc = RateController::new(cfg);
    let mut acked = 0u64;
    let mut in_flight = 0u64;
    for step in 0..100u64 {
        let budget = rc.budget(step * RATE_STEP_MS, in_flight, acked, false);
        assert!(budget <= 10_000 * 1024 / 10 + 4096, "step {step}: {budget}");
        rc.spent(budget);
        in_flight += budget;
        // The source delivers up to 4 MiB per step.
        let delivered = in_flight.min(4 << 20);
        in_flight -= delivered;
        acked += delivered;
    }
    assert!(
        rc.rate_bytes_per_s() > 1_000_000,
        "controller ramps up: {}",
        rc.rate_bytes_per_s()
    );
}

#[test]
fn variable_rate_throttles_above_min_rate_while_application_io_is_active() {
    let cfg = RateConfig {
        resync_rate_kib: 250,
        c_plan_ahead_ms: 1000,
        c_fill_target_bytes: 1 << 20,
        c_max_rate_kib: 100_000,
        c_min_rate_kib: 100,
    };
    let mut rc = RateController::new(cfg);
    rc.budget(0, 0, 0, false);
    rc.budget(100, 0, 5 << 20, false);
    assert_eq!(rc.budget(200, 0, 10 << 20, true), 0);
}

#[test]
fn progress_reports_percent_rate_and_eta() {
    let mut m = ProgressMeter::new(1000);
    m.update(0, 1000);
    let p = m.update(1000, 750);
    assert_eq!(p.done_blocks, 250);
    assert_eq!(p.percent_tenths(), 250);
    assert_eq!(p.rate_bytes_per_s, 250 * BLOCK_BYTES);
    assert_eq!(p.eta_s, Some(3));
}

#[test]
fn variable_rate_makes_progress_when_the_plan_is_below_one_block_per_step() {
    let cfg = RateConfig {
        resync_rate_kib: 10, // 1 KiB per step: less than one block
        c_plan_ahead_ms: 500,
        c_fill_target_bytes: 0,
        c_max_rate_kib: 0,
        c_min_rate_kib: 0,
    };
    let mut rc = RateController::new(cfg);
    let mut acked = 0u64;
    for step in 0..50u64 {
        let budget = rc.budget(step * RATE_STEP_MS, 0, acked, false);
        let blocks = budget / BLOCK_BYTES;
        rc.spent(blocks * BLOCK_BYTES);
        acked += blocks * BLOCK_BYTES;
    }
    assert!(
        acked >= 4 * BLOCK_BYTES,
        "resync stalled: {acked} bytes in 5 s"
    );
}

proptest! {
    #[test]
    fn rate_controller_never_panics_and_respects_c_max_rate(
        rate in 0u32..2_000_000, plan in 0u32..20_000, fill in 0u64..(1 << 40),
        max in 0u32..2_000_000, min in 0u32..2_000_000,
        steps in prop::collection::vec((0u64..u64::MAX / 4, any::<u64>(), 0u64..(1 << 40), any::<bool>()), 1..60),
    ) {
        let cfg = RateConfig { resync_rate_kib: rate, c_plan_ahead_ms: plan, c_fill_target_bytes: fill,
                               c_max_rate_kib: max, c_min_rate_kib: min };
        let mut rc = RateController::new(cfg);
        let (mut now, mut acked) = (0u64, 0u64);
        for (dt, in_flight, delivered, app) in steps {
            now = now.saturating_add(dt);
            acked = acked.saturating_add(delivered);
            let budget = rc.budget(now, in_flight, acked, app);
            if plan > 0 && max > 0 {
                let per_step = u64::from(max) * 1024 / 10;
                prop_assert!(budget <= 2 * per_step.max(4096) + 4096, "{budget}");
            }
            rc.spent(budget / 2);
        }
    }
}
