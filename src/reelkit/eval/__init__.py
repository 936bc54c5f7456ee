"""Evaluation: metrics, adherence and the benchmark suites behind ``reelkit bench``."""
