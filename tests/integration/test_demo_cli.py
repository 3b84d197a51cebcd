"""`dmlscale demo` trains a real embedder on real digits through the CLI entry point."""

from dmlscale import cli, demo


def test_demo_trains_to_high_heldout_precision(capsys):
    assert cli.main(["demo", "--steps", "150", "--print-every", "50"]) == 0
    out = capsys.readouterr().out
    assert "held-out precision@1" in out
    result = demo.run("TripletMarginLoss", None, steps=150, seed=1, print_every=1000)
    assert result["after"] > 0.95
    assert result["after"] > result["before"]


def test_demo_rejects_unknown_loss_by_name(capsys):
    assert cli.main(["demo", "--loss", "NoSuchLoss", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "NoSuchLoss" in err and "TripletMarginLoss" in err
