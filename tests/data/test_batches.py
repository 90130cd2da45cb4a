"""In-memory batches: each sample once per epoch, flips, normalisation."""

from __future__ import annotations

import pytest
import torch

from fmtk.data.augment import erase_boxes, random_boxes, random_crops, resize_crops, shift_images
from fmtk.data.batches import TensorBatches


def test_tensor_batches_cover_each_sample_once_per_epoch() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    batches = TensorBatches(images, torch.arange(10), batch_size=4, shuffle=True, seed=3)
    assert len(batches) == 3

    def epoch_order(epoch: int) -> list[int]:
        batches.set_epoch(epoch)
        return torch.cat([y for _, y in batches]).tolist()

    first = epoch_order(1)
    assert sorted(first) == list(range(10))
    assert epoch_order(1) == first  # an epoch's order can be reproduced
    assert epoch_order(2) != first
    x, y = next(iter(batches))
    assert torch.equal(x.view(-1) * 255, y.float())  # images stay paired with their labels


@pytest.mark.parametrize("flip_p, flipped", [(0.0, False), (1.0, True)])
def test_tensor_batches_flip(flip_p: float, flipped: bool) -> None:
    images = torch.arange(6, dtype=torch.uint8).view(1, 1, 2, 3).repeat(4, 1, 1, 1)
    x, _ = next(iter(TensorBatches(images, torch.zeros(4, dtype=torch.long), 4, flip_p=flip_p)))
    expected = images.float() / 255
    assert torch.equal(x, expected.flip(-1) if flipped else expected)


def test_tensor_batches_flip_rate_matches_probability() -> None:
    images = torch.arange(2, dtype=torch.uint8).view(1, 1, 1, 2).repeat(4000, 1, 1, 1)
    x, _ = next(iter(TensorBatches(images, torch.zeros(4000, dtype=torch.long), 4000, flip_p=0.3)))
    rate = (x[:, 0, 0, 0] > 0).float().mean().item()
    assert 0.27 < rate < 0.33


def test_tensor_batches_normalise() -> None:
    images = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)
    batches = TensorBatches(
        images, torch.zeros(2, dtype=torch.long), 2, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)
    )
    x, _ = next(iter(batches))
    assert x[0, :, 0, 0].tolist() == [2.0, 1.0, 0.5]


@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_a_training_batch_of_one_sample_per_process_joins_the_batch_before(shard: tuple[int, int]) -> None:
    world_size = shard[1]
    count = 4 * world_size * 2 + world_size  # two full global batches, then one sample per process
    images, labels = torch.zeros(count, 1, 2, 2, dtype=torch.uint8), torch.arange(count)
    train = TensorBatches(images, labels, 4 * world_size, shuffle=True, shard=shard)
    sizes = [len(y) for _, y in train]
    assert sizes == [4, 5] and len(train) == 2  # every sample still seen once per epoch
    valid = TensorBatches(images, labels, 4 * world_size, shard=shard)  # evaluation keeps its short batch
    assert [len(y) for _, y in valid] == [4, 4, 1]


def test_loader_batches_drop_a_training_batch_of_one_sample(tmp_path) -> None:
    from torch.utils.data import TensorDataset

    from fmtk.data.images import LoaderBatches

    dataset = TensorDataset(torch.zeros(9, 3, 2, 2, dtype=torch.uint8), torch.arange(9))
    train = LoaderBatches(dataset, 4, torch.device("cpu"), shuffle=True, workers=0, shard=(0, 1))
    assert [len(y) for _, y in train] == [4, 4]
    valid = LoaderBatches(dataset, 4, torch.device("cpu"), workers=0, shard=(0, 1))
    assert [len(y) for _, y in valid] == [4, 4, 1]


def test_shift_images_translates_each_sample_by_its_own_offset() -> None:
    images = torch.arange(2 * 16, dtype=torch.float).view(2, 1, 4, 4)
    shifted = shift_images(images, torch.tensor([[1, 0], [0, -1]]), pad=1)
    assert torch.equal(shifted[0, 0, :3], images[0, 0, 1:]) and not shifted[0, 0, 3].any()
    assert torch.equal(shifted[1, 0, :, 1:], images[1, 0, :, :3]) and not shifted[1, 0, :, 0].any()
    assert torch.equal(shift_images(images, torch.zeros(2, 2, dtype=torch.long), pad=2), images)


def test_random_boxes_erase_the_share_they_promise() -> None:
    generator = torch.Generator().manual_seed(0)
    boxes = random_boxes(2000, 28, 28, 0.5, generator, torch.device("cpu"))
    erased = erase_boxes(torch.ones(2000, 1, 28, 28), boxes)
    hit = (erased == 0).flatten(1).any(1)
    assert 0.45 < hit.float().mean() < 0.55  # p = 0.5
    share = (erased[hit] == 0).float().mean()
    assert 0.1 < share < 0.25  # 2–33% of the image, ~17% on average (clamped at the edges)


def test_resize_crops_is_exact_on_a_ramp_and_the_identity_on_the_whole_image() -> None:
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(2, 1, 8, 8)
    whole_and_centre = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0]])
    cropped = resize_crops(ramp, whole_and_centre)
    assert torch.allclose(cropped[0], ramp[0])
    # The centre half of the columns, stretched: bilinear sampling of a ramp is exact.
    assert torch.allclose(cropped[1, 0, 3], torch.linspace(1.75, 5.25, 8), atol=1e-5)


def test_random_crops_keep_to_their_area_and_ratio() -> None:
    crops = random_crops(4000, 0.25, torch.Generator().manual_seed(0), torch.device("cpu"))
    width, height, centre_x, centre_y = crops.unbind(1)
    area, ratio = width * height, width / height
    assert area.min() >= 0.25 - 1e-6 and area.max() <= 1 and 0.55 < area.mean() < 0.65
    unclamped = (width < 1) & (height < 1)
    assert ratio[unclamped].min() >= 3 / 4 - 1e-5 and ratio[unclamped].max() <= 4 / 3 + 1e-5
    assert ((centre_x.abs() <= 1 - width + 1e-6) & (centre_y.abs() <= 1 - height + 1e-6)).all()  # inside


@pytest.mark.parametrize("augmentation", [{"shift": 2, "erase_p": 0.5}, {"flip_p": 0.5, "crop_scale": 0.3}])
def test_augmentation_changes_training_batches_only_and_repeats_per_epoch(augmentation: dict) -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(1, 255, (64, 1, 12, 12), dtype=torch.uint8, generator=generator)
    labels = torch.arange(64) % 4
    plain = TensorBatches(images, labels, 16, shuffle=True, seed=3, shard=(0, 1))
    augmented = TensorBatches(images, labels, 16, shuffle=True, seed=3, shard=(0, 1), **augmentation)
    for epoch in (1, 2):
        plain.set_epoch(epoch)
        augmented.set_epoch(epoch)
        for (x, y), (xa, ya) in zip(plain, augmented, strict=True):
            assert torch.equal(y, ya) and xa.shape == x.shape and not torch.equal(x, xa)
    first, again = list(augmented), list(augmented)  # the same epoch: the same batches
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    augmented.set_epoch(3)
    assert not torch.equal(next(iter(augmented))[0], first[0][0])
    whole = augmented.whole()  # evaluation's view: every sample as it is
    assert torch.equal(next(iter(whole))[0], next(iter(plain.whole()))[0])
