"""The text stream equals moshi-finetune's `Interleaver` on hand-worked cases.

Each expected stream below was derived by hand from the rules of kyutai-labs/moshi-finetune
`finetune/data/interleaver.py` (`prepare_item` -> `build_token_stream`), frame by frame; the
comments give the derivation. Times are exact binary fractions so that `start * frame_rate` is exact.
"""

from __future__ import annotations

from moshi_mlx.train.interleaver import Interleaver, num_window_frames, tokenize_word, window_alignments

PAD, EPAD, BOS, EOS, ZERO = 3, 0, 1, 2, -1
WORDS = {"hello": [10, 11], "world": [12], "a": [13], "longword": [14, 15, 16, 17], "b": [18],
         "hi": [20], "yes": [21], "no": [22], "zero": [23], "neg": [24], "\n": [5, 6]}  # fmt: skip
MAIN, OTHER = "SPEAKER_MAIN", "SPEAKER_1"


class FakeTokenizer:
    bos_id, eos_id = BOS, EOS

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return ([BOS] if bos else []) + WORDS[text]


def make(**kw) -> Interleaver:
    return Interleaver(FakeTokenizer(), **kw)


def test_main_speaker_only_drops_others_and_empty_words_and_cuts_at_the_window_end():
    al = [
        ("hello", (0.0, 0.35), MAIN),  # t0=10 t1=11; in-word PAD up to int(3.5)=3
        ("yes", (0.2, 0.5), OTHER),  # not the main speaker: dropped (train.py's keep_main_only=True)
        ("world", (0.6, 0.9), MAIN),  # 6.0 < t+1 -> t=6; t5 PAD -> EPAD; PAD up to t9
        ("zero", (1.0, 1.0), MAIN),  # zero duration: dropped
        ("neg", (1.2, 1.1), MAIN),  # negative duration: dropped
        ("longword", (1.3, 1.4), MAIN),  # t=13; t12 -> EPAD; 14 15 16 fit, 17 is past frame 15
    ]
    expected = [10, 11, PAD, PAD, PAD, EPAD, 12, PAD, PAD, PAD, PAD, PAD, EPAD, 14, 15, 16]
    assert make(frame_rate=10.0).stream(al, 16) == expected


def test_overlapping_words_replace_or_queue():
    al = [("longword", (0.0, 0.5), MAIN), ("a", (0.2, 0.3), MAIN)]
    # "a" starts at t=2 while 16, 17 are unwritten: it replaces them; in-word padding up to int(3.0)=3.
    assert make(frame_rate=10.0, in_word_padding=7).stream(al, 6) == [14, 15, 13, 7, PAD, PAD]
    # keep_and_shift queues them instead; t5 is past the last word's end (3): PAD.
    assert make(frame_rate=10.0, in_word_padding=7, keep_and_shift=True).stream(al, 6) == [14, 15, 16, 17, 13, PAD]


def test_bos_eos_at_turn_changes_with_several_speakers():
    al = [
        ("yes", (0.7, 0.8), OTHER),  # (unsorted on purpose: sorted by start first)
        ("hi", (0.0, 0.1), OTHER),  # first speaker, not main: nothing added. t0=20, in-word t1
        ("hello", (0.2, 0.3), MAIN),  # main after other: BOS. t1 -> EPAD, t2..4 = BOS 10 11
        ("world", (0.5, 0.6), MAIN),  # same speaker. t5=12 (t4 is a token: no EPAD), in-word t6
        # "yes" (other after main): EOS. t6 -> EPAD, t7 t8 = EOS 21
        ("a", (0.9, 0.9), MAIN),  # gets BOS, then dropped (zero duration) but still counts as a turn
        ("no", (1.0, 1.1), "SPEAKER_2"),  # after main ("a"): EOS. t9 -> EPAD, t10 t11 = EOS 22
    ]
    expected = [20, EPAD, BOS, 10, 11, 12, EPAD, EOS, 21, EPAD, EOS, 22, PAD, PAD]
    assert make(frame_rate=10.0, keep_main_only=False, use_bos_eos=True).stream(al, 14) == expected
    # Neither option: every speaker's words, no BOS/EOS (so t4 is PAD and becomes EPAD before "world").
    plain = make(frame_rate=10.0, keep_main_only=False).stream(al, 14)
    assert plain == [20, EPAD, 10, 11, EPAD, 12, EPAD, 21, PAD, EPAD, 22, PAD, PAD, PAD]


def test_audio_delay_shifts_words_and_zero_pads_a_negative_delay():
    al = [("hello", (0.0, 0.5), MAIN), ("world", (1.0, 1.75), MAIN)]
    # +0.5 s: "hello" ends at 0.5, not after the delay: dropped; "world" -> (0.5, 1.25): t=2, PAD to t5.
    assert make(frame_rate=4.0, audio_delay=0.5).stream(al, 7) == [PAD, EPAD, 12, PAD, PAD, PAD, PAD]
    # -0.5 s: "world" at (0.25, 0.5) -> (0.75, 1.0): t=3, in-word t4; first int(4 * 0.5) = 2 frames zero.
    al = [("world", (0.25, 0.5), MAIN)]
    assert make(frame_rate=4.0, audio_delay=-0.5).stream(al, 6) == [ZERO, ZERO, EPAD, 12, PAD, PAD]


def test_window_cut_at_moshi_rate_and_no_transcript():
    al = [
        ("world", (1.75, 2.125), MAIN),  # starts before the window: not carried in
        ("hello", (2.25, 2.5), MAIN),  # (0.25, 0.5): 3.125 -> t=3; t2 EPAD; PAD to int(6.25)=6
        ("longword", (2.9375, 3.5), MAIN),  # 11.71875 -> t=11; t10 EPAD; 14 15, then cut at 13 frames
        ("a", (3.0, 3.25), MAIN),  # starts at the window end: next window
    ]
    n = num_window_frames(1.0)
    assert n == 13
    window = window_alignments(al, 2.0, 1.0)
    assert [w for w, _, _ in window] == ["hello", "longword"]
    assert make().stream(window, n) == [PAD, PAD, EPAD, 10, 11, PAD, PAD, PAD, PAD, PAD, EPAD, 14, 15]
    assert make().stream(None, 4) == [ZERO] * 4


def test_words_with_newlines_use_the_newline_piece():
    assert tokenize_word(FakeTokenizer(), " a\nb ") == [13, 6, 18]
