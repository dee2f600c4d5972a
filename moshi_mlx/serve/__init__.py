"""`moshi-mlx serve`: talk to Moshi from a web page, over Kyutai's websocket protocol.

- `protocol`: the message format of Kyutai's `rust/protocol.md` (one kind byte, then the payload).
- `worker`: the model thread that owns the `Conversation` (one conversation at a time).
- `session`: one websocket connection: Ogg/Opus in, frames to the worker, Moshi's audio and text out.
- `server`: the aiohttp application (page, `/api/chat`, Origin and Host checks) and `serve()`.
- `static/`: our page, with its vendored Opus libraries (`static/vendor/VERSIONS.md`).
"""
