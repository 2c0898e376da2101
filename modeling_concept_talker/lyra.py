"""Lyra v2 SoundStream codec backend (TFLite models run with ai-edge-litert)."""

from __future__ import annotations

import os

LYRA_FILES = ("soundstream_encoder.tflite", "quantizer.tflite", "lyragan.tflite")


def is_lyra_model_dir(path) -> bool:
    """True if `path` is a folder holding the three Lyra SoundStream TFLite models."""
    return os.path.isdir(str(path)) and all(os.path.isfile(os.path.join(str(path), f)) for f in LYRA_FILES)
