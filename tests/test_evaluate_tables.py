"""The Markdown tables of `eeasr-train eval`, on hand-made decoding results (no model needed)."""

from __future__ import annotations

from pathlib import Path

from eeasr.manifest import Utterance
from eeasr.train.evaluate import UttResult, WindowResult, compare_table, per_group_table, wer_table


def _result(ref: str, hyps: list[str], source: str = "espeak-ng") -> UttResult:
    u = Utterance(id=ref, path=Path("/x.flac"), text=ref, duration=1.0, speaker="s", source=source, split="test")
    return UttResult(u, [WindowResult(greedy=list(hyps), beam=list(hyps))])


def test_compare_table_puts_each_exit_next_to_its_single_exit_model() -> None:
    ee = [_result("a b c d", ["a x c d", "a b c d"]), _result("e f", ["e f", "e f"])]        # exits at 2, 4
    single = {2: [_result("a b c d", ["a b c d"]), _result("e f", ["x f"])]}                 # a 2-layer model
    table = compare_table(ee, [2, 4], single, beam=True).splitlines()
    assert table[0] == "| layer | EE greedy WER % | no-EE greedy WER % | EE beam WER % | no-EE beam WER % |"
    assert table[2] == "| 2 | 16.7 | 16.7 | 16.7 | 16.7 |"        # 1 error in 6 words on each side
    assert table[3] == "| 4 | 0.0 | - | 0.0 | - |"                   # no baseline of 4 layers given


def test_wer_and_group_tables() -> None:
    rs = [_result("a b", ["a b", "a b"], "flite"), _result("c d", ["c x", "c d"], "espeak-ng")]
    assert "| 1 (2) | 25.0 | 25.0 |" in wer_table(rs, [2, 4], beam=True)
    groups = per_group_table(rs, [2, 4]).splitlines()
    assert groups[2] == "| espeak-ng | 1 | 50.0 | 0.0 |" and groups[3] == "| flite | 1 | 0.0 | 0.0 |"


def test_group_table_scores_another_recognizer_on_the_same_audio() -> None:
    rs = [_result("a b", ["a b", "a b"], "flite"), _result("c d", ["c x", "c d"], "espeak-ng")]
    table = per_group_table(rs, [2, 4], others={"pocketsphinx 5.1.1": ["a", "c d"]}).splitlines()
    assert table[0].endswith("| exit 2 (4) | pocketsphinx 5.1.1 |")
    assert table[2] == "| espeak-ng | 1 | 50.0 | 0.0 | 0.0 |" and table[3] == "| flite | 1 | 0.0 | 0.0 | 50.0 |"


def test_interval_line_counts_errors() -> None:
    from eeasr.train.evaluate import interval_line

    line = interval_line(["a b c d", "e f"], ["a b c d", "e x"])
    assert line.startswith("16.7% (1/6 words; 95% bootstrap interval ")
