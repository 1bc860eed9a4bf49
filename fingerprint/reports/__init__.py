"""Reports people act on: the flags of the archive with their evidence (HTML, CSV, JSON), built from the store.

Above the identity stage (it reads what the archive recorded); nothing else in the library imports it.
"""
