"""DICOM files or datasets -> one 3D SimpleITK volume with its identifiers.

A PACS sends whatever it has: gzip-wrapped files, files without extension or with odd ones, reports and raw data in
the same folder, classic single-frame and Enhanced multi-frame objects, compressed transfer syntaxes. This module
reads all of that with pydicom (plus the pylibjpeg / GDCM decoders), keeps only image frames, sorts them along the
slice normal and builds a volume whose origin, spacing and direction are the patient coordinates the scanner wrote
(LPS, as SimpleITK uses them). Anything that cannot become a 3D volume is refused with a typed
:class:`~fingerprint.errors.SeriesRejected`; detail texts never contain patient identifiers.

Reading a folder is most of the time a series takes, so the plain files of a series (uncompressed, little endian)
are not parsed whole: they are walked for the elements this module reads (:mod:`.dicom_walk`), values the files
share are decoded once, and uncompressed pixels are read straight from the bytes. pydicom still decodes every value
and decides everything the quick paths do not vouch for, so the result is the one a whole-file read gives.
"""

from __future__ import annotations

import gzip
import io
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError

from fingerprint.errors import RejectReason, SeriesRejected
from fingerprint.imaging.dicom_walk import walk
from fingerprint.types import SeriesIdentifiers

log = logging.getLogger(__name__)

#: Fewer slices than this cannot hold a brain at any usual thickness (a 2D series, a scout, a partial volume).
MIN_SLICES = 16
#: Orientation cosines may differ by rounding between frames; more than this is a different plane.
ORIENTATION_TOLERANCE = 1e-3
#: Relative spread of slice gaps accepted (scanners round positions to 1e-3 mm; a missing slice doubles a gap).
SPACING_TOLERANCE = 0.1
#: Words in ImageType / SeriesDescription / ProtocolName that mark a scout.
LOCALIZER_WORDS = ("LOCALIZER", "LOCALISER", "SCOUT", "SURVEY", "AAHEAD_SCOUT", "3-PLANE", "3PLANE", "TRI-PILOT")
#: A series this small whose images lie in several planes is a multi-plane scout, whatever its description says.
LOCALIZER_MAX_IMAGES = 30
#: ImageType values that mean the pixels are not an anatomical T1 volume.
NOT_ANATOMICAL_TYPES = ("MOSAIC", "DIFFUSION", "ADC", "TRACE", "FA", "PERFUSION", "FMRI", "PHASE", "B0")
GZIP_MAGIC = b"\x1f\x8b"
#: (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data: looked up by tag, as
#: quicker than by keyword, for every dataset.
PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00010, 0x7FE00008, 0x7FE00009
NUMBER_OF_FRAMES = 0x00280008  # (0028,0008)
#: Uncompressed little-endian transfer syntaxes, whose pixels are read straight from the bytes (:func:`_native_pixels`).
NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
#: The pixel elements pydicom's decoding reads, in the order it reads them (``get_image_pixel_ids``).
PIXEL_KEYWORDS = ("SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows",
                  "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation")
#: Top-level elements a series read from files keeps of each walked file (:func:`_read_image_file`): every one this
#: module reads and every one pydicom's pixel decoding reads, so a walked file decides everything as the whole file.
SERIES_ELEMENTS = frozenset({
    0x00080005, 0x00080008, 0x00080016, 0x00080018, 0x00080020, 0x00080060, 0x00080070, 0x0008103E,  # SOP, study
    0x00100020, 0x00181030, 0x00189087, 0x0020000D, 0x0020000E, 0x00200032, 0x00200037,  # patient, series, plane
    0x00280002, 0x00280004, 0x00280006, 0x00280008, 0x00280010, 0x00280011, 0x00280030, 0x00280100,  # image pixel
    0x00280101, 0x00280103, 0x00281052, 0x00281053,
    0x52009229, 0x52009230,  # Enhanced MR functional groups
    0x7FE00001, 0x7FE00002, 0x7FE00008, 0x7FE00009, 0x7FE00010,  # pixel data and its offset tables
})
#: Elements whose decoded value may be shared by the files of a series that hold the same bytes: neither sequences
#: (their items are datasets of their own) nor pixel data (its VR may depend on Bits Allocated).
SHARED_ELEMENTS = SERIES_ELEMENTS - {0x52009229, 0x52009230, 0x7FE00001, 0x7FE00002, 0x7FE00008, 0x7FE00009, 0x7FE00010}


@dataclass
class LoadedSeries:
    """One series as a volume: ``image`` (float32 SimpleITK, LPS patient mm) and what identifies it.

    ``info`` is JSON-ready and PHI-free: counts, the transfer syntaxes seen, frame/slice geometry as found.
    """

    image: sitk.Image
    identifiers: SeriesIdentifiers
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Frame:
    """One 2D image inside a series: where it lies and how to get its pixels (decoded lazily)."""

    dataset: Dataset
    frame_index: int | None  # None: single-frame object
    position: np.ndarray  # ImagePositionPatient, mm
    orientation: np.ndarray  # 6 cosines: row direction then column direction
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    slope: float
    intercept: float


@dataclass
class _Decoded:
    """Values already decoded while reading the files of one series, by their encoded form (see _walked_dataset)."""

    elements: dict[tuple[Any, ...], DataElement] = field(default_factory=dict)
    encodings: dict[RawDataElement | None, Any] = field(default_factory=dict)
    file_meta: dict[RawDataElement, FileMetaDataset] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------------------


def read_dicom_file(path: Path, stop_before_pixels: bool = False) -> Dataset | None:
    """A dataset from one file (plain or gzip-wrapped), or None when the file is not DICOM.

    Files without the 128-byte preamble are accepted only when they parse to something with a SOP Class or Series
    UID, so that arbitrary binary files are not mistaken for DICOM.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            return _parse(io.BytesIO(gzip.decompress(fh.read())) if head == GZIP_MAGIC else fh, stop_before_pixels)
    except Exception:  # noqa: BLE001 - anything unreadable is simply "not DICOM" here
        log.debug("skipping a file that is not readable as DICOM")  # no name: PACS exports may name files by patient
        return None


def _parse(raw: Any, stop_before_pixels: bool) -> Dataset | None:
    """pydicom's dataset from an open file or buffer; without a preamble only if it has a SOP Class or Series UID."""
    try:
        return pydicom.dcmread(raw, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raw.seek(0)
        with warnings.catch_warnings():  # forced parsing of non-DICOM bytes warns about VRs; the check follows
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(raw, stop_before_pixels=stop_before_pixels, force=True)
        if "SOPClassUID" in ds or "SeriesInstanceUID" in ds:
            return ds
        return None


def _read_image_file(path: Path, decoded: _Decoded) -> Dataset | None:
    """:func:`read_dicom_file` for a file of the series being read: the same dataset as far as this module and
    pydicom's pixel decoding can tell, but an uncompressed file is walked (:func:`_walked_dataset`), not parsed."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
            fh.seek(0)
            gzipped, raw = head[:2] == GZIP_MAGIC, b""
            if gzipped or head[128:] == b"DICM":  # a Part 10 file, perhaps: walked if plain enough
                raw = gzip.decompress(fh.read()) if gzipped else fh.read()
                walked = _walked_dataset(raw, decoded)
                if walked is not None:
                    return walked
                fh.seek(0)
            return _parse(io.BytesIO(raw) if gzipped else fh, stop_before_pixels=False)  # as read_dicom_file does
    except Exception:  # noqa: BLE001 - anything unreadable is simply "not DICOM" here, as in read_dicom_file
        log.debug("skipping a file that is not readable as DICOM")
        return None


def _walked_dataset(raw: bytes, decoded: _Decoded) -> Dataset | None:
    """The elements of SERIES_ELEMENTS of a Part 10 file as a dataset, or None when pydicom should read it whole.

    Why: parsing every element of every file is most of the time a series takes to read. The walk hands back the
    elements undecoded, exactly as pydicom's reader holds them, and this dataset is set up as pydicom's reader sets
    up its own (file meta, character set), so every value still decodes through pydicom. Values whose bytes a
    previous file of the series had (orientation, spacing, matrix, UIDs...) reuse that file's decoded element.
    """
    try:
        walked = walk(raw, SERIES_ELEMENTS)
        if walked is None:
            return None
        charset = walked.elements.get(0x00080005)
        charset_key = None if charset is None else charset._replace(value_tell=0)
        if charset_key not in decoded.encodings:  # as pydicom's read_dataset: the data set's own, else the default
            decoded.encodings[charset_key] = (
                default_encoding if charset is None else convert_encodings(convert_raw_data_element(charset).value)
            )
        encoding = decoded.encodings[charset_key]
        encoding_key = tuple(encoding) if isinstance(encoding, list) else encoding
        elements: dict[Any, Any] = {}
        new_values = []
        for tag, element in walked.elements.items():
            if tag in SHARED_ELEMENTS:  # what the decoded value depends on (walked files are all little endian)
                key = (tag, element.VR, element.length, element.value, element.is_implicit_VR, encoding_key)
                known = decoded.elements.get(key)
                if known is None:
                    new_values.append((element.tag, key))
                else:
                    element = known
            elements[element.tag] = element
        ds = Dataset(elements)
        ds.set_original_encoding(walked.implicit_vr, True, encoding)
        ds.file_meta = _file_meta(walked.transfer_syntax, decoded)
    except Exception:  # noqa: BLE001 - pydicom reads the file instead, and decides what is wrong with it
        return None
    for tag, key in new_values:  # decoded by pydicom as on first access, for the next files with the same bytes
        try:
            decoded.elements[key] = ds[tag]
        except Exception:  # noqa: BLE001 - a damaged value stays undecoded, to fail where the reader reads it
            continue
    return ds


def _file_meta(transfer_syntax: RawDataElement, decoded: _Decoded) -> FileMetaDataset:
    """The file meta header of a walked file (its transfer syntax), set up as pydicom's reader sets it up."""
    key = transfer_syntax._replace(value_tell=0)
    if key not in decoded.file_meta:
        meta = FileMetaDataset({transfer_syntax.tag: transfer_syntax})
        meta.set_original_encoding(is_implicit_vr=False, is_little_endian=True, character_encoding=default_encoding)
        decoded.file_meta[key] = meta
    return decoded.file_meta[key]


def iter_files(folder: Path) -> Iterable[Path]:
    """Every regular file below ``folder`` in a stable order (hidden files included: PACS exports use any name)."""
    folder = Path(folder)
    if folder.is_file():
        yield folder
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path


def find_series(folder: Path) -> dict[str, list[Path]]:
    """Group the DICOM *image* files below ``folder`` by SeriesInstanceUID (headers only, pixels not decoded).

    Objects without pixel data (reports, raw data, presentation states) are left out, so a study folder yields its
    image series only.
    """
    groups: dict[str, list[Path]] = {}
    for path in iter_files(folder):
        ds = read_dicom_file(path, stop_before_pixels=True)
        if ds is None or not _has_pixels(ds, headers_only=True):
            continue
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(path)
    return groups


def _has_pixels(ds: Dataset, headers_only: bool = False) -> bool:
    if headers_only:
        # stop_before_pixels drops (7FE0,0010); Rows/Columns are the image module's mandatory attributes.
        return "Rows" in ds and "Columns" in ds
    return any(tag in ds for tag in (PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA))


# --------------------------------------------------------------------------------------------------------------------
# Series -> volume
# --------------------------------------------------------------------------------------------------------------------


def read_series(source: Path | str | Sequence[Dataset]) -> LoadedSeries:
    """The one image series in ``source`` (a folder, a file, or in-memory datasets) as a 3D volume.

    Raises :class:`SeriesRejected` for anything that is not one usable 3D MR volume.
    """
    datasets = _load_datasets(source)
    if not datasets:
        raise SeriesRejected(RejectReason.NO_DICOM, "no DICOM object found in the input")
    try:
        return _volume_of(datasets)
    except SeriesRejected as rejection:  # say whose series it was: the headers are read now, not again later
        if rejection.identifiers is None:
            rejection.identifiers = _identifiers_if_readable(datasets)
        raise
    except Exception as exc:  # noqa: BLE001 - damaged attributes pydicom decodes only on access: refuse, never crash
        raise SeriesRejected(
            RejectReason.INCONSISTENT_GEOMETRY,
            f"damaged DICOM attributes ({type(exc).__name__})",
            _identifiers_if_readable(datasets),
        ) from None


def _identifiers_if_readable(datasets: list[Dataset]) -> SeriesIdentifiers | None:
    """The series' identifiers, where its headers still decode (a damaged file may not)."""
    try:
        images = [ds for ds in datasets if _has_pixels(ds)]
        return identifiers_of(images or datasets)
    except Exception:  # noqa: BLE001 - the rejection is what matters; who it belongs to is a courtesy
        return None


def _volume_of(datasets: list[Dataset]) -> LoadedSeries:
    images = [ds for ds in datasets if _has_pixels(ds)]
    if not images:
        kinds = sorted({_sop_class_name(ds) for ds in datasets})
        raise SeriesRejected(RejectReason.NO_PIXEL_DATA, f"{len(datasets)} DICOM object(s) without pixel data: {', '.join(kinds)}")
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for ds in images}
    if len(series_uids) > 1:
        raise SeriesRejected(RejectReason.MULTIPLE_SERIES, f"the input holds {len(series_uids)} image series; one was expected")
    first = images[0]
    _check_kind(images)
    try:
        frames = _one_volume([frame for ds in images for frame in _frames_of(ds)])
        image = _to_image(frames, _decode(frames))
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        # Malformed headers (missing Rows, frame counts that disagree with the pixel data, ...): refuse, don't crash.
        raise SeriesRejected(
            RejectReason.INCONSISTENT_GEOMETRY, f"malformed image attributes ({type(exc).__name__})"
        ) from None
    identifiers = identifiers_of(images)
    info = {
        "instances": len(images),
        "frames": len(frames),
        "transfer_syntaxes": sorted({_transfer_syntax(ds) for ds in images}),
        "enhanced": any("PerFrameFunctionalGroupsSequence" in ds for ds in images),
        "image_type": list(first.get("ImageType", [])),
        "bits_stored": int(first.get("BitsStored", 0) or 0),
    }
    return LoadedSeries(image=image, identifiers=identifiers, info=info)


def identifiers_of(images: Sequence[Dataset]) -> SeriesIdentifiers:
    """The identifiers of a series from its datasets (PatientID kept clear here; callers hash it)."""
    first = images[0]
    return SeriesIdentifiers(
        patient_id=str(first.get("PatientID", "")),
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        sop_instance_uids=tuple(str(ds.get("SOPInstanceUID", "")) for ds in images),
        study_date=str(first.get("StudyDate", "")),
        modality=str(first.get("Modality", "")),
        manufacturer=str(first.get("Manufacturer", "")),
        series_description=str(first.get("SeriesDescription", "")),
    )


def _load_datasets(source: Path | str | Sequence[Dataset]) -> list[Dataset]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise SeriesRejected(RejectReason.NO_DICOM, "the input path does not exist")
        decoded = _Decoded()
        return [ds for ds in (_read_image_file(p, decoded) for p in iter_files(path)) if ds is not None]
    return [ds for ds in source if isinstance(ds, Dataset)]


def _sop_class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return uid.name if uid is not None else "unknown SOP class"


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(uid) if uid else "1.2.840.10008.1.2.1"


def _words(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return [str(v).upper() for v in values]


def _check_kind(images: Sequence[Dataset]) -> None:
    """Refuse other modalities, scouts and non-anatomical MR before any pixel is decoded."""
    first = images[0]
    modality = str(first.get("Modality", "")).upper()
    sop = str(first.get("SOPClassUID", ""))
    mr_sops = {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4"}
    if modality != "MR" and sop not in mr_sops:
        raise SeriesRejected(RejectReason.NOT_MR, f"modality is {modality or 'missing'}, not MR")
    image_type = _words(first, "ImageType")
    text = " ".join(image_type + _words(first, "SeriesDescription") + _words(first, "ProtocolName"))
    if any(word in text for word in LOCALIZER_WORDS):
        raise SeriesRejected(RejectReason.LOCALIZER, "a localiser/scout series (ImageType or description says so)")
    found = [t for t in image_type if t in NOT_ANATOMICAL_TYPES]
    if found:
        raise SeriesRejected(RejectReason.NOT_T1_BRAIN, f"ImageType marks a non-anatomical image: {', '.join(found)}")
    if "MOSAIC" in text:
        raise SeriesRejected(RejectReason.NOT_T1_BRAIN, "a Siemens mosaic (fMRI/diffusion), not a 3D anatomical volume")
    bvalue = first.get("DiffusionBValue")
    if bvalue is not None and float(bvalue) > 0:
        raise SeriesRejected(RejectReason.NOT_T1_BRAIN, "a diffusion-weighted series (b-value > 0)")


def _group_item(ds: Dataset, index: int | None, sequence: str) -> Dataset | None:
    """The item of functional group ``sequence`` for frame ``index``: per-frame first, then shared."""
    for groups_name, pick in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(groups_name)
        if groups is None or pick is None or pick >= len(groups):
            continue
        inner = groups[pick].get(sequence)
        if inner:
            return inner[0]
    return None


def _frames_of(ds: Dataset) -> list[_Frame]:
    """The frames of one object with their geometry (classic: one frame; Enhanced: from the functional groups)."""
    try:
        if "PerFrameFunctionalGroupsSequence" in ds:
            return [_enhanced_frame(ds, i) for i in range(int(ds.get("NumberOfFrames", 1)))]
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise SeriesRejected(RejectReason.INCONSISTENT_GEOMETRY, "a multi-frame object without per-frame geometry")
        return [_frame(ds, None, position=ds, orientation=ds, measures=ds, rescale=ds)]
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        raise SeriesRejected(
            RejectReason.INCONSISTENT_GEOMETRY, f"missing or malformed position/orientation/spacing ({type(exc).__name__})"
        ) from None


def _enhanced_frame(ds: Dataset, index: int) -> _Frame:
    position = _group_item(ds, index, "PlanePositionSequence")
    orientation = _group_item(ds, index, "PlaneOrientationSequence")
    measures = _group_item(ds, index, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None:
        raise SeriesRejected(RejectReason.INCONSISTENT_GEOMETRY, "an Enhanced frame without plane position/orientation/measures")
    transform = _group_item(ds, index, "PixelValueTransformationSequence")
    rescale = transform if transform is not None else ds
    return _frame(ds, index, position=position, orientation=orientation, measures=measures, rescale=rescale)


def _frame(
    ds: Dataset, index: int | None, *, position: Dataset, orientation: Dataset, measures: Dataset, rescale: Dataset
) -> _Frame:
    """A frame's geometry and rescale, read from the items that hold them (the dataset itself for classic MR)."""
    spacing = measures.PixelSpacing
    return _Frame(
        dataset=ds,
        frame_index=index,
        position=np.array([float(v) for v in position.ImagePositionPatient]),
        orientation=np.array([float(v) for v in orientation.ImageOrientationPatient]),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slope=float(rescale.get("RescaleSlope", 1) or 1),
        intercept=float(rescale.get("RescaleIntercept", 0) or 0),
    )


def _one_volume(frames: list[_Frame]) -> list[_Frame]:
    """Check that the frames are one stack of parallel, evenly spaced slices; return them sorted along the normal."""
    if len(frames) < 2:
        raise SeriesRejected(RejectReason.TOO_FEW_SLICES, f"{len(frames)} slice: a 2D image, not a volume")
    ref = frames[0]
    ref_size = None
    for frame in frames:
        if np.abs(frame.orientation - ref.orientation).max() > ORIENTATION_TOLERANCE:
            if len(frames) <= LOCALIZER_MAX_IMAGES:
                raise SeriesRejected(RejectReason.LOCALIZER, f"{len(frames)} images in several orientations: a multi-plane scout")
            raise SeriesRejected(RejectReason.INCONSISTENT_GEOMETRY, "slices in different orientations")
        if np.abs(np.subtract(frame.pixel_spacing, ref.pixel_spacing)).max() > 1e-3:
            raise SeriesRejected(RejectReason.INCONSISTENT_GEOMETRY, "slices with different pixel spacings")
        if ref_size is None:  # the first frame is ref: its matrix is read once, not again for every frame
            ref_size = (ref.dataset.Rows, ref.dataset.Columns)
        elif frame.dataset is not ref.dataset and (frame.dataset.Rows, frame.dataset.Columns) != ref_size:
            raise SeriesRejected(RejectReason.INCONSISTENT_GEOMETRY, "slices with different matrix sizes")
    normal = np.cross(ref.orientation[:3], ref.orientation[3:])
    if not 0.99 < np.linalg.norm(normal) < 1.01:
        raise SeriesRejected(RejectReason.INCONSISTENT_GEOMETRY, "ImageOrientationPatient is not two orthonormal vectors")
    distances = np.array([float(np.dot(f.position, normal)) for f in frames])
    order = np.argsort(distances, kind="stable")
    frames = [frames[i] for i in order]
    distances = distances[order]
    gaps = np.diff(distances)
    if np.any(gaps < 1e-3):
        repeats = len(frames) / max(len(np.unique(np.round(distances, 2))), 1)
        raise SeriesRejected(
            RejectReason.NOT_T1_BRAIN,
            f"several images per slice position (about {repeats:.0f}): a time series, multi-echo or multi-contrast series",
        )
    if len(frames) < MIN_SLICES:
        raise SeriesRejected(RejectReason.TOO_FEW_SLICES, f"{len(frames)} slices; at least {MIN_SLICES} are needed")
    median_gap = float(np.median(gaps))
    if np.abs(gaps - median_gap).max() > SPACING_TOLERANCE * median_gap + 1e-3:
        raise SeriesRejected(
            RejectReason.INCONSISTENT_GEOMETRY,
            f"uneven slice gaps ({gaps.min():.2f}-{gaps.max():.2f} mm): missing slices or several stacks",
        )
    step = (frames[-1].position - frames[0].position) / (len(frames) - 1)
    in_plane_drift = np.linalg.norm(step - np.dot(step, normal) * normal)
    if in_plane_drift > 0.05 * median_gap + 1e-3:
        raise SeriesRejected(RejectReason.INCONSISTENT_GEOMETRY, "slice positions are not along the slice normal (gantry tilt)")
    return frames


def _decode(frames: list[_Frame]) -> np.ndarray:
    """Pixels of every frame as float32 (slices, rows, columns), after the modality rescale of each frame."""
    decoded: dict[int, np.ndarray] = {}
    out = np.empty((len(frames), int(frames[0].dataset.Rows), int(frames[0].dataset.Columns)), dtype=np.float32)
    for k, frame in enumerate(frames):
        key = id(frame.dataset)
        if key not in decoded:
            decoded[key] = _pixel_array(frame.dataset)
        pixels = decoded[key]
        plane = pixels if frame.frame_index is None else pixels[frame.frame_index]
        if plane.ndim != 2:
            raise SeriesRejected(RejectReason.NOT_T1_BRAIN, "colour or multi-sample pixels, not a greyscale MR image")
        _rescale_into(out[k], plane, frame.slope, frame.intercept)
    if str(frames[0].dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        np.negative(out, out=out)  # MONOCHROME1 displays low values bright; the pipeline expects T1 brightness (WM bright)
    return out


def _rescale_into(target: np.ndarray, plane: np.ndarray, slope: float, intercept: float) -> None:
    """``target`` (float32) = ``plane`` * slope + intercept, written in place: no temporary copies of the slice."""
    if slope == 1.0:
        target[...] = plane
    else:
        np.multiply(plane, np.float32(slope), out=target, casting="unsafe")
    if intercept != 0.0:
        target += np.float32(intercept)


def _pixel_array(ds: Dataset) -> np.ndarray:
    """Decoded stored values (unused high bits masked by pydicom), or a typed refusal when no decoder can read them."""
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() not in ("MONOCHROME1", "MONOCHROME2"):
        raise SeriesRejected(RejectReason.NOT_T1_BRAIN, "colour pixels, not a greyscale MR image")
    try:
        native = _native_pixels(ds)
        if native is not None:
            return native  # already shaped (frames, rows, columns) for several frames
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises several types for unsupported or corrupt encodings
        uid = _transfer_syntax(ds)
        name = pydicom.uid.UID(uid).name
        raise SeriesRejected(
            RejectReason.UNDECODABLE_TRANSFER_SYNTAX, f"pixel data in {name} ({uid}) could not be decoded: {type(exc).__name__}"
        ) from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    return pixels


def _native_pixels(ds: Dataset) -> np.ndarray | None:
    """``ds.pixel_array`` of uncompressed little-endian greyscale pixels, read straight from the bytes; None for
    anything else (compressed, colour, 1 or 32 bits, a length pydicom would pad, trim or refuse, a dataset with
    its own decoding options or array), which pydicom decodes.

    Why: pydicom sets up a decoder for every file, longer than reading the bytes takes. The result is pydicom's bit
    for bit: the same dtype, unused high bits cleared (or sign-extended for signed pixels) by the same shifts.
    """
    # pydicom reads the pixel elements first, in this order: an element that fails to decode fails here as there
    values = {keyword: ds.get(keyword) for keyword in PIXEL_KEYWORDS}
    meta = getattr(ds, "file_meta", None)
    if meta is None or str(meta.get("TransferSyntaxUID") or "") not in NATIVE_SYNTAXES:
        return None
    if getattr(ds, "_pixel_array", None) is not None or getattr(ds, "_pixel_array_opts", None) != {"use_pdh": False}:
        return None  # an array pydicom already holds, or options the caller chose: pydicom's own answer
    if FLOAT_PIXEL_DATA in ds or DOUBLE_FLOAT_PIXEL_DATA in ds:
        return None
    data = ds.get("PixelData")
    frames = values["NumberOfFrames"]
    if frames is None and NUMBER_OF_FRAMES not in ds:  # absent is one frame; present but empty, pydicom warns
        frames = 1
    samples, rows, columns = values["SamplesPerPixel"], values["Rows"], values["Columns"]
    allocated, stored, signed = values["BitsAllocated"], values["BitsStored"], values["PixelRepresentation"]
    if not (
        isinstance(data, bytes)
        and all(isinstance(v, int) for v in (samples, frames, rows, columns, allocated, stored, signed))
        and values["PhotometricInterpretation"] in ("MONOCHROME1", "MONOCHROME2")
        and samples == 1
        and frames >= 1
        and 0 < rows < 65536
        and 0 < columns < 65536
        and allocated in (8, 16)
        and 1 <= stored <= allocated
        and signed in (0, 1)
    ):
        return None
    shape = (int(frames), int(rows), int(columns)) if frames > 1 else (int(rows), int(columns))
    count = int(frames) * int(rows) * int(columns)
    expected = count * allocated // 8
    if len(data) not in (expected, expected + expected % 2):
        return None
    pixels = np.frombuffer(data, dtype=np.dtype(f"<{'ui'[signed]}{allocated // 8}"), count=count).reshape(shape)
    if stored < allocated and _beyond_stored_bits(pixels, stored, signed):
        pixels = np.left_shift(pixels, allocated - stored)
        np.right_shift(pixels, allocated - stored, out=pixels)
    return pixels


def _beyond_stored_bits(pixels: np.ndarray, stored: int, signed: int) -> bool:
    """Whether some value needs its unused high bits cleared (or sign-extended): one outside what ``stored`` bits
    hold. Most files have none, and looking is quicker than shifting every value twice into a new array."""
    if signed:
        return bool(pixels.min() < -(1 << (stored - 1)) or pixels.max() >= 1 << (stored - 1))
    return bool(pixels.max() >= 1 << stored)


def _to_image(frames: list[_Frame], array: np.ndarray) -> sitk.Image:
    """SimpleITK image whose index (i, j, k) = (column, row, sorted slice) and whose geometry is the DICOM one."""
    first = frames[0]
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    step = (frames[-1].position - first.position) / (len(frames) - 1)
    slice_spacing = float(np.linalg.norm(step))
    slice_dir = step / slice_spacing
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(tuple(float(v) for v in first.position))
    image.SetSpacing((first.pixel_spacing[1], first.pixel_spacing[0], slice_spacing))
    direction = np.column_stack([row_dir, col_dir, slice_dir])
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image
