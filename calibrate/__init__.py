"""Microbenchmarks (torch) that measure the local device and host and write raw CSV with provenance.

The only package besides :mod:`simhete.replay` that imports torch. Fitting the measurements into a
hardware profile lives in :mod:`simhete.hw.fit` and needs no torch and no device, so a profile can be
refitted anywhere from the raw CSV files. Entry point: ``simhete calibrate`` (see
docs/calibration.md); :func:`calibrate.runner.run_suites` does the measuring.
"""
