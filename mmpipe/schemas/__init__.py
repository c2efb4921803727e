"""Validation of the raw tables: every row ends up valid or quarantined, with its reasons.

- ``tables``: pandera models, one per raw table, and the checks built per call
- ``text_checks``: is a caption text or garbage
- ``media_checks``: images and videos inside the data root, present, decoding in full
- ``quarantine``: issues -> one record per rejected row; ``ValidationResult``; atomic writes
- ``validate``: ``validate_<table>``, ``validate_table``, ``validate_world``
- ``expectations``: Great Expectations suites on the validated tables
"""
