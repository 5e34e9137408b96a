"""Rule 3's two paths: an input equal, over its whole field, to a test input as its variant shows it is matched
without cropping it; any other input (a colour outside its grid, another layout, tokens above 11) is cropped
first and compared cell for cell, with the same result as the rule says."""

from __future__ import annotations

import numpy as np
import pytest

from trm.evaluation import rules
from trm.evaluation.rules import Voter

from grids import FORWARD, tokens

X0, X1 = [[1, 2, 3], [4, 5, 6]], [[7, 0], [8, 8], [9, 1]]
Y0, Y1 = [[5, 5]], [[6], [6]]
PUZZLES = {"t": {"train": [], "test": [{"input": X0, "output": Y0}, {"input": X1, "output": Y1}]}}
MAPPING = np.r_[0, np.arange(9, 0, -1)]


def variant_rows(tid: int, edit=None):
    """One variant (transform tid, colours MAPPING) of task t: its name and its two rows (input, prediction),
    the predictions right; `edit(j, input tokens)` may change input j's tokens."""
    rows = []
    for j, (x, y) in enumerate(((X0, Y0), (X1, Y1))):
        inp = tokens(FORWARD[tid](MAPPING[np.array(x)]))
        rows.append((edit(j, inp) if edit else inp, tokens(FORWARD[tid](MAPPING[np.array(y)]))))
    return f"t|||t{tid}|||{''.join(map(str, MAPPING))}", rows


def vote(rows_by_name, monkeypatch=None):
    """Feed every variant's rows in one add(); returns the result and how many rows crop_sizes was given."""
    names = ["<blank>"] + list(rows_by_name)
    ids = np.array([i + 1 for i, rows in enumerate(rows_by_name.values()) for _ in rows])
    inputs = np.stack([r[0] for rows in rows_by_name.values() for r in rows])
    preds = np.stack([r[1] for rows in rows_by_name.values() for r in rows])
    cropped = []
    if monkeypatch is not None:
        crop = rules.crop_sizes
        monkeypatch.setattr(rules, "crop_sizes", lambda t: cropped.append(len(t)) or crop(t))
    voter = Voter(PUZZLES, names)
    voter.add(ids, inputs, preds, np.zeros(len(ids)))
    return voter.result(), sum(cropped)


@pytest.mark.parametrize("eos", [True, False])
def test_inputs_as_the_dataset_writes_them_are_matched_without_cropping(monkeypatch, eos):
    """With or without the EOS edges: PAD and EOS are both no colour, so the whole field compares the same."""
    variants = dict(variant_rows(tid, None if eos else lambda j, inp: np.where(inp == 1, 0, inp)) for tid in range(8))
    res, cropped = vote(variants, monkeypatch)
    assert cropped == 16  # the 16 predictions; none of the 16 inputs
    assert res.metrics["ARC/pass@1"] == 1.0 and res.metrics["ARC/unmatched_predictions"] == 0
    assert [c.count for v in res.votes["t"] for c in v] == [8, 8]


@pytest.mark.parametrize("change", ["stray colour", "colour beside the EOS column", "stray token 200"])
def test_other_inputs_are_cropped_and_still_match_their_test_input(monkeypatch, change):
    def edit(j, inp):
        inp = inp.copy()
        if change == "stray colour":
            inp[29 * 30 + 29] = 5  # outside the crop: rule 1 ignores it
        elif change == "colour beside the EOS column":
            inp[int(np.argmax(inp == 1)) + 1] = 7  # row 0, right of its EOS: the crop stops at the EOS
        else:
            inp[29 * 30 + 29] = 200  # not a colour: the crop ignores it as well
        return inp

    variants = dict(variant_rows(tid, edit if tid in (2, 5) else None) for tid in range(8))
    res, cropped = vote(variants, monkeypatch)
    assert res.metrics["ARC/pass@1"] == 1.0 and res.metrics["ARC/unmatched_predictions"] == 0
    assert [c.count for v in res.votes["t"] for c in v] == [8, 8]  # every edited input found its test input
    assert cropped == 16 + (4 if change != "stray token 200" else 16)  # + the edited inputs (a block with a
    # token above 11 is cropped whole)


def test_a_token_above_11_never_passes_for_a_colour():
    """Uncropped, token 14 + c in the first row of a table group would read as colour c of the group's next row
    (codes 12k + t): the first input has it in its top-left cell, so its crop is empty and it matches nothing."""
    good, pred = tokens(X0), tokens(Y0)
    bad = good.copy()
    bad[0] = 14 + X0[0][0]  # as code 12 * 0 + 14 + c = 12 * 1 + 2 + c: the next row's colour c, kept by the task's
    voter = Voter(PUZZLES, ["<blank>", "t"])  # identity mapping, and colour c is what the test input has there
    voter.add(np.array([1, 1]), np.stack([bad, good]), np.stack([pred, pred]), np.zeros(2))
    res = voter.result()
    assert res.metrics["ARC/unmatched_predictions"] == 1 and res.metrics["ARC/predictions"] == 1
    assert [c.count for c in res.votes["t"][0]] == [1]


def test_an_input_of_another_test_of_the_task_goes_to_that_test():
    """Rows fed in any order: the input decides the test input, never the row's place."""
    name, rows = variant_rows(3)
    res, _ = vote({name: rows[::-1]})
    assert [[c.grid.tolist() for c in v] for v in res.votes["t"]] == [[Y0], [Y1]]
