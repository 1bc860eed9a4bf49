"""One top-level element's value from an encoded little-endian data set, by walking element headers only.

Why: the SCP files every instance under its SeriesInstanceUID (0020,000E), which sits after a hundred or so elements
of the data set as sent. pydicom's element generator finds it without decoding values, but builds an element object
per header; this walk only unpacks each header and jumps over the value, several times faster per instance. It
steps over sequences (of defined or undefined length, as scanners send them) and nothing else clever: anything it
does not know (an unknown VR, a truncated element, deep nesting, a value that is not one plain UID) makes it answer
``None``, and the caller asks pydicom instead.

Example::

    raw = event.request.DataSet.getvalue()
    value = element_value(raw, 0x0020000E, implicit_vr=False)  # b"1.2.3\\x00", b"" if absent, None: ask pydicom
"""

from __future__ import annotations

import struct

#: Explicit-VR value representations whose length field is 4 bytes (after 2 reserved bytes); PS3.5 7.1.2.
LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
#: Explicit-VR value representations with a 2-byte length field.
SHORT_LENGTH_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
                              b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
UNDEFINED_LENGTH = 0xFFFFFFFF

#: Item, item delimitation and sequence delimitation tags (group FFFE: a tag and a 4-byte length, never a VR).
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Deeper nesting than this before the element is found is left to pydicom.
MAX_DEPTH = 8

_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def _header(raw: bytes, position: int, implicit_vr: bool) -> tuple[int, bytes, int, int] | None:
    """(tag, VR or b"", where the value starts, value length) of the element at ``position``; None if unreadable."""
    if position + 8 > len(raw):
        return None
    group, element = _TAG.unpack_from(raw, position)
    tag = group << 16 | element
    if implicit_vr or group == 0xFFFE:
        return tag, b"", position + 8, _U32.unpack_from(raw, position + 4)[0]
    vr = raw[position + 4:position + 6]
    if vr in SHORT_LENGTH_VRS:
        return tag, vr, position + 8, _U16.unpack_from(raw, position + 6)[0]
    if vr in LONG_LENGTH_VRS and position + 12 <= len(raw):
        return tag, vr, position + 12, _U32.unpack_from(raw, position + 8)[0]
    return None


def _after_undefined_sequence(raw: bytes, position: int, implicit_vr: bool, depth: int) -> int | None:
    """Where the data set goes on after a sequence of undefined length whose first item starts at ``position``:
    items of defined length are jumped over, items of undefined length walked element by element."""
    while True:
        header = _header(raw, position, True)
        if header is None:
            return None
        tag, _, start, length = header
        if tag == SEQUENCE_END:
            return start
        if tag != ITEM:
            return None
        if length != UNDEFINED_LENGTH:
            position = start + length
            continue
        position = start
        while True:  # the item's elements, up to its delimitation
            header = _header(raw, position, implicit_vr)
            if header is None:
                return None
            tag, vr, start, length = header
            if tag == ITEM_END:
                position = start
                break
            position = _after_value(raw, start, length, vr, implicit_vr, depth + 1)
            if position is None:
                return None


def _after_value(raw: bytes, start: int, length: int, vr: bytes, implicit_vr: bool, depth: int) -> int | None:
    """Where the next element starts, after a value of ``length`` bytes at ``start`` (or a sequence of undefined
    length there); None when the walk should give up."""
    if length != UNDEFINED_LENGTH:
        return start + length if start + length <= len(raw) else None
    if depth >= MAX_DEPTH or vr not in (b"", b"SQ", b"UN"):  # undefined-length OB/OW is encapsulated pixel data
        return None
    # an unknown (UN) sequence of undefined length is encoded in implicit VR whatever the transfer syntax (PS3.5 6.2.2)
    return _after_undefined_sequence(raw, start, implicit_vr or vr == b"UN", depth)


def element_value(raw: bytes, tag: int, implicit_vr: bool) -> bytes | None:
    """The value bytes of top-level element ``tag`` (``0xGGGGEEEE``) in a little-endian data set: ``b""`` when the
    data set has no such element (tags are sorted: the walk stops past it), ``None`` when the walk met something it
    does not handle before reaching it. Sequences before it are stepped over, nested ones too (``MAX_DEPTH``)."""
    position, end = 0, len(raw)
    while position < end:
        header = _header(raw, position, implicit_vr)
        if header is None:
            return None
        current, vr, start, length = header
        if current > tag:
            return b""
        if current == tag:
            return raw[start:start + length] if length != UNDEFINED_LENGTH and start + length <= end else None
        next_position = _after_value(raw, start, length, vr, implicit_vr, 0)
        if next_position is None:
            return None
        position = next_position
    return b""


def uid_value(raw: bytes, tag: int, implicit_vr: bool) -> str | None:
    """A single UID-like value (digits, dots) as text, padding removed; ``""`` when absent; ``None`` when pydicom
    should decide (the walk gave up, or the value holds anything but digits and dots: several values, other
    characters)."""
    value = element_value(raw, tag, implicit_vr)
    if value is None:
        return None
    text = value.rstrip(b"\x00 ").strip()
    if text.strip(b"0123456789."):
        return None
    return text.decode("ascii")
