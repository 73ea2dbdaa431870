"""The embedding store of one dataset, ``data/embeddings/<dataset>/``.

- ``parts``: the Parquet parts (one row per recording), the errors table, resume state;
- ``h5``: the consolidated ``embeddings.h5`` (columnar write and read, the legacy export);
- ``legacy``: the reader of the original project's per-recording HDF5 layout;
- ``filesystem``: local paths and remote URIs (s3://, gs://, file://) behind one small API;
- ``atomic``: atomic file writes and strict JSON, used by every job.

Imports point one way: filesystem <- parts <- h5 -> legacy; nothing here imports a job.
"""
