"""How a --nproc rank's error reaches the parent: the error files the ranks write, read back by the parent.
(Real ranks failing on real bad data and a taken run folder: tests/integration/test_cli_first_runs.py.)"""

from __future__ import annotations

import json
import pickle

import pytest

from dmlscale.data import DirtyDataError
from dmlscale.train.train_cli import RankFailed, _pickled, _raise_rank_error


def write_error(out_dir, rank: int, error: Exception, at: float) -> None:
    user_error = _pickled(error) if isinstance(error, ValueError) else None
    (out_dir / f"error{rank}.json").write_text(json.dumps(
        {"type": type(error).__name__, "message": str(error), "traceback": "", "user_error": user_error, "time": at}))


def test_the_same_user_error_on_every_rank_is_raised_as_itself(tmp_path):
    for rank in (0, 1, 10):
        write_error(tmp_path, rank, DirtyDataError("bad data: 9 of 10 samples read were skipped"), at=5.0 - rank)
    with pytest.raises(DirtyDataError, match="^bad data: 9 of 10 samples read were skipped$"):
        _raise_rank_error(tmp_path)


def test_the_first_failure_is_the_one_reported(tmp_path):
    # rank 1 fails first on its data; rank 0's broken collective follows from it
    write_error(tmp_path, 0, RuntimeError("Connection closed by peer"), at=2.0)
    write_error(tmp_path, 1, DirtyDataError("no readable sample left in epoch 0"), at=1.0)
    with pytest.raises(DirtyDataError, match="^no readable sample left in epoch 0$"):
        _raise_rank_error(tmp_path)
    write_error(tmp_path, 1, RuntimeError("out of memory"), at=0.5)
    with pytest.raises(RankFailed, match="^rank 1: RuntimeError: out of memory$"):
        _raise_rank_error(tmp_path)


def test_different_user_errors_name_the_first_rank(tmp_path):
    write_error(tmp_path, 0, ValueError("reader 0 found nothing"), at=1.0)
    write_error(tmp_path, 1, ValueError("reader 1 found nothing"), at=1.5)
    with pytest.raises(ValueError, match="^rank 0: reader 0 found nothing$"):
        _raise_rank_error(tmp_path)


def test_a_user_error_that_does_not_pickle_travels_as_a_plain_value_error():
    class Keyworded(ValueError):
        def __init__(self, *, value):
            super().__init__(f"bad value {value}")

    error = pickle.loads(bytes.fromhex(_pickled(Keyworded(value=3))))
    assert type(error) is ValueError and str(error) == "bad value 3"


def test_no_error_file_raises_nothing(tmp_path):
    _raise_rank_error(tmp_path)
