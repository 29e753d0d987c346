"""The DALI graph: ``fn.readers.webdataset`` over the split's tars and their indexes, decode
(``mixed`` on a GPU, libjpeg-turbo on the CPU with ``device_id=None``), the preset's operators,
then one ``crop_mirror_normalize`` to a normalised float NCHW batch.

On a CPU, DALI's resampling costs about 3.6 ms per 448x448 output where torchvision's uint8
kernel takes 0.4-0.6 ms, so by default the CPU graph is split in two: DALI reads and decodes,
torchvision applies the preset's geometry (``Preset.tensor``), and a second DALI pipeline does
``crop_mirror_normalize`` (0.6 ms, where torch's elementwise ops take 3 ms). ``cpu_resize="dali"``
keeps the whole graph in DALI, exactly as it runs on a GPU.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.presets import Preset
from shards.base.errors import WsmlError


def dali_available() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):  # no "nvidia" namespace at all, or a blocked import
        return False


def create_dali_pipeline(
    tars: list[Path],
    indexes: list[Path],
    *,
    preset: Preset | None,
    train: bool,
    batch_size: int,
    shard_id: int,
    num_shards: int,
    seed: int,
    num_threads: int,
    device_id: int | None,
    shuffle_buffer: int,
    hw_decoder_load: float = 0.65,
    prefetch: int = 2,
    stick_to_shard: bool = False,
    checkpointing: bool = False,
    checkpoint: bytes | None = None,
):
    """One rank's pipeline; ``device_id=None`` runs every operator on the CPU. Without a
    ``preset`` it ends after decoding (the split CPU graph). ``stick_to_shard`` keeps the reader
    on ``shard_id`` epoch after epoch (an eval loader's); otherwise it reads the next shard each
    epoch. ``checkpointing`` lets ``checkpoint_dali`` save the state of its reader and random
    operators; a pipeline built with the same arguments and that ``checkpoint`` goes on exactly
    from there (DALI's pipeline checkpointing)."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None
    dev = "gpu" if gpu else "cpu"

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch,
        enable_checkpointing=checkpointing or checkpoint is not None,
        checkpoint=checkpoint,
    )
    def graph():
        jpegs, rows = fn.readers.webdataset(
            paths=[str(p) for p in tars],
            index_paths=[str(p) for p in indexes],
            ext=["jpg", "row"],
            dtypes=[types.UINT8, types.INT64],
            missing_component_behavior="error",
            shard_id=shard_id,
            num_shards=num_shards,
            random_shuffle=train,
            initial_fill=max(1, shuffle_buffer),
            pad_last_batch=True,
            stick_to_shard=stick_to_shard,
            name="reader",
        )
        if gpu:  # fancy upsampling: the CPU decoder's chroma, so both give the same pixels
            images = fn.decoders.image(
                jpegs,
                device="mixed",
                output_type=types.RGB,
                hw_decoder_load=hw_decoder_load,
                jpeg_fancy_upsampling=True,
            )
        else:
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        if preset is None:  # the split CPU graph: geometry in torchvision, then normalize_pipeline
            return images, rows
        images, norm = preset.dali(images, train, dev)
        return normalize(images, preset, device=dev, **norm), rows

    return graph()


@dataclass(eq=False)
class DaliGraph:
    """One loader's DALI pipeline (and the split CPU graph's normalize pipeline), built on its
    first read and read epoch after epoch. Its reader's epoch is ``epoch_batches`` batches on
    every shard (DALI pads each shard to the longest one's batches, repeating its last sample).
    ``reads`` names what its next epoch holds (training: the loader's epoch; eval: the shard);
    ``start`` is the epoch a training graph was built for (its seed and first shard)."""

    pipe: Any
    norm: Any = None
    epoch_batches: int = 0
    reads: tuple = ()
    start: int = 0
    it: Any = None  # DALIGenericIterator over ``pipe`` (the graph all in DALI)
    built: bool = False
    build_s: float = 0.0  # the build with its first prefetched batches (handed out once)
    left: int = 0  # batches of the reader's current epoch not read yet
    pending: int = 0  # batches of the loader's current epoch not handed out yet

    def settle(self, where: str) -> bool:
        """Bring the reader to its next epoch: read and drop what the loader's last epoch left
        of the reader's (training's last partial batch: one batch at most). False where that
        epoch was left unfinished, or nothing was read: the graph cannot go on from there."""
        if self.pending or not self.built:
            return False
        try:
            for _ in range(self.left):
                self.pipe.run() if self.it is None else next(self.it)
        except RuntimeError as e:
            raise WsmlError(f"DALI failed reading {where}: {_first_line(e)}") from e
        self.left = 0
        return True


def checkpoint_dali(graph: DaliGraph) -> bytes:
    """DALI's checkpoint of a graph built with ``checkpointing``: its reader's position and
    shuffle and its random operators' states, at the batches handed out so far (not at what
    the pipeline has prefetched)."""
    return graph.pipe.checkpoint() if graph.it is None else graph.it.checkpoints()[0]


def iterate_dali(
    graph: DaliGraph, steps: int, where: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of (images, rows) of the graph (built on first use); the reader's own
    padding and epoch wrap are never trusted: the caller masks samples beyond the rank's share.
    """
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    if steps == 0:
        return
    try:
        if graph.it is None:
            t0 = time.perf_counter()
            prepare_pipeline(graph.pipe, where)
            # size=-1: the iterator never ends an epoch itself; the reader (pad_last_batch)
            # starts its next epoch right after the last batch of this one
            graph.it = DALIGenericIterator(graph.pipe, ["image", "row"], size=-1, auto_reset=False)
            graph.build_s = time.perf_counter() - t0  # with the first batches it prefetches
            graph.built = True
        for _ in range(steps):
            (out,) = next(graph.it)
            yield out["image"], out["row"].reshape(-1)
    except RuntimeError as e:
        raise WsmlError(f"DALI failed reading {where}: {_first_line(e)}") from e


def create_normalize_pipeline(preset: Preset, batch_size: int, num_threads: int):
    """crop_mirror_normalize of fed uint8 HWC images (the second half of the split CPU graph)."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=None,
        prefetch_queue_depth=1,
        exec_async=False,
        exec_pipelined=False,
    )
    def graph():
        images = fn.external_source(name="images", layout="HWC")
        return normalize(images, preset, mirror=fn.external_source(name="mirror"))

    return graph()


def normalize(images, preset: Preset, **kwargs):
    """The graph's last operator: (crop,) mirror, (x - mean) / std, float CHW."""
    from nvidia.dali import fn, types

    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in preset.mean],
        std=[255.0 * s for s in preset.std],
        **kwargs,
    )


def iterate_dali_split(
    graph: DaliGraph, preset: Preset, train: bool, rng, steps: int, where: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches from the split CPU graph (built on first use): DALI decodes,
    torchvision resizes on the decoded pixels in place (a channels-last view, no copy), DALI
    normalises."""
    decode, normalize = graph.pipe, graph.norm
    if not graph.built:
        graph.build_s = prepare_pipeline(decode, where) + prepare_pipeline(normalize, where)
        graph.built = True
    try:
        for _ in range(steps):
            images, rows = decode.run()
            out, mirror = [], []
            for i in range(len(images)):
                hwc = torch.from_numpy(np.asarray(images[i]))
                x, flip = preset.tensor(hwc.permute(2, 0, 1).unsqueeze(0), train, rng)
                out.append(np.ascontiguousarray(x[0].permute(1, 2, 0).numpy()))
                mirror.append(np.array(flip, dtype=np.int32))
            normalize.feed_input("images", out, layout="HWC")
            normalize.feed_input("mirror", mirror)
            (batch,) = normalize.run()
            yield (
                _to_torch(batch, normalize),
                torch.from_numpy(np.array(rows.as_tensor())).reshape(-1),
            )
    except RuntimeError as e:
        raise WsmlError(f"DALI failed reading {where}: {_first_line(e)}") from e


def graph_kind(device: torch.device, cpu_resize: str) -> str:
    """gpu (the whole preset on the GPU), cpu (all in DALI operators) or cpu-split (DALI
    decodes and normalises, torchvision's kernels resize: the CPU's default)."""
    if device.type == "cuda":
        return "gpu"
    return "cpu-split" if cpu_resize == "torch" else "cpu"


def cuda_index(device: torch.device) -> int:
    """``cuda`` without an index means the current device (torchrun sets it per rank)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def prepare_pipeline(pipe, where: str) -> float:
    """Build a pipeline (DALI's ``pipe.build()``), naming the build (DALI's environment, codec
    or device) when it fails, so a broken installation is not reported as a broken shard set.
    Returns its seconds."""
    t0 = time.perf_counter()
    try:
        pipe.build()
        return time.perf_counter() - t0
    except RuntimeError as e:
        raise WsmlError(
            f"DALI could not build its pipeline for {where} (DALI's installation, CUDA device or "
            f"codec, not the shards): {_first_line(e)}; --loader torch avoids DALI"
        ) from e


def _to_torch(batch, pipe) -> torch.Tensor:
    t = batch.as_tensor()
    if getattr(pipe, "exec_dynamic", False):  # DALI hands the buffer over: no copy
        return torch.from_dlpack(t)
    return torch.from_numpy(np.array(t))


def _first_line(e: Exception) -> str:
    """DALI's own words on what failed: the line naming a file (a tar or its index) first."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    named = [ln for ln in lines if ".tar" in ln or ".idx" in ln]
    errors = [ln for ln in lines if "rror" in ln and ln not in named]
    picked = (named[:1] + errors[:1]) or lines[:1] or ["unknown error"]
    return "; ".join(picked)[:800]
