"""Step probe for benchmarks/e2e_vs_openclip.py: the same timestamps and memory read from both trainers.

The benchmark puts this folder first on PYTHONPATH of the commands it starts, so Python loads this file
at start-up in every process of a run (launcher, torchrun agent, fork server, ranks, loader workers);
it does nothing unless E2E_PROBE_DIR is set. Once `torch` is imported it registers two global torch hooks:
  - after every optimizer step (torch.optim's global post-step hook): {"event": "step", "t": wall time}
  - on the first forward call of a module in training mode that holds parameters of its own (a module
    forward pre-hook, removed after that call): {"event": "first_forward", "t": ...}, the start of step 1
and at the exit of a process that stepped: {"event": "exit", "t": ..., "peak_rss_kib": VmHWM}. Each process
appends JSON lines to E2E_PROBE_DIR/<pid>.jsonl. A process forked from one that imported torch (a
--nproc rank from its fork server) inherits the hooks and writes its own file; multiprocessing's
children leave through os._exit, so the exit record is written by a multiprocessing finalizer there
and by atexit elsewhere. Neither trainer is changed; the probe costs one file write per step. (It shadows
any other sitecustomize module, in the benchmark's commands only.)
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
import time

PROBE_DIR = os.environ.get("E2E_PROBE_DIR")


def peak_rss_kib() -> int | None:
    """This process's peak resident set size (VmHWM of /proc/self/status), KiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class ProbeFile:
    """The probe records of the current process (a fork gets its own file at its first record)."""

    def __init__(self, folder: str) -> None:
        self.folder, self.pid, self.handle, self.exited = folder, None, None, False

    def write(self, **record: object) -> None:
        if self.pid != os.getpid():
            self.pid, self.exited = os.getpid(), False
            self.handle = open(os.path.join(self.folder, f"{self.pid}.jsonl"), "a", buffering=1)
            self._write_at_exit()
        self.handle.write(json.dumps(record) + "\n")

    def _write_at_exit(self) -> None:
        import atexit
        import multiprocessing.util

        pid = self.pid

        def at_exit() -> None:
            if not self.exited and os.getpid() == pid:
                self.exited = True
                self.handle.write(json.dumps({"event": "exit", "t": time.time(), "peak_rss_kib": peak_rss_kib()})
                                  + "\n")
                self.handle.close()

        atexit.register(at_exit)
        multiprocessing.util.Finalize(None, at_exit, exitpriority=-100)


def install_hooks(torch_module: object, probe: ProbeFile) -> None:
    """The post-step and first-forward hooks (global: every optimizer and module of this process)."""
    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def after_step(optimizer, args, kwargs) -> None:
        probe.write(event="step", t=time.time())

    handles = []

    def before_forward(module, args) -> None:
        if handles and module.training and next(module.parameters(recurse=False), None) is not None:
            handles.pop().remove()
            probe.write(event="first_forward", t=time.time())

    register_optimizer_step_post_hook(after_step)
    handles.append(register_module_forward_pre_hook(before_forward))


class AfterTorchImport(importlib.abc.MetaPathFinder):
    """Runs install_hooks once the `torch` package has finished importing (wherever that happens)."""

    def __init__(self, probe: ProbeFile) -> None:
        self.probe = probe

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_torch = spec.loader.exec_module

        def exec_module(module) -> None:
            exec_torch(module)
            install_hooks(module, self.probe)

        spec.loader.exec_module = exec_module
        return spec


if PROBE_DIR:
    sys.meta_path.insert(0, AfterTorchImport(ProbeFile(PROBE_DIR)))
