"""The embedded default: no bucket, no account, no internet.

- :mod:`~gcsemb.demo.emulator`: fake-gcs-server, a local GCS started by gcsemb.
- :mod:`~gcsemb.demo.samples`: sample photographs made offline (and broken files).
- :mod:`~gcsemb.demo.job`: the whole job on them (``gcsemb demo``, ``make demo``).
"""
