"""Checkpoint formats of the Moshi LM: load any published layout, quantize, save ours."""

from .common import WeightsError
from .load import detect_layout, load_lm
from .quantize import quantize_lm
from .save import save_lm

__all__ = ["WeightsError", "detect_layout", "load_lm", "quantize_lm", "save_lm"]
