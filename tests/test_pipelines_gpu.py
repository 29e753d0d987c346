"""DALI's GPU path (mixed decode, GPU operators): same rows and, within decoder tolerance, the
same images as the CPU graph. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from pipelines.loader import LoaderOptions, create_loader

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from shards.convert.convert import convert
    from shards.synth.digits import write_demo_data

    work = tmp_path_factory.mktemp("gpu")
    write_demo_data(work / "raw", n_train=120, n_val=40, seed=0, progress=False)
    out = work / "shards"
    convert("coco", work / "raw", out, {}, {"shard_samples": 32}, workers=1)
    return out


@pytest.mark.parametrize("preset", ["cole448", "clip224", "asl448", "puzzle512"])
def test_gpu_matches_cpu_on_eval(digits, preset):
    def run(device):
        loader = create_loader(
            digits, "val", regime="full", batch_size=8, preset=preset,
            options=LoaderOptions(device=device, backend="dali"),
        )  # fmt: skip
        batches = list(loader)
        return (
            torch.cat([b["image"].cpu() for b in batches]),
            torch.cat([b["row"].cpu() for b in batches]),
            batches[0]["image"].device,
        )

    gpu_images, gpu_rows, where = run("cuda")
    cpu_images, cpu_rows, _ = run("cpu")
    assert where.type == "cuda"
    assert torch.equal(gpu_rows, cpu_rows)
    assert (gpu_images - cpu_images).abs().mean() < 0.05


def test_gpu_train_epoch_has_the_manifest_length(digits):
    loader = create_loader(
        digits, "train", regime="single-positive", batch_size=16, preset="cole448",
        options=LoaderOptions(device="cuda", backend="dali"),
    )  # fmt: skip
    batches = list(loader)
    assert len(batches) == len(loader) == 96 // 16
    rows = torch.cat([b["row"] for b in batches])
    assert len(rows.unique()) == len(rows)
    assert batches[0]["observed"].device.type == "cuda"
