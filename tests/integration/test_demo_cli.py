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
