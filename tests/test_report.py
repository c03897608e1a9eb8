import json

import pytest

from tinymnist.report import ReportError, bench_tables, epoch_ranges, render_readme, verdict


def history(accs):
    return [{"epoch": i + 1, "test_acc": a, "train_acc": a} for i, a in enumerate(accs)]


def test_epoch_ranges():
    assert epoch_ranges([]) == "none"
    assert epoch_ranges([6, 9, 11, 12, 13]) == "6, 9, 11-13"
    assert epoch_ranges([15]) == "15"


@pytest.mark.parametrize(
    "accs, hold, held",
    [
        ([99.0] * 10 + [99.4, 99.41, 99.5, 99.45, 99.4], 5, True),
        ([99.0] * 10 + [99.39, 99.41, 99.5, 99.45, 99.4], 5, False),  # one dip is enough to fail
        ([99.0] * 10 + [99.39, 99.41, 99.5, 99.45, 99.4], 3, True),
        ([99.5] * 3, 5, False),  # fewer epochs than the target asks about
    ],
)
def test_verdict_needs_every_one_of_the_last_epochs(accs, hold, held):
    v = verdict(history(accs), hold=hold)
    assert v["held"] is held
    assert ("target MET" in v["text"]) is held


def test_sections_are_rewritten_and_unknown_ones_refused(tmp_path):
    text = "a\n<!-- BEGIN models -->\nstale\n<!-- END models -->\nb\n"
    out = render_readme(text, tmp_path)
    assert "stale" not in out and "| Model_6 | 7,624 | 28 |" in out and out.startswith("a\n") and out.endswith("b\n")
    assert render_readme(out, tmp_path) == out
    with pytest.raises(ReportError, match="unknown README section"):
        render_readme("<!-- BEGIN nonsense -->\n<!-- END nonsense -->", tmp_path)


def test_missing_records_are_an_error_not_an_empty_table(tmp_path):
    with pytest.raises(ReportError, match="no records for Model_6"):
        render_readme("<!-- BEGIN step:Model_6 -->\n<!-- END step:Model_6 -->", tmp_path)
    with pytest.raises(ReportError, match="no benchmark records"):
        bench_tables(tmp_path)


def test_smoke_runs_are_not_results(tmp_path):
    folder = tmp_path / "Model_6"
    folder.mkdir()
    (folder / "seed1.json").write_text(json.dumps({"seed": 1, "limit": 500, "params": 1, "epochs": history([50])}))
    with pytest.raises(ReportError, match="no records"):
        render_readme("<!-- BEGIN step:Model_6 -->\n<!-- END step:Model_6 -->", tmp_path)
