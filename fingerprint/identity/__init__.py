"""Identity: whose brain this is, decided against an archive.

The store (verdicts, fingerprints, brains), the FAISS index, hashed PatientIDs, thresholds and their calibration, the
3D verification of candidate pairs, the verdict rules, and the archive that joins them for one series at a time.
"""
