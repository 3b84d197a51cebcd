"""The sample ledger's reader: a later session's lines supersede the replayed steps of an interrupted one,
skipped updates count as not trained, repeats are named, and a line cut by a kill is ignored."""

from __future__ import annotations

import pytest

from dmlscale.train.ledger import Ledger, check_ledger


def write(run_dir, session: float, rank: int, steps: dict[int, list[str]], *, epoch: int = 0,
          skipped: tuple[int, ...] = ()) -> None:
    ledger = Ledger(run_dir, rank=rank, session=session)
    for step, keys in steps.items():
        ledger.record(step, epoch, keys, applied=step not in skipped)
    ledger.close()


def test_replayed_steps_of_an_interrupted_session_are_superseded(tmp_path):
    # session 1 trained steps 1-3 on two ranks and was killed; session 2 resumed from the checkpoint at step 2
    write(tmp_path, 1.0, 0, {1: ["a", "b"], 2: ["c", "d"], 3: ["e", "f"]})
    write(tmp_path, 1.0, 1, {1: ["g", "h"], 2: ["i", "j"], 3: ["k", "l"]})
    with open(tmp_path / "ledger" / "rank00001.jsonl", "a") as handle:
        handle.write('{"session": 1.0, "step": 4, "ep')  # the line the kill cut
    write(tmp_path, 2.0, 0, {3: ["e", "f"], 4: ["m", "n"]})
    write(tmp_path, 2.0, 1, {3: ["k", "l"], 4: ["o", "p"]})
    report = check_ledger(tmp_path)
    assert report.num_replayed_lines == 2 and report.num_sessions == 2 and report.steps == [1, 2, 3, 4]
    epoch = report.epochs[0]
    assert epoch.num_trained == 16 and epoch.num_distinct == 16 and report.exactly_once
    assert report.ranks_per_step == {1: 2, 2: 2, 3: 2, 4: 2}


def test_repeats_and_skipped_updates_are_reported(tmp_path):
    write(tmp_path, 1.0, 0, {1: ["a", "b"], 2: ["c", "a"], 3: ["d", "e"]}, skipped=(3,))
    report = check_ledger(tmp_path)
    epoch = report.epochs[0]
    assert epoch.repeated == {"a": 2} and not report.exactly_once
    assert epoch.num_skipped_steps == 1 and epoch.num_trained == 4 and "d" not in epoch.keys


def test_missing_ledger_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(ValueError, match="no ledger in .*ledger"):
        check_ledger(tmp_path)
