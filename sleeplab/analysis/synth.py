"""Synthetic recordings' physics: a flow signal -> the 7 ADC columns -> recording lines.

The exact inverse of the analysis formulas (flow -> venturi pressure difference -> ADC
steps), rounded to integer ADC units so the quantization of real files (one ADC step is
~5 L/min near zero flow) appears by itself. Shared by the test-data generator
(``tools/cpap_synth.py``) and the live virtual patient (:mod:`sleeplab.virtual_patient`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cpap_measurements import ADC_OFFSET, CMH2O_PER_ADC, FLOW_M3S_PER_SQRT_ADC, M3S_TO_LPM, N_COLUMNS

SAMPLE_RATE_HZ = 100.0
HEADER = ("Time [s],Pressure V1-P2 [ADC],Pressure V1-P1-Ins [ADC],Pressure V1-P1-Exp [ADC], "
          "Pressure V2-P2 [ADC],Pressure V2-P1-Ins [ADC], Pressure V2-P1-Ins [ADC]")
FLOW_LPM_PER_SQRT_ADC = FLOW_M3S_PER_SQRT_ADC * M3S_TO_LPM
ADC_MAX = 16383                 # 14-bit converter
V2_OFFSET_ADC = 150             # the second venturi reads the same pressures 150 steps higher
P2_RIPPLE_ADC = 40              # a slow swing of the mask pressure, ADC steps ...
P2_RIPPLE_SAMPLES = 700.0       # ... sin(sample / this)


def inspiration_shape(u: np.ndarray, double_hump: bool = False) -> np.ndarray:
    """Inspiratory flow over the inspiration's fraction ``u`` in [0, 1], peak 1: a half
    sine, or with a dip to ~45 % in the middle (the first hump a little higher)."""
    shape = np.sin(np.pi * u)
    if double_hump:
        shape = shape * (1 - 0.6 * np.exp(-((u - 0.5) / 0.12) ** 2)) * (1.1 - 0.2 * u)
        shape /= shape.max()
    return shape


def venturi_adc(flow_lpm: np.ndarray, cpap_cmh2o: float, noise_adc: float, p2_rng: np.random.Generator,
                p1_rng: np.random.Generator, first_sample: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Throat and inlet pressure of the patient-side venturi for a flow, ADC units (floats).

    Parameters
    ----------
    flow_lpm : numpy.ndarray
        Flow, L/min (inspiration positive).
    cpap_cmh2o : float
        Mask pressure, cmH2O.
    noise_adc : float
        SD of each channel's noise, ADC steps.
    p2_rng, p1_rng : numpy.random.Generator
        Noise of the throat and of the inlet (one generator twice gives the generator's
        former draw order: all throat noise, then all inlet noise).
    first_sample : int
        Index of the first sample in the recording (the pressure swing continues).

    Returns
    -------
    p2_adc, p1_adc : numpy.ndarray
        Throat pressure and the pressure of the inlet on the flow's side, rounded to ADC steps.
    """
    n = len(flow_lpm)
    dp_adc = (np.abs(flow_lpm) / FLOW_LPM_PER_SQRT_ADC) ** 2
    p2 = (ADC_OFFSET + cpap_cmh2o / CMH2O_PER_ADC
          + P2_RIPPLE_ADC * np.sin((first_sample + np.arange(n)) / P2_RIPPLE_SAMPLES))
    p2_noisy = p2 + noise_adc * p2_rng.standard_normal(n)
    p1 = p2 + dp_adc + noise_adc * p1_rng.standard_normal(n)
    return np.rint(p2_noisy), np.rint(p1)


def adc_columns(flow_lpm: np.ndarray, p2_adc: np.ndarray, p1_adc: np.ndarray) -> np.ndarray:
    """The 6 ADC columns of a recording (without time), integers.

    The sign picks the branch as in the analysis: inspiration (and zero) on p1-ins with
    p1-exp at the ADC offset, expiration on p1-exp with p1-ins at the offset; V2 reads V1's
    pressures V2_OFFSET_ADC higher.
    """
    n = len(flow_lpm)
    inspiratory = flow_lpm >= 0
    offset = np.full(n, float(ADC_OFFSET))
    cols = np.empty((n, N_COLUMNS - 1))
    cols[:, 0] = p2_adc
    cols[:, 1] = np.where(inspiratory, p1_adc, offset)
    cols[:, 2] = np.where(inspiratory, offset, p1_adc)
    cols[:, 3] = p2_adc + V2_OFFSET_ADC
    cols[:, 4] = np.where(inspiratory, p1_adc + V2_OFFSET_ADC, offset)
    cols[:, 5] = np.where(inspiratory, offset, p1_adc + V2_OFFSET_ADC)
    return np.clip(cols, 0, ADC_MAX).astype(np.int64)


def recording_lines(time_s: np.ndarray, adc: np.ndarray, time_decimals: int = 3) -> str:
    """Sample lines of the recording format: time (s, ``time_decimals``) and the 6 ADC
    columns, comma-separated, each line ending with LF; no header."""
    frame = pd.DataFrame(adc)
    frame.insert(0, "t", time_s)
    return frame.to_csv(header=False, index=False, float_format=f"%.{time_decimals}f",
                        lineterminator="\n")
