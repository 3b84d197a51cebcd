"""README.md as written: every ```python block runs, every command line parses.

Each ```python block is found by a marker line it contains (not by its position), and every block must
be claimed by one test here, so a new block needs a test. Blocks run statement by statement (tracebacks
point at README.md lines); sketch blocks get a prelude that defines their placeholders (`MyEmbedder`,
`images`, `chunks`, `loader`, `img_ND`, `tokenizer`, ...) with real, tiny objects: a real model, real
tensors, real shards written by the project's writer in a temporary folder. The DDP block runs on a 1-rank
gloo group that is destroyed afterwards; the DeepSpeed block (ZeRO-2 on the CPU, as written) runs in a
subprocess, so no DeepSpeed state leaks into the test session. Every block also gets a static check:
each imported name resolves, and each call of a dmlscale function or class binds its keywords and
positional count against the callee's signature (this also covers code in comments, e.g. the
`build_model("tower_clip", ...)` alternatives, which are executed as well).

The ```bash blocks and the README's inline `dmlscale ...` spans: every flag exists in that command's
argparse, every `--config NAME` is a packaged recipe, every `key=value` override loads with
`load_config`, and every `benchmarks/`, `launch/`, `slurm/` path named in the README exists.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# marker line -> the test that runs that ```python block
PYTHON_BLOCKS = {
    "from dmlscale import distances, losses, miners, reducers": "test_pml_drop_in_block",
    "model = DDP(MyEmbedder())": "test_global_batch_block",
    "engine = build_engine(": "test_engine_block",
    "loader = make_loader(": "test_loader_block",
    "sampler = MPerClassSampler(": "test_sampler_block",
    "balanced = make_loader(": "test_balanced_loader_block",
    "arcface = ShardedArcFaceLoss(": "test_sharded_arcface_block",
    "# make_images.py": "test_own_images_blocks",
    "# use_export.py": "test_own_images_blocks",
    "from dmlscale.eval import": "test_eval_block",
    "miner = TripletMarginMiner(": "test_streamed_mining_block",
}


@dataclasses.dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # README line of the block's first code line (1-based)
    heading: str


def fenced_blocks(language: str) -> list[Block]:
    blocks, heading, lines = [], "", README.read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        if line.startswith("```"):
            fence_language, start = line[3:].strip(), index + 1
            index += 1
            while not lines[index].startswith("```"):
                index += 1
            if fence_language == language:
                blocks.append(Block(language, "\n".join(lines[start:index]) + "\n", start + 1, heading))
        index += 1
    return blocks


def python_block(marker: str) -> Block:
    found = [block for block in fenced_blocks("python") if marker in block.code]
    assert len(found) == 1, f"expected one ```python block of README.md containing {marker!r}, found {len(found)}"
    return found[0]


def run_block(block: Block, namespace: dict, after=None) -> dict:
    """Execute the block's top-level statements in `namespace`, one at a time, with README line numbers;
    `after(source, namespace)` runs after each. Returns the namespace."""
    tree = ast.parse(block.code)
    for node in tree.body:
        source = ast.get_source_segment(block.code, node)
        ast.increment_lineno(node, block.line - 1)
        exec(compile(ast.Module([node], type_ignores=[]), str(README), "exec"), namespace)
        if after is not None:
            after(source, namespace)
    return namespace


def test_every_python_block_is_checked():
    blocks = fenced_blocks("python")
    assert len(blocks) == len(PYTHON_BLOCKS)
    for block in blocks:
        claimed = [marker for marker in PYTHON_BLOCKS if marker in block.code]
        assert len(claimed) == 1, (f"README.md line {block.line} (under {block.heading!r}): every ```python block "
                                   f"needs exactly one marker of tests/test_readme.py PYTHON_BLOCKS, found {claimed}")
    for marker, test_name in PYTHON_BLOCKS.items():
        python_block(marker)
        assert callable(globals().get(test_name)), test_name


# ---------------------------------------------------------------------------------------------------------
# static check: imported names resolve, calls of dmlscale callables bind to their signatures


def commented_code(code: str) -> list[str]:
    """Comments that are Python calls (`# build_model("tower_clip", ...)  # note`), as code."""
    found = []
    for line in code.splitlines():
        if "#" not in line:
            continue
        text = line.split("#", 1)[1].strip()
        for candidate in (text, text.split("  #")[0].strip()):
            try:
                tree = ast.parse(candidate)
            except SyntaxError:
                continue
            if (len(tree.body) == 1 and isinstance(tree.body[0], (ast.Expr, ast.Assign))
                    and isinstance(tree.body[0].value, ast.Call)):
                found.append(candidate)
                break
    return found


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _resolve(dotted: str, namespace: dict):
    root, *attributes = dotted.split(".")
    value = namespace[root]
    for attribute in attributes:
        value = getattr(value, attribute)  # an AttributeError here is a README name that does not exist
    return value


def static_problems(code: str, namespace: dict) -> list[str]:
    """Names that do not resolve and dmlscale calls whose arguments do not bind, for `code` whose imports
    have been executed into `namespace` (other free names are the block's placeholders)."""
    problems = []
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted.split(".")[0] in namespace:
                try:
                    _resolve(dotted, namespace)
                except AttributeError as error:
                    problems.append(f"{dotted}: {error}")
        if not isinstance(node, ast.Call):
            continue
        dotted = _dotted(node.func)
        if dotted is None or dotted.split(".")[0] not in namespace:
            continue
        try:
            callee = _resolve(dotted, namespace)
        except AttributeError:
            continue  # reported above
        module = getattr(callee, "__module__", "") or ""
        if not module.startswith("dmlscale") or any(isinstance(a, ast.Starred) for a in node.args) or any(
                keyword.arg is None for keyword in node.keywords):
            continue
        if dotted.endswith("build_model") and node.args and isinstance(node.args[0], ast.Constant):
            from dmlscale.models.registry import MODEL_BUILDERS  # options go to the family's builder

            callee, positional = MODEL_BUILDERS[node.args[0].value], len(node.args) - 1
        else:
            positional = len(node.args)
        try:
            inspect.signature(callee).bind_partial(*[None] * positional, **{k.arg: None for k in node.keywords})
        except TypeError as error:
            problems.append(f"{ast.unparse(node)}: {error}")
    return problems


def imports_namespace(code: str) -> dict:
    namespace: dict = {}
    for node in ast.parse(code).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module([node], type_ignores=[]), str(README), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("marker", list(PYTHON_BLOCKS))
def test_python_block_names_and_keywords_resolve(marker):
    block = python_block(marker)
    namespace = imports_namespace(block.code)
    if marker.startswith("miner = TripletMarginMiner"):  # the block names library classes without imports
        namespace.update(streamed_block_names(block))
    code = block.code + "".join(line + "\n" for line in commented_code(block.code))
    assert static_problems(code, namespace) == []


# ---------------------------------------------------------------------------------------------------------
# the PML drop-in example (complete): runs as written, and its loss equals PML's


def test_pml_drop_in_block(tmp_path, monkeypatch):
    from pytorch_metric_learning import distances as pml_distances
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners as pml_miners
    from pytorch_metric_learning import reducers as pml_reducers

    monkeypatch.chdir(tmp_path)
    losses_seen = {}
    namespace = run_block(python_block("from dmlscale import distances, losses, miners, reducers"),
                          {"__name__": "__readme__"},
                          after=lambda source, ns: losses_seen.setdefault(source, ns.get("loss")))
    emb, labels = namespace["emb"], namespace["labels"]
    triplet = next(value for source, value in losses_seen.items() if source.startswith("loss = loss_fn("))
    # "same value and gradient as PML": TripletMarginLoss with the same distance, reducer and miner
    pml_emb = emb.detach().clone().requires_grad_(True)
    pml_loss_fn = pml_losses.TripletMarginLoss(margin=0.2, distance=pml_distances.CosineSimilarity(),
                                               reducer=pml_reducers.AvgNonZeroReducer())
    pml_miner = pml_miners.BatchHardMiner(distance=pml_distances.CosineSimilarity())
    expected = pml_loss_fn(pml_emb, labels, pml_miner(pml_emb, labels))
    expected.backward()
    assert triplet.item() == pytest.approx(expected.item(), abs=1e-5) and triplet.item() > 0
    torch.testing.assert_close(emb.grad, pml_emb.grad, atol=1e-6, rtol=1e-4)
    # the reference-set line: PML's NTXentLoss with the same ref_emb / ref_labels
    ref = pml_losses.NTXentLoss(temperature=0.07)(emb.detach(), labels, ref_emb=emb.detach()[:32],
                                                  ref_labels=labels[:32])
    assert namespace["loss"].item() == pytest.approx(ref.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# the global-batch block (DDP on a 1-rank gloo group) and the DeepSpeed engine block (in a fresh process)


def run_in_subprocess(function_name: str, cwd: Path, timeout: float = 180) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-c", f"from tests.test_readme import {function_name}; {function_name}()"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{function_name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


class TinyEmbedder(torch.nn.Module):
    """`MyEmbedder`: 3 x 8 x 8 images -> 128-d embeddings (the cross-batch memory line's embedding_size)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 128))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def global_batch_block_in_process() -> None:
    """The DDP block as written, on a 1-rank gloo group (DDP needs a group; the README's
    init_process_group(info) starts none for one process, as its comment says)."""
    import torch.distributed as dist

    from dmlscale import losses, miners
    from dmlscale.distributed.env import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    torch.manual_seed(0)
    features_ND = torch.nn.functional.normalize(torch.randn(2, 16, 32), dim=-1)
    namespace = {"__name__": "__readme__", "MyEmbedder": TinyEmbedder,
                 "images": torch.randn(24, 3, 8, 8), "labels": torch.arange(24) % 6,
                 "image_features": features_ND[0], "text_features": features_ND[1],
                 "logit_scale": torch.nn.Parameter(torch.full([1], 2.659)),
                 "logit_bias": torch.nn.Parameter(torch.full([1], -1.0))}
    seen = {}

    def after(source: str, ns: dict) -> None:
        seen[source] = ns.get("loss")
        if source.startswith("model = DDP("):
            ns["optimizer"] = torch.optim.SGD(ns["model"].parameters(), lr=0.1)
            seen["weights before"] = [p.detach().clone() for p in ns["model"].parameters()]
        if source.startswith("info = "):
            assert ns["info"].launcher == "single" and ns["info"].world_size == 1

    namespace = run_block(python_block("model = DDP(MyEmbedder())"), namespace, after)
    emb, labels = namespace["emb"], namespace["labels"]
    assert emb.shape == (24, 128)
    global_loss = next(v for s, v in seen.items() if isinstance(s, str) and s.startswith("loss = loss_fn("))
    expected = losses.TripletMarginLoss(margin=0.2)(emb, labels, miners.BatchHardMiner()(emb, labels))
    assert global_loss.item() == pytest.approx(expected.item(), rel=1e-6) and global_loss.item() > 0
    after_step = list(namespace["model"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(seen["weights before"], after_step))  # optimizer.step() ran
    clip_loss = next(v for s, v in seen.items() if isinstance(s, str) and s.startswith("loss = clip("))
    expected = losses.ClipLoss()(namespace["image_features"], namespace["text_features"],
                                 namespace["logit_scale"].exp(), namespace["logit_bias"])
    assert clip_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    memory = losses.CrossBatchMemory(losses.ContrastiveLoss(), 128, memory_size=8192)
    assert namespace["loss"].item() == pytest.approx(memory(emb, labels).item(), rel=1e-6)


def test_global_batch_block(tmp_path):
    """In a fresh process of its own: the block starts a process group, and an earlier in-process test may have
    left one (a one-process `dmlscale train` keeps DeepSpeed's group for the rest of the process)."""
    code = "from tests.test_readme import global_batch_block_in_process as run; run(); print('block ok')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip().endswith("block ok"), done.stderr[-3000:]


def engine_block_in_process() -> None:
    """The models / DeepSpeed block as written (ZeRO-2, fp32 on the CPU) with `chunks` and `loader` from
    real digits shards; then the commented build_model alternatives."""
    import functools

    import deepspeed
    import open_clip

    from dmlscale.data import make_loader, write_digits_shards

    # DeepSpeed's shared-memory CPU collectives op is a JIT-compiled speed-up for several ranks on one host,
    # of no use to 1 rank; sessions with other compiler flags that share ~/.cache/torch_extensions make the
    # next start recompile it (about 1 minute), so this process does without it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    write_digits_shards("data/digits", max_samples_per_split=256)
    tokenizer = functools.partial(open_clip.tokenize, context_length=16)  # dml-tiny-vit's context length
    loader = make_loader("data/digits/train/000000.tar", batch_size=64, image_transform=open_clip.image_transform(
        32, is_train=False), tokenizer=tokenizer)
    batches = iter(loader)
    chunks = [(batch["image"], batch["text"]) for batch in (next(batches) for _ in range(4))]  # "4 chunks of 64"
    namespace = {"__name__": "__readme__", "chunks": chunks, "loader": loader, "step": 4}
    block = python_block("engine = build_engine(")
    namespace = run_block(block, namespace)
    assert torch.isfinite(namespace["loss"]) and namespace["loss"].item() > 0
    state = namespace["state"]
    assert state["step"] == 4 and state["extra"] == {"data": loader.state_dict()}
    exported = open_clip.create_model("local-dir:runs/x/export").state_dict()  # the export line's comment
    for name, value in namespace["engine"].module.state_dict().items():  # (open_clip's logit_scale: 0-dim)
        torch.testing.assert_close(exported[name].reshape(value.shape), value, rtol=0, atol=0)
    alternatives = [code for code in commented_code(block.code) if code.startswith("build_model(")]
    assert len(alternatives) == 2, alternatives  # tower_clip with MiniLM, and a timm embedder
    for code in alternatives:
        assert isinstance(eval(code, namespace), torch.nn.Module)


def test_engine_block(tmp_path):
    run_in_subprocess("engine_block_in_process", tmp_path)


# ---------------------------------------------------------------------------------------------------------
# the loader block, on the digits shards `dmlscale shards --source digits --output data/digits` writes


class RecordingDict(dict):
    """`checkpoint`: records every data state the loop stores."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stored: list[dict] = []

    def __setitem__(self, key, value) -> None:
        self.stored.append(value)
        super().__setitem__(key, value)


def test_loader_block(tmp_path, monkeypatch):
    import open_clip

    from dmlscale.cli import main as cli_main
    from dmlscale.data import make_loader

    monkeypatch.chdir(tmp_path)
    assert cli_main(["shards", "--source", "digits", "--output", "data/digits", "--no-progress"]) == 0
    rank, world = 0, 2
    preprocess = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    first = make_loader("data/digits/train/{000000..000001}.tar", batch_size=256, rank=rank, world_size=world,
                        seed=0, image_transform=preprocess, tokenizer=tokenizer)
    first.set_epoch(1)
    next(iter(first))
    checkpoint = RecordingDict(data=first.state_dict())  # a state after the first batch of epoch 1
    checkpoint.stored.clear()
    namespace = {"__name__": "__readme__", "rank": rank, "world": world, "preprocess": preprocess,
                 "tokenizer": tokenizer, "checkpoint": checkpoint, "start_epoch": 1, "epochs": 2}
    namespace = run_block(python_block("loader = make_loader("), namespace)
    loader, batch = namespace["loader"], namespace["batch"]
    assert loader.epoch_batches == 1347 // (world * 256) == 2
    assert loader.num_batches == len(checkpoint.stored) == 1  # "loader.num_batches batches": the rest of epoch 1
    assert sorted(batch) == ["image", "key", "text"]  # {"image": BxCxHxW, "text": BxL, "key": [...]}
    assert batch["image"].shape == (256, 3, 32, 32) and batch["text"].shape == (256, 77) and len(batch["key"]) == 256
    # epoch 1 resumed after its first batch: its one remaining batch, re-planned for 8 workers (one pass of
    # 8 workers here; each epoch costs one)
    assert [(s["epoch"], s["batches_consumed"], s["num_batches"]) for s in checkpoint.stored] == [(1, 1, 1)]


def test_balanced_loader_block(tmp_path, monkeypatch):
    """The class-balanced shard loader block as written (rank 0 of 2): resumed after one batch of epoch 1, the
    loop runs that epoch's other batches, each 4 samples of each of 4 classes, and stores one state per step."""
    from collections import Counter

    import open_clip

    from dmlscale.data import make_loader, write_digits_shards

    monkeypatch.chdir(tmp_path)
    write_digits_shards("data/digits", samples_per_shard=100, max_samples_per_split=200)  # 2 train shards, quick
    preprocess = open_clip.image_transform(32, is_train=False)
    first = make_loader("data/digits/train/{000000..000001}.tar", task="image_label", m_per_class=4, batch_size=16,
                        rank=0, world_size=2, seed=0)
    first.set_epoch(1)
    next(iter(first))
    checkpoint = RecordingDict(data=first.state_dict())
    checkpoint.stored.clear()
    namespace = {"__name__": "__readme__", "rank": 0, "world": 2, "preprocess": preprocess,
                 "checkpoint": checkpoint, "start_epoch": 1, "epochs": 2}
    namespace = run_block(python_block("balanced = make_loader("), namespace)
    balanced, batch = namespace["balanced"], namespace["batch"]
    assert sorted(batch) == ["image", "key", "label"] and batch["image"].shape == (16, 3, 32, 32)
    assert sorted(Counter(batch["label"].tolist()).values()) == [4] * 4
    assert len(checkpoint.stored) == balanced.num_batches - 1 > 0
    assert [s["batches_consumed"] for s in checkpoint.stored] == list(range(2, balanced.num_batches + 1))


def test_sampler_block():
    """The samplers block as written: 4 of each of 8 classes per local batch; resumed after one batch of epoch 1
    (rank 0 of 2), the loop runs that epoch's remaining batches and stores one state per step."""
    from dmlscale.samplers import DistributedMPerClassSampler

    labels = torch.arange(320) % 40  # 40 classes of 8
    dataset = torch.utils.data.TensorDataset(torch.arange(320))
    first = DistributedMPerClassSampler(labels, m=4, batch_size=32, rank=0, world_size=2, seed=0)
    first.set_epoch(1)
    next(iter(first))
    checkpoint = RecordingDict(sampler=first.state_dict(batches_consumed=1))
    checkpoint.stored.clear()
    namespace = {"__name__": "__readme__", "labels": labels, "dataset": dataset, "rank": 0, "world": 2,
                 "checkpoint": checkpoint, "start_epoch": 1, "epochs": 2}
    namespace = run_block(python_block("sampler = MPerClassSampler("), namespace)
    sampler, batch = namespace["sampler"], namespace["batch"]
    counts = torch.bincount(labels[batch[0]], minlength=40)
    assert sorted(counts[counts > 0].tolist()) == [4] * 8  # the last local batch: 4 of each of 8 classes
    assert [s["batches_consumed"] for s in checkpoint.stored] == list(range(2, sampler.num_batches + 1))
    assert all(s["epoch"] == 1 for s in checkpoint.stored)


def test_sharded_arcface_block(tmp_path):
    """The class-sharded ArcFace block as written, as 2 processes with torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR/PORT, LOCAL_RANK; without its elastic agent): each rank owns half of the 1,000,003 classes
    and prints the same global-batch loss."""
    from dmlscale.distributed.env import free_port

    script = tmp_path / "sharded_arcface.py"
    script.write_text(python_block("arcface = ShardedArcFaceLoss(").code)
    port = str(free_port())
    ranks = [subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
                                   "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port})
             for rank in range(2)]
    outputs = [rank.communicate(timeout=600) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-2000:] for _, err in outputs]
    lines = sorted(line for out, _ in outputs for line in out.splitlines() if line.startswith("rank "))
    assert [line.split(":")[0] for line in lines] == ["rank 0", "rank 1"], outputs
    assert "classes [0, 500002)" in lines[0] and "classes [500002, 1000003)" in lines[1], lines
    printed = re.search(r"it prints\s+`(rank 0: [^`]+)` and `(rank 1: [^`]+)`", README.read_text())
    assert printed and lines == list(printed.groups()), (lines, printed)  # the README's two lines, loss and all


# ---------------------------------------------------------------------------------------------------------
# "Train on your own images": make_images.py as written, the shards command as written, use_export.py


def own_images_commands() -> list[str]:
    block = next(block for block in fenced_blocks("bash") if "python make_images.py" in block.code)
    return block.code.splitlines()


def test_own_images_blocks(tmp_path, monkeypatch, capsys):
    """make_images.py and the `dmlscale shards` command run as written and print the README's lines. The
    README's 100-step `dmlscale train` takes about 30 s on 2 cores (23 s of steps; more when DeepSpeed
    recompiles its op), over this file's budget, so use_export.py runs against an export written by the
    project's own writer from the model that the recipe and the README's overrides build, untrained: its
    names, paths, preprocessing and output shape are checked, not the similarities it prints
    (tests/integration/test_own_images.py trains, evaluates and loads an export)."""
    from sklearn.datasets import load_digits

    from dmlscale.cli import main as cli_main
    from dmlscale.train.build import build_run_model
    from dmlscale.train.config import load_config
    from dmlscale.train.export import write_export
    from dmlscale.train.train_cli import resolve_config_path

    monkeypatch.chdir(tmp_path)
    make_images, use_export = python_block("# make_images.py"), python_block("# use_export.py")
    run_block(make_images, {"__name__": "__main__"})
    pngs = sorted(Path("my_images").glob("digit_*/*.png"))
    assert len(pngs) == 1797 and len({png.parent for png in pngs}) == 10  # "1,797 images, 10 classes"

    lines = own_images_commands()
    shards = next(line for line in lines if line.startswith("dmlscale shards "))
    capsys.readouterr()
    assert cli_main(shlex.split(shards)[1:] + ["--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = [line[2:] for line in lines if line.startswith("# dmlscale shards: ")]
    assert expected and [line for line in printed if line in expected] == expected, printed

    train = shlex.split(next(line for line in lines if line.startswith("dmlscale train ")), comments=True)
    args = parse_command(train)
    config = load_config(resolve_config_path(args.config), args.overrides)
    model = build_run_model(config)
    export_dir = Path(config.run_dir) / "export"  # the README's runs/my-images/export
    assert export_dir == Path("runs/my-images/export")
    write_export(model.state_dict(), model.dmlscale_spec, export_dir)
    printed_shape = next(line for line in lines if line.startswith("# torch.Size("))
    capsys.readouterr()
    namespace = run_block(use_export, {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert out.startswith(printed_shape[2:].split(" tensor(")[0])  # torch.Size([3, 64])
    assert namespace["emb_ND"].shape == (3, config.model.embed_dim)
    model = namespace["model"]  # "the ImageEmbedder with its trained fp32 weights, eval mode"
    assert type(model).__name__ == "ImageEmbedder" and not model.training
    assert all(value.dtype == torch.float32 for value in model.state_dict().values() if value.is_floating_point())
    assert config.data.image_size == 32  # "(data.image_size: 32)"
    labels = [int(Path(path).parent.name.split("_")[1]) for path in namespace["paths"]]
    digits_target = load_digits().target  # the paths' indices are digits of those classes
    assert labels == [int(digits_target[int(Path(path).stem)]) for path in namespace["paths"]] == [3, 3, 7]


# ---------------------------------------------------------------------------------------------------------
# the evaluation block


def test_eval_block():
    import functools

    import open_clip
    from pytorch_metric_learning.utils import accuracy_calculator, inference
    from pytorch_metric_learning import distances as pml_distances
    from sklearn.cluster import KMeans

    from dmlscale.models import build_model

    generator = torch.Generator().manual_seed(0)
    labels_N = torch.arange(40) % 4
    centers = torch.randn(4, 16, generator=generator)
    img_ND = centers[labels_N] + 0.5 * torch.randn(40, 16, generator=generator)
    namespace = {"__name__": "__readme__", "img_ND": img_ND, "labels_N": labels_N, "emb_ND": img_ND,
                 "txt_MD": torch.cat([img_ND, img_ND]) + 0.1 * torch.randn(80, 16, generator=generator),
                 "text_image_index_M": torch.cat([torch.arange(40), torch.arange(40)]),
                 "model": build_model("open_clip", "dml-tiny-vit"),
                 "tokenizer": functools.partial(open_clip.tokenize, context_length=16),
                 "classnames": ["zero", "one", "two", "three"]}
    results = {}
    block = python_block("from dmlscale.eval import")
    tree = ast.parse(block.code)  # keep each expression statement's value
    for node in tree.body:
        source = ast.get_source_segment(block.code, node)
        ast.increment_lineno(node, block.line - 1)
        if isinstance(node, ast.Expr):
            results[source] = eval(compile(ast.Expression(node.value), str(README), "eval"), namespace)
            if source.startswith("retrieval_metrics("):  # zero-shot: image features of dml-tiny-vit's width
                namespace["img_ND"] = torch.randn(40, 32, generator=generator)
        else:
            exec(compile(ast.Module([node], type_ignores=[]), str(README), "exec"), namespace)
    retrieval = next(v for s, v in results.items() if s.startswith("retrieval_metrics("))
    for direction in ("image_to_text", "text_to_image"):  # "-> image_to_text_R@1/5/10, ..._mean_rank, ..."
        for name in ("R@1", "R@5", "R@10", "mean_rank", "median_rank"):
            assert f"{direction}_{name}" in retrieval
    assert namespace["clf"].shape == (32, 4)
    zero_shot = next(v for s, v in results.items() if s.startswith("zero_shot_accuracy("))
    assert set(zero_shot) == {"top1", "top5"}
    accuracy = next(v for s, v in results.items() if s.startswith("metric_accuracy("))
    calculator = accuracy_calculator.AccuracyCalculator(  # "PML AccuracyCalculator's keys and numbers"
        device=torch.device("cpu"), knn_func=inference.CustomKNN(pml_distances.LpDistance(normalize_embeddings=False)),
        kmeans_func=lambda x, k: torch.from_numpy(KMeans(k, n_init=1, random_state=0).fit_predict(x.numpy())))
    expected = calculator.get_accuracy(namespace["emb_ND"], labels_N)
    assert set(accuracy) == set(expected)
    for name, value in expected.items():
        assert accuracy[name] == pytest.approx(value, abs=1e-6), name


# ---------------------------------------------------------------------------------------------------------
# the streamed-mining block: the names it uses are the library's; streamed equals materialised


def streamed_block_names(block: Block) -> dict:
    from dmlscale import distributed, losses, miners

    free = {node.id for node in ast.walk(ast.parse(block.code)) if isinstance(node, ast.Name)}
    names = {}
    for name in sorted(free):
        module = next((m for m in (losses, miners, distributed) if hasattr(m, name)), None)
        if module is not None:
            names[name] = getattr(module, name)
    return names


class _SetTiled(ast.NodeTransformer):
    def __init__(self, value: bool) -> None:
        self.value = value

    def visit_Call(self, node: ast.Call) -> ast.Call:
        self.generic_visit(node)
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        if name.endswith(("Loss", "Miner")) and name != "DistributedLoss":
            node.keywords = [k for k in node.keywords if k.arg not in ("tiled", "tile_size")]
            node.keywords.append(ast.keyword("tiled", ast.Constant(self.value)))
            if self.value:  # several tiles of the 48-row batch
                node.keywords.append(ast.keyword("tile_size", ast.Constant(16)))
        return node


def test_streamed_mining_block():
    block = python_block("miner = TripletMarginMiner(")
    names = streamed_block_names(block)
    assigned = {t.id for n in ast.walk(ast.parse(block.code)) if isinstance(n, ast.Assign) for t in n.targets}
    used = {n.id for n in ast.walk(ast.parse(block.code)) if isinstance(n, ast.Name)}
    assert used - assigned <= set(names), f"names of no dmlscale module: {used - assigned - set(names)}"
    generator = torch.Generator().manual_seed(0)
    emb = torch.randn(48, 16, dtype=torch.float64, generator=generator)
    labels = torch.arange(48) % 6
    for node in ast.parse(block.code).body:  # each line as written, and forced materialised / streamed
        outputs = []
        for variant in (node, _SetTiled(False).visit(ast.parse(ast.unparse(node)).body[0]),
                        _SetTiled(True).visit(ast.parse(ast.unparse(node)).body[0])):
            namespace = {"__name__": "__readme__", **names}
            exec(compile(ast.fix_missing_locations(ast.Module([variant], type_ignores=[])), str(README), "exec"),
                 namespace)
            (target,) = variant.targets
            outputs.append(namespace[target.id](emb, labels))
        for output in outputs[1:]:
            if isinstance(output, tuple):
                assert all(torch.equal(a, b) for a, b in zip(output, outputs[0])), ast.unparse(node)
            else:
                assert output.item() == pytest.approx(outputs[0].item(), abs=1e-10), ast.unparse(node)


# ---------------------------------------------------------------------------------------------------------
# command lines: ```bash blocks and inline `dmlscale ...` spans


def parse_command(tokens: list[str]):
    """argparse's Namespace for `dmlscale <command> ...` (SystemExit -> a test failure naming the line)."""
    from dmlscale.cli import build_parser

    assert tokens[0] == "dmlscale"
    try:
        return build_parser(tokens[1]).parse_args(tokens[1:])
    except SystemExit:
        pytest.fail(f"README command does not parse: {' '.join(tokens)}")


def bash_commands() -> list[tuple[int, str]]:
    """(README line, command) for every command of the ```bash blocks: continuations joined, comments and
    `&&` chains split, leading VAR=value assignments dropped."""
    commands = []
    for block in fenced_blocks("bash"):
        joined, start = "", None
        for offset, line in enumerate(block.code.splitlines()):
            start = block.line + offset if start is None else start
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            joined += line
            tokens = shlex.split(joined, comments=True)
            joined, line_no, start = "", start, None
            for part in " ".join(shlex.quote(t) if t != "&&" else "&&" for t in tokens).split(" && "):
                words = shlex.split(part)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                if words:
                    commands.append((line_no, shlex.join(words)))
    return commands


def inline_dmlscale_spans() -> list[str]:
    text = README.read_text()
    spans = re.findall(r"(?<!`)`(dmlscale [^`]+)`(?!`)", text)
    return [span for span in spans if span.split()[1] in ("train", "eval", "export", "shards", "demo")]


def is_synopsis(command: str) -> bool:
    return any(mark in command for mark in ("[", "|", "...", "NAME", " N ", "RUN_DIR"))


def check_dmlscale_command(command: str, *, full: bool = True) -> None:
    from dmlscale.cli import build_parser
    from dmlscale.train.config import load_config
    from dmlscale.train.train_cli import resolve_config_path

    tokens = shlex.split(command)
    name = tokens[1]
    subparser = build_parser(name)._subparsers._group_actions[0].choices[name]
    known = {option: action for action in subparser._actions for option in action.option_strings}
    for index, token in enumerate(tokens):
        flag = re.match(r"\[?(--[a-z][a-z0-9-]*)", token)
        if flag:
            assert flag.group(1) in known, f"`{command}`: {name} has no {flag.group(1)}; it has {sorted(known)}"
            action = known[flag.group(1)]
            if action.choices and index + 1 < len(tokens):  # `--templates heldout|train|both`
                for choice in tokens[index + 1].strip("[]").split("|"):
                    assert choice in action.choices, f"`{command}`: {flag.group(1)} {choice} not in {action.choices}"
    if name == "shards" and "--source" in tokens:
        from dmlscale.data.shards_cli import SOURCES

        assert set(tokens[tokens.index("--source") + 1].split("|")) <= set(SOURCES), command
    if is_synopsis(command) or not full:
        return
    args = parse_command(tokens)
    if name == "train":
        load_config(resolve_config_path(args.config), args.overrides)


def script_commands() -> list[tuple[int, str]]:
    return [(line, command) for line, command in bash_commands()
            if re.search(r"(^|\s)(launch/\S+\.sh|slurm/\S+)", command)]


DMLSCALE_COMMANDS = [(line, shlex.join(["dmlscale", *shlex.split(command)[1:]])) for line, command in bash_commands()
                     if Path(shlex.split(command)[0]).name == "dmlscale"]  # `.venv/bin/dmlscale train` too


@pytest.mark.parametrize("line, command", DMLSCALE_COMMANDS, ids=[f"README.md:{line}" for line, _ in DMLSCALE_COMMANDS])
def test_bash_dmlscale_command(line, command):
    check_dmlscale_command(command)


@pytest.mark.parametrize("span", inline_dmlscale_spans())
def test_inline_dmlscale_span(span):
    """Inline spans name a command and some of its flags (`dmlscale export --output`); a `dmlscale train`
    span with overrides loads, or fails with the message the README quotes after it (`... -> `message``)."""
    from dmlscale.train.config import load_config
    from dmlscale.train.train_cli import resolve_config_path

    check_dmlscale_command(span, full=False)
    tokens = shlex.split(span)
    if tokens[1] != "train" or is_synopsis(span):
        return
    args = parse_command(tokens)
    try:
        load_config(resolve_config_path(args.config), args.overrides)
    except ValueError as error:
        assert f"`{span}` -> `{error}`" in README.read_text(), f"`{span}` fails: {error}"


def test_launch_and_slurm_commands_pass_train_arguments():
    """`launch/*.sh ARGS` and `sbatch ... slurm/train.sbatch ARGS` hand ARGS to `dmlscale train`; the
    environment variables the README sets are read by the script."""
    from dmlscale.train.config import load_config
    from dmlscale.train.train_cli import resolve_config_path

    assert script_commands()
    for block in fenced_blocks("bash"):
        text = block.code.replace("\\\n", " ")
        for line in text.splitlines():
            match = re.search(r"(launch/\S+\.sh|slurm/\S+)", line)
            if not match:
                continue
            script = ROOT / match.group(1)
            assert script.is_file(), match.group(1)
            source = script.read_text()
            assert "dmlscale.cli train \"$@\"" in source or "train" in source, script
            for variable in re.findall(r"(?:^|\s)([A-Z_]+)=\S+", line.split(match.group(1))[0]):
                assert re.search(rf"\${{?{variable}\b", source), f"{match.group(1)} does not read ${variable}"
            arguments = shlex.split(line.split(match.group(1), 1)[1], comments=True)
            args = parse_command(["dmlscale", "train", *arguments])
            load_config(resolve_config_path(args.config), args.overrides)


def test_paths_named_in_readme_exist():
    text = README.read_text()
    paths = set(re.findall(r"(?<![\w/])((?:benchmarks|launch|slurm)/[\w./-]*\w)", text))
    assert {"benchmarks/ntxent_memory.py", "launch/torchrun_single_node.sh", "slurm/train.sbatch"} <= paths
    missing = sorted(path for path in paths if not (ROOT / path).exists())
    assert missing == []


def test_benchmark_flags_exist():
    """`benchmarks/X.py --flag ...` in the README: each flag is one the script defines."""
    text = README.read_text()
    for script, rest in re.findall(r"(benchmarks/\w+\.py)((?:\s+\[?--[\w-]+(?:\s+[\w.]+)*\]?)+)", text):
        source = (ROOT / script).read_text()
        for flag in re.findall(r"--[\w-]+", rest):
            assert f'"{flag}"' in source or f"'{flag}'" in source, f"{script} defines no {flag}"


def test_packaged_recipes_named_in_readme():
    """`--config NAME` and the recipe list in the prose are packaged recipes that load."""
    from dmlscale.train.config import load_config
    from dmlscale.train.train_cli import recipe_names, resolve_config_path

    text = README.read_text()
    named = set(re.findall(r"--config ([a-z_0-9]+)", text))
    named |= set(re.findall(r"`(quickstart|clip_vit_b32_laion|metric_learning_digits)`", text))
    assert named and named <= set(recipe_names())
    for name in named:
        load_config(resolve_config_path(name))


def test_yaml_block_and_quoted_config_messages(tmp_path):
    """The ```yaml `loss` section loads into a recipe; the config messages the README quotes are the
    ones load_config gives (a bad option name, a value of the wrong type, a run shorter than its warmup)."""
    import warnings

    import yaml

    from dmlscale.train.config import load_config
    from dmlscale.train.train_cli import resolve_config_path

    text = README.read_text().replace("\n", " ")
    (block,) = [block for block in fenced_blocks("yaml") if block.code.startswith("loss:")]
    recipe = yaml.safe_load(resolve_config_path("metric_learning_digits").read_text())
    recipe["loss"] = yaml.safe_load(block.code)["loss"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    config = load_config(path)
    assert config.loss.name == "MultiSimilarityLoss" and config.loss.options["beta"] == 40

    quoted = re.search(r"`(loss\.options\.alpah: [^`]*)\[\.\.\.\]`", text).group(1)
    with pytest.raises(ValueError) as error:
        load_config(path, ["loss.options={alpah: 2}"])
    assert str(error.value).startswith(quoted)
    quoted = re.search(r"`(loss\.options\.neg_margin must be [^`]*)`", text).group(1)
    with pytest.raises(ValueError) as error:
        load_config(path, ["loss.name=ContrastiveLoss", "loss.miner=null", "loss.options={neg_margin: wide}"])
    assert str(error.value) == quoted
    quoted = re.search(r"\(`dmlscale train: warning: ([^`]*)`\)", text).group(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(resolve_config_path(None), ["train.steps=5"])  # the README's `train.steps=5`
    assert quoted in [str(warning.message) for warning in caught]


def test_other_bash_commands():
    """The rest of the ```bash lines: `python -m MODULE` imports, `pip install -e '.[EXTRA]'` names an extra
    of pyproject.toml, `python FILE.py` is a ```python block of the README, the CI script runs the test
    command; launch/slurm scripts are checked above and `python3 -m venv`, `sbatch`, `wandb sync` are
    outside tools."""
    import importlib.util
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    outside = {("python3", "-m", "venv"), ("sbatch",), ("wandb", "sync")}
    for line, command in bash_commands():
        words = shlex.split(command)
        program = Path(words[0]).name
        if program == "dmlscale" or re.search(r"(launch|slurm)/", command) or any(
                tuple(words[:len(tool)]) == tool for tool in outside):
            continue
        if program in ("python", "python3") and words[1] == "-m" and words[2] == "pytest":
            assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()  # "this is what .ci/run does"
        elif program in ("python", "python3") and words[1] == "-m":
            spec = importlib.util.find_spec(words[2])
            assert spec is not None, f"README.md:{line}: no module {words[2]}"
            assert 'if __name__ == "__main__":' in Path(spec.origin).read_text(), f"README.md:{line}: {words[2]}"
        elif program in ("python", "python3") and words[1].endswith(".py"):
            python_block(f"# {words[1]}")
        elif program == "pip" and "-e" in words:
            extra = re.fullmatch(r"\.\[(\w+)\]", words[words.index("-e") + 1]).group(1)
            assert extra in extras, f"README.md:{line}: pyproject.toml has no extra {extra!r}"
        else:
            pytest.fail(f"README.md:{line}: no check for `{command}`; add one to tests/test_readme.py")


def test_flags_in_prose_exist():
    """Every `--flag` named outside the code blocks is an option of a dmlscale command or of a benchmark
    script, or one the launch / Slurm scripts pass (torchrun's --max-restarts, #SBATCH --requeue);
    --standalone is torchrun's own (the README contrasts it with the scripts' c10d rendezvous)."""
    from dmlscale.cli import COMMANDS, build_parser

    text = re.sub(r"```.*?```", "", README.read_text(), flags=re.S)
    known = set()
    for name in COMMANDS:
        subparser = build_parser(name)._subparsers._group_actions[0].choices[name]
        known |= {option for action in subparser._actions for option in action.option_strings}
    sources = [path.read_text() for pattern in ("benchmarks/*.py", "launch/*.sh", "slurm/*")
               for path in ROOT.glob(pattern)]
    for flag in sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)) - known - {"--standalone"}):
        assert any(re.search(rf"['\"\s]{flag}\b", source) for source in sources), f"{flag}: defined nowhere"


@pytest.mark.parametrize("kind", ["loss", "miner", "reducer", "distance"])
def test_every_component_class_is_in_a_readme_table(kind):
    """The loss, miner, reducer and distance tables (or the package table) name every class a recipe can
    reach, so a class added without its table row fails here."""
    from dmlscale import components

    rows = [line for line in README.read_text().splitlines() if line.startswith("|")]
    missing = [name for name in components.component_classes(kind) if not any(f"`{name}`" in row for row in rows)
               and not any(f"`{name}(" in row for row in rows)]
    assert not missing, f"README tables lack these {kind} classes: {missing}"
