#!/usr/bin/env bash
# Regenerates tests/assets/speech_24k.wav: ~7 s of English speech, 24 kHz mono 16-bit,
# synthesised with espeak-ng and resampled/trimmed with sox (apt-get install espeak-ng sox).
set -euo pipefail
out="${1:-$(dirname "$0")/../tests/assets/speech_24k.wav}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
text="Moshi hears and speaks through Mimi. Twenty four thousand samples every second \
become twelve and a half frames of eight codes. Is the codec exact? Let us check it, frame by frame."
espeak-ng -v en-us -s 165 -p 45 -w "$tmp/raw.wav" "$text"
# 24 kHz, mono, 16 bit, at most 8 s, normalised to -3 dBFS peak.
sox "$tmp/raw.wav" -r 24000 -c 1 -b 16 "$out" trim 0 7.68 norm -3
soxi "$out"
