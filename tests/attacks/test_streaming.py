"""Real image sizes: the attacker's data and the preparations are read a batch at a time, with the same numbers as
when a split was held whole; AdvEncoder's generator stays at its authors' 64 px for larger images."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from attacks.advencoder import AdvEncoderPER, Generator
from attacks.universal import L4A, AttackerImages, FeatureUAP
from datamodules.base import ImageFile, LabeledTensors, LazyImages, chunks


class Counting(LabeledTensors):
    """uint8 images kept as they are; counts the items read one by one (a dataset read from disk)."""

    reads = 0

    def __getitem__(self, i):
        Counting.reads += 1
        return super().__getitem__(i)


def test_lazy_images_read_on_access_through_subsets_in_uint8():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    data = LabeledTensors(images, torch.arange(50) % 10)
    assert data.images.dtype == torch.uint8  # kept as uint8: a quarter of float32's memory
    lazy = LazyImages(Subset(Subset(data, list(range(10, 50))), [3, 1, 2]))
    assert len(lazy) == 3 and lazy.shape == (3, 3, 8, 8)
    assert torch.equal(lazy[[0, 1]], images[[13, 11]].float() / 255)
    assert torch.equal(lazy[-1], images[12].float() / 255) and len(lazy[1:]) == 2


def test_a_generic_dataset_is_read_item_by_item_only_for_the_rows_asked():
    Counting.reads = 0
    data = Counting(torch.randint(0, 256, (100, 1, 4, 4), dtype=torch.uint8), torch.zeros(100))
    lazy = LazyImages(Subset(data, list(range(100))))
    lazy.dataset = _Generic(data)  # not a LabeledTensors: the item-by-item path
    batch = lazy[torch.tensor([5, 7])]
    assert Counting.reads == 2 and batch.shape == (2, 1, 4, 4)


class _Generic(torch.utils.data.Dataset):
    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]


@pytest.mark.parametrize(
    "make",
    [
        lambda: FeatureUAP(8 / 255, epochs=1, batch_size=32),
        lambda: L4A(8 / 255, layer="backbone.features.2", variant="ugs", epochs=1, batch_size=32),
        lambda: AdvEncoderPER(8 / 255, epochs=1, batch_size=32, ngf=8),
    ],
)
def test_a_fit_on_lazy_images_is_the_fit_on_the_whole_tensor(make, digits, digits_classifier):
    model = copy.deepcopy(digits_classifier).eval()
    whole = digits.tensors("source", "train", 96)
    lazy = LazyImages(digits.splits("source").train)[:96]
    deltas = []
    for data in (whole, (lazy, whole[1])):
        attack = make()
        attack.attacker_data = data
        torch.manual_seed(0)
        deltas.append(attack.fitted(model, "cpu"))
    assert torch.equal(deltas[0], deltas[1])


def test_attacker_images_move_one_batch_at_a_time():
    images = AttackerImages(torch.rand(10, 1, 4, 4), "cpu")
    assert images.shape == (10, 1, 4, 4) and images.batch(torch.tensor([2, 3])).shape == (2, 1, 4, 4)


def test_the_generator_works_at_64_px_and_its_output_is_resized():
    count = lambda g: sum(p.numel() for p in g.net.parameters())  # noqa: E731
    at64, at224 = Generator(3, (64, 64), ngf=16, z_batch=4), Generator(3, (224, 224), ngf=16, z_batch=4)
    assert count(at224) == count(at64)  # it had 32x the widest layer's width at 224 px
    assert at224(torch.randn(4, 100, 1, 1)).shape == (1, 3, 224, 224)
    assert Generator(1, (16, 16), ngf=16, z_batch=4).side == 16  # small images: generated at their own size


def test_gen_af_probe_reads_the_split_in_chunks_never_whole(digits, digits_classifier, monkeypatch):
    from defenses.gen_af import GenAF

    dm = copy.copy(digits)
    monkeypatch.setattr(dm, "tensors", lambda *a, **k: pytest.fail("a whole split was stacked"))
    reads = []
    real = LazyImages.__getitem__
    monkeypatch.setattr(LazyImages, "__getitem__", lambda self, key: reads.append(key) or real(self, key))
    state = digits_classifier.state_dict()
    module = GenAF(copy.deepcopy(digits_classifier), teacher_state=state, probe_steps=1, probe_epochs=1,
                   probe_batch_size=64)  # fmt: skip
    meta, _ = module.prepare(dm)
    n = len(dm.splits("target").train)
    assert set(meta["sensitivity"]) == set(module.probed_layers())
    assert max(len(k) for k in reads if not isinstance(k, (int, slice))) <= 64 and len(reads) >= n // 64


def test_gen_af_probe_reading_its_adversarial_copy_from_a_file_is_the_probe_on_the_copy_in_memory(
    digits, digits_classifier, monkeypatch
):
    from torch.utils.data import TensorDataset

    from defenses.gen_af import GenAF

    def in_memory(self, datamodule, attack, model, device):  # the copy held whole on the CPU, as it was
        x, y = datamodule.lazy_tensors("target", "train")
        torch.empty((), dtype=torch.int64).random_()
        x_adv = torch.empty(x.shape)
        for i in range(0, len(x), self.probe["batch_size"]):
            rows = torch.arange(i, min(i + self.probe["batch_size"], len(x)))
            x_adv[rows] = attack(model, x[rows].to(device), y[rows].to(device)).cpu()
        return TensorDataset(x_adv, y)

    metas = []
    for split in (GenAF._adversarial_split, in_memory):
        monkeypatch.setattr(GenAF, "_adversarial_split", split)
        state = digits_classifier.state_dict()
        torch.manual_seed(0)  # the new head's weights, then the probe's random start
        module = GenAF(copy.deepcopy(digits_classifier), teacher_state=state, probe_steps=2, probe_epochs=2,
                       probe_batch_size=32)  # fmt: skip
        metas.append(module.prepare(digits)[0])
    assert metas[0] == metas[1]  # every layer's sensitivity, bitwise
    assert len(set(metas[0]["sensitivity"].values())) > 1, "the probe must tell layers apart"


def test_an_image_file_reads_back_the_rows_written_and_is_a_numpy_file(tmp_path):
    x = torch.rand(10, 3, 4, 5)
    named = ImageFile(x.shape, tmp_path / "x.npy")
    named.write(0, x[:4])
    named.write(4, x[4:])
    assert torch.equal(named.batch([9, 3, 4, 5, 0]), x[[9, 3, 4, 5, 0]])
    named.close()
    assert np.array_equal(np.load(tmp_path / "x.npy"), x.numpy())
    lazy = LazyImages(ImageFile.open(tmp_path / "x.npy"))
    assert lazy.shape == (10, 3, 4, 5) and torch.equal(lazy[2:6][[0, 3]], x[[2, 5]])
    temporary = ImageFile((3, 2))
    with pytest.raises(IndexError, match="rows 2..3 out of range for 3 images"):
        temporary.write(2, torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"images of shape \(3,\), the file holds \(2,\)"):
        temporary.write(0, torch.ones(1, 3))
    np.save(tmp_path / "d.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a C-ordered float32 array"):
        ImageFile.open(tmp_path / "d.npy")


def test_chunks_of_a_tensor_are_views_of_it_and_chunks_of_lazy_images_read_the_same_rows():
    x = torch.rand(10, 1, 2, 2)
    parts = list(chunks(x, 4))
    assert [len(p) for p in parts] == [4, 4, 2] and torch.equal(torch.cat(parts), x)
    assert all(p.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for p in parts), "nothing copied"
    lazy = LazyImages(LabeledTensors(x, torch.zeros(10)))
    assert all(torch.equal(a, b) for a, b in zip(chunks(lazy, 4), parts))
