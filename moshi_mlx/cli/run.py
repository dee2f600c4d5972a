"""`moshi-mlx run INPUT OUTPUT`: Moshi answers a recorded audio file; writes its voice and prints its text.

The input and outputs are checked before the model loads. The answer is written as it is produced:
if the run stops early (Ctrl-C, SIGTERM, an error) OUTPUT is a valid wav of the frames answered so far,
time-aligned with the input, and --text-out holds the text so far; one line says where it stopped.
Exit status: 0 done, 130 Ctrl-C (SIGINT), 143 SIGTERM, 2 bad input or a failure the message explains.
On a terminal, stderr shows a progress bar: frames done, RTF (processing time / audio time) and time left,
and at the end the run's RTF. Mimi encodes the next frame and decodes the last one while the LM steps
(on another core), so a frame costs about the longer of the two, not their sum.
"""

from __future__ import annotations

import shutil
import signal
import sys
import traceback

from ..audio.run_file import FileRun
from .common import USER_ERRORS, ArgumentParser, debug_enabled, describe, run
from .loading import add_model_arguments, load_conversation
from .progress import ProgressBar

PROG = "moshi-mlx run"
EXIT_SIGINT, EXIT_SIGTERM, EXIT_ERROR = 130, 143, 2


def configure_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("input", help="the user's audio (wav/mp3/ogg/flac; any rate, mono or stereo); wav is streamed "
                   "from disk, other formats are decoded whole first")
    p.add_argument("output", help="wav file for Moshi's voice (24 kHz mono 16-bit, time-aligned with the input, "
                   "its length rounded up to whole 80 ms frames); missing folders are created")
    p.add_argument("--text-out", default=None, help="also write Moshi's text to this file, as it comes (missing "
                   "folders are created)")
    p.add_argument("--no-overlap", action="store_true", help="run Mimi and the LM one after the other instead of "
                   "concurrently (same output, slower; for debugging and measuring)")
    add_model_arguments(p)
    return p


class _Stopper:
    """SIGINT/SIGTERM ask the run to stop after the current frame; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.code = 0
        self._saved: dict[int, object] = {}

    def __enter__(self) -> _Stopper:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.reason is not None:
            raise KeyboardInterrupt
        if self.reason is None:
            sigint = signum == signal.SIGINT
            self.reason = "interrupted (Ctrl-C, SIGINT)" if sigint else "terminated (SIGTERM)"
            self.code = EXIT_SIGINT if sigint else EXIT_SIGTERM

    def __call__(self) -> str | None:
        return self.reason


class _TextOut:
    """Moshi's text to stdout as it comes; above the progress bar in whole lines when both share a terminal."""

    def __init__(self, bar: ProgressBar | None):
        self.bar = bar
        self.in_lines = bar is not None and sys.stdout.isatty()  # else the bar is elsewhere or absent
        self.pending = ""

    def __call__(self, piece: str) -> None:
        if not self.in_lines:
            sys.stdout.write(piece)
            sys.stdout.flush()
            return
        self.pending += piece
        width = max(20, shutil.get_terminal_size().columns - 1)
        while len(self.pending) > width:
            cut = self.pending.rfind(" ", 0, width) + 1 or width
            self._line(self.pending[:cut].rstrip())
            self.pending = self.pending[cut:]

    def _line(self, text: str) -> None:
        self.bar.clear()
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        self.bar.update(self.bar.done, force=True)

    def end(self) -> None:
        """Clears the bar and ends the text with a newline."""
        if self.bar is not None:
            self.bar.clear()
        if self.pending:
            sys.stdout.write(self.pending)
            self.pending = ""
        sys.stdout.write("\n")
        sys.stdout.flush()


def _where(job: FileRun) -> str:
    done, total, written = min(job.steps, job.total_frames), job.total_frames, job.frames_written
    text = f", {job.text_out} the text so far" if job.text_out is not None else ""
    return (f"at frame {done} of {total} ({job.seconds(done):.2f} s of {job.seconds(total):.2f} s); "
            f"{job.output} holds the answer's first {written} frames ({job.seconds(written):.2f} s){text}")


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)

    def go() -> None:
        job = FileRun(args.input, args.output, args.text_out)  # checks everything before loading
        try:
            conversation = load_conversation(args)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted (Ctrl-C, SIGINT) while loading the model; nothing was written", file=sys.stderr)
            sys.exit(EXIT_SIGINT)
        bar = ProgressBar(job.total_frames, job.seconds(1)) if sys.stderr.isatty() else None
        text = _TextOut(bar)
        on_frame = (lambda j: bar.update(min(j.steps, j.total_frames))) if bar is not None else None
        with _Stopper() as stopper:
            try:
                reason = job.run(conversation, on_text=text, on_frame=on_frame, should_stop=stopper,
                                 overlap=not args.no_overlap)
            except KeyboardInterrupt:
                reason, stopper.code = "interrupted (Ctrl-C, SIGINT)", EXIT_SIGINT
            except Exception as e:
                text.end()
                user_error = isinstance(e, USER_ERRORS)
                if user_error and debug_enabled():
                    traceback.print_exception(e)
                print(f"{PROG}: stopped by an error {_where(job)}: {describe(e)}", file=sys.stderr)
                if user_error:
                    sys.exit(EXIT_ERROR)
                raise  # a bug: keep its traceback
        text.end()
        if bar is not None and job.rtf() is not None:
            done = job.seconds(min(job.steps, job.total_frames))
            print(f"{PROG}: {done:.2f} s of audio answered in {job.finished - job.started:.2f} s, RTF {job.rtf():.2f}",
                  file=sys.stderr)
        if reason is not None:
            print(f"{PROG}: {reason} {_where(job)}", file=sys.stderr)
            sys.exit(stopper.code)

    run(PROG, go)
