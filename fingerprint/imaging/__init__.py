"""Imaging: from DICOM files to the canonical slice and brain.

Reading and writing DICOM series (``dicom_read``, ``dicom_write``), the reference head (``reference``), aligning a
head to it (``canonical``), sampling the anatomical slice (``slicing``) and the canonical brain (``brain``), and the
series → slice pipeline that joins them (``pipeline``). Nothing here knows about models, archives or servers.
"""
