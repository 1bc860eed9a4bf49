"""Typed reasons for refusing a series.

A PACS sends everything: localisers, reports, diffusion mosaics, phantoms. Each refusal carries a stable code
(stored with the series, printed as ``{"rejected": CODE, "detail": ...}``) so that radiology IT can filter and count
them, and a human-readable detail. Nothing in the pipeline should raise anything else for bad input.
"""

from __future__ import annotations

from enum import Enum

from fingerprint.types import SeriesIdentifiers


class RejectReason(str, Enum):
    """Why a series is not a usable 3D T1 brain volume. Values are the stable codes stored and printed."""

    NO_DICOM = "no_dicom"  # nothing readable as DICOM in the input
    NO_PIXEL_DATA = "no_pixel_data"  # DICOM objects without images (reports, raw data, presentation states)
    NOT_MR = "not_mr"  # another modality (CT, PT, SR, ...)
    LOCALIZER = "localizer"  # 2D scout / localiser / survey series
    TOO_FEW_SLICES = "too_few_slices"  # not enough slices to make a 3D volume
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"  # mixed orientations, sizes or spacings; missing positions
    UNDECODABLE_TRANSFER_SYNTAX = "undecodable_transfer_syntax"  # pixel data no installed decoder can read
    NOT_T1_BRAIN = "not_t1_brain"  # a volume, but not a T1 brain (diffusion, mosaic, phantom, failed alignment)
    MULTIPLE_SERIES = "multiple_series"  # the input mixes several image series where one was expected


class SeriesRejected(Exception):
    """Raised by the pipeline when a series cannot be used; carries a :class:`RejectReason` and a detail.

    ``identifiers`` are the series' identifiers as the reader found them in its headers (None when nothing readable
    was there), so whoever records the rejection never reads the files a second time.
    """

    def __init__(self, reason: RejectReason, detail: str, identifiers: SeriesIdentifiers | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.identifiers = identifiers

    def as_json(self) -> dict[str, str]:
        return {"rejected": self.reason.value, "detail": self.detail}
