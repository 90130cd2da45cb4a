"""mixup and CutMix (fmtk.data.mixing): the formulas, per-sample λ and boxes, the seeded draws."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fmtk.data.mixing import BatchMixer, Mixing, cutmix_boxes, cyclic_partners
from fmtk.errors import FmtkError

CPU = torch.device("cpu")
CLASSES = 5


def batch(count: int = 16, size: tuple[int, int] = (12, 10)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(count, 3, *size, generator=generator)
    return x, torch.arange(count) % CLASSES


def mixed(mixing: Mixing, x: torch.Tensor, y: torch.Tensor, seed: int = 1) -> tuple:
    """The draws, mixed images and targets of ``mixing`` with a generator seeded by ``seed``."""
    drawn = mixing.draw(len(x), x.shape[-2:], torch.Generator().manual_seed(seed), CPU)
    return (drawn, *mixing.apply(x, y, drawn))


def one_hot(y: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, CLASSES).float()


def test_partners_are_one_cycle_so_no_sample_is_its_own() -> None:
    for seed in range(20):
        partners = cyclic_partners(9, torch.Generator().manual_seed(seed), CPU)
        assert sorted(partners.tolist()) == list(range(9))
        seen, sample = [], 0
        for _ in range(9):  # following the partners visits every sample once: one cycle
            seen.append(sample)
            sample = int(partners[sample])
        assert sorted(seen) == list(range(9)) and sample == 0
    assert cyclic_partners(1, torch.Generator(), CPU).tolist() == [0]


def test_mixup_follows_the_formula_with_a_lam_per_sample() -> None:
    x, y = batch()
    drawn, images, targets = mixed(Mixing(mixup_alpha=0.4, classes=CLASSES), x, y)
    lam, partners = drawn["lam"], drawn["partners"]
    assert set(drawn) == {"partners", "lam", "blend"}
    assert lam.unique().numel() == len(x) and ((lam > 0) & (lam < 1)).all()  # each sample its own λ
    expected = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[partners]
    torch.testing.assert_close(images, expected)
    torch.testing.assert_close(targets, lam[:, None] * one_hot(y) + (1 - lam[:, None]) * one_hot(y[partners]))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(x)))


def test_cutmix_pastes_a_box_whose_area_is_the_corrected_lam() -> None:
    x, y = batch(64)
    x = x.abs() + 1  # no pixel is 0 …
    drawn, images, targets = mixed(Mixing(cutmix_alpha=1.0, classes=CLASSES), x, y)
    lam, partners, boxes = drawn["lam"], drawn["partners"], drawn["boxes"]
    assert set(drawn) == {"partners", "lam", "boxes"}
    height, width = x.shape[-2:]
    for i in range(len(x)):
        pasted = images[i] == x[partners[i]]
        own = images[i] == x[i]
        assert (pasted | own).all()  # each pixel is the sample's own or its partner's, unblended
        top, left, box_height, box_width = boxes[i].tolist()
        box = torch.zeros(height, width, dtype=torch.bool)
        box[top : top + box_height, left : left + box_width] = True
        assert torch.equal(pasted[0], box) and torch.equal(pasted[1], box)  # … so the box is exact
        assert lam[i].item() == pytest.approx(1 - box_height * box_width / (height * width))
    assert lam.unique().numel() > 10  # per-sample boxes of many sizes (on 12×10 pixels, a few dozen)
    torch.testing.assert_close(targets, lam[:, None] * one_hot(y) + (1 - lam[:, None]) * one_hot(y[partners]))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(x)))


def test_cutmix_boxes_have_the_sides_of_their_lam_and_are_clipped_at_the_border() -> None:
    lam = torch.tensor([0.0, 0.36, 0.75, 0.91, 1.0]).repeat(200)
    boxes, corrected = cutmix_boxes(lam, 20, 30, torch.Generator().manual_seed(3))
    top, left, box_height, box_width = boxes.unbind(1)
    inside = (top > 0) & (left > 0) & (top + box_height < 20) & (left + box_width < 30)
    half = 0.5 * (1 - lam).sqrt()  # unclipped: 2 × the half-sides, rounded down
    assert torch.equal(box_height[inside], 2 * (half * 20).long()[inside])
    assert torch.equal(box_width[inside], 2 * (half * 30).long()[inside])
    assert inside.any() and (~inside).any()
    assert ((top >= 0) & (left >= 0) & (top + box_height <= 20) & (left + box_width <= 30)).all()
    torch.testing.assert_close(corrected, 1 - (box_height * box_width).float() / 600)
    assert (corrected >= lam - 0.1).all() and (corrected[lam == 1] == 1).all()  # clipping only shrinks


@pytest.mark.parametrize("switch_prob, share", [(0.0, 0.0), (0.3, 0.3), (1.0, 1.0)])
def test_with_both_each_sample_is_cutmix_with_the_switch_probability(
    switch_prob: float, share: float
) -> None:
    x, y = batch(1000, (8, 8))
    mixing = Mixing(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=switch_prob, classes=CLASSES)
    drawn, images, targets = mixed(mixing, x, y)
    cutmix = drawn["blend"] == 1
    assert cutmix.float().mean().item() == pytest.approx(share, abs=0.05)
    assert (drawn["boxes"][~cutmix] == 0).all()  # a mixup sample has no box …
    blend = drawn["blend"][~cutmix].view(-1, 1, 1, 1)  # … and blends whole images
    torch.testing.assert_close(
        images[~cutmix], blend * x[~cutmix] + (1 - blend) * x[drawn["partners"]][~cutmix]
    )
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(x)))


def test_without_alphas_the_batch_is_left_as_it_is() -> None:
    x, y = batch()
    mixing = Mixing(classes=CLASSES)
    assert not mixing.active
    mixed_x, mixed_y = mixing.mix(x, y, torch.Generator())
    assert mixed_x is x and mixed_y is y


def test_mixup_mixes_feature_vectors_and_cutmix_refuses_them() -> None:
    x, y = torch.randn(6, 64), torch.arange(6) % CLASSES
    images, targets = Mixing(mixup_alpha=0.2, classes=CLASSES).mix(x, y, torch.Generator())
    assert images.shape == x.shape and targets.shape == (6, CLASSES)
    with pytest.raises(FmtkError, match="CutMix pastes boxes of images .* the training batch is 6×64"):
        Mixing(cutmix_alpha=1.0, classes=CLASSES).mix(x, y, torch.Generator())


def test_the_same_seed_epoch_and_batch_mix_the_same_way_and_others_do_not() -> None:
    x, y = batch()
    mixing = Mixing(mixup_alpha=0.2, cutmix_alpha=1.0, classes=CLASSES)
    first = BatchMixer(mixing, seed=7, device=CPU)
    again = BatchMixer(mixing, seed=7, device=CPU)  # a resumed run's: a new generator, the same seed
    reference = first(x, y, epoch=3, batch=2)
    for repeat in (first(x, y, 3, 2), again(x, y, 3, 2)):
        assert all(torch.equal(a, b) for a, b in zip(repeat, reference, strict=True))
    others = [first(x, y, 4, 2), first(x, y, 3, 3), BatchMixer(mixing, 8, CPU)(x, y, 3, 2),
              BatchMixer(mixing, 7, CPU, rank=1)(x, y, 3, 2)]  # fmt: skip
    for other in others:
        assert not torch.equal(other[1], reference[1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_draws_stay_on_the_device_and_repeat() -> None:
    cuda = torch.device("cuda")
    x, y = (tensor.to(cuda) for tensor in batch(64))
    mixing = Mixing(mixup_alpha=0.2, cutmix_alpha=1.0, classes=CLASSES)
    mixer = BatchMixer(mixing, seed=7, device=cuda)
    with torch.cuda.device(cuda):
        torch.cuda.set_sync_debug_mode("error")  # a host sync inside the mixing raises
        try:
            images, targets = mixer(x, y, 3, 2)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    again = BatchMixer(mixing, seed=7, device=cuda)(x, y, 3, 2)
    assert torch.equal(images, again[0]) and torch.equal(targets, again[1])
    assert images.device.type == targets.device.type == "cuda"
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(x), device=cuda))
