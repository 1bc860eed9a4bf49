"""The fingerprint model: from a canonical slice to a 512-d vector, and how it is trained.

The backbone (``backbone``, the only importer of torchvision), the encoder and its weights (``encoder``), the
augmentations and losses of the paper (``augment``, ``losses``), training (``training``) and the inference entry
point (``fingerprinter``: a series or slices in, fingerprints out).
"""
