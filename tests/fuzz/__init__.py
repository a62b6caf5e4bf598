"""Seeded mutation fuzzing of every file format camelid reads (see runner.py and RESULTS.md).

- seeds.py: tiny valid files of each format (GGUF, legacy ggml/ggjt, safetensors, PyTorch zip, /load chat JSON).
- gguf_image.py, legacy_image.py: those formats as editable structures, written back with any lie in them.
- mutate_gguf.py, mutate_files.py: seeded mutators, one family per format; each returns bytes and a description.
- targets.py: what one case runs, the same library calls as `camelid inspect`, `camelid run` (up to the
  first kernel), `camelid convert` (headers and tensor reads) and the chat's /load.
- runner.py: runs cases in forked children under RLIMIT_AS and a CPU-time budget and classifies each.
"""
