"""A folder carried as what it adds to another one, and rebuilt from the two byte for byte.

A lent GPU machine gets the working tree, 64 MiB in all, and the tracked weights are 47.5 MiB of it. The live-scene
run's text encoder (`python -m imagen_app extend-text-encoder runs/scenes_text`, text_extension.py) is the shipped
one with a few new words: its `model.safetensors` holds the shipped tensors, the embedding table with new rows at
its end, and its tokenizer the shipped vocabulary with the new words after the old ones. Carried whole it is
12.4 MiB; as a delta from `weights/` it is a few kilobytes:

- a safetensors file: its header, and for each tensor either a range of the base file (a tensor it holds as is, or
  the old rows of a grown one) or new bytes (the new rows; a tensor the base lacks);
- any other file: the lines it shares with the base file of the same name (difflib), and the others' bytes.

`delta.json` lists every file with its size and sha256 (and the base file's sha256), `delta.bin` holds the new
bytes. `rebuild` refuses a base other than the one the delta was written against and checks every file it writes
against its sha256, so a rebuilt folder is the folder the delta was written from, or an error:

    python -m imagen_app.training.folder_delta write weights runs/scenes_text runs/scenes_text_delta
    python -m imagen_app.training.folder_delta rebuild weights runs/scenes_text_delta runs/scenes_text
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import struct
import sys
from typing import Dict, List, Optional, Tuple

MANIFEST = "delta.json"
BLOB = "delta.bin"

Op = Tuple[str, int, int]  # ("base", start, end): bytes of the base file; ("new", start, end): bytes of delta.bin


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(folder: str) -> List[str]:
    """The files under `folder`, as sorted '/'-separated relative paths."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            out.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(out)


def _safetensors_tensors(data: bytes) -> Optional[Tuple[int, Dict[str, Tuple[str, int, int]]]]:
    """(where the data section starts, name -> (dtype, start, end) in the file), or None for a file that is not a
    safetensors file whose tensors tile its data section."""
    if len(data) < 8:
        return None
    n = struct.unpack("<Q", data[:8])[0]
    if 8 + n > len(data):
        return None
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    start = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            s, e = info["data_offsets"]
            tensors[name] = (info["dtype"], start + s, start + e)
        except (KeyError, TypeError, ValueError):
            return None
    spans = sorted((s, e) for _, s, e in tensors.values())
    end = start
    for s, e in spans:  # contiguous, in order, up to the end of the file
        if s != end or e < s:
            return None
        end = e
    return (start, tensors) if end == len(data) else None


def _safetensors_ops(base: bytes, target: bytes) -> Optional[List[Tuple[str, object]]]:
    """The target's pieces: its header and each tensor, taken from the base where the base tensor of the same name
    and dtype is the tensor or its beginning (a table with rows added at its end)."""
    b, t = _safetensors_tensors(base), _safetensors_tensors(target)
    if b is None or t is None:
        return None
    _, old = b
    start, new = t
    pieces: List[Tuple[str, object]] = [("new", target[:start])]
    for name, (dtype, s, e) in sorted(new.items(), key=lambda kv: kv[1][1]):
        piece = target[s:e]
        if name in old and old[name][0] == dtype:
            _, bs, be = old[name]
            if be > bs and piece[:be - bs] == base[bs:be]:
                pieces.append(("base", (bs, be)))
                piece = piece[be - bs:]
        if piece:
            pieces.append(("new", piece))
    return pieces


def _line_ops(base: bytes, target: bytes) -> List[Tuple[str, object]]:
    """The target's pieces: runs of lines it shares with the base (difflib), and the bytes of the others."""
    a, b = base.splitlines(keepends=True), target.splitlines(keepends=True)
    a_at = [0]
    for line in a:
        a_at.append(a_at[-1] + len(line))
    head = 0  # the lines both begin and end with go to difflib's quadratic matcher no more
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    middle = difflib.SequenceMatcher(None, a[head:len(a) - tail], b[head:len(b) - tail], autojunk=False)
    opcodes = [("equal", 0, head, 0, head)] + [
        (tag, i1 + head, i2 + head, j1 + head, j2 + head) for tag, i1, i2, j1, j2 in middle.get_opcodes()] + [
        ("equal", len(a) - tail, len(a), len(b) - tail, len(b))]
    pieces: List[Tuple[str, object]] = []
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            pieces.append(("base", (a_at[i1], a_at[i2])))
        elif j2 > j1:
            pieces.append(("new", b"".join(b[j1:j2])))
    return pieces


def write_delta(base: str, target: str, out: str) -> Dict[str, int]:
    """Writes `out/delta.json` and `out/delta.bin`: every file of the folder `target` as pieces of the file of the
    same relative path in the folder `base` (where there is one) and new bytes. Returns the sizes written."""
    blob = bytearray()
    files = {}
    for rel in _files(target):
        with open(os.path.join(target, rel), "rb") as f:
            data = f.read()
        base_path = os.path.join(base, rel)
        old = None
        if os.path.isfile(base_path):
            with open(base_path, "rb") as f:
                old = f.read()
        pieces = [("new", data)]
        if old is not None:
            pieces = (rel.endswith(".safetensors") and _safetensors_ops(old, data)) or _line_ops(old, data)
        ops: List[Op] = []
        for kind, what in pieces:
            if kind == "new":
                ops.append(("new", len(blob), len(blob) + len(what)))
                blob += what
            else:
                ops.append(("base",) + tuple(what))
        merged: List[Op] = []  # adjacent ranges of one source as one
        for op in ops:
            if merged and merged[-1][0] == op[0] and merged[-1][2] == op[1]:
                merged[-1] = (op[0], merged[-1][1], op[2])
            elif op[2] > op[1]:
                merged.append(op)
        entry = dict(size=len(data), sha256=sha256(data), ops=[list(op) for op in merged])
        if old is not None and any(op[0] == "base" for op in merged):
            entry["base_sha256"] = sha256(old)
        files[rel] = entry
        if _apply(old, merged, bytes(blob)) != data:  # (cannot happen; checked before anything relies on it)
            raise AssertionError(f"delta of {rel} does not rebuild it")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, BLOB), "wb") as f:
        f.write(blob)
    manifest = dict(base=os.path.normpath(base), target=os.path.normpath(target), blob_sha256=sha256(bytes(blob)),
                    files=files)
    with open(os.path.join(out, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return {rel: e["size"] for rel, e in files.items()}


def _apply(base: Optional[bytes], ops: List[Op], blob: bytes) -> bytes:
    out = bytearray()
    for kind, s, e in ops:
        if kind == "base":
            if base is None:
                raise ValueError("the delta takes bytes from a base file that is missing")
            out += base[s:e]
        else:
            out += blob[s:e]
    return bytes(out)


class DeltaMismatch(ValueError):
    """A base file or a rebuilt file is not the one the delta was written for."""


def rebuild(base: str, delta: str, out: str) -> Dict[str, str]:
    """Writes into `out` every file of the folder the delta in `delta` was written from, out of the folder `base`
    and the delta; each checked against its sha256 (DeltaMismatch, and nothing written, where a base file or a
    result differs). Returns the files' sha256 by relative path."""
    with open(os.path.join(delta, MANIFEST)) as f:
        manifest = json.load(f)
    with open(os.path.join(delta, BLOB), "rb") as f:
        blob = f.read()
    if sha256(blob) != manifest["blob_sha256"]:
        raise DeltaMismatch(f"{delta}/{BLOB} is not the one {MANIFEST} was written with")
    made = {}
    for rel, entry in manifest["files"].items():
        old = None
        if "base_sha256" in entry:
            with open(os.path.join(base, rel), "rb") as f:
                old = f.read()
            if sha256(old) != entry["base_sha256"]:
                raise DeltaMismatch(f"{os.path.join(base, rel)} differs from the file the delta was written against")
        data = _apply(old, [tuple(op) for op in entry["ops"]], blob)
        if len(data) != entry["size"] or sha256(data) != entry["sha256"]:
            raise DeltaMismatch(f"{rel} rebuilt from {base} and {delta} is not the file the delta was written from")
        made[rel] = data
    for rel, data in made.items():
        path = os.path.join(out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return {rel: manifest["files"][rel]["sha256"] for rel in made}


def matches(folder: str, delta: str) -> bool:
    """Whether `folder` holds exactly the files the delta was written from (by sha256; other files ignored)."""
    with open(os.path.join(delta, MANIFEST)) as f:
        files = json.load(f)["files"]
    for rel, entry in files.items():
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            if sha256(f.read()) != entry["sha256"]:
                return False
    return True


def main(argv: List[str]) -> int:
    usage = ("usage: python -m imagen_app.training.folder_delta write BASE TARGET DELTA\n"
             "       python -m imagen_app.training.folder_delta rebuild BASE DELTA OUT")
    if len(argv) != 4 or argv[0] not in ("write", "rebuild"):
        print(usage, file=sys.stderr)
        return 2
    if argv[0] == "write":
        _, base, target, out = argv
        sizes = write_delta(base, target, out)
        carried = sum(os.path.getsize(os.path.join(out, n)) for n in (MANIFEST, BLOB))
        print(f"{len(sizes)} files of {target} ({sum(sizes.values())} bytes) as a delta from {base}: {out} "
              f"({carried} bytes)")
        return 0
    _, base, delta, out = argv
    try:
        made = rebuild(base, delta, out)
    except (DeltaMismatch, OSError) as e:
        print(f"rebuild refused: {e}", file=sys.stderr)
        return 1
    for rel, digest in made.items():
        print(f"{digest}  {os.path.join(out, rel)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
