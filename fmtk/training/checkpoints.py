"""Checkpoints, one owner: what a run keeps, writing best and last, reading, restoring.

A run *keeps* named objects with ``state_dict``/``load_state_dict`` (the model, optimizer,
trainer, schedulers, early stopping, random states, and whatever a recipe or a user's handler adds
with ``Run.keep``). The last checkpoint holds all of them; ``--resume`` restores all of them, and
a name that one side has and the other lacks is a one-line error.
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import random
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, global_step_from_engine
from torch import nn

from fmtk.errors import FmtkError, a_kind
from fmtk.runfolder import BEST, LAST
from fmtk.version import __version__

STOP = "stop"  # the last checkpoint's name for the run's RunStop (why a handler stopped it)
CLOCK = "clock"  # … and for its TrainingClock
LOADER_RANDOM = "loader_random"  # … and for its LoaderGenerators
# The names of fmtk's own states, refused to Run.keep whether or not this run has them (a run
# without an EMA would otherwise test a state kept as ema_model as its weights).
FMTK_STATES = ("model", "optimizer", "trainer", "scaler", "random_state", "run_info", "ema_model", STOP,
               CLOCK, LOADER_RANDOM, "early_stopping", "lr_scheduler", "best_checkpoint")  # fmt: skip


class RandomState:
    """The torch, CUDA, numpy and Python random states, checkpointable like a module."""

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
            "python": random.getstate(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        # torch wants every generator's state as a CPU ByteTensor, the CUDA ones too.
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([generator.cpu() for generator in state["cuda"]])
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


class LoaderGenerators:
    """The random generators a recipe's own training DataLoader draws its order and its workers'
    seeds from when it was given some (``DataLoader(..., shuffle=True, generator=g)``, as PyTorch's
    reproducibility notes advise, or a sampler's), checkpointable like a module: torch's global
    state, which :class:`RandomState` keeps, does not hold them, and a resumed run would draw the
    order of its first epoch again."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    @staticmethod
    def end_epoch(trainer: Engine) -> None:
        """The epoch's iterator asked once more, ending it (StopIteration), before the last
        checkpoint keeps the generators' states."""
        # Ignite keeps an epoch's iterator until the next epoch asks it for a batch, and torch's
        # RandomSampler draws once more from its generator as it ends: without this, that draw came
        # after the checkpoint, and a resumed run (a new iterator) went on from a state one draw behind.
        iterator = getattr(trainer, "_dataloader_iter", None)
        length = getattr(trainer.state.dataloader, "__len__", None)
        if iterator is not None and length is not None and trainer.state.epoch_length == length():
            next(iterator, None)  # (every batch was read: only the end is left)

    @classmethod
    def of(cls, split: Any) -> LoaderGenerators | None:
        """Those of ``split`` (None: it has none, or orders each epoch from the seed: ``set_epoch``)."""
        if hasattr(split, "set_epoch"):
            return None
        batch_sampler = getattr(split, "batch_sampler", None)
        holders = (split, getattr(split, "sampler", None), getattr(batch_sampler, "sampler", None))
        found: list[torch.Generator] = []
        for holder in holders:
            generator = getattr(holder, "generator", None)
            if isinstance(generator, torch.Generator) and all(generator is not seen for seen in found):
                found.append(generator)
        return cls(found) if found else None

    def state_dict(self) -> dict[str, Any]:
        return {"states": [generator.get_state() for generator in self.generators]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["states"]) != len(self.generators):
            raise FmtkError(
                f"the checkpoint holds {len(state['states'])} random generators of the training DataLoader, "
                f"the recipe's loader has {len(self.generators)}: resume with the data the run was made with"
            )
        for generator, saved in zip(self.generators, state["states"], strict=True):
            generator.set_state(saved.cpu())


@dataclass(frozen=True)
class ResumePoint:
    """The last checkpoint a run goes on from on ``device``: its file and its contents, read onto
    the CPU (each state is placed where it belongs as it is loaded: the model's and optimizer's
    tensors on the run's device, the random states where torch keeps them)."""

    path: Path
    checkpoint: dict[str, Any]
    device: torch.device

    @classmethod
    def read(cls, path: Path, device: torch.device) -> ResumePoint:
        """The last checkpoint at ``path``, to go on from on ``device``; the best checkpoint it
        names must be there too."""
        point = cls(Path(path), read_checkpoint(path), device)
        missing = sorted(name for name in point.files() if not (point.path.parent / name).exists())
        if missing:  # Ignite would fail removing it after the next better epoch
            raise FmtkError(
                f"{point.path.parent}: {', '.join(missing)}, which {point.path.name} names as the best "
                "checkpoint, is missing; put it back to resume (nothing was changed)"
            )
        return point

    @property
    def iteration(self) -> int:
        return self.checkpoint["trainer"]["iteration"]

    @property
    def epoch(self) -> int:
        return self.iteration // self.checkpoint["trainer"]["epoch_length"]

    @property
    def trained_on(self) -> str | None:
        """The device the run trained on until this checkpoint (None: made before fmtk recorded it)."""
        return self.checkpoint.get("run_info", {}).get("device")

    @property
    def same_device_type(self) -> bool:
        """Whether the run goes on on the kind of device it trained on (unknown: taken as yes)."""
        return self.trained_on is None or torch.device(self.trained_on).type == self.device.type

    def files(self) -> set[str]:
        """The checkpoint files this state names: itself and its best checkpoint."""
        best = {Path(name).name for _, name in self.checkpoint["best_checkpoint"]["_saved"]}
        return {self.path.name} | best


class TrainingClock:
    """The wall time of a run's training loop (validation and checkpoints included), summed over
    its starts: kept in the last checkpoint, so that a resumed run counts the time before it (up to
    that checkpoint: the part of an epoch a kill cut short, trained again, is not counted twice)."""

    def __init__(self) -> None:
        self.before, self.since = 0.0, time.perf_counter()

    def start(self) -> None:
        """This start of the run begins now."""
        self.since = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.since

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.before = float(state["seconds"])


class RunInfo:
    """What made a checkpoint (recipe, model class and size, the device it trained on, fmtk
    version), saved in every checkpoint so that :func:`load_model_weights` can say what a
    mismatching one holds and a resumed run what changed."""

    def __init__(self, recipe_name: str, model: nn.Module, device: torch.device) -> None:
        parameters = sum(p.numel() for p in model.parameters())
        self.info = {"recipe": recipe_name, "model": type(model).__name__, "parameters": parameters}
        self.info.update(device=str(device), fmtk=__version__)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.info)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: it describes the checkpoint, it is not training state."""


def check_keepable(name: str, state: Any, kept: Mapping[str, Any]) -> None:
    """A name for the last checkpoint must be new and not one of fmtk's, and its object
    checkpointable: a ``state_dict()`` that a checkpoint gives back (:func:`unreadable_part`)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise FmtkError(f"keep({name!r}): the name must be a Python identifier")
    if name in FMTK_STATES:
        raise FmtkError(f"keep({name!r}): fmtk keeps its own state under that name "
                        f"({', '.join(FMTK_STATES)}); choose another")  # fmt: skip
    if name in kept:
        raise FmtkError(f"keep({name!r}): the run already keeps a state of that name")
    for method in ("state_dict", "load_state_dict"):
        if not callable(getattr(state, method, None)):
            raise FmtkError(
                f"keep({name!r}): {a_kind(type(state).__name__)} has no {method}() to checkpoint it"
            )
    check_readable(name, state.state_dict())


def check_readable(name: str, state: Any) -> None:
    """``state`` (the state_dict kept as ``name``) comes back from a checkpoint, else one line."""
    where = unreadable_part(state)
    if where is not None:
        raise FmtkError(
            f"keep({name!r}): its state_dict() holds {where}, which fmtk cannot read back from a checkpoint "
            "(it reads them with torch.load(weights_only=True)); keep tensors, numbers, strings, lists and "
            "dicts of them (a numpy array: torch.from_numpy(...))"
        )


_PLAIN = (int, float, bool, str, bytes, type(None))  # exactly: numpy's float64 is a float, not read back
_TORCH = (torch.Tensor, torch.Size, torch.dtype, torch.device)


def unreadable_part(value: Any, at: str = "") -> str | None:
    """Where in ``value`` (a state_dict) is something ``torch.load(weights_only=True)`` refuses,
    in words (``a ndarray at ['counts']``); None when it all comes back. Lists, tuples and dicts
    are walked and tensors passed without being copied; anything else is tried alone."""
    if type(value) in _PLAIN or isinstance(value, _TORCH):
        return None
    if type(value) in (list, tuple):
        parts = enumerate(value)
    elif type(value) in (set, frozenset):
        parts = ((f"an item of a {type(value).__name__}", item) for item in value)
    elif isinstance(value, dict) and type(value) in (dict, collections.OrderedDict):
        for key in value:
            if unreadable_part(key) is not None:
                return f"{a_kind(type(key).__name__)} key at {at or 'the top'}"
        parts = value.items()
    else:
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        try:
            torch.load(buffer, weights_only=True)
        except Exception:  # noqa: BLE001 - the unpickler's refusal, whatever its kind
            return f"{a_kind(type(value).__name__)}" + (f" at {at}" if at else "")
        return None
    for key, part in parts:
        found = unreadable_part(
            part, f"{at} ({key})" if type(value) in (set, frozenset) else f"{at}[{key!r}]"
        )
        if found is not None:
            return found
    return None


class UnreadableState(FmtkError):
    """A kept state a checkpoint could not give back: the run stops before writing it (the command
    line adds how to resume, with the run's handlers)."""


class RunSaver(DiskSaver):
    """Ignite's atomic DiskSaver whose removals wait until :meth:`flush_removals`.

    Ignite's Checkpoint removes the previous file *before* writing the new one, so a process
    killed during the write would keep neither. fmtk flushes the removals once all of an epoch's
    checkpoints are written, so the previous best and last stay until their successors exist.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending_removals: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        # Ctrl-C inside torch.save's zip writer surfaces as its RuntimeError ("unexpected pos …"), a
        # traceback: a stop asked for while a checkpoint is written is taken once it is whole.
        with signals_held():
            for name, state in checkpoint.items():  # a file resume cannot read is never written (the run
                where = unreadable_part(state)  # stops here, the previous one kept): not after the run
                if where is not None:
                    raise UnreadableState(
                        f"{filename}: the state kept as {name!r} now holds {where}, which fmtk cannot read "
                        "back from a checkpoint (torch.load(weights_only=True)); keep tensors, numbers, "
                        "strings, lists and dicts of them (a numpy array: torch.from_numpy(...)). The "
                        "previous checkpoint is kept: once the state is fixed, resume the run"
                    )
            super().__call__(checkpoint, filename, metadata)

    def remove(self, filename: str) -> None:
        self.pending_removals.append(filename)

    def flush_removals(self) -> None:
        """Remove the superseded checkpoints (a file already gone is no error)."""
        for filename in self.pending_removals:
            try:
                super().remove(filename)
            except FileNotFoundError:
                pass
        self.pending_removals.clear()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block are raised again at its end, to the handlers
    there were (the first of them; a second Ctrl-C asks no more than the first). Outside the main
    thread, where no handler can be set, the block runs as it is."""
    numbers = (signal.SIGINT, signal.SIGTERM)
    handlers = {number: signal.getsignal(number) for number in numbers}
    if threading.current_thread() is not threading.main_thread() or None in handlers.values():
        yield  # (a handler set outside Python cannot be put back)
        return
    caught: list[int] = []
    for number in numbers:
        signal.signal(number, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        if caught:
            signal.raise_signal(caught[0])


def attach_checkpoints(
    trainer: Engine,
    evaluator: Engine,
    run_dir: Path,
    best_state: Mapping[str, Any],
    kept: dict[str, Any],
    metric: str = "accuracy",
    mode: str = "max",
) -> tuple[Checkpoint, Checkpoint]:
    """Keep ``best_*.pt`` (``best_state`` at the best valid ``metric``, highest or lowest by
    ``mode``; on a tie the lower valid loss, then the earliest epoch: :func:`best_score`) and
    ``last_*.pt`` (everything in ``kept``, to which the best checkpoint's bookkeeping is added),
    each written atomically.

    ``kept`` is passed on as it is, not copied: what is added to it later is saved too. Attach this
    last of the trainer's EPOCH_COMPLETED handlers, so the checkpoint holds what they decided.
    """
    saver = RunSaver(str(run_dir), atomic=True, require_empty=False)
    epoch = global_step_from_engine(trainer, Events.EPOCH_COMPLETED)
    best = Checkpoint(
        best_state,
        saver,
        filename_prefix=BEST,
        score_function=lambda engine: best_score(engine.state.metrics, metric, mode),
        score_name=f"valid_{metric}",
        n_saved=1,
        global_step_transform=epoch,
        filename_pattern=MinimisedScoreName(Checkpoint.setup_filename_pattern()) if mode == "min" else None,
    )
    evaluator.add_event_handler(Events.COMPLETED, best)
    kept["best_checkpoint"] = best  # (a name Run.keep refuses)
    last = Checkpoint(kept, saver, filename_prefix=LAST, n_saved=1, global_step_transform=epoch)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, last)

    def flush_removals(_: Engine) -> None:
        saver.flush_removals()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, flush_removals)
    return best, last


class MinimisedScoreName(str):
    """Ignite's checkpoint file name pattern that shows a minimised metric's score as the metric:
    :func:`best_score` negates it (Ignite keeps the highest score), which named the file
    ``…_valid_loss=-0.2686.pt``. Ignite fills the pattern with ``str.format``; ``+ 0.0`` turns -0.0
    into 0.0."""

    def format(self, *args: Any, **fields: Any) -> str:
        if fields.get("score") is not None:
            fields["score"] = f"{-float(fields['score']) + 0.0:.4f}"
        return super().format(*args, **fields)


TIE_BREAK = 1e-12  # the share of the valid loss in a best-checkpoint score (best_score)


def best_score(metrics: Mapping[str, float], metric: str, mode: str) -> float:
    """The best checkpoint's score (Ignite keeps the highest): the valid ``metric``, negated when it
    is minimised, less ``TIE_BREAK`` × the valid loss. Ignite keeps the earlier epoch on equal
    scores; an accuracy is often equal (k of N samples) while the loss is not, and the lower loss is
    the better model (docs/notebook.py had epochs 2 and 8 at equal valid accuracy, test loss 0.573
    and 0.179). The loss's part is far below a metric's own steps and the 4 decimals of the file
    name; a loss that is not finite adds nothing."""
    score = metrics[metric] * (1 if mode == "max" else -1)
    loss = metrics.get("loss", 0.0)
    return score - TIE_BREAK * loss if metric != "loss" and math.isfinite(loss) else score


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents on the CPU, whatever device wrote them (``torch.load(weights_only=True)``),
    with a one-line error for a file that is not a checkpoint.

    Not onto the run's device: torch's random states must come back as CPU tensors, and
    ``load_state_dict`` of a model or an optimizer copies each tensor to its parameter's device."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and I/O errors all mean "not a checkpoint"
        raise FmtkError(f"{path}: not a readable fmtk checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise FmtkError(f"{path}: not an fmtk checkpoint (no model state)")
    return checkpoint


def load_model_weights(checkpoint: dict[str, Any], path: Path, recipe_name: str, model: nn.Module) -> None:
    """Load the checkpoint's model weights into ``model``; a checkpoint made by another recipe or
    model architecture is refused with one line naming both."""
    made_by = checkpoint.get("run_info", {})
    if made_by.get("recipe") not in (None, recipe_name):
        raise FmtkError(f"{path} was made by recipe {made_by['recipe']}, not {recipe_name}")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError:
        head = _other_head(checkpoint["model"], model.state_dict())
        if head is not None:
            layer, theirs, ours = head
            raise FmtkError(
                f"{path} holds a model whose output layer {layer} gives {theirs} classes; {recipe_name} "
                f"builds it with {ours} here: other classes (another data folder?)"
            ) from None
        parameters = made_by.get("parameters")
        count = f"{parameters:,}" if isinstance(parameters, int) else "?"
        theirs = f"a {made_by.get('model', 'model')} with {count} parameters"
        ours = f"a {type(model).__name__} with {sum(p.numel() for p in model.parameters()):,}"
        raise FmtkError(
            f"{path} holds {theirs} (recipe {made_by.get('recipe', '?')}); {recipe_name} builds {ours}: "
            "a different architecture or variant"
        ) from None


def _other_head(
    saved: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> tuple[str, int, int] | None:
    """``(layer, saved outputs, own outputs)`` when the two models differ only in their output layer's
    number of outputs (the first dimension of one layer's tensors): another number of classes."""
    if saved.keys() != own.keys():
        return None
    differ = [name for name in own if saved[name].shape != own[name].shape]
    layers = {name.rpartition(".")[0] for name in differ}
    if len(layers) != 1 or any(saved[n].shape[1:] != own[n].shape[1:] or not own[n].dim() for n in differ):
        return None
    return layers.pop(), saved[differ[0]].shape[0], own[differ[0]].shape[0]


def restore(kept: Mapping[str, Any], checkpoint: dict[str, Any], path: Path) -> None:
    """Load every kept state but the model (loaded by :func:`load_model_weights`) from a last
    checkpoint; a name kept on one side only is a one-line error naming it."""
    # A checkpoint of fmtk 0.1 has no "stop" (Run.stop came later): that run was not stopped; one
    # of a release before 2026-12-07 has no "clock": its time before the resume is not counted, nor
    # "loader_random": its DataLoader's own generator goes on from the first epoch's state.
    missing = [name for name in kept if name not in checkpoint and name not in (STOP, CLOCK, LOADER_RANDOM)]
    if missing:
        raise FmtkError(
            f"{path.name} has no state for {', '.join(map(repr, missing))}, which this run keeps: "
            "resume with the options and handlers the run was made with (its config.json's command names "
            "them)"
        )
    unknown = [name for name in checkpoint if name not in kept]
    if unknown:
        raise FmtkError(
            f"{path.name} holds state {', '.join(map(repr, unknown))} that this run does not keep: "
            "resume with the options and handlers the run was made with (e.g. the same --handler: its "
            "config.json's command names them)"
        )
    loaded = {name: state for name, state in kept.items() if name != "model" and name in checkpoint}
    Checkpoint.load_objects(loaded, checkpoint)
