"""DeepSpeed without its start-up noise: `from dmlscale.train.deepspeed_quiet import deepspeed` (inside a function).

On a machine without a GPU every DeepSpeed start said three things the user can do nothing about:
- DeepSpeed's logger: "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to
  detect it." (on the first `get_accelerator()`, i.e. at import);
- torch's logger, when DeepSpeed's op builder imports torch.utils.cpp_extension: "No CUDA runtime is found,
  using CUDA_HOME=...";
- a print from deepspeed.comm: "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
  also when the op comes from the cache.
Logging filters on those two loggers drop exactly the first two messages (a filter, not a level: DeepSpeed's
other warnings still show), and `without_startup_prints()` drops the print around the call that makes it.
Importing this module imports DeepSpeed, so the --nproc fork server preloads it instead of `deepspeed`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from collections.abc import Iterator

# logger name -> the start of each message dropped from it
STARTUP_LOG_MESSAGES = {
    "DeepSpeed": ("Setting accelerator to CPU.",),
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
}
STARTUP_PRINT = re.compile(r"DeepSpeed \S+ built successfully")


class DropStartupMessages(logging.Filter):
    """Drops the records whose message starts with one of `prefixes`; passes every other one."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def install_filters() -> None:
    """Put the filters on DeepSpeed's and torch's loggers (once per process; a forked child inherits them)."""
    for name, prefixes in STARTUP_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, DropStartupMessages) for existing in logger.filters):
            logger.addFilter(DropStartupMessages(prefixes))


@contextlib.contextmanager
def without_startup_prints() -> Iterator[None]:
    """Run the block with stdout held back; afterwards (also after an error) write what it printed, less
    DeepSpeed's "... built successfully" lines."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stdout(held):
            yield
    finally:
        kept = [line for line in held.getvalue().splitlines(keepends=True)
                if not STARTUP_PRINT.fullmatch(line.rstrip("\n"))]
        if kept:
            sys.stdout.write("".join(kept))
            sys.stdout.flush()


install_filters()
import deepspeed  # noqa: E402  (after the filters: its import logs the accelerator line)
