"""DeepBrainPrint fingerprint library: DICOM series -> canonical axial slice -> 512-d brain fingerprint.

This package needs no server. The public entry points are:

- :func:`fingerprint.imaging.pipeline.slice_series` - a DICOM series (folder or datasets) to the canonical slice;
- :func:`fingerprint.model.fingerprinter.fingerprint_series` - a series to its L2-normalised 512-d fingerprint;
- :mod:`fingerprint.identity.store`, :mod:`fingerprint.identity.index`, :mod:`fingerprint.identity.verdicts` - the identity archive.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
