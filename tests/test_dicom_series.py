"""The reader on the real files a PACS sends (shared/data) and on in-memory datasets."""

from __future__ import annotations

import ast
import gzip
import io
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1

from fingerprint.errors import SeriesRejected
from fingerprint.imaging import dicom_read
from fingerprint.imaging.dicom_read import (
    SERIES_ELEMENTS,
    _Decoded,
    _native_pixels,
    _pixel_array,
    _read_image_file,
    _walked_dataset,
    find_series,
    read_dicom_file,
    read_series,
)
from fingerprint.imaging.dicom_walk import walk
from fingerprint.imaging.dicom_write import series_datasets

T1_SERIES = {
    # folder: (size, spacing mm) as the README describes them (the reader's x, y = columns, rows; z = slices)
    "philips-elition-3t-sag-gz": ((256, 256, 170), (1.0, 1.0, 1.0)),
    "siemens-trio-3t-sag": ((256, 256, 176), (1.0, 1.0, 1.0)),
    "siemens-skyra-3t-sag-child": ((256, 256, 192), (0.859, 0.859, 0.9)),
    "siemens-prisma-xa30-enhanced-2mm": ((128, 128, 96), (2.0, 2.0, 2.0)),
    "siemens-avanto-1.5t-axial-postcontrast": ((512, 512, 120), (0.41, 0.41, 1.5)),
}


@pytest.mark.parametrize("folder", sorted(T1_SERIES))
def test_real_t1_series_become_volumes_with_their_geometry(shared_data: Path, folder: str) -> None:
    loaded = read_series(shared_data / "t1" / folder)
    size, spacing = T1_SERIES[folder]
    assert loaded.image.GetSize() == size
    assert np.allclose(loaded.image.GetSpacing(), spacing, atol=0.01)
    direction = np.array(loaded.image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-3)  # orthonormal: no gantry-tilt shear
    assert loaded.identifiers.modality == "MR"
    assert len(loaded.identifiers.sop_instance_uids) == loaded.info["instances"]
    pixels = sitk.GetArrayViewFromImage(loaded.image)
    assert np.isfinite(pixels).all() and pixels.max() > pixels.min()


def test_slices_are_sorted_along_the_normal(shared_data: Path) -> None:
    """Origin = the first slice along the normal; every slice lies one spacing further (files named at random)."""
    folder = shared_data / "t1" / "siemens-skyra-3t-sag-child"
    loaded = read_series(folder)
    positions = []
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        positions.append([float(v) for v in ds.ImagePositionPatient])
    direction = np.array(loaded.image.GetDirection()).reshape(3, 3)
    along = np.array(positions) @ direction[:, 2]
    assert np.isclose(along.min(), np.dot(loaded.image.GetOrigin(), direction[:, 2]), atol=1e-3)
    assert np.isclose(along.max() - along.min(), (loaded.image.GetSize()[2] - 1) * loaded.image.GetSpacing()[2], atol=0.01)


def test_philips_rescale_slope_is_applied(shared_data: Path) -> None:
    folder = shared_data / "t1" / "philips-elition-3t-sag-gz"
    first = sorted(folder.iterdir())[0]
    ds = read_dicom_file(first)
    assert ds is not None and float(ds.RescaleSlope) != 1.0
    loaded = read_series(folder)
    stored_max = max(int(read_dicom_file(p).pixel_array.max()) for p in sorted(folder.iterdir())[60:110])
    assert float(sitk.GetArrayViewFromImage(loaded.image).max()) > stored_max * 1.5  # slope 2.36 applied


def test_gzip_wrapped_and_oddly_named_files_are_read_and_junk_is_skipped(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "t1" / "siemens-prisma-xa30-enhanced-2mm"
    original = next(source.iterdir())
    with open(original, "rb") as fh, gzip.open(tmp_path / "image.bin", "wb") as out:
        out.write(fh.read())
    (tmp_path / "notes.txt").write_text("not DICOM")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "noise").write_bytes(np.random.default_rng(0).bytes(4096))
    assert read_dicom_file(tmp_path / "notes.txt") is None
    assert read_dicom_file(tmp_path / "sub" / "noise") is None
    assert list(find_series(tmp_path)) == [str(pydicom.dcmread(original, stop_before_pixels=True).SeriesInstanceUID)]
    assert read_series(tmp_path).image.GetSize() == (128, 128, 96)


def test_in_memory_datasets_equal_files(shared_data: Path) -> None:
    folder = shared_data / "repeats" / "decubitus-HFS-t1-2d"
    from_files = read_series(folder)
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir(), reverse=True)]
    from_memory = read_series(datasets)
    assert from_memory.image.GetOrigin() == from_files.image.GetOrigin()
    assert np.array_equal(sitk.GetArrayViewFromImage(from_memory.image), sitk.GetArrayViewFromImage(from_files.image))


def test_find_series_groups_a_mixed_study_and_ignores_objects_without_pixels(shared_data: Path, tmp_path: Path) -> None:
    for name in ("decubitus-HFS-t1-2d", "decubitus-HFP-t1-2d"):
        shutil.copytree(shared_data / "repeats" / name, tmp_path / name)
    report = pydicom.dcmread(next((tmp_path / "decubitus-HFS-t1-2d").iterdir()))
    del report.PixelData
    del report.Rows, report.Columns
    report.SOPInstanceUID = pydicom.uid.generate_uid()
    report.save_as(tmp_path / "report.dcm")
    groups = find_series(tmp_path)
    assert sorted(len(v) for v in groups.values()) == [35, 35]


def test_nine_transfer_syntaxes_decode_to_the_same_pixels(shared_data: Path) -> None:
    folder = shared_data / "hard" / "transfer-syntaxes"
    reference = _pixel_array(read_dicom_file(folder / "1.dcm"))
    syntaxes = set()
    for index in range(1, 10):
        ds = read_dicom_file(folder / f"{index}.dcm")
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        assert np.array_equal(_pixel_array(ds).astype(np.int32), reference.astype(np.int32)), f"{index}.dcm"
    assert len(syntaxes) >= 7


def test_12bit_pixels_stay_within_12_bits_despite_set_high_bits(shared_data: Path) -> None:
    for name, low, high in (("12bitUnsigned_0x0F0F", 0, 4095), ("12bitSigned_0x0F0F", -2048, 2047)):
        ds = read_dicom_file(shared_data / "hard" / "12bit" / f"{name}.dcm")
        raw = np.frombuffer(ds.PixelData, dtype="<u2")
        assert raw.max() > 4095  # the file really has bits set above bit 11
        pixels = _pixel_array(ds)
        assert low <= pixels.min() and pixels.max() <= high


# --- the quick paths (walked files, pixels read from the bytes) against pydicom's whole-file read ---------------------
#: Every real series and folder of hard cases, read both ways (hard/ folders hold several series: a rejection).
REAL_FOLDERS = [f"t1/{name}" for name in sorted(T1_SERIES)] + [
    f"repeats/decubitus-{position}-t1-2d" for position in ("HFS", "HFP", "HFDL", "HFDR")
] + ["hard/12bit", "hard/enhanced/Philips", "hard/enhanced/Siemens/XA10", "hard/agfa-enhanced/Agfa",
     "hard/agfa-enhanced/Siemens", "hard/transfer-syntaxes", "hard"]
#: Keywords this module reads inside Enhanced MR functional group items, not at the top level of a file.
ITEM_KEYWORDS = {"PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence",
                 "PixelValueTransformationSequence"}


def outcome(source: Path | list[Dataset]) -> tuple:
    """Everything read_series decides: the volume (pixels, pixel type, geometry), identifiers and info, or the
    rejection (reason, detail, identifiers)."""
    try:
        loaded = read_series(source)
    except SeriesRejected as rejection:
        return ("rejected", rejection.reason, rejection.detail, rejection.identifiers)
    image = loaded.image
    return ("volume", sitk.GetArrayFromImage(image).tobytes(), image.GetPixelID(), image.GetSize(), image.GetOrigin(),
            image.GetSpacing(), image.GetDirection(), loaded.identifiers, loaded.info)


def pydicom_outcome(source: Path | list[Dataset], monkeypatch: pytest.MonkeyPatch) -> tuple:
    """The outcome with both quick paths off: every file parsed whole by pydicom, every array decoded by pydicom."""
    with monkeypatch.context() as patched:
        patched.setattr(dicom_read, "_walked_dataset", lambda raw, decoded: None)
        patched.setattr(dicom_read, "_native_pixels", lambda ds: None)
        return outcome(source)


def part10_files(folder: Path) -> list[Path]:
    """The DICOM files below ``folder`` of shared/data (plain or gzip-wrapped)."""
    return [path for path in sorted(folder.rglob("*")) if path.is_file() and path.name != "README.md"]


def file_bytes(path: Path) -> bytes:
    """A file's Part 10 bytes (gzip-wrapped ones unwrapped)."""
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


@pytest.mark.parametrize("folder", REAL_FOLDERS)
def test_quick_paths_read_every_real_series_as_pydicom_does(shared_data: Path, folder: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Volume (bit for bit), geometry, identifiers, info, or the rejection word for word: the same both ways."""
    fast = outcome(shared_data / folder)
    assert fast == pydicom_outcome(shared_data / folder, monkeypatch)
    if folder.startswith(("t1/", "repeats/")):
        assert fast[0] == "volume"


def test_quick_paths_read_every_hard_file_and_in_memory_series_as_pydicom_does(
        shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in part10_files(shared_data / "hard"):
        assert outcome(path) == pydicom_outcome(path, monkeypatch), path.name
        in_memory = [read_dicom_file(path)]
        assert outcome(in_memory) == pydicom_outcome([read_dicom_file(path)], monkeypatch), path.name
    folder = shared_data / "repeats" / "decubitus-HFDL-t1-2d"
    datasets = [read_dicom_file(path) for path in part10_files(folder)]
    assert outcome(datasets) == pydicom_outcome([read_dicom_file(path) for path in part10_files(folder)], monkeypatch)


def test_every_real_classic_file_is_walked_to_pydicoms_own_raw_elements(shared_data: Path) -> None:
    """The walk finds each wanted element as pydicom's reader holds it (tag, VR, length, bytes, offset); it walks
    every file of the classic series and leaves to pydicom only what it must (compressed or big-endian pixels,
    Enhanced functional groups of undefined length)."""
    walked_names, left = [], []
    for path in [path for folder in ("t1", "repeats", "hard") for path in part10_files(shared_data / folder)]:
        raw = file_bytes(path)
        walked = walk(raw, SERIES_ELEMENTS)
        if walked is None:
            left.append(path)
            continue
        walked_names.append(path)
        full = pydicom.dcmread(io.BytesIO(raw))
        wanted = {tag for tag in SERIES_ELEMENTS if tag in full}
        assert set(walked.elements) == wanted, path
        for tag in wanted:
            held = full.get_item(tag)
            if isinstance(held, RawDataElement):
                assert walked.elements[tag] == held, (path, hex(tag))
            else:  # the character set: pydicom's reader decodes it as it reads
                assert convert_raw_data_element(walked.elements[tag]).value == held.value, (path, hex(tag))
        assert convert_raw_data_element(walked.transfer_syntax).value == full.file_meta.TransferSyntaxUID
    classic = [path for path in walked_names if path.relative_to(shared_data).parts[0] in ("t1", "repeats")]
    assert len(classic) == 170 + 120 + 192 + 176 + 4 * 35  # every file of the classic series
    for path in left:
        ds = read_dicom_file(path)
        native = str(ds.file_meta.TransferSyntaxUID) in dicom_read.NATIVE_SYNTAXES
        assert not native or "PerFrameFunctionalGroupsSequence" in ds, path


@pytest.mark.parametrize("folder", ["t1/siemens-trio-3t-sag", "t1/philips-elition-3t-sag-gz",
                                    "repeats/decubitus-HFS-t1-2d"])
def test_real_classic_series_take_the_quick_paths(shared_data: Path, folder: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No file of a classic uncompressed series is parsed whole, nor decoded by pydicom (yet the volume is read)."""
    parsed, decoded = [], []
    monkeypatch.setattr(dicom_read, "_parse", lambda *args, **kwargs: parsed.append(args))
    monkeypatch.setattr(Dataset, "pixel_array", property(lambda ds: decoded.append(ds)))
    assert read_series(shared_data / folder).info["instances"] == len(part10_files(shared_data / folder))
    assert parsed == [] and decoded == []


@pytest.mark.parametrize("implicit_vr", [False, True], ids=["explicit VR", "implicit VR"])
def test_enhanced_mr_with_sequences_of_defined_length_is_walked_and_read_as_pydicom_does(
        shared_data: Path, tmp_path: Path, implicit_vr: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real Enhanced MR file, rewritten with every sequence of defined length: walked (functional groups kept
    whole, decoded by pydicom), and the same 96-frame volume as pydicom's whole-file read gives."""
    ds = read_dicom_file(part10_files(shared_data / "t1" / "siemens-prisma-xa30-enhanced-2mm")[0])
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = False
            for item in element.value:
                item.is_undefined_length_sequence_item = False
    if implicit_vr:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(tmp_path / "enhanced.dcm", implicit_vr=implicit_vr, little_endian=True)
    assert _walked_dataset((tmp_path / "enhanced.dcm").read_bytes(), _Decoded()) is not None
    fast = outcome(tmp_path)
    assert fast[0] == "volume" and fast[3] == (128, 128, 96)
    assert fast == pydicom_outcome(tmp_path, monkeypatch)


def test_pixels_read_from_the_bytes_are_pydicoms_for_every_real_file(shared_data: Path) -> None:
    """Same dtype, shape and values as ``pixel_array`` (12-bit files with set high bits included); compressed and
    big-endian files are left to pydicom."""
    paths = part10_files(shared_data / "hard")
    for folder in [f"t1/{name}" for name in T1_SERIES] + ["repeats/decubitus-HFS-t1-2d"]:
        files = part10_files(shared_data / folder)
        paths += [files[0], files[len(files) // 2], files[-1]]  # first, middle and last of each series
    masked = 0
    for path in paths:
        ds = read_dicom_file(path)
        fast = _native_pixels(ds)
        if str(ds.file_meta.TransferSyntaxUID) not in dicom_read.NATIVE_SYNTAXES:
            assert fast is None, path
            continue
        reference = read_dicom_file(path).pixel_array
        assert fast is not None and fast.dtype == reference.dtype and fast.shape == reference.shape, path
        assert np.array_equal(fast, reference), path
        masked += int(np.frombuffer(ds.PixelData, "<u2").max() >= 1 << int(ds.BitsStored))
    assert masked >= 2  # the 12-bit files with bits set above bit 11 went through the shifts


def small_image(*, rows: int = 5, columns: int = 7, frames: int = 1, bits: int = 16, stored: int = 12,
                signed: int = 0, seed: int = 0, values: list[int] | None = None) -> Dataset:
    """A native greyscale MR image whose unused high bits hold noise, as some scanners write them (or ``values``,
    stored values in range, and the first pixel's as given)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.Modality = "MR"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = rows, columns, bits, stored
    ds.HighBit, ds.PixelRepresentation = stored - 1, signed
    if frames != 1:
        ds.NumberOfFrames = frames
    count = rows * columns * max(frames, 1) * bits // 8
    data = np.random.default_rng(seed).bytes(count)
    if values is not None:  # in range everywhere but where ``values`` say
        dtype = np.dtype(f"<{'ui'[signed]}{bits // 8}")
        pixels = np.frombuffer(data, dtype).copy() >> (bits - stored + signed)
        pixels[: len(values)] = values
        data = pixels.astype(dtype).tobytes()
    ds.PixelData = data + b"\x00" * (count % 2)
    return ds


PIXELS_READ_FROM_BYTES = {
    "unsigned 12 of 16 bits, noise above": {},
    "signed 12 of 16 bits, noise above": {"signed": 1},
    "all 16 bits": {"stored": 16},
    "signed all 16 bits": {"stored": 16, "signed": 1},
    "8 bits, odd length padded": {"bits": 8, "stored": 8},
    "signed 6 of 8 bits": {"bits": 8, "stored": 6, "signed": 1},
    "3 frames": {"frames": 3},
    "1 bit stored": {"stored": 1},
    "all in range": {"values": []},
    "one value just above 12 bits": {"values": [4096]},
    "one value at 12 bits": {"values": [4095]},
    "signed, one value just above": {"signed": 1, "values": [2048]},
    "signed, one value just below": {"signed": 1, "values": [-2049]},
    "signed, the extremes": {"signed": 1, "values": [-2048, 2047]},
}


@pytest.mark.parametrize("case", sorted(PIXELS_READ_FROM_BYTES))
def test_pixels_read_from_the_bytes_equal_pydicoms(case: str) -> None:
    fast = _native_pixels(small_image(**PIXELS_READ_FROM_BYTES[case]))
    reference = small_image(**PIXELS_READ_FROM_BYTES[case]).pixel_array
    assert fast is not None and fast.dtype == reference.dtype and fast.shape == reference.shape
    assert np.array_equal(fast, reference)


def _set(**values: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return change


def _syntax(uid: str) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", uid)


PIXELS_LEFT_TO_PYDICOM = {
    "big endian": _syntax(ExplicitVRBigEndian),
    "compressed": _syntax(JPEGLosslessSV1),
    "no file meta": lambda ds: delattr(ds, "file_meta"),
    "no transfer syntax": lambda ds: delattr(ds.file_meta, "TransferSyntaxUID"),
    "32 bits": _set(BitsAllocated=32, BitsStored=32, PixelData=bytes(5 * 7 * 4)),
    "1 bit": _set(BitsAllocated=1, BitsStored=1, PixelData=bytes(6)),
    "colour": _set(SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0),
    "lower-case photometric": _set(PhotometricInterpretation="monochrome2"),
    "excess bytes": lambda ds: setattr(ds, "PixelData", ds.PixelData + bytes(70)),
    "short pixel data": lambda ds: setattr(ds, "PixelData", ds.PixelData[:20]),
    "empty Number of Frames": _set(NumberOfFrames=None),
    "zero frames": _set(NumberOfFrames=0),
    "bits stored above allocated": _set(BitsStored=17),
    "pixel representation 2": _set(PixelRepresentation=2),
    "float pixel data too": _set(FloatPixelData=bytes(4)),
    "decoding options chosen": lambda ds: ds.pixel_array_options(correct_unused_bits=False),
    "array already decoded": lambda ds: ds.pixel_array.fill(7),
}


@pytest.mark.parametrize("case", sorted(PIXELS_LEFT_TO_PYDICOM))
def test_pixels_are_left_to_pydicom_where_it_decides(case: str) -> None:
    """Whatever pydicom pads, trims, refuses, converts or already holds is its to decode: the quick read says None,
    and the reader's answer (array or typed refusal) is what pydicom alone gives."""
    ds, reference = small_image(), small_image()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for item in (ds, reference):
            PIXELS_LEFT_TO_PYDICOM[case](item)
        assert _native_pixels(ds) is None
        try:
            expected = ("array", reference.pixel_array.tobytes())
        except Exception:  # noqa: BLE001 - pydicom's refusal, compared below as the reader's rejection
            expected = ("refused",)
        try:
            found = ("array", _pixel_array(ds).tobytes())
        except SeriesRejected:
            found = ("refused",)
    assert found == expected


def test_every_element_the_reader_reads_is_kept_of_walked_files() -> None:
    """A walked file holds only SERIES_ELEMENTS: a keyword read anywhere in the reader must be one of them (or be
    read inside Enhanced functional group items, which keep their whole sequences)."""
    source = Path(dicom_read.__file__).read_text()
    names = {node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)
             and isinstance(node.value, str)}
    names |= {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)}
    tags = {name: pydicom.datadict.tag_for_keyword(name) for name in names if name[:1].isupper()}
    read = {name for name, tag in tags.items() if tag is not None and tag >> 16 != 0x0002}  # not the file meta
    read -= ITEM_KEYWORDS | {"UID"}  # pydicom.uid.UID, a class
    assert len(read) >= 25
    assert {name for name in read if tags[name] not in SERIES_ELEMENTS} == set()


def walked_series(tmp_path: Path) -> list[Path]:
    """A small MR series written by the project's writer (explicit VR little endian: walked), one file a slice."""
    volume = sitk.GetImageFromArray(np.random.default_rng(1).uniform(0, 900, (18, 12, 10)).astype(np.float32))
    paths = []
    for number, ds in enumerate(series_datasets(volume, patient_id="QUICK-1")):
        paths.append(tmp_path / f"{number:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def element_offset(raw: bytes, tag: int) -> int:
    """Where the explicit-VR element ``tag`` starts in a written file (its tag bytes appear once there)."""
    marker = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
    assert raw.count(marker) == 1
    return raw.index(marker)


def with_transfer_syntax(raw: bytes, uid: str) -> bytes:
    """The file with another (0002,0010) in its file meta header, the data set left as it was encoded."""
    start = raw.index(b"\x02\x00\x10\x00UI", 132)  # the file meta header is explicit VR
    length = int.from_bytes(raw[start + 6:start + 8], "little")
    value = uid.encode("ascii") + b"\x00" * (len(uid) % 2)
    return raw[:start + 6] + len(value).to_bytes(2, "little") + value + raw[start + 8 + length:]


def same_elements(one: Dataset | None, other: Dataset | None) -> bool:
    """The same elements as read (undecoded ones compared undecoded: some of these cannot be decoded)."""
    if one is None or other is None:
        return one is other
    return list(one.keys()) == list(other.keys()) and all(
        one.get_item(tag, keep_deferred=True) == other.get_item(tag, keep_deferred=True) for tag in one.keys()
    )


def test_the_walk_leaves_odd_files_to_pydicom(tmp_path: Path) -> None:
    """Files the walk does not vouch for are read whole by pydicom, to the same dataset read_dicom_file gives."""
    raw = walked_series(tmp_path)[0].read_bytes()
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    written = io.BytesIO()
    ds.save_as(written, implicit_vr=True, little_endian=True)
    implicit = written.getvalue()
    assert walk(raw, SERIES_ELEMENTS) is not None and walk(implicit, SERIES_ELEMENTS) is not None
    rows = element_offset(raw, 0x00280010)
    columns = element_offset(raw, 0x00280011)
    odd = {
        "truncated in a header": raw[: rows + 5],
        "truncated in a value": raw[: element_offset(raw, 0x7FE00010) + 40],
        "no DICM": raw[:128] + b"DICX" + raw[132:],
        "big endian declared": raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00", 1),
        "implicit declared, explicit written": with_transfer_syntax(raw, ImplicitVRLittleEndian),
        "explicit declared, implicit written": with_transfer_syntax(implicit, ExplicitVRLittleEndian),
        "unknown VR": raw[:rows + 4] + b"QQ" + raw[rows + 6:],
        "out of order": raw[:rows] + raw[columns:columns + 10] + raw[rows:rows + 10] + raw[columns + 10:],
        "repeated element": raw[:columns] + raw[rows:rows + 10] + raw[columns:],
        "stray item": raw[:rows] + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + raw[rows:],
        "undefined length value": raw[:rows + 6] + b"\xff\xff" + raw[rows + 8:],
    }
    for case, damaged in odd.items():
        assert damaged != raw and walk(damaged, SERIES_ELEMENTS) is None, case
        path = tmp_path / "odd" / case
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(damaged)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert _walked_dataset(damaged, _Decoded()) is None, case
            assert same_elements(_read_image_file(path, _Decoded()), read_dicom_file(path)), case


def test_damaged_files_read_the_same_through_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes flipped in the headers or files cut short: the outcome is pydicom's, rejection text included."""
    paths = walked_series(tmp_path)
    originals = [path.read_bytes() for path in paths]
    pixels_at = element_offset(originals[0], 0x7FE00010)
    rng = np.random.default_rng(7)
    decided = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(40):
            pick = int(rng.integers(len(paths)))
            damaged = bytearray(originals[pick])
            if rng.random() < 0.3:
                damaged = damaged[: int(rng.integers(132, len(damaged)))]
            else:
                for _ in range(int(rng.integers(1, 4))):
                    damaged[int(rng.integers(132, pixels_at + 12))] = int(rng.integers(256))
            paths[pick].write_bytes(bytes(damaged))
            fast = outcome(tmp_path)
            assert fast == pydicom_outcome(tmp_path, monkeypatch)
            decided.add(fast[1] if fast[0] == "rejected" else "volume")
            paths[pick].write_bytes(originals[pick])
    assert len(decided) >= 2  # some damage was refused, some read
