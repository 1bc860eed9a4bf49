"""The SCP files each instance by a SeriesInstanceUID read from the bytes as sent (only the elements before it are
parsed): checked over real associations in every uncompressed transfer syntax we accept, deflated included."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)
from pynetdicom import AE

from deepbrainprint.settings import load_settings
from dicom_node.scp import StorageNode
from dicom_node.spool import series_key_for
from fingerprint.imaging.dicom_write import noise_series


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian],
    ids=lambda uid: uid.name,
)
def test_instances_are_filed_under_their_series_in_every_accepted_syntax(syntax: pydicom.uid.UID,
                                                                         tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", spool_dir=tmp_path / "spool", port=0, quiet_time_s=3600)
    node = StorageNode(settings.node_config(), lambda completed: None).start()
    first, second = noise_series(2, size=8, seed=3), noise_series(1, size=8, seed=9)
    second[0].SeriesInstanceUID = pydicom.uid.generate_uid()  # a second series, planted among the first's
    for ds in (*first, *second):
        ds.file_meta.TransferSyntaxUID = syntax  # pynetdicom picks the context, and encodes, by it
    try:
        ae = AE(ae_title="DBP-SCU")
        ae.add_requested_context(MRImageStorage, [syntax])
        assoc = ae.associate("127.0.0.1", node.port, ae_title=settings.ae_title)
        assert assoc.is_established
        assert assoc.accepted_contexts[0].transfer_syntax[0] == syntax
        statuses = [assoc.send_c_store(ds).Status for ds in (first[0], second[0], first[1])]
        assoc.release()
        assert statuses == [0, 0, 0]
        spool = node.spool
        assert spool.instance_count(series_key_for(str(first[0].SeriesInstanceUID))) == 2
        assert spool.instance_count(series_key_for(str(second[0].SeriesInstanceUID))) == 1
        stored = pydicom.dcmread(spool.instance_paths(series_key_for(str(second[0].SeriesInstanceUID)))[0])
        assert stored.file_meta.TransferSyntaxUID == syntax and stored.SOPInstanceUID == second[0].SOPInstanceUID
    finally:
        node.stop()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=lambda uid: uid.name)
def test_a_series_uid_inside_an_earlier_sequence_is_not_taken_for_the_instances_own(syntax: pydicom.uid.UID,
                                                                                     tmp_path: Path) -> None:
    """Real headers carry, before their own (0020,000E), a Referenced Series Sequence (0008,1115) whose items hold
    *other* series' UIDs, often with undefined lengths, and private binary elements: the walk up to the instance's
    own UID must step over them whole. Both traps are planted; filing under the referenced series would be wrong."""
    from pydicom.dataset import Dataset

    settings = load_settings(home=tmp_path / "home", spool_dir=tmp_path / "spool", port=0, quiet_time_s=3600)
    node = StorageNode(settings.node_config(), lambda completed: None).start()
    ds = noise_series(1, size=8, seed=5)[0]
    ds.file_meta.TransferSyntaxUID = syntax
    referenced = Dataset()
    referenced.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.ReferencedSeriesSequence = [referenced]
    ds["ReferencedSeriesSequence"].is_undefined_length = True
    ds.add_new(0x00190010, "LO", "TEST PRIVATE")
    ds.add_new(0x00191010, "OB", b"\x20\x00\x0e\x00UI\x08\x001.2.3.4\x00" * 40)  # bytes that look like the element
    try:
        ae = AE(ae_title="DBP-SCU")
        ae.add_requested_context(MRImageStorage, [syntax])
        assoc = ae.associate("127.0.0.1", node.port, ae_title=settings.ae_title)
        assert assoc.is_established
        status = assoc.send_c_store(ds).Status
        assoc.release()
        assert status == 0
        assert node.spool.instance_count(series_key_for(str(ds.SeriesInstanceUID))) == 1
        assert node.spool.instance_count(series_key_for(str(referenced.SeriesInstanceUID))) == 0
    finally:
        node.stop()
