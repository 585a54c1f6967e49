"""From video files to segment embeddings: decode (PyAV), segment, encode, store.

- :mod:`lvmae.extraction.api`: :func:`~lvmae.extraction.api.extract` and
  :class:`~lvmae.extraction.api.Extractor` (also ``lvmae.extract`` / ``lvmae.Extractor``);
- :mod:`lvmae.extraction.inputs`: files, directories and list files -> video ids;
- :mod:`lvmae.extraction.segments`: one file -> its segments (every modality);
- :mod:`lvmae.extraction.video`, :mod:`~lvmae.extraction.audio`,
  :mod:`~lvmae.extraction.subtitles`: the segment rule, frame sampling, audio and text cuts;
- :mod:`lvmae.extraction.workers`: parallel decoding behind a bounded queue.
"""
