"""DeepBrainPrint fingerprint library: DICOM series -> canonical axial slice -> 512-d brain fingerprint.

This package needs no server. The public entry points are:

- :func:`fingerprint.pipeline.slice_series` - a DICOM series (folder or datasets) to the canonical slice;
- :func:`fingerprint.api.fingerprint_series` - a series to its L2-normalised 512-d fingerprint;
- :mod:`fingerprint.store`, :mod:`fingerprint.index`, :mod:`fingerprint.verdicts` - the identity archive.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
