"""The loader: evaluation batches equal open_clip's preprocessing, augmentation is seeded per (seed, epoch) and image,
and a global batch is split between ranks without loss or overlap."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import open_clip
import torch
from PIL import Image

from clipft_utils.loader import CachedLoader, EpochSampler, augment, crop_params, epoch_order, normalise

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


def fake_split(n: int = 70, size: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    return SimpleNamespace(labels=np.arange(n) % 7, indices=None, image_size=size, mean=MEAN, std=STD,
                           images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_evaluation_batches_are_open_clips_tensors_exactly():
    split = fake_split()
    preprocess = open_clip.image_transform(16, is_train=False, mean=MEAN, std=STD)  # resize/crop are no-ops at 16
    batch = next(iter(CachedLoader(split, 8)))
    for i in range(8):
        assert torch.equal(batch.images[i], preprocess(Image.fromarray(split.images[i])))
    assert batch.labels.tolist() == split.labels[:8].tolist() and batch.weights.tolist() == [1.0] * 8


def test_augmentation_depends_only_on_seed_epoch_and_image():
    split = fake_split()
    a = CachedLoader(split, 16, shuffle=True, augment=True, seed=5)
    first = [b.images.clone() for b in a]
    again = [b.images.clone() for b in CachedLoader(split, 16, shuffle=True, augment=True, seed=5)]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    a.set_epoch(1)
    assert not torch.equal(next(iter(a)).images, first[0])
    # the same image gets the same crop whichever batch (or rank) it lands in
    whole = {int(lab): img for b in CachedLoader(split, 70, augment=True, seed=5) for lab, img in zip(b.labels, b.images)}
    small = {int(lab): img for b in CachedLoader(split, 7, augment=True, seed=5) for lab, img in zip(b.labels, b.images)}
    assert all(torch.allclose(whole[k], small[k], atol=1e-5) for k in whole)


def test_the_identity_crop_returns_the_image_and_flip_mirrors_it():
    x = torch.from_numpy(fake_split(4).images).permute(0, 3, 1, 2).float()
    ident = torch.tensor([[0.0, 0.0, 16.0, 16.0, 0.0]]).repeat(4, 1)
    torch.testing.assert_close(augment(x.clone(), ident), x, atol=1e-3, rtol=0)
    flipped = augment(x.clone(), torch.tensor([[0.0, 0.0, 16.0, 16.0, 1.0]]).repeat(4, 1))
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-3, rtol=0)
    p = crop_params(1000, 64, seed=0)
    area = p[:, 2] * p[:, 3] / 64 ** 2
    assert (p[:, 2] <= 64).all() and (p[:, 3] <= 64).all() and area.min() >= 0.9 * 0.75 - 1e-9 and area.max() <= 1.0
    assert 0.4 < p[:, 4].mean() < 0.6                      # about half the images are flipped


def test_normalise_matches_torchvision_op_for_op():
    from torchvision.transforms import functional as TF
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    expected = torch.stack([TF.normalize(i.to(torch.get_default_dtype()).div(255), MEAN, STD) for i in x])  # ToTensor
    assert torch.equal(normalise(x, MEAN, STD), expected)


def test_a_global_batch_is_split_between_ranks_without_loss_or_overlap():
    split = fake_split()
    whole = [b.labels.tolist() for b in CachedLoader(split, 32, shuffle=True, seed=3)]
    parts = [list(CachedLoader(split, 32, shuffle=True, seed=3, rank=r, world=3)) for r in range(3)]
    assert all(len(p) == len(whole) for p in parts)                     # every rank takes every step
    for i, batch in enumerate(whole):
        got = [lab for p in parts for lab, w in zip(p[i].labels.tolist(), p[i].weights.tolist()) if w > 0]
        assert sorted(got) == sorted(batch) and all(p[i].total == len(batch) for p in parts)
    tiny = [list(CachedLoader(fake_split(4), 4, rank=r, world=8)) for r in range(8)]
    assert sum(float(b[0].weights.sum()) for b in tiny) == 4            # ranks without an item get weight 0


def test_sampler_orders_are_reproducible_per_epoch():
    s = EpochSampler(10, shuffle=True, seed=5)
    first, second = list(s), list(s)
    assert first != second and sorted(first) == list(range(10))
    s.set_epoch(0)
    assert list(s) == first
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_both_loaders_draw_one_data_order():
    """The image loader and the DataLoader sampler (the linear probe's features) share ``epoch_order``."""
    split = fake_split(20)
    images = CachedLoader(split, 20, shuffle=True, seed=3)
    sampler = EpochSampler(20, shuffle=True, seed=3)
    for epoch in (0, 1, 4):
        images.set_epoch(epoch)
        sampler.set_epoch(epoch)
        expected = epoch_order(20, True, 3, epoch).tolist()
        assert split.labels[expected].tolist() == next(iter(images)).labels.tolist() and list(sampler) == expected
