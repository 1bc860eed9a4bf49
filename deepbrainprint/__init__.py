"""The application: the one console command, the settings, the service supervisor and the demo.

This is the composition root. It reads the settings and hands each part only what it needs (``NodeConfig`` to the
DICOM node, ``WorkerConfig`` to the worker, ``ArchiveConfig`` to the fingerprint library), and connects them: the
node's "series complete" callback is the worker's dispatcher. The parts import nothing from here, and nothing from
a part above them: dicom_node and the Orthanc integration (``dbp_orthanc``) stand alone, the worker uses them and the
fingerprint library, and the library uses none of them.
"""

from fingerprint import __version__

__all__ = ["__version__"]
