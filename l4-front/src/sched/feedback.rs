//! Dynamic-feedback weights (thesis §4.2). Periodically (each health-check
//! round) every real server's aggregate load is computed from load indices
//! where 1.0 means "loaded just right":
//!
//! - INPUT_i = N_i / (ΣN / n): the new connections it got in the interval
//!   against the average of the service's servers (§4.2.3);
//! - RESPONSE_i = the health probe's response time / the configured
//!   `feedback_response_ms`;
//!
//! AGGREGATE_LOAD_i = R_in × INPUT_i + (1 − R_in) × RESPONSE_i, and the
//! weight moves by the thesis' formula
//!
//! ```text
//! w_i ← w_i + A × ∛(0.95 − AGGREGATE_LOAD_i)
//! ```
//!
//! bounded to [1, SCALE × DEFAULT_WEIGHT_i]. A server whose configured
//! weight is 0 (draining) is never adjusted; a server that does not answer
//! is taken out by the health check (weight 0), as in the thesis.

/// The utilisation the formula steers to.
pub const TARGET: f64 = 0.95;

/// One step of the §4.2.4 formula: the new (real-valued) weight from the
/// current one, the aggregate load, the coefficient `a`, and the bound
/// `scale × default_weight`. `None` when `default_weight` is 0 (a drained
/// server keeps weight 0).
pub fn next_weight(
    current: f64,
    load: f64,
    a: f64,
    default_weight: u32,
    scale: u32,
) -> Option<f64> {
    if default_weight == 0 {
        return None;
    }
    let load = if load.is_finite() { load.max(0.0) } else { 0.0 };
    let w = if load == TARGET {
        current
    } else {
        current + a * (TARGET - load).cbrt()
    };
    let max = (scale.max(1) as f64) * default_weight as f64;
    Some(w.clamp(1.0, max))
}

/// INPUT_i for each server: its new connections over the average (1.0
/// for every server when none got any).
pub fn input_indices(new_conns: &[u64]) -> Vec<f64> {
    let live = new_conns.len().max(1) as f64;
    let avg = new_conns.iter().sum::<u64>() as f64 / live;
    new_conns
        .iter()
        .map(|&n| if avg > 0.0 { n as f64 / avg } else { 1.0 })
        .collect()
}

/// RESPONSE_i: a response time over the one that counts as load 1.0.
pub fn response_index(rt_ms: f64, target_ms: u64) -> f64 {
    rt_ms.max(0.0) / target_ms.max(1) as f64
}

/// AGGREGATE_LOAD_i with `input_percent` % from the input index.
pub fn aggregate(input: f64, response: f64, input_percent: u8) -> f64 {
    let r = input_percent.min(100) as f64 / 100.0;
    r * input + (1.0 - r) * response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_at_target_keeps_the_weight() {
        assert_eq!(next_weight(7.0, 0.95, 5.0, 4, 10), Some(7.0));
    }

    #[test]
    fn underloaded_grows_and_overloaded_shrinks_by_the_cube_root() {
        // 0.95 − 0.825 = 0.125, ∛0.125 = 0.5, × A 5 = +2.5.
        let up = next_weight(4.0, 0.825, 5.0, 4, 10).unwrap();
        assert!((up - 6.5).abs() < 1e-9, "{up}");
        // 0.95 − 1.95 = −1, ∛−1 = −1, × 5 = −5.
        let down = next_weight(10.0, 1.95, 5.0, 4, 10).unwrap();
        assert!((down - 5.0).abs() < 1e-9, "{down}");
        // A scales the step.
        let small = next_weight(4.0, 0.825, 2.0, 4, 10).unwrap();
        assert!((small - 5.0).abs() < 1e-9, "{small}");
    }

    #[test]
    fn bounded_to_one_and_scale_times_default() {
        assert_eq!(next_weight(39.0, 0.0, 5.0, 4, 10), Some(40.0));
        assert_eq!(next_weight(2.0, 9.0, 5.0, 4, 10), Some(1.0));
        // A load that is not a number counts as idle, never as a panic.
        let w = next_weight(2.0, f64::NAN, 5.0, 4, 10).unwrap();
        assert!((w - (2.0 + 5.0 * 0.95f64.cbrt())).abs() < 1e-9, "{w}");
    }

    #[test]
    fn a_drained_server_is_not_adjusted() {
        assert_eq!(next_weight(3.0, 0.1, 5.0, 0, 10), None);
    }

    #[test]
    fn input_index_is_relative_to_the_average() {
        assert_eq!(input_indices(&[30, 10, 20]), vec![1.5, 0.5, 1.0]);
        assert_eq!(input_indices(&[0, 0]), vec![1.0, 1.0]);
        assert!(input_indices(&[]).is_empty());
    }

    #[test]
    fn aggregate_mixes_input_and_response() {
        assert!((response_index(50.0, 100) - 0.5).abs() < 1e-12);
        // 25 % × 2.0 + 75 % × 0.5 = 0.875
        assert!((aggregate(2.0, 0.5, 25) - 0.875).abs() < 1e-12);
        assert!((aggregate(2.0, 0.5, 0) - 0.5).abs() < 1e-12);
        assert!((aggregate(2.0, 0.5, 100) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn a_slow_server_loses_weight_to_a_fast_one_over_rounds() {
        // Two servers of default weight 5; equal new connections; one
        // answers in 20 ms, the other in 400 ms (target 100 ms).
        let (mut fast, mut slow) = (5.0, 5.0);
        for _ in 0..5 {
            let inp = input_indices(&[100, 100]);
            let lf = aggregate(inp[0], response_index(20.0, 100), 25);
            let ls = aggregate(inp[1], response_index(400.0, 100), 25);
            fast = next_weight(fast, lf, 5.0, 5, 10).unwrap();
            slow = next_weight(slow, ls, 5.0, 5, 10).unwrap();
        }
        assert!(fast > 10.0 && slow < 2.0, "fast {fast} slow {slow}");
    }
}
