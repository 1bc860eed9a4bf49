"""dicom_node.part10 against pynetdicom's own File Meta Information encoding, byte for byte (pynetdicom is the
reference: a stored instance must be the file a bare pynetdicom SCP would write)."""

from __future__ import annotations

import warnings

import pytest
from pydicom.uid import EnhancedMRImageStorage, MRImageStorage
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from dicom_node.part10 import PREAMBLE_AND_PREFIX, file_meta_group
from dicom_node.scp import accepted_transfer_syntaxes


def reference(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the deliberately odd UIDs below
        return encode_file_meta(create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                                                 transfer_syntax=syntax))


@pytest.mark.parametrize("syntax", accepted_transfer_syntaxes())
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45", "1." + "2" * 62, "1." + "2" * 61])
def test_file_meta_group_is_pynetdicoms_encoding(syntax: str, sop_instance: str) -> None:
    """Odd and even lengths (UI values are padded with a NUL), the 64-character maximum, every accepted syntax."""
    for sop_class in (MRImageStorage, EnhancedMRImageStorage):
        assert file_meta_group(sop_class, sop_instance, syntax) == reference(sop_class, sop_instance, syntax)


@pytest.mark.parametrize("sop_instance", ["1.2.3.4 ", "1.2.3.x4", "1." + "2" * 63])
def test_values_outside_the_plain_form_are_encoded_by_pynetdicom(sop_instance: str) -> None:
    """A UID with other characters, or over 64 characters is not packed here: pynetdicom decides."""
    syntax = accepted_transfer_syntaxes()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert file_meta_group(MRImageStorage, sop_instance, syntax) == reference(MRImageStorage, sop_instance, syntax)


def test_preamble_and_prefix() -> None:
    assert PREAMBLE_AND_PREFIX == bytes(128) + b"DICM"
