"""The scene corpus: captions as people write them, layouts that vary, and a held-out split that stays out."""
import random

import numpy as np
import pytest

from imagen_app.training.data import CaptionedImages
from imagen_app.training.scenes import (FAMILY_PREFIX, RELATIONS, TASKS, HeldOut, LiveScenes, SceneSpec, compose,
                                        pluralize, relation_holds, scene_dataset)


@pytest.mark.parametrize("noun, plural", [("fox", "foxes"), ("mouse", "mice"), ("cherry", "cherries"),
                                          ("key", "keys"), ("bus", "buses"), ("wolf", "wolves"), ("cat", "cats"),
                                          ("fish", "fish"), ("snowman", "snowmen")])
def test_plurals(noun, plural):
    assert pluralize(noun) == plural


def test_captions_in_the_forms_people_write():
    assert SceneSpec("counting", (("fox", None),), count=3).captions()[:2] == ["three foxes", "3 foxes"]
    assert SceneSpec("colours", (("apple", "purple"),)).prompt() == "a purple apple"
    assert SceneSpec("colour attribution", (("owl", "red"), ("rocket", "blue"))).prompt() == "a red owl and a blue rocket"
    assert SceneSpec("single object", (("owl", None),)).prompt() == "an owl"
    forms = SceneSpec("position", (("cat", None), ("pizza", None)), relation="left of").captions()
    assert forms[:2] == ["a cat left of a pizza", "a cat to the left of a pizza"]


def test_a_relation_and_its_mirror_are_held_out_together():
    rule = HeldOut(fraction=0.5)
    pairs = [("cat", "dog"), ("fox", "pizza"), ("owl", "rocket"), ("ant", "bell"), ("key", "pen")]
    for a, b in pairs:
        assert rule.relation(a, "left of", b) == rule.relation(b, "right of", a)
        assert rule.relation(a, "above", b) == rule.relation(b, "below", a)
    assert len({rule.relation(a, "left of", b) for a, b in pairs}) == 2  # the rule does hold some out, not all


def test_training_specs_use_no_held_out_combination_and_held_out_parts_are_seen(scene_world):
    seen_objects = {t: set() for t in TASKS}
    for task in TASKS:
        for spec in scene_world.specs(task, 300, held_out=False, seed=0):
            assert not scene_world.rule.is_held_out(spec), spec
            seen_objects[task] |= {o for o, _ in spec.objects}
    for task in TASKS[1:]:
        held = scene_world.specs(task, 40, held_out=True, seed=0)
        assert len(held) == 40 and all(scene_world.rule.is_held_out(s) for s in held)
    # the parts of held-out pairs are seen in other pairs (alone-only objects excepted: they are the hardest case)
    pairs = scene_world.specs("two objects", 40, held_out=True, seed=0)
    in_pairs = {o for s in scene_world.specs("two objects", 3000, held_out=False, seed=0) for o, _ in s.objects}
    parts = [o for s in pairs for o, _ in s.objects if not scene_world.rule.alone_only(o)]
    assert all(o in in_pairs for o in parts)
    alone = [o for o in scene_world.names if scene_world.rule.alone_only(o)]
    assert alone and not set(alone) & set().union(*(seen_objects[t] for t in TASKS[1:]))


def test_layouts_vary_keep_objects_apart_and_place_relations(scene_world):
    rng = random.Random(0)
    centres = []
    for relation in RELATIONS:
        spec = SceneSpec("position", (("cat", None), ("rocket", None)), relation=relation)
        for _ in range(10):
            image, boxes = compose(spec, 64, scene_world.renders, rng)
            (_, _, (ax0, ay0, ax1, ay1)), (_, _, (bx0, by0, bx1, by1)) = boxes
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0  # no overlap
            a, b = ((ax0 + ax1) / 2, (ay0 + ay1) / 2), ((bx0 + bx1) / 2, (by0 + by1) / 2)
            assert relation_holds(relation, a, b, 64)
            centres.append(a)
            assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert len({(round(x), round(y)) for x, y in centres}) > 20  # not fixed slots


def test_counting_scene_has_that_many_objects(scene_world):
    rng = random.Random(1)
    for n in (2, 3, 4):
        _, boxes = compose(SceneSpec("counting", (("fox", None),), count=n), 64, scene_world.renders, rng)
        assert len(boxes) == n and {b[0] for b in boxes} == {"fox"}


def test_scene_dataset_never_shows_a_held_out_prompt(scene_world):
    data = scene_dataset(scene_world, 32, per_task=40)
    trained = {c for caps in data.captions for c in caps}
    held = {s.prompt() for t in TASKS for s in scene_world.specs(t, 60, held_out=True, seed=0)}
    assert not trained & held
    assert set(data.families) == {"scenes: " + t for t in TASKS}
    assert data.images.shape[1:] == (32, 32, 3)


def test_live_scenes_draw_new_seen_combinations_every_time(scene_world):
    live = LiveScenes(scene_world, 32)
    rng = random.Random(0)
    for task in TASKS:
        specs = [live.spec(task, rng) for _ in range(200)]
        assert all(s.task == task and not scene_world.rule.is_held_out(s) for s in specs)
        assert not any(scene_world.rule.alone_only(o) for s in specs for o, _ in s.objects)
        assert len(set(specs)) > 120  # fresh combinations (single objects: ~300 to draw from), not a stored few
    # a draw is a composition of such a spec, with one of its captions
    image, caption = live.draw("position", random.Random(5))
    again = random.Random(5)
    spec = live.spec("position", again)
    made = compose(spec, 32, scene_world.renders, again)
    assert np.array_equal(image, made[0]) and caption == again.choice(spec.captions())


def test_live_scenes_replace_only_the_scene_rows(scene_world):
    stored = np.zeros((3, 32, 32, 3), np.uint8)
    data = CaptionedImages(stored, [["panda"], ["a cat and a dog"], ["three foxes"]],
                           ["single emoji", FAMILY_PREFIX + "two objects", FAMILY_PREFIX + "counting"])
    live = LiveScenes(scene_world, 32, all_captions=False)
    rng = random.Random(0)
    image, caption = live.item(data, 0, rng)
    assert image is stored[0] or np.array_equal(image, stored[0])
    assert caption == "panda"
    pairs, counts = [live.item(data, 1, rng) for _ in range(20)], [live.item(data, 2, rng) for _ in range(20)]
    assert all(" and " in c for _, c in pairs) and len({c for _, c in pairs}) > 15
    assert all(c.split()[0] in ("two", "three", "four") for _, c in counts)
    assert all(img.shape == (32, 32, 3) and img.min() < 128 for img, _ in pairs + counts)  # ink drawn, not the zeros


def test_live_scenes_can_draw_a_task_at_other_sizes(scene_world):
    """`size_ranges` replaces a task's SIZE_RANGE: coloured objects as large as a single emoji; other tasks as
    before; an unknown task is refused."""
    def ink_side(image):
        ys, xs = np.where((255 - image.astype(int)).max(axis=2) > 24)
        return max(ys.max() - ys.min(), xs.max() - xs.min()) + 1

    default, large = LiveScenes(scene_world, 32), LiveScenes(scene_world, 32, size_ranges={"colours": [0.8, 1.0]})
    small_sides = [ink_side(default.draw("colours", random.Random(k))[0]) for k in range(40)]
    large_sides = [ink_side(large.draw("colours", random.Random(k))[0]) for k in range(40)]
    assert np.mean(large_sides) >= 0.7 * 32 and np.mean(large_sides) > np.mean(small_sides) + 4
    same = [ink_side(large.draw("two objects", random.Random(k))[0]) for k in range(10)]
    assert same == [ink_side(default.draw("two objects", random.Random(k))[0]) for k in range(10)]
    with pytest.raises(ValueError, match="no such task"):
        LiveScenes(scene_world, 32, size_ranges={"colour": [0.8, 1.0]})


def test_a_small_world_keeps_what_every_task_needs_and_only_its_objects(scene_world):
    small = scene_world.restricted(16)
    assert len(small.names) == 16 and small.names == scene_world.restricted(16).names  # deterministic
    assert set(small.names) < set(scene_world.names) and set(small.colours_of) <= set(small.names)
    assert len(small.colours_of) >= 4 and any(small.rule.alone_only(o) for o in small.names)
    for task in TASKS:
        for held_out in (False, True):
            specs = small.specs(task, 8, held_out=held_out, seed=0)
            assert specs and all(o in small.names for s in specs for o, _ in s.objects)
            assert all(small.rule.is_held_out(s) == held_out for s in specs if task != "single object")
    live = LiveScenes(small, 32)
    assert {o for _ in range(40) for o, _ in live.spec("two objects", random.Random(_)).objects} <= set(small.names)
    for n in (0, len(scene_world.names) + 1):
        with pytest.raises(ValueError, match="a small world holds"):
            scene_world.restricted(n)
