"""DeepSpeed's start-up lines are filtered, and nothing else is: its other warnings and other prints pass.
(A real run's whole console output is checked in tests/integration/test_cli_first_runs.py.)"""

from __future__ import annotations

import logging

from dmlscale.train.deepspeed_quiet import deepspeed, without_startup_prints


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_only_the_startup_messages_are_dropped_from_deepspeeds_and_torchs_loggers():
    for name, dropped, kept in (
            ("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to "
                          "detect it.", "ZeRO: the optimizer state does not fit; offloading"),
            ("torch.utils.cpp_extension", "No CUDA runtime is found, using CUDA_HOME='/usr/local'",
             "Error checking compiler version for c++")):
        logger, recorder = logging.getLogger(name), Recorder()
        logger.addHandler(recorder)
        try:
            logger.warning(dropped)
            logger.warning(kept)
            logger.warning("%s", kept + " (formatted)")
        finally:
            logger.removeHandler(recorder)
        assert recorder.messages == [kept, kept + " (formatted)"], name
    assert deepspeed.utils.logger is logging.getLogger("DeepSpeed")  # the logger DeepSpeed itself uses


def test_the_build_print_is_dropped_and_other_prints_pass_in_order(capsys):
    with without_startup_prints():
        print("before")
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
        print("DeepSpeed info: something built successfully elsewhere")  # not the start-up line
        print("after", end="")
    assert capsys.readouterr().out == "before\nDeepSpeed info: something built successfully elsewhere\nafter"


def test_what_was_printed_comes_out_also_when_the_block_fails(capsys):
    try:
        with without_startup_prints():
            print("said before the error")
            raise KeyError("boom")
    except KeyError:
        pass
    assert capsys.readouterr().out == "said before the error\n"
