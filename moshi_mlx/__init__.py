"""Moshi speech-to-speech dialogue model on MLX."""
