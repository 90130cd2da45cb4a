"""Mixup and CutMix of whole training batches on their device: each sample with its own λ, its own
partner and (CutMix) its own box, with no loop over samples.

mixup (Zhang et al., 2018) blends each image with its partner's, ``λ·x + (1 − λ)·x_partner``;
CutMix (Yun et al., 2019) pastes a box of the partner's image covering about ``1 − λ`` of it, λ
then corrected to the box's area (a box clipped at the border is smaller). The target becomes
``λ·onehot(y) + (1 − λ)·onehot(y_partner)``, class probabilities that ``nn.CrossEntropyLoss`` takes
(its label smoothing applies on top). λ ~ Beta(α, α), as in timm's ``Mixup`` and torchvision's
``v2.MixUp``/``v2.CutMix``; they draw one λ per batch (timm's ``mode="elem"`` draws one per sample,
in a Python loop over them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fmtk.data.augment import inside_boxes
from fmtk.errors import FmtkError


def cyclic_partners(count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Each sample's partner (an index): a random permutation that is one cycle, so no sample is its
    own partner (but the single one of a batch of one)."""
    order = torch.randperm(count, generator=generator, device=device)
    partners = torch.empty_like(order)
    partners[order] = order.roll(-1)
    return partners


def beta(alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw of Beta(α, α) for each α of ``alpha``."""
    # torch.distributions.Beta takes no generator; the Dirichlet sampler it calls does.
    return torch._sample_dirichlet(torch.stack([alpha, alpha], dim=1), generator=generator)[:, 0]


def cutmix_boxes(
    lam: torch.Tensor, height: int, width: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix boxes for the λ of each sample (N×4: top, left, height, width) and λ corrected to each
    box's area: a centre uniform over the image, sides ``sqrt(1 − λ)`` of the image's (half-sides
    rounded down), clipped at the border (torchvision's ``v2.CutMix``)."""
    count, device = len(lam), lam.device
    centre_row = torch.randint(height, (count,), generator=generator, device=device)
    centre_col = torch.randint(width, (count,), generator=generator, device=device)
    half = 0.5 * (1 - lam).sqrt()
    half_height, half_width = (half * height).long(), (half * width).long()
    top, bottom = (centre_row - half_height).clamp(min=0), (centre_row + half_height).clamp(max=height)
    left, right = (centre_col - half_width).clamp(min=0), (centre_col + half_width).clamp(max=width)
    boxes = torch.stack([top, left, bottom - top, right - left], dim=1)
    area = (bottom - top) * (right - left)
    return boxes, 1 - area.to(lam.dtype) / (height * width)


@dataclass(frozen=True)
class Mixing:
    """mixup with Beta(``mixup_alpha``, ``mixup_alpha``), CutMix with Beta(``cutmix_alpha``,
    ``cutmix_alpha``) (an α of 0: off); with both on, each sample is CutMix with probability
    ``switch_prob`` (timm's ``switch_prob``), else mixup. ``classes``: the length of a target.

    >>> Mixing(mixup_alpha=0.2, classes=10).active, Mixing(classes=10).active
    (True, False)
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5
    classes: int = 0

    @property
    def active(self) -> bool:
        return bool(self.mixup_alpha or self.cutmix_alpha)

    def draw(
        self, count: int, image_size: tuple[int, int], generator: torch.Generator, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Each sample's ``partners``, ``lam`` (its own share of its target, corrected to its box),
        ``blend`` (mixup: its own share of its pixels; 1 for CutMix samples) and ``boxes`` (CutMix:
        the box of its partner's pixels; none for mixup samples), drawn in that order."""
        partners = cyclic_partners(count, generator, device)
        if self.mixup_alpha and self.cutmix_alpha:
            cutmix = torch.rand(count, generator=generator, device=device) < self.switch_prob
        else:
            cutmix = torch.full((count,), bool(self.cutmix_alpha), device=device)
        alpha = torch.where(cutmix, self.cutmix_alpha, self.mixup_alpha).float()
        lam = beta(alpha, generator)
        drawn = {"partners": partners}
        if self.mixup_alpha:
            drawn["blend"] = torch.where(cutmix, 1.0, lam)
        if self.cutmix_alpha:
            boxes, corrected = cutmix_boxes(lam, *image_size, generator)
            drawn["boxes"] = boxes * cutmix.view(-1, 1)  # a mixup sample's box: none
            lam = torch.where(cutmix, corrected, lam)
        drawn["lam"] = lam
        return drawn

    def apply(
        self, x: torch.Tensor, y: torch.Tensor, drawn: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch ``x`` (N×C×H×W floats; mixup alone: N×anything) and labels ``y`` (N class
        indices) mixed as ``drawn`` says: the mixed images and the targets (N×classes probabilities,
        float32)."""
        partners = drawn["partners"]
        partner = x.index_select(0, partners)  # (~6× faster than x[partners] here)
        if "boxes" in drawn:
            x = torch.where(inside_boxes(drawn["boxes"], *x.shape[-2:]), partner, x)
        if "blend" in drawn:
            blend = drawn["blend"].to(x.dtype).view(-1, *[1] * (x.dim() - 1))
            # blend·x + (1 − blend)·partner in one operation; a CutMix sample's blend is 1: x exactly.
            x = torch.lerp(partner, x, blend)
        lam = drawn["lam"].view(-1, 1)
        own, other = (one_hot(labels, self.classes) for labels in (y.long(), y[partners].long()))
        return x, lam * own + (1 - lam) * other

    def mix(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` mixed with draws from ``generator``; with both α 0, ``(x, y)`` themselves."""
        if not self.active:
            return x, y
        if self.cutmix_alpha and x.dim() != 4:
            shape = "×".join(str(size) for size in x.shape)
            raise FmtkError(f"CutMix pastes boxes of images (N×C×H×W batches); the training batch is {shape}")
        return self.apply(x, y, self.draw(len(x), x.shape[-2:], generator, x.device))


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """N labels as N×classes float one-hot rows: ``F.one_hot(labels, classes).float()`` without its
    check of the labels' range, which reads their min and max (a host-device sync on CUDA's
    fallback paths, two on the CPU); an out-of-range label still fails, in the scatter."""
    return torch.zeros(len(labels), classes, device=labels.device).scatter_(1, labels.view(-1, 1), 1.0)


def mixing_seed(seed: int, epoch: int, batch: int, rank: int = 0) -> int:
    """The seed of one batch's mixing: a function of the run's seed, the epoch, the batch's place in
    it and the process (each process mixes its own shard)."""
    return (((seed * 100_003 + epoch) * 1_000_003 + batch) * 1_009 + rank) % 2**64


class BatchMixer:
    """``mixer(x, y, epoch, batch)``: batch ``batch`` (from 0) of epoch ``epoch`` mixed by ``mixing``
    on its device, with draws from a generator seeded by ``(seed, epoch, batch, rank)``, so the
    batches of a resumed run are mixed exactly as those of the run that was interrupted.

    >>> mixer = BatchMixer(Mixing(mixup_alpha=0.2, classes=3), seed=0, device=torch.device("cpu"))
    >>> x, y = mixer(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]), epoch=1, batch=0)
    >>> y.shape, torch.allclose(y.sum(dim=1), torch.ones(4))
    (torch.Size([4, 3]), True)
    """

    def __init__(self, mixing: Mixing, seed: int, device: torch.device, rank: int = 0) -> None:
        self.mixing, self.seed, self.rank = mixing, seed, rank
        self.generator = torch.Generator(device=device)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.generator.manual_seed(mixing_seed(self.seed, epoch, batch, self.rank))
        return self.mixing.mix(x, y, self.generator)
