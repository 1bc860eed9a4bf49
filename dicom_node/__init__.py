"""The DICOM side: a pynetdicom storage SCP that spools instances durably and hands on complete series."""
