"""Orthanc integration: the server configuration that forwards MR series, and the verdict write-back client."""
