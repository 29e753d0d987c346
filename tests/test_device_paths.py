"""What a GPU run depends on, shown on the CPU (issue 19): device resolution, the CPU pin of
the test suite, DALI build errors named as such, precision (bf16 autocast forced on the CPU
reaches only end-to-end forwards), deferred finiteness checks, checkpoints' RNG states, the
compile-around-DDP wrapper and the labels ImageData keeps."""

from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.distributed import DistContext, autocast, resolve_device
from shards.base.errors import WsmlError
from shards.shardset import open_shard_set
from tests.support.methods import create_method
from tests.support.pipelines_data import get_shard_set
from tests.support.train_fixtures import FEAT, get_shards, read_metrics
from train.build import start_run
from train.config import RunConfig
from train.context import Context
from train.data import ImageData, use_fixed_size_cuda
from train.loop import fit
from train.plan import plan_run
from train.runfolder import rng_state, set_rng_state
from train.settings import get_setting


@pytest.mark.parametrize(
    ("device", "local", "count", "want"),
    [
        ("auto", 0, 0, "cpu"),
        ("auto", 1, 2, "cuda:1"),
        ("cpu", 3, 2, "cpu"),
        ("cuda", 1, 2, "cuda:1"),  # a bare cuda is this process's GPU (torchrun's LOCAL_RANK)
        ("cuda:0", 1, 2, "cuda:0"),
    ],
)
def test_devices_resolve_in_one_place(device, local, count, want):
    assert resolve_device(device, local, cuda_count=count) == torch.device(want)


@pytest.mark.parametrize(
    ("device", "local", "count", "words"),
    [
        ("cuda", 0, 0, ["no CUDA GPU", "--device cpu"]),
        ("cuda", 2, 2, ["LOCAL_RANK 2", "cuda:2", "2 GPU(s)"]),
        ("cuda:5", 0, 2, ["cuda:5", "2 GPU(s)"]),
        ("tpu", 0, 0, ["tpu", "auto, cpu, cuda or cuda:N"]),
        ("mps", 0, 0, ["mps", "auto, cpu, cuda or cuda:N"]),
    ],
)
def test_bad_devices_fail_naming_the_fix(device, local, count, words):
    with pytest.raises(WsmlError) as e:
        resolve_device(device, local, cuda_count=count)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_the_cpu_suite_sees_no_gpu():
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert torch.cuda.device_count() == 0
    assert DistContext.create().device == torch.device("cpu")


def test_a_failed_dali_build_is_named_as_a_build_error(tmp_path_factory):
    pytest.importorskip("nvidia.dali")
    from pipelines import dali_loader as dl
    from shards.shardset import open_shard_set

    ss = open_shard_set(get_shard_set(tmp_path_factory))
    pipe = dl.create_dali_pipeline(
        ss.shard_paths("val"),
        ss.index_paths("val"),
        preset=None,
        train=False,
        batch_size=2,
        shard_id=0,
        num_shards=1,
        seed=0,
        num_threads=1,
        device_id=0,
        shuffle_buffer=1,
    )  # fmt: skip  -- a GPU pipeline where no GPU is visible: the build fails, the shards are fine
    with pytest.raises(WsmlError) as e:
        next(dl.iterate_dali(dl.DaliGraph(pipe), 1, "split val of X"))
    assert "could not build" in str(e.value) and "not the shards" in str(e.value)
    assert "failed reading" not in str(e.value)


def test_forced_bf16_autocast_reaches_e2e_forwards_only():
    ctx = Context(mixed=torch.bfloat16)  # torch autocasts on the CPU too
    layer, x = nn.Linear(4, 3), torch.randn(2, 4)
    with get_setting("e2e").autocast(ctx):
        assert layer(x).dtype == torch.bfloat16
    with get_setting("linear").autocast(ctx):
        assert layer(x).dtype == torch.float32
    with autocast(torch.device("cpu"), None):
        assert layer(x).dtype == torch.float32


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return get_shards(tmp_path_factory)


def test_linear_runs_and_scoring_ignore_forced_bf16(shards, tmp_path):
    """The same linear run under a bf16-autocast context: the same metrics to the last bit
    (training and scoring both stay in fp32)."""
    opts = {"epochs": "2", "lr": "0.01"}
    config = RunConfig(shards=str(shards), method="an", features=FEAT, method_options=opts)
    runs = {}
    for name, ctx in (("fp32", Context()), ("bf16", Context(mixed=torch.bfloat16))):
        out = tmp_path / name
        fit(start_run(plan_run(dataclasses.replace(config, out=str(out)), 1), ctx), ctx)
        runs[name] = read_metrics(out)
    assert runs["bf16"] == runs["fp32"]


def test_minus_o_device_is_honoured(shards, tmp_path):
    from train.run import train

    config = RunConfig(
        shards=str(shards), method="an", features=FEAT, out=str(tmp_path / "r"),
        method_options={"epochs": "1", "device": "cuda"},
    )  # fmt: skip
    with pytest.raises(WsmlError, match="no CUDA GPU"):  # it would have trained on the CPU
        train(config)
    assert not (tmp_path / "r").exists()
    summary = train(dataclasses.replace(config, method_options={"epochs": "1", "device": "cpu"}))
    assert summary["epochs_trained"] == 1


def nan_logits(step: int, bad: int) -> torch.Tensor:
    return torch.full((2, 3), float("nan") if step == bad else 0.5)


def test_finiteness_checks_can_wait_for_a_later_step():
    method = create_method("an", num_rows=8, num_classes=3)
    method.check_every = 3  # as on a GPU (50 there): no host sync per step
    batch = {"observed": torch.tensor([[1, 0, 0], [0, 1, 0]]), "row": torch.tensor([0, 1])}
    method(nan_logits(0, 1), batch, epoch=2, step=0)
    method(nan_logits(1, 1), batch, epoch=2, step=1)  # recorded, not yet read
    with pytest.raises(WsmlError, match=r"method an: non-finite .* epoch 2, step 1"):
        method(nan_logits(2, 1), batch, epoch=2, step=2)
    method.check_every = 10
    method(nan_logits(5, 5), batch, epoch=3, step=5)
    with pytest.raises(WsmlError, match="epoch 3, step 5"):
        method.flush_checks()  # the loop's end of epoch
    method.flush_checks()  # read once: nothing left


def test_rng_states_of_a_many_gpu_checkpoint_restore_on_the_cpu():
    """Checkpoints load to the CPU; an older one that saved every GPU's CUDA state (a list)
    restores the CPU, numpy and Python states and the current device's only."""
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    state = {**rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)] * 3}
    want = (torch.rand(3), np.random.rand(), random.random())
    set_rng_state(state)
    got = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(got[0], want[0]) and got[1:] == want[1:]


def test_compile_goes_around_the_wrapper():
    model = nn.Linear(2, 2)
    assert Context().wrap(model) is model
    compiled = Context().wrap(model, compile=True)  # lazy: nothing compiles until it runs
    assert compiled._orig_mod is model


def test_image_data_keeps_one_copy_of_the_training_labels(shards):
    ctx = Context()
    data = ImageData(
        open_shard_set(shards), "full", ctx, preset="cole448", seed=0, batch_size=8, backend="torch"
    )
    assert data.loaders["eval-train"].table is data.loaders["train"].table
    assert not use_fixed_size_cuda(ctx.device) and not torch.backends.cudnn.benchmark


@pytest.mark.parametrize("cpu_resize", ["torch", "dali"])  # split CPU graph; DALI's iterator
@pytest.mark.parametrize(("world", "batch"), [(1, 4), (2, 3)])
def test_an_eval_loader_builds_its_dali_graph_once(tmp_path_factory, cpu_resize, world, batch):
    """Epoch after epoch the same rows and pixels from one graph, on every rank (world 2, batch
    3: rank 0's 9 rows take 3 batches of the 4 its epoch has; DALI's reader pads every shard to
    the longest one's batches, so its epoch is the loader's there too)."""
    pytest.importorskip("nvidia.dali")
    from pipelines.loader import LoaderOptions, create_loader
    from tests.support.pipelines_data import TINY_PRESET

    root = get_shard_set(tmp_path_factory)
    for rank in range(world):
        opts = LoaderOptions(rank=rank, world_size=world, backend="dali", num_threads=1,
                             cpu_resize=cpu_resize)  # fmt: skip
        ldr = create_loader(
            root, "test", regime="full", batch_size=batch, preset=TINY_PRESET, options=opts
        )
        epochs, pipes = [], []
        for epoch in range(3):
            ldr.set_epoch(epoch)
            epochs.append([(b["row"].tolist(), b["valid"].tolist(), b["image"]) for b in ldr])
            pipes.append(ldr.graph)
        for later in epochs[1:]:
            assert [b[:2] for b in later] == [b[:2] for b in epochs[0]]
            assert all(torch.equal(a[2], b[2]) for a, b in zip(later, epochs[0], strict=True))
        assert pipes[0] is not None and pipes[0] is pipes[1] is pipes[2]
        assert [s > 0 for s in ldr.build_seconds] == [True, False, False]


@pytest.mark.parametrize(
    ("saved", "resumed"),
    [
        (torch.channels_last, torch.contiguous_format),  # a GPU checkpoint resumed on the CPU
        (torch.contiguous_format, torch.channels_last),  # a CPU checkpoint resumed on a GPU
    ],
)
def test_resumed_adam_moments_follow_the_parameters_layout(saved, resumed):
    """Issue 23, item 2: a run resumed on another device has its model in that device's layout;
    the fused Adam kernel walks memory in order, so moments kept in the saved layout paired the
    wrong elements (silently wrong on the CPU). The resumed step equals the uninterrupted one."""
    import copy

    from train.optim import load_optimizer_state

    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))

    def create(layout) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = nn.Conv2d(3, 8, 3).to(memory_format=layout)
        return model, torch.optim.Adam(model.parameters(), lr=0.05, fused=True)

    def step(model, opt) -> None:
        opt.zero_grad()
        model(x).sin().sum().backward()
        opt.step()

    run, opt = create(saved)
    for _ in range(3):
        step(run, opt)
    ckpt = copy.deepcopy({"model": run.state_dict(), "optimizer": opt.state_dict()})
    step(run, opt)  # the uninterrupted run's next step
    again, opt2 = create(resumed)
    again.load_state_dict(ckpt["model"])
    load_optimizer_state(opt2, ckpt["optimizer"])
    moments = opt2.state[again.weight]
    assert moments["exp_avg"].stride() == again.weight.stride()
    step(again, opt2)
    torch.testing.assert_close(again.weight, run.weight, rtol=0, atol=1e-6)


def test_bench_loader_resolves_its_device_in_the_one_place(tmp_path):
    """Issue 23, item 8: ``bench loader --device`` goes through resolve_device (a GPU that is
    not there fails before any work, naming the fix)."""
    from click.testing import CliRunner

    import cli

    work = tmp_path / "work"
    args = ["bench", "loader", "--device", "cuda", "--images", "16", "--workdir", str(work)]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "no CUDA GPU" in result.output and "--device cpu" in result.output
    assert not work.exists()


def test_bench_loader_reports_dali_builds_apart_from_images_per_s(tmp_path):
    """Issue 23, item 7: a DALI training loader builds its graph once, in its first epoch,
    whose images/s leaves the build out; the build's seconds are reported on their own."""
    pytest.importorskip("nvidia.dali")
    from bench.loader import LoaderBenchOptions, run_loader_bench

    lines = []
    opts = LoaderBenchOptions(preset="clip224", batch_size=8, threads=1, images=48, repeats=2,
                              profile=False, device="cpu")  # fmt: skip
    out = run_loader_bench(None, opts, workdir=str(tmp_path), echo=lines.append)
    dali = [k for k in out["loaders"] if k.startswith("1")]
    assert dali and all(k in out["dali_builds"] for k in dali)
    for k in dali:  # 2 repeats: 2 training epochs of each loader, one build
        assert out["dali_builds"][k]["builds"] == 1 and out["dali_builds"][k]["build_s"][0] > 0
        assert out["dali_builds"][k]["build_s"][1:] == [0.0]
    assert any("DALI graph built 1x in 2 training epochs" in line for line in lines)
    assert out["dali_builds"]["eval"]["build_s"][1:] == [0.0, 0.0]  # built once, read again
