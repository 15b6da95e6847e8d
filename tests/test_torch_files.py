"""The torch-free checkpoint reader against the files torch.save itself writes, in both of its formats."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the checkpoint reader is compared with "
                                            "torch.save's files")

from hpa_tf.errors import ModelError  # noqa: E402
from hpa_tf.models.torch_files import CheckpointError, read_checkpoint, read_state_dict  # noqa: E402

FORMATS = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}


def save(obj, path, fmt):
    """torch.save in one of its two formats; the path, for chaining."""
    torch.save(obj, path, **FORMATS[fmt])
    return path


def assert_same(arrays, tensors):
    """The reader's arrays equal torch's tensors exactly (keys, dtypes, shapes, values; bfloat16 as float32),
    and are contiguous, writeable and independent of one another."""
    assert list(arrays) == list(tensors)
    for key, tensor in tensors.items():
        tensor = tensor.detach().float() if tensor.dtype == torch.bfloat16 else tensor.detach()
        expected, array = tensor.numpy(), arrays[key]
        assert array.dtype == expected.dtype and array.shape == expected.shape, key
        np.testing.assert_array_equal(array, expected, err_msg=key)
        assert array.flags.c_contiguous and array.flags.writeable, key
        assert not any(np.shares_memory(array, other) for other in arrays.values() if other is not array), key


def tensors():
    """One tensor of each dtype and layout a checkpoint may hold."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen)
    return {
        "f32": base,
        "f64": torch.randn(3, 2, generator=gen, dtype=torch.float64),
        "f16": torch.randn(5, generator=gen).half(),
        "bf16": torch.randn(2, 3, generator=gen).bfloat16(),
        "i64": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),
        "i32": torch.tensor([-(2**31), 0, 2**31 - 1], dtype=torch.int32),
        "u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(2.5),
        "num_batches_tracked": torch.tensor(7, dtype=torch.long),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),  # non-contiguous view of f32's storage
        "row": base[2],  # a view at a storage offset
        "strided": base[1:, ::2],
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_dtypes_views_and_shared_storages(tmp_path, fmt):
    expected = tensors()
    arrays = read_state_dict(save(expected, tmp_path / "all.pth", fmt))
    assert_same(arrays, expected)
    arrays["row"][0] = 123.0  # independent copies, even of views sharing one storage
    assert arrays["f32"][2, 0] != 123.0 and arrays["transposed"][0, 2] != 123.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_solutions_checkpoint_dict_with_dataparallel_prefixes(tmp_path, fmt):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                              torch.nn.Linear(3 * 4 * 4, 2))
    net(torch.randn(2, 4, 6, 6))  # running statistics and num_batches_tracked move off their initial values
    state = net.state_dict()
    checkpoint = {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3, "best_epoch": 2,
                  "best_score": np.float64(0.5)}
    arrays, info = read_checkpoint(save(checkpoint, tmp_path / "final.pth", fmt))
    assert_same(arrays, state)
    assert info == {"epoch": 3, "best_epoch": 2, "best_score": 0.5}
    assert type(info["best_score"]) is float
    assert_same(read_state_dict(save({"model": state}, tmp_path / "005.pth", fmt)), state)


def test_zip_format_prefix_and_missing_byteorder(tmp_path):
    import zipfile

    expected = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3).t()}
    source = save(expected, tmp_path / "model.pt", "zip")
    renamed = tmp_path / "other.tar"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(renamed, "w") as dst:
        for name in src.namelist():
            if not name.endswith("/byteorder"):
                dst.writestr("archive/" + name.split("/", 1)[1], src.read(name))
    assert_same(read_state_dict(renamed), expected)


def test_safetensors(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    expected = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64)}
    path = tmp_path / "w.safetensors"
    safetensors_numpy.save_file({"module." + k: v for k, v in expected.items()}, path)
    arrays = read_state_dict(path)
    assert sorted(arrays) == ["a", "b"]
    for key, value in expected.items():
        np.testing.assert_array_equal(arrays[key], value)
        assert arrays[key].dtype == value.dtype
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="cut.safetensors: truncated"):
        read_state_dict(cut)


class Custom:
    pass


def bad_files(tmp_path):
    """name -> (a file the reader must refuse, a word its message must hold)."""
    big = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    files = {}
    for fmt in FORMATS:
        data = save(big, tmp_path / f"{fmt}.pth", fmt).read_bytes()
        (tmp_path / f"cut_{fmt}.pth").write_bytes(data[: len(data) // 2])
        files[f"cut_{fmt}"] = (tmp_path / f"cut_{fmt}.pth", "truncated")
    (tmp_path / "labels.pth").write_text("Id,Target\nabc,0 1\n")
    files["csv"] = (tmp_path / "labels.pth", "not a PyTorch checkpoint")
    (tmp_path / "image.pth").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    files["png"] = (tmp_path / "image.pth", "not a PyTorch checkpoint")
    (tmp_path / "system.pth").write_bytes(pickle.dumps(os.system))
    files["os.system"] = (tmp_path / "system.pth", "system")
    for fmt in FORMATS:
        custom = save({"w": torch.ones(1), "x": Custom()}, tmp_path / f"custom_{fmt}.pth", fmt)
        files[f"custom class, {fmt}"] = (custom, "test_torch_files.Custom")
    files["no tensors"] = (save({"epoch": 3}, tmp_path / "empty.pth", "zip"), "no tensors")
    files["missing"] = (tmp_path / "absent.pth", "no such")
    return files


def test_bad_files_give_one_checkpoint_error_naming_the_file(tmp_path):
    for name, (path, word) in bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as caught:
            read_state_dict(path)
        message = str(caught.value)
        assert str(path) in message and word in message, (name, message)
        assert isinstance(caught.value, ModelError)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_truncation_is_a_checkpoint_error(tmp_path, fmt):
    data = save({"w": torch.randn(3, 4), "n": torch.tensor(5)}, tmp_path / "small.pth", fmt).read_bytes()
    cut = tmp_path / "cut.pth"
    for size in range(len(data)):
        cut.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match="cut.pth"):
            read_state_dict(cut)


def test_refused_global_is_never_called(tmp_path, monkeypatch):
    class Exploit:
        def __reduce__(self):
            return os.system, ("echo owned",)

    path = tmp_path / "exploit.pth"
    path.write_bytes(pickle.dumps({"w": Exploit()}))
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    with pytest.raises(CheckpointError, match="posix.system|os.system"):
        read_state_dict(path)
    assert calls == []
