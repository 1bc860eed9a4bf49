"""Evaluation: benchmarks on cohorts and real heads (retrieval, verdicts, calibration from real people).

Built on every other stage; nothing else in the library imports it. The metrics themselves are in
``fingerprint.metrics`` because training and calibration use them too.
"""
