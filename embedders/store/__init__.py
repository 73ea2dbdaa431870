"""The embedding store of one dataset, ``data/embeddings/<dataset>/`` (a folder or a URI).

- ``parts``: the Parquet parts (one row per recording, written by the embedding workers, each
  committed atomically), resume (``prepare_medium``), ``metadata.parquet`` and ``errors.parquet``;
- ``parts_reader``: a store folder read straight from its parts (no consolidated file needed);
- ``h5``: the consolidated ``embeddings.h5`` (streamed from the parts; columnar read; legacy export);
- ``legacy``: the reader of the original project's per-recording HDF5 layout;
- ``transcriptions``: the transcribed medium's MIDI files beside the store, their index and quality table;
- ``reader``: what downstream jobs call: ``load`` / ``load_pair`` / ``list_embedders`` on either form;
- ``locations`` and ``filesystem``: local paths and remote URIs (s3://, gs://, file://) behind one small API;
- ``atomic``: atomic local file writes, used by every job.

Imports point one way: locations <- filesystem (-> atomic) <- parts <- parts_reader <- h5 (-> legacy)
<- reader, and parts <- transcriptions; nothing here imports a job.
"""
