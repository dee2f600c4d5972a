"""Audio front-ends: file I/O, devices and the full-duplex loop."""
