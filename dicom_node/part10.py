"""The DICOM file (Part 10) around a received data set, written without building a pydicom data set.

Why: the SCP stores each instance as the sender encoded it, behind a 128-byte preamble, ``DICM`` and the File Meta
Information group. pynetdicom's ``Event.encoded_dataset()`` makes that group by building a ``FileMetaDataset``
(validating each value) and encoding it with pydicom's writer, then joins it to the data set: per instance, more of
the SCP's Python time than finding the series and writing the file together. The group has seven elements whose
encoding is fixed (explicit VR little endian), so :func:`file_meta_group` packs them directly, byte for byte what
pynetdicom writes (tested against it), and :func:`part10_parts` hands the spool the header and the data set as two
buffers, so the data set is never copied. Values pynetdicom might encode differently (a UID that is not plain digits
and dots, or too long) go through pynetdicom itself.

Example::

    header, data_set = part10_parts(event)   # in an EVT_C_STORE handler
    assert header + data_set == event.encoded_dataset()
"""

from __future__ import annotations

import re
import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.events import Event

PREAMBLE_AND_PREFIX = b"\x00" * 128 + b"DICM"
#: What a UID may be for the direct encoding: digits and dots, at most 64 characters (the standard's maximum).
_PLAIN_UID = re.compile(r"[0-9.]{1,64}")
#: (0002,0001) File Meta Information Version, OB, value 00 01.
_VERSION_ELEMENT = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def _short_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group-2 element with a 2-byte length (UI, SH, UL)."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid_value(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


def _implementation_elements() -> bytes:
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    version += b" " if len(version) % 2 else b""
    return (_short_element(0x0012, b"UI", _uid_value(PYNETDICOM_IMPLEMENTATION_UID))
            + _short_element(0x0013, b"SH", version))


_IMPLEMENTATION = _implementation_elements()


def file_meta_group(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """The encoded File Meta Information group (from its group length to the implementation version name), as
    pynetdicom's ``encode_file_meta(create_file_meta(...))`` writes it."""
    uids = (sop_class_uid, sop_instance_uid, transfer_syntax_uid)
    if not all(_PLAIN_UID.fullmatch(uid) for uid in uids):
        return encode_file_meta(create_file_meta(sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid,
                                                 transfer_syntax=transfer_syntax_uid))
    body = b"".join((
        _VERSION_ELEMENT,
        _short_element(0x0002, b"UI", _uid_value(sop_class_uid)),
        _short_element(0x0003, b"UI", _uid_value(sop_instance_uid)),
        _short_element(0x0010, b"UI", _uid_value(transfer_syntax_uid)),
        _IMPLEMENTATION,
    ))
    return _short_element(0x0000, b"UL", struct.pack("<I", len(body))) + body


def part10_parts(event: Event) -> tuple[bytes, bytes]:
    """A C-STORE request's instance as a DICOM file, in two parts: the preamble, prefix and file meta group, then
    the data set exactly as sent. Joined, they equal ``event.encoded_dataset()``."""
    request = event.request
    header = PREAMBLE_AND_PREFIX + file_meta_group(
        str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID), str(event.context.transfer_syntax)
    )
    return header, request.DataSet.getvalue()  # type: ignore[union-attr]
