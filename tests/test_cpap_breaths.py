"""Per-step tests of breath detection (SciPy style: empty / basic / raises per function).

Each step of :func:`cpap_measurements.detect_breaths` on small signals whose answer is
known by construction; ``tests/test_cpap_measurements.py`` and ``tests/test_cpap_accuracy.py``
test the composed detector on whole recordings.
"""
from __future__ import annotations

import numpy as np
import pytest

import cpap_measurements as cm

STEP_S = cm.BLOCK_INTERVAL_S  # 0.05 s: one downsampled block at 100 Hz


class TestDownsample:
    def test_empty(self):
        time_s, flow_lpm = cm.downsample([], [])
        assert time_s.shape == flow_lpm.shape == (0,)

    def test_basic_block_median_removes_spikes_and_mean_time_is_the_centre(self):
        time_s = np.arange(10) / 100
        flow_lpm = [0, 0, 7, 0, 0, 5, 5, 12, 5, 5]  # one 7 L/min spike, one 12 L/min spike
        block_time_s, block_flow_lpm = cm.downsample(time_s, flow_lpm)
        np.testing.assert_allclose(block_time_s, [0.02, 0.07])
        np.testing.assert_array_equal(block_flow_lpm, [0.0, 5.0])

    def test_two_sample_spike_is_removed_too(self):
        _, block_flow_lpm = cm.downsample(np.arange(5) / 100, [0, 6, 6, 0, 0])
        np.testing.assert_array_equal(block_flow_lpm, [0.0])

    def test_shorter_last_block_gives_its_median(self):
        block_time_s, block_flow_lpm = cm.downsample(np.arange(7) / 100, [1, 1, 1, 1, 1, 2, 4])
        np.testing.assert_allclose(block_time_s, [0.02, 0.055])
        np.testing.assert_array_equal(block_flow_lpm, [1.0, 3.0])

    def test_raises_on_length_mismatch(self):
        with pytest.raises(ValueError, match="time and flow_lpm must have the same length"):
            cm.downsample(np.arange(10) / 100, np.zeros(9))


class TestSampleInterval:
    @pytest.mark.parametrize("time_s", [[], [3.0], [2.0, 2.0, 2.0], [3.0, 2.0, 1.0]],
                             ids=["empty", "one sample", "constant", "decreasing"])
    def test_no_positive_step_gives_a_block_at_100_hz(self, time_s):
        assert cm.sample_interval_s(time_s) == pytest.approx(0.05)

    def test_basic_median_step_ignores_a_gap(self):
        time_s = np.concatenate([np.arange(100) * 0.05, 30 + np.arange(100) * 0.05])
        assert cm.sample_interval_s(time_s) == pytest.approx(0.05)

    def test_other_rate(self):
        assert cm.sample_interval_s(np.arange(50) * 0.2) == pytest.approx(0.2)


class TestSmooth:
    def test_empty(self):
        assert cm.smooth([], STEP_S).shape == (0,)

    def test_basic_impulse_spreads_over_the_window(self):
        flow_lpm = np.zeros(21)
        flow_lpm[10] = 5.0
        smoothed = cm.smooth(flow_lpm, STEP_S)  # 0.25 s / 0.05 s = 5 samples, centred
        expected = np.zeros(21)
        expected[8:13] = 1.0
        np.testing.assert_allclose(smoothed, expected, atol=1e-12)

    def test_constant_stays_constant_to_the_ends(self):
        np.testing.assert_allclose(cm.smooth(np.full(12, 7.5), STEP_S), 7.5)

    def test_window_shorter_than_a_step_leaves_the_signal(self):
        flow_lpm = np.array([0.0, 9.0, -3.0, 4.0])
        np.testing.assert_array_equal(cm.smooth(flow_lpm, 1.0), flow_lpm)

    @pytest.mark.parametrize("interval_s", [0.0, -0.05, float("nan")])
    def test_raises_on_a_time_step_that_is_not_positive(self, interval_s):
        with pytest.raises(ValueError, match="interval_s must be a positive time step"):
            cm.smooth(np.zeros(10), interval_s)


def breaths_on_leak(leak_lpm: float, n: int = 2400) -> tuple[np.ndarray, np.ndarray]:
    """``leak_lpm`` everywhere plus a 30 L/min bump on 1 sample in 4 (known baseline)."""
    bumps_lpm = np.where(np.arange(n) % 4 == 0, 30.0, 0.0)
    return leak_lpm + bumps_lpm, bumps_lpm


class TestAboveBaseline:
    def test_empty(self):
        assert cm.above_baseline([], STEP_S).shape == (0,)

    @pytest.mark.parametrize("leak_lpm", [0.0, 8.0, -4.0])
    def test_basic_constant_leak_is_removed_exactly(self, leak_lpm):
        flow_lpm, bumps_lpm = breaths_on_leak(leak_lpm)
        np.testing.assert_array_equal(cm.above_baseline(flow_lpm, STEP_S), bumps_lpm)

    def test_slow_leak_drift_is_followed(self):
        minutes = 10
        n = int(minutes * 60 / STEP_S)
        flow_lpm, bumps_lpm = breaths_on_leak(0.0, n)
        drift_lpm = np.linspace(0.0, 10.0, n)  # 10 L/min more leak after 10 minutes
        above_lpm = cm.above_baseline(flow_lpm + drift_lpm, STEP_S)
        inner = slice(int(30 / STEP_S), n - int(30 / STEP_S))  # clear of the end windows
        np.testing.assert_allclose(above_lpm[inner], bumps_lpm[inner], atol=0.1)

    def test_raises_on_a_time_step_that_is_not_positive(self):
        with pytest.raises(ValueError, match="interval_s must be a positive time step"):
            cm.above_baseline(np.zeros(10), 0.0)


class TestHysteresisThresholds:
    def test_empty(self):
        high_lpm, low_lpm = cm.hysteresis_thresholds([], STEP_S)
        assert high_lpm.shape == low_lpm.shape == (0,)

    def test_basic_fractions_of_the_typical_peak(self):
        above_lpm = np.tile([40.0, 40.0, 0.0, 0.0], 600)  # typical peak 40 L/min
        high_lpm, low_lpm = cm.hysteresis_thresholds(above_lpm, STEP_S)
        np.testing.assert_allclose(high_lpm, 10.0)  # 25 %
        np.testing.assert_allclose(low_lpm, 4.0)    # 10 %

    def test_weak_breaths_get_the_floors(self):
        above_lpm = np.tile([8.0, 0.0], 600)
        high_lpm, low_lpm = cm.hysteresis_thresholds(above_lpm, STEP_S)
        np.testing.assert_allclose(high_lpm, cm.MIN_HIGH_LPM)
        np.testing.assert_allclose(low_lpm, cm.MIN_LOW_LPM)

    def test_thresholds_follow_a_change_of_breath_size(self):
        window = int(cm.AMPLITUDE_WINDOW_S / STEP_S)
        above_lpm = np.concatenate([np.tile([20.0, 0.0], window), np.tile([60.0, 0.0], window)])
        high_lpm, _ = cm.hysteresis_thresholds(above_lpm, STEP_S)
        assert high_lpm[window // 2] == pytest.approx(6.0)    # max(25 % of 20, 6)
        assert high_lpm[-window // 2] == pytest.approx(15.0)  # 25 % of 60

    def test_exit_never_above_half_the_entry(self):
        above_lpm = np.random.default_rng(3).normal(0.0, 20.0, 5000)
        high_lpm, low_lpm = cm.hysteresis_thresholds(above_lpm, STEP_S)
        assert (low_lpm <= cm.LOW_MAX_OF_HIGH * high_lpm).all()

    def test_raises_on_a_time_step_that_is_not_positive(self):
        with pytest.raises(ValueError, match="interval_s must be a positive time step"):
            cm.hysteresis_thresholds(np.zeros(10), -1.0)


class TestInInspiration:
    def test_empty(self):
        assert cm.in_inspiration([], 10.0, 2.0).shape == (0,)

    def test_basic_enter_above_high_leave_below_low(self):
        above_lpm = [0, 5, 12, 8, 3, 8, 12, 1, 0, 5]
        expected = [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]  # the dip to 3 does not end it
        np.testing.assert_array_equal(cm.in_inspiration(above_lpm, 10.0, 2.0), np.array(expected, bool))

    def test_rise_between_the_thresholds_starts_nothing(self):
        assert not cm.in_inspiration([0, 3, 9, 9, 3, 0], 10.0, 2.0).any()

    def test_starting_in_inspiration(self):
        np.testing.assert_array_equal(cm.in_inspiration([15, 9, 1], 10.0, 2.0), [True, True, False])

    def test_per_sample_thresholds(self):
        above_lpm = [12, 12, 12, 12]
        high_lpm = np.array([20, 10, 20, 20])
        low_lpm = np.array([2, 2, 2, 15])
        np.testing.assert_array_equal(cm.in_inspiration(above_lpm, high_lpm, low_lpm),
                                      [False, True, True, False])

    def test_raises_when_low_is_above_high(self):
        with pytest.raises(ValueError, match="low_lpm must not be above the entry threshold high_lpm"):
            cm.in_inspiration([0.0, 5.0], np.array([6.0, 6.0]), np.array([1.5, 7.0]))


class TestInspirationRuns:
    def test_empty(self):
        starts, ends = cm.inspiration_runs([])
        assert starts.shape == ends.shape == (0,)

    def test_basic(self):
        starts, ends = cm.inspiration_runs([False, True, True, False, False, True, False])
        np.testing.assert_array_equal(starts, [1, 5])
        np.testing.assert_array_equal(ends, [3, 6])

    @pytest.mark.parametrize("inspiring, expected_starts", [
        ([False, True, True], []),
        ([True, True, False, True], [0]),
        ([True, True, True], []),
    ], ids=["only one, open", "first from 0, last open", "open throughout"])
    def test_open_at_the_end_is_left_out(self, inspiring, expected_starts):
        starts, _ = cm.inspiration_runs(inspiring)
        np.testing.assert_array_equal(starts, expected_starts)

    def test_raises_on_two_dimensions(self):
        with pytest.raises(ValueError, match=r"one-dimensional, not of shape \(2, 2\)"):
            cm.inspiration_runs([[True, False], [False, True]])


class TestDropShortRuns:
    TIME_S = np.arange(20) * 0.125  # exact in binary, so the boundary is exact

    def test_empty(self):
        starts, ends = cm.drop_short_runs(self.TIME_S, [], [])
        assert starts.shape == ends.shape == (0,)

    def test_basic_boundary_is_kept(self):
        starts, ends = cm.drop_short_runs(self.TIME_S, [1, 5, 10], [3, 8, 11], min_duration_s=0.25)
        # 0.125 s (dropped), 0.25 s (kept: not shorter), 0 s (dropped)
        np.testing.assert_array_equal(starts, [5])
        np.testing.assert_array_equal(ends, [8])

    def test_default_is_the_shortest_inspiration(self):
        time_s = np.arange(20) * STEP_S
        starts, _ = cm.drop_short_runs(time_s, [0, 10], [2, 14])  # 0.05 s and 0.15 s
        np.testing.assert_array_equal(starts, [10])

    def test_raises_on_length_mismatch(self):
        with pytest.raises(ValueError, match="starts and ends must have the same length"):
            cm.drop_short_runs(self.TIME_S, [1, 5], [3])


class TestRunPeaks:
    def test_empty(self):
        peaks = cm.run_peaks([1.0, 2.0], [], [])
        assert peaks.shape == (0,) and peaks.dtype.kind == "i"

    def test_basic_first_maximum_of_each_run(self):
        x = [0, 1, 3, 2, 0, 5, 5, 1, 0]
        np.testing.assert_array_equal(cm.run_peaks(x, [1, 5], [4, 8]), [2, 5])

    def test_matches_argmax_per_run_on_random_runs(self):
        rng = np.random.default_rng(11)
        x = rng.integers(0, 4, 400).astype(float)  # many ties
        edges = np.sort(rng.choice(np.arange(1, 399), 60, replace=False))
        starts, ends = edges[::2], edges[1::2]
        expected = [s + int(np.argmax(x[s:e])) for s, e in zip(starts, ends)]
        np.testing.assert_array_equal(cm.run_peaks(x, starts, ends), expected)

    @pytest.mark.parametrize("starts, ends", [([1, 5], [3, 5]), ([1], [4])],
                             ids=["empty run", "run to the end"])
    def test_raises_on_bad_runs(self, starts, ends):
        with pytest.raises(ValueError, match="runs must be non-empty and end before the last sample"):
            cm.run_peaks([0.0, 1.0, 2.0, 3.0], starts, ends)


class TestMergeClosePeaks:
    def test_empty(self):
        assert cm.merge_close_peaks([], []).shape == (0,)

    def test_basic_keeps_the_higher(self):
        merged = cm.merge_close_peaks([1.0, 1.2, 3.0], [5.0, 9.0, 4.0])
        np.testing.assert_array_equal(merged, [1.2, 3.0])

    def test_measured_from_the_peak_kept(self):
        # 1.3 s is within 0.4 s of 1.0 s (lower: dropped); 1.6 s is 0.6 s after the kept one
        merged = cm.merge_close_peaks([1.0, 1.3, 1.6], [5.0, 4.0, 3.0])
        np.testing.assert_array_equal(merged, [1.0, 1.6])

    def test_exactly_the_minimum_interval_is_two_breaths(self):
        merged = cm.merge_close_peaks([1.0, 1.5], [5.0, 6.0], min_interval_s=0.5)
        np.testing.assert_array_equal(merged, [1.0, 1.5])

    def test_raises_on_length_mismatch(self):
        with pytest.raises(ValueError, match="must have the same length"):
            cm.merge_close_peaks([1.0, 2.0], [3.0])


# --- the composition ----------------------------------------------------------------------
@pytest.mark.parametrize("end_s, breaths", [(58.0, 12), (56.5, 11)],
                         ids=["last inspiration ended", "last inspiration still open"])
def test_detect_breaths_counts_only_inspirations_that_ended(end_s, breaths):
    time_s = np.arange(0, end_s, 0.01)
    flow_lpm = 30 * np.sin(2 * np.pi * time_s / 5)  # peaks at 1.25 + 5 k s
    peaks_s = cm.detect_breaths(time_s, flow_lpm)
    np.testing.assert_allclose(peaks_s, 1.25 + 5.0 * np.arange(breaths), atol=0.06)


def test_detect_breaths_double_humped_inspiration_is_one_breath():
    time_s = np.arange(0, 60, 0.01)
    phase = (time_s % 4) / 4  # 15 /min; inspiration in the first 40 % of each cycle
    hump = np.where(phase < 0.4, np.sin(np.pi * phase / 0.4), 0.0)
    # down to zero flow mid-inspiration: 5 L/min above the expiratory baseline, between
    # the thresholds, so only the hysteresis keeps it one breath (a single threshold: 30)
    dip = 1 - np.exp(-((phase / 0.4 - 0.5) / 0.25) ** 2)
    flow_lpm = 30 * hump * dip - 5 * (phase >= 0.4)
    assert len(cm.detect_breaths(time_s, flow_lpm)) == 15
