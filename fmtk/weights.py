"""A run's starting weights (the recipe's ``weights``) and torchvision's architectures by name.

``weights`` is torchvision's pretrained weights of the recipe's ``arch`` (``DEFAULT``,
``IMAGENET1K_V1``, ``ResNet18_Weights.IMAGENET1K_V2``), read by torchvision from the torch hub
cache (``$TORCH_HOME/hub/checkpoints``, downloaded there when online); or a file (a state dict, a
torchvision weights file, an fmtk checkpoint); or an fmtk run folder (its best checkpoint). The
tensors whose names and shapes fit the model are loaded; the others (a classifier head sized to
other classes) stay as the model made them, and :func:`load_starting_weights` says which in one
line.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from fmtk.device import free_memory
from fmtk.errors import FmtkError, first_few, out_of_memory_line
from fmtk.runfolder import CONFIG, find_checkpoint

EMA_MODEL = "ema_model"  # a last checkpoint's averaged weights, when the recipe keeps an EMA


def evaluated_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint with the weights that validation used as its ``model``: a last checkpoint of a
    run with an EMA holds the raw weights (to go on training) and the averaged ones; the best
    checkpoint holds the averaged ones already."""
    if EMA_MODEL in checkpoint:
        return {**checkpoint, "model": checkpoint[EMA_MODEL]}
    return checkpoint


def classification_models() -> list[str]:
    """The names of torchvision's image classification architectures (``resnet18``, ``vit_b_16``…)."""
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def torchvision_model(arch: str, num_classes: int) -> nn.Module:
    """torchvision's ``arch`` with a classifier of ``num_classes`` outputs, randomly initialised."""
    import torchvision.models

    names = classification_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=4, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else f" (its {len(names)}: fmtk list --archs)"
        raise FmtkError(f"arch {arch!r} is not a torchvision classification model{hint}")
    return torchvision.models.get_model(arch, num_classes=num_classes, **ARCH_ARGUMENTS.get(arch, {}))


# GoogLeNet and Inception v3 train with auxiliary heads whose outputs come beside the logits, which no
# loss takes; without them (as torchvision's builder leaves them after loading its weights) they give
# the logits, as in eval mode. transform_input rescales ImageNet-normalised input to the [-1, 1] their
# ImageNet weights were trained on (torchvision's setting with them); it holds no tensor, so it is set
# whatever weights a run starts from, and a resumed, evaluated or exported model is the same.
_WITHOUT_AUXILIARY_HEADS = {"aux_logits": False, "transform_input": True, "init_weights": True}
ARCH_ARGUMENTS = {"googlenet": _WITHOUT_AUXILIARY_HEADS, "inception_v3": _WITHOUT_AUXILIARY_HEADS}


PROBED_SIZES = (32, 64, 75, 96, 128, 160, 224, 299, 384, 512)  # image sizes tried for a model's minimum


def check_image_size(model: nn.Module, arch: str, image_size: int) -> None:
    """One line when ``model`` (torchvision's ``arch``) cannot take ``image_size``-px images, found by
    a forward pass of one blank image (eval mode, no gradients) before any data loads, instead of
    the model's own traceback; the line names the smallest of ``PROBED_SIZES`` above it that works.
    A size whose one image the memory cannot hold is refused as such, before the forward pass (at
    40,000 px, resnet18's first layer alone would take 95 GiB: the machine's memory, not a line)."""
    device = next(model.parameters()).device
    _check_image_memory(model, arch, image_size, device)

    def refusal(size: int) -> str | None:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size, device=device))
        except (RuntimeError, ValueError, AssertionError, IndexError) as error:
            if out_of_memory_line(error) and size == image_size:
                raise FmtkError(f"image_size={size}: one blank {size}×{size} image through {arch} ran out of "
                                "memory: a smaller image_size") from None  # fmt: skip
            return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None

    training = model.training
    model.eval()
    try:
        why = refusal(image_size)
        if why is None:
            return
        larger = [size for size in PROBED_SIZES if size > image_size]
        fits = next((size for size in larger if refusal(size) is None), None)
    finally:
        model.train(training)
    tried = ", ".join(map(str, larger))
    advice = f"; it takes {fits} px (the smallest tried of {tried}): --set image_size={fits}"
    if fits is None:
        advice = f"; it took none of {tried} px either" if larger else ""
    raise FmtkError(f"arch {arch} cannot take {image_size}×{image_size} images ({why}){advice}")


def first_layer_bytes(model: nn.Module, image_size: int) -> int:
    """The bytes of the output of ``model``'s first convolution for one ``image_size``-px image,
    in 32-bit floats (the image itself for a model without one): what one image needs at least."""
    conv = next((module for module in model.modules() if isinstance(module, nn.Conv2d)), None)
    if conv is None:
        return 3 * 4 * image_size * image_size
    side = -(-image_size // conv.stride[0])
    return conv.out_channels * 4 * side * side


def _check_image_memory(model: nn.Module, arch: str, image_size: int, device: torch.device) -> None:
    need = first_layer_bytes(model, image_size)
    for free, where, _ in free_memory(device):
        if free is not None and need > free:
            raise FmtkError(
                f"image_size={image_size}: one {image_size}×{image_size} image takes {need / 2**30:,.1f} "
                f"GiB in {arch}'s first layer, more than the {free / 2**30:,.1f} GiB {where}: a smaller "
                "image_size (photos are classified at 224 to 600 px)"
            )


def torchvision_weights(arch: str, name: str) -> Any:
    """The member ``name`` of ``arch``'s torchvision weights enum (``DEFAULT``, ``IMAGENET1K_V1`` or
    the full ``ResNet18_Weights.IMAGENET1K_V1``)."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    member = name.rpartition(".")[2] if name.startswith(enum.__name__ + ".") else name
    try:
        return enum[member]
    except KeyError:
        known = ", ".join(enum.__members__)  # DEFAULT is an alias, listed too
        raise FmtkError(f"weights {name!r}: {arch} has no such torchvision weights ({known})") from None


def is_weights_path(weights: str) -> bool:
    """Whether ``weights`` names a file or folder rather than torchvision weights."""
    return os.sep in weights or "/" in weights or Path(weights).exists() or weights.endswith((".pt", ".pth"))


def starting_state(weights: str, arch: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict that ``weights`` names and how to name it in a sentence."""
    if not is_weights_path(weights):
        if not arch:
            raise FmtkError(
                f"weights {weights!r} names torchvision weights, which need a torchvision arch; this "
                "recipe has none (give a weights file or a run folder)"
            )
        member = torchvision_weights(arch, weights)
        return _torchvision_state(arch, member), f"{arch} {member.name}"
    path = Path(weights)
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise FmtkError(f"weights {weights}: a folder that is not an fmtk run folder (no {CONFIG})")
        path = find_checkpoint(path, "best")
    if not path.is_file():
        raise FmtkError(f"weights {weights}: no such file or run folder")
    return _file_state(path), str(path)


def _torchvision_state(arch: str, member: Any) -> dict[str, torch.Tensor]:
    """torchvision's own loading of ``member`` (``WeightsEnum.get_state_dict``): the hub cache,
    else a download; offline with an empty cache, one line naming the file and its folder."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = os.path.basename(urlparse(member.url).path)
    try:
        return member.get_state_dict(progress=False, check_hash=True)
    except OSError as error:  # urllib's URLError and socket errors are OSErrors
        reason = getattr(error, "reason", None) or error
        raise FmtkError(
            f"{arch} {member.name}: cannot download {member.url} ({reason}); put {file} in {folder} "
            "(or point $TORCH_HOME at a folder whose hub/checkpoints has it)"
        ) from None
    except Exception as error:  # noqa: BLE001 - pickle and zip errors of a cached file cut short or broken
        raise FmtkError(
            f"{arch} {member.name}: {folder / file} is not a readable weights file ({type(error).__name__}); "
            "delete it, and torchvision downloads it again (or put a good copy there)"
        ) from None


def _file_state(path: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a weights file: a state dict, a torchvision weights file, an fmtk
    checkpoint (the weights validation used: the EMA's where there is one) or a checkpoint that
    keeps them under ``state_dict`` or ``model``; DataParallel's ``module.`` prefix is dropped."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and I/O errors all mean "not weights"
        raise FmtkError(f"weights {path}: not a readable weights file ({type(error).__name__})") from None
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        loaded = evaluated_weights(loaded)["model"]
    elif isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    loaded = loaded if isinstance(loaded, dict) else {}
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise FmtkError(f"weights {path}: holds no tensors by name (not a state dict or checkpoint)")
    if all(key.startswith("module.") for key in tensors):
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    return tensors


def load_fitting(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> tuple[str, list[str]]:
    """Load the tensors of ``state`` whose names and shapes fit ``model``: the one line that says
    how many were loaded and which modules are new, and the names of the new tensors (the head).
    None fitting is an error."""
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        example = next(iter(state))
        raise FmtkError(
            f"weights {source}: none of its {len(state)} tensors fits the model (e.g. {example} "
            f"{tuple(state[example].shape)}): another architecture?"
        )
    model.load_state_dict(fitting, strict=False)
    line = f"loaded {len(fitting)} of {len(own)} tensors from {source}"
    head = [key for key in own if key not in fitting]
    new, left = first_few(_new_modules(model, head), NEW_SHOWN)  # another architecture's: most are new
    if left:
        new.append(f"and {left} more modules (config.json's head lists their tensors)")
    line = f"{line}; new: {', '.join(new)}" if new else line
    # (a head of other classes has the model's names; another arch's file, or auxiliary heads, not)
    unknown = [key for key in state if key not in own]
    if unknown:
        line += f"; {len(unknown)} of its {len(state)} tensors fit no layer of the model: left out"
    return line, head


NEW_SHOWN = 4  # new modules named in the line of what starting weights gave


def _new_modules(model: nn.Module, keys: list[str]) -> list[str]:
    """The modules that hold ``keys``, a Linear one as ``fc 512→3``."""
    modules = dict(model.named_modules())
    names = list(dict.fromkeys(key.rpartition(".")[0] for key in keys))
    described = []
    for name in names:
        module = modules.get(name)
        if isinstance(module, nn.Linear):
            described.append(f"{name} {module.in_features}→{module.out_features}")
        else:
            described.append(name or "(the model's own tensors)")
    return described


def load_starting_weights(model: nn.Module, weights: str, arch: str | None) -> tuple[str, list[str]]:
    """Load ``weights`` into ``model`` where they fit: the one line saying what was loaded, and the
    names of the tensors they did not give (the new head)."""
    state, source = starting_state(weights, arch)
    return load_fitting(model, state, source)


def weights_transform(weights: str | None, arch: str | None) -> Any | None:
    """torchvision's evaluation transform of the weights ``weights`` names (its crop size, mean and
    std), or None for a file, a run folder or no weights."""
    if weights is None or not arch or is_weights_path(weights):
        return None
    return torchvision_weights(arch, weights).transforms()
