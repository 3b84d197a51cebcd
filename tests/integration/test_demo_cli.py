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


def test_every_command_help_answers_without_importing_torch():
    """`dmlscale <command> --help` parses arguments before any heavy import (torch alone is seconds)."""
    import subprocess
    import sys

    for command in cli.COMMANDS:
        probe = ("import sys\nfrom dmlscale import cli\ntry:\n    cli.main([%r, '--help'])\nexcept SystemExit as e:\n"
                 "    assert e.code == 0, e.code\nprint(sorted(m for m in ('torch', 'deepspeed', 'open_clip') "
                 "if m in sys.modules))" % command)
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert result.stdout.strip().splitlines()[-1] == "[]", (command, result.stdout[-500:])


def test_demo_rejects_a_bad_thread_count(capsys):
    assert cli.main(["demo", "--threads", "0"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err


def test_demo_trains_every_listed_loss_and_miner_and_refuses_the_rest(capsys):
    """Each name `--help` offers trains (2 steps); every other public loss or miner is one error line, exit 2."""
    import dmlscale.losses
    import dmlscale.miners
    from dmlscale.demo_choices import DEMO_LOSSES, DEMO_MINERS, NOT_IN_DEMO

    runs = [["--loss", name] for name in DEMO_LOSSES] + [["--miner", name] for name in DEMO_MINERS]
    for options in runs:
        assert cli.main(["demo", *options, "--steps", "2", "--print-every", "100"]) == 0, options
        out = capsys.readouterr().out
        assert f"dmlscale demo: {options[1] if options[0] == '--loss' else 'TripletMarginLoss + ' + options[1]}," in out
        assert "held-out precision@1" in out, (options, out)

    public_losses = {name for name in dmlscale.losses.__all__ if name.endswith("Loss") or name == "BaseMetricLossFunction"}
    public_miners = set(dmlscale.miners.__all__)  # every public name there is a miner (or BaseMiner)
    # a loss or miner added to the library is either offered by the demo or excluded with a reason
    assert public_losses - set(DEMO_LOSSES) == {n for n in NOT_IN_DEMO if n in public_losses}
    assert public_miners - set(DEMO_MINERS) == {n for n in NOT_IN_DEMO if n in public_miners}
    assert set(DEMO_LOSSES) <= public_losses and set(DEMO_MINERS) <= public_miners
    refused = [("--loss", name) for name in sorted(public_losses - set(DEMO_LOSSES))]
    refused += [("--miner", name) for name in sorted(public_miners - set(DEMO_MINERS))] + [("--miner", "NoSuchMiner")]
    assert ("--loss", "ClipLoss") in refused and ("--miner", "BaseMiner") in refused
    for option, name in refused:
        assert cli.main(["demo", option, name, "--steps", "1"]) == 2, name
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"dmlscale demo: error: {option} {name!r} is not one the demo offers"), lines
        allowed = DEMO_LOSSES if option == "--loss" else DEMO_MINERS
        assert lines[0].endswith(f"allowed: {list(allowed)}") and name not in allowed
        assert "held-out" not in captured.out


def test_demo_help_lists_exactly_the_trainable_names(capsys):
    import pytest

    from dmlscale.demo_choices import DEMO_LOSSES, DEMO_MINERS

    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in DEMO_LOSSES + DEMO_MINERS:
        assert name in text
    for name in ("ClipLoss", "SigLipLoss", "GenericPairLoss", "BaseMiner"):
        assert name not in text
