"""A text encoder extended with new words travels as its delta from the shipped one and is rebuilt byte for byte
(folder_delta.py: what scripts/device_train.sh rebuilds runs/scenes_text with); any other base or delta is refused."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from imagen_app.training.folder_delta import BLOB, MANIFEST, DeltaMismatch, matches, rebuild, write_delta
from imagen_app.training.text_extension import extend_text_encoder

from conftest import WEIGHTS


def files_of(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture
def extended(tmp_path, tiny_pipe):
    base, ext = tmp_path / "base", tmp_path / "ext"
    tiny_pipe.tokenizer.save_pretrained(base / "tokenizer")
    tiny_pipe.text_encoder.save_pretrained(base / "text_encoder")
    new = extend_text_encoder(str(base), str(ext), ["two hearts above a panda", "3 pandas below it"],
                              {"hearts": "heart", "pandas": "panda"})
    assert len(new) >= 5
    return base, ext, new


def test_the_extended_encoder_is_rebuilt_byte_for_byte_from_the_base_and_its_delta(tmp_path, extended):
    base, ext, new = extended
    delta, out = tmp_path / "delta", tmp_path / "out"
    write_delta(str(base), str(ext), str(delta))
    made = rebuild(str(base), str(delta), str(out))
    want = files_of(ext)
    assert set(made) == set(want) == {"text_encoder/config.json", "text_encoder/model.safetensors",
                                      "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"}
    assert files_of(out) == want  # every byte of every file
    assert matches(str(out), str(delta)) and matches(str(ext), str(delta)) and not matches(str(base), str(delta))
    a, b = load_file(str(ext / "text_encoder" / "model.safetensors")), load_file(str(out / "text_encoder" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a delta, not a copy: of the weights it holds the safetensors header and the new words' rows alone
    manifest = json.loads((delta / MANIFEST).read_text())
    ops = manifest["files"]["text_encoder/model.safetensors"]["ops"]
    new_bytes = sum(e - s for kind, s, e in ops if kind == "new")
    header = 8 + int.from_bytes(want["text_encoder/model.safetensors"][:8], "little")
    rows, dim = a["shared.weight"].shape
    assert new_bytes == header + len(new) * dim * 4
    assert torch.equal(a["shared.weight"][:rows - len(new)], load_file(str(base / "text_encoder" / "model.safetensors"))["shared.weight"])


def test_a_changed_base_or_delta_is_refused_and_nothing_is_written(tmp_path, extended):
    base, ext, _ = extended
    delta = tmp_path / "delta"
    write_delta(str(base), str(ext), str(delta))
    model = base / "text_encoder" / "model.safetensors"
    original = model.read_bytes()
    model.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit of one weight
    with pytest.raises(DeltaMismatch, match="differs from the file the delta was written against"):
        rebuild(str(base), str(delta), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    model.write_bytes(original)
    blob = delta / BLOB
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    with pytest.raises(DeltaMismatch):
        rebuild(str(base), str(delta), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_shipped_encoder_extended_is_a_few_kilobytes_of_delta(tmp_path):
    """As for runs/scenes_text: the shipped encoder with new words, its delta from weights/ and back."""
    ext, delta, out = tmp_path / "ext", tmp_path / "delta", tmp_path / "out"
    new = extend_text_encoder(WEIGHTS, str(ext), ["three foxes above two cacti", "4 mice below it"],
                              {"foxes": "fox", "mice": "mouse"})
    write_delta(WEIGHTS, str(ext), str(delta))
    rebuild(WEIGHTS, str(delta), str(out))
    assert files_of(out) == files_of(ext)
    assert os.path.getsize(delta / BLOB) < 4096 + len(new) * 128 * 4  # the header, the new rows, the tokenizer's lines
