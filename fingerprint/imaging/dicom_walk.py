"""Chosen top-level elements of a DICOM Part 10 file, found by walking element headers.

Why: reading a series needs about thirty top-level elements of each file, and pydicom's reader builds an element
for every header of the file (a Siemens file has over a hundred, with private ones) and a dataset for every
sequence item on the way. This walk unpacks each header and jumps over the value, and hands back the wanted
elements exactly as pydicom's reader yields them (same tag, VR, length and value bytes, still undecoded), so pydicom
still decodes every value that is used. It handles what scanners write for uncompressed images: a file meta header,
then explicit or implicit VR little endian, with sequences of defined or undefined length. Anything else (another
transfer syntax, an unknown VR, a switch between explicit and implicit VR, elements out of order or truncated, an
undefined length on anything but a sequence, a wanted sequence of undefined length, deep nesting) makes it answer
``None``, and the caller reads the file with pydicom: the walk never decides what pydicom might decide differently.

Example::

    walked = walk(raw, frozenset({0x0020000E, 0x7FE00010}))
    if walked is not None:
        walked.elements[0x0020000E]  # RawDataElement, as pydicom's reader would hold it
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.datadict import DicomDictionary
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

#: The transfer syntaxes walked, as their (0002,0010) values are written (UIDs of odd length end in one NUL),
#: and whether each is implicit VR. Both are little endian.
TRANSFER_SYNTAXES = {b"1.2.840.10008.1.2\x00": True, b"1.2.840.10008.1.2.1\x00": False}
#: Explicit VRs as written, to the ``str`` pydicom's reader stores in a RawDataElement.
VR_NAMES = {str(vr).encode("ascii"): str(vr) for vr in VR if len(str(vr)) == 2}
#: Explicit VRs with a 4-byte length field (after 2 reserved bytes); PS3.5 7.1.2.
LONG_LENGTH_VRS = frozenset(str(vr).encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)
#: Whether each explicit VR has a 4-byte length field, for the loop that looks it up once per element.
IS_LONG_LENGTH = {vr: vr in LONG_LENGTH_VRS for vr in VR_NAMES}
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Item, item delimitation and sequence delimitation tags (group FFFE: a tag and a 4-byte length, never a VR).
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Sequences nested deeper than this are left to pydicom.
MAX_DEPTH = 12
PREAMBLE_END = 132  # 128-byte preamble, then b"DICM"

_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHL")
_U32 = struct.Struct("<L")


@dataclass(frozen=True)
class Walked:
    """What the walk found: the transfer syntax and the wanted top-level elements, undecoded."""

    transfer_syntax: RawDataElement  # (0002,0010) of the file meta header
    implicit_vr: bool
    elements: dict[int, RawDataElement]  # by tag as a plain int (quicker to look up than pydicom's BaseTag)


class _Unsure(Exception):
    """Something the walk leaves to pydicom."""


def walk(raw: bytes, wanted: frozenset[int]) -> Walked | None:
    """The ``wanted`` top-level elements of the Part 10 file ``raw``, or None when pydicom should read it."""
    try:
        if raw[128:PREAMBLE_END] != b"DICM":
            return None
        transfer_syntax, position = _file_meta(raw)
        implicit = TRANSFER_SYNTAXES.get(transfer_syntax.value or b"")
        if implicit is None or position >= len(raw) or not _encoding_agrees(raw, position, implicit):
            return None
        return Walked(transfer_syntax, implicit, _top_level(raw, position, implicit, wanted))
    except (_Unsure, struct.error):
        return None


def _file_meta(raw: bytes) -> tuple[RawDataElement, int]:
    """The (0002,0010) element and where the data set starts: group 0002 elements, explicit VR little endian."""
    position, found = PREAMBLE_END, None
    while position + 8 <= len(raw) and raw[position:position + 2] == b"\x02\x00":
        tag, vr, start, length = _explicit_header(raw, position)
        if length == UNDEFINED_LENGTH or start + length > len(raw):
            raise _Unsure
        if tag == 0x00020010:
            found = RawDataElement(BaseTag(tag), VR_NAMES[vr], length, raw[start:start + length], start, False, True)
        position = start + length
    if found is None:
        raise _Unsure
    return found, position


def _encoding_agrees(raw: bytes, position: int, implicit: bool) -> bool:
    """Whether the first element is encoded as the transfer syntax says (pydicom would switch, and warn, if not)."""
    first_vr = raw[position + 4:position + 6]
    looks_implicit = not (len(first_vr) == 2 and 0x40 < first_vr[0] < 0x5B and 0x40 < first_vr[1] < 0x5B)
    return looks_implicit == implicit and raw[position:position + 2] != b"\x00\x00"  # no command set group


def _explicit_header(raw: bytes, position: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, where the value starts, its length) of an explicit-VR element; unknown VRs are left to pydicom."""
    group, element, vr, length = _EXPLICIT.unpack_from(raw, position)
    if vr not in VR_NAMES:
        raise _Unsure
    if vr in LONG_LENGTH_VRS:
        return group << 16 | element, vr, position + 12, _U32.unpack_from(raw, position + 8)[0]
    return group << 16 | element, vr, position + 8, length


def _header(raw: bytes, position: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None for implicit VR, where the value starts, its length) of the element at ``position``."""
    if implicit:
        group, element, length = _IMPLICIT.unpack_from(raw, position)
        return group << 16 | element, None, position + 8, length
    return _explicit_header(raw, position)


def _top_level(raw: bytes, position: int, implicit: bool, wanted: frozenset[int]) -> dict[int, RawDataElement]:
    """The wanted elements of the data set, as pydicom's element generator yields them; other values are skipped.

    The header of every element is unpacked here rather than by :func:`_header`: this loop runs a hundred times
    per file, and a call per element would be a third of its time.
    """
    elements: dict[int, RawDataElement] = {}
    end, previous = len(raw), -1
    explicit_header, implicit_header, u32 = _EXPLICIT.unpack_from, _IMPLICIT.unpack_from, _U32.unpack_from
    while position < end:
        if implicit:
            group, element, length = implicit_header(raw, position)
            vr, start = None, position + 8
        else:
            group, element, vr, length = explicit_header(raw, position)
            long_length = IS_LONG_LENGTH.get(vr)
            if long_length is None:
                raise _Unsure
            if long_length:
                length, start = u32(raw, position + 8)[0], position + 12
            else:
                start = position + 8
        tag = group << 16 | element
        if tag <= previous or group == 0xFFFE:  # out of order, repeated, or a stray item/delimiter
            raise _Unsure
        previous = tag
        if length == UNDEFINED_LENGTH:
            if tag in wanted or not _is_sequence(raw, tag, vr, start):
                raise _Unsure
            position = _after_sequence(raw, start, implicit, 1)
            continue
        position = start + length
        if position > end:
            raise _Unsure
        if tag in wanted:
            name = VR_NAMES[vr] if vr is not None else None
            value = raw[start:position] if length else empty_value_for_VR(name, raw=True)
            elements[tag] = RawDataElement(BaseTag(tag), name, length, value, start, implicit, True)
    return elements


def _is_sequence(raw: bytes, tag: int, vr: bytes | None, start: int) -> bool:
    """Whether pydicom reads an undefined-length element as a sequence: explicit VR SQ; in implicit VR, a public SQ
    by the dictionary or a private element whose value starts with an item. Other cases (UN, encapsulated pixel
    data, ...) are left to pydicom."""
    if vr is not None:
        return vr == b"SQ"
    if tag in DicomDictionary:
        return DicomDictionary[tag][0] == "SQ"
    return bool(tag >> 16 & 1) and raw[start:start + 4] == b"\xfe\xff\x00\xe0"


def _after_sequence(raw: bytes, position: int, implicit: bool, depth: int) -> int:
    """Where the data set goes on after the items of an undefined-length sequence starting at ``position``."""
    if depth > MAX_DEPTH:
        raise _Unsure
    while True:
        tag, _, start, length = _header(raw, position, True)  # items and delimiters: a tag and a 4-byte length
        if tag == SEQUENCE_END:
            return start
        if tag != ITEM:
            raise _Unsure
        item_end = None if length == UNDEFINED_LENGTH else start + length
        position = _after_item(raw, start, item_end, implicit, depth)


def _after_item(raw: bytes, position: int, item_end: int | None, implicit: bool, depth: int) -> int:
    """Where an item's elements end. Items of defined length are walked too and must end exactly at their length,
    as pydicom reads them element by element; an item that switches to implicit VR is left to pydicom."""
    if item_end is not None and item_end > len(raw):
        raise _Unsure
    first = True
    while item_end is None or position < item_end:
        if item_end is None and _IMPLICIT.unpack_from(raw, position)[:2] == (0xFFFE, 0xE00D):
            return position + 8
        if first and not implicit and not _encoding_agrees(raw, position, False):
            raise _Unsure
        first = False
        tag, vr, start, length = _header(raw, position, implicit)
        if tag >> 16 == 0xFFFE:
            raise _Unsure
        if length == UNDEFINED_LENGTH:
            if not _is_sequence(raw, tag, vr, start):
                raise _Unsure
            position = _after_sequence(raw, start, implicit, depth + 1)
        else:
            position = start + length
    if position != item_end:
        raise _Unsure
    return position
