"""The GenEval-style evaluation: its detector, its rules, and its run over a pipeline."""
import random
from types import SimpleNamespace

import pytest
from PIL import Image

from imagen_app.evaluation.geneval import (Blob, Detector, cascade_ceiling, detector_ceiling, judge, run_geneval,
                                          scene_samples)
from imagen_app.training.scenes import TASKS, SceneSpec, compose


@pytest.fixture(scope="module")
def detector(scene_world):
    return Detector(scene_world)


def blob(label, x, y, colour=None):
    return Blob((x - 5, y - 5, x + 5, y + 5), (x, y), label, colour)


def test_rules_of_each_task():
    cats = [blob("cat", 20, 60), blob("cat", 100, 60)]
    assert judge(SceneSpec("counting", (("cat", None),), count=2), cats)
    assert not judge(SceneSpec("counting", (("cat", None),), count=3), cats)
    left = SceneSpec("position", (("cat", None), ("pizza", None)), relation="left of")
    assert judge(left, [blob("cat", 20, 60), blob("pizza", 100, 64)])
    assert not judge(left, [blob("cat", 100, 60), blob("pizza", 20, 64)])
    assert not judge(left, [blob("cat", 60, 20), blob("pizza", 64, 100)])  # above, not left of
    bound = SceneSpec("colour attribution", (("cat", "red"), ("rocket", "blue")))
    assert judge(bound, [blob("cat", 20, 60, "red"), blob("rocket", 100, 60, "blue")])
    assert not judge(bound, [blob("cat", 20, 60, "blue"), blob("rocket", 100, 60, "red")])  # colours swapped
    assert not judge(SceneSpec("two objects", (("cat", None), ("rocket", None))), [blob("cat", 20, 60)])


def test_detector_reads_composed_scenes(scene_world, detector):
    rng = random.Random(0)
    spec = SceneSpec("counting", (("fox", None),), count=3)
    image, boxes = compose(spec, 128, scene_world.renders, rng)
    blobs = detector.detect(image)
    assert [b.label for b in blobs] == ["fox"] * 3
    image, _ = compose(SceneSpec("colours", (("crab", "blue"),)), 128, scene_world.renders, rng)
    assert [(b.label, b.colour) for b in detector.detect(image)] == [("crab", "blue")]


def test_a_blank_image_is_wrong_for_every_task(scene_world, detector):
    blank = Image.new("RGB", (128, 128), "white")
    assert detector.detect(blank) == []
    for task in TASKS:
        spec = scene_world.specs(task, 1, held_out=True, seed=0)[0]
        assert not judge(spec, detector.detect(blank))


def test_the_detector_ceiling_is_near_one_at_128_px(scene_world, detector):
    ceiling = detector_ceiling(scene_world, detector, per_task=3, images_per_prompt=2, size=128)
    assert ceiling["held out"]["overall"] >= 0.85 and ceiling["seen"]["overall"] >= 0.85


def test_cascade_ceiling_enlarges_composed_scenes_up_to_the_asked_stage(scene_world, detector):
    """A perfect base stage through the super-resolution stages: scenes composed at the base size, each enlarged
    from stage 2 up to `stop_at_stage` (every stage by default), then judged."""
    calls = []

    def pipe(prompt, image, start_at_stage, stop_at_stage, generator):  # enlarges without drawing anything
        calls.append((start_at_stage, stop_at_stage, image.size))
        return SimpleNamespace(images=[image.resize((128, 128), Image.NEAREST)])
    pipe.unets = [SimpleNamespace(config=SimpleNamespace(sample_size=64))]

    scores = cascade_ceiling(pipe, scene_world, detector, per_task=2, stop_at_stage=2)
    assert set(calls) == {(2, 2, (64, 64))} and len(calls) == 2 * len(TASKS) * 2 * 2  # splits x tasks x prompts x 2
    assert scores["held out"]["overall"] >= 0.6
    calls.clear()
    cascade_ceiling(pipe, scene_world, detector, per_task=2)
    assert {c[1] for c in calls} == {None}


def test_run_geneval_scores_what_the_pipeline_draws(scene_world, detector):
    """A pipeline that draws the asked scene scores near the ceiling; one that draws a single object fails the
    compositions."""
    specs = {s.prompt(): s for task in TASKS for split in (True, False)
             for s in scene_world.specs(task, 2, held_out=split, seed=0)}

    def perfect(prompt, num_images_per_prompt, generator, stop_at_stage):
        rng = random.Random(prompt)
        return SimpleNamespace(images=[Image.fromarray(compose(specs[prompt], 128, scene_world.renders, rng)[0])
                                       for _ in range(num_images_per_prompt)])

    def one_object(prompt, num_images_per_prompt, generator, stop_at_stage):
        rng = random.Random(prompt)
        single = SceneSpec("single object", (specs[prompt].objects[0][0:1] + (None,),))
        return SimpleNamespace(images=[Image.fromarray(compose(single, 128, scene_world.renders, rng)[0])
                                       for _ in range(num_images_per_prompt)])

    good = run_geneval(perfect, scene_world, per_task=2, images_per_prompt=2, detector=detector)
    bad = run_geneval(one_object, scene_world, per_task=2, images_per_prompt=2, detector=detector)
    assert good["held out"]["overall"] >= 0.8
    for task in ("two objects", "counting", "position", "colour attribution"):
        assert bad["held out"][task] == 0.0
    assert len(good["held out prompts"]) == 2 * len(TASKS)


def test_the_sample_sheet_has_a_row_per_task_marked_by_the_detector(scene_world, detector, tmp_path):
    """The scene rows of `grid`: held-out prompts, right where the pipeline draws the scene, wrong where it
    draws blank paper."""
    from imagen_app.evaluation.evaluate import sample_grid

    specs = {s.prompt(): s for task in TASKS for s in scene_world.specs(task, 2, held_out=True, seed=0)}

    def perfect(prompt, generator):
        if prompt not in specs:  # the sheet's emoji prompts
            return SimpleNamespace(images=[Image.new("RGB", (128, 128), "white")])
        return SimpleNamespace(images=[Image.fromarray(compose(specs[prompt], 128, scene_world.renders,
                                                               random.Random(prompt))[0])])

    rows = scene_samples(perfect, scene_world, per_task=2, detector=detector)
    assert [task for task, _ in rows] == TASKS
    assert all(p in specs and scene_world.rule.is_held_out(specs[p]) or task == "single object"
               for task, samples in rows for p, _, _ in samples)
    assert sum(ok for _, samples in rows for _, _, ok in samples) >= 10  # of 12: the ceiling, not every one
    blank = scene_samples(lambda prompt, generator: SimpleNamespace(images=[Image.new("RGB", (128, 128), "white")]),
                          scene_world, per_task=2, detector=detector)
    assert not any(ok for _, samples in blank for _, _, ok in samples)

    out = sample_grid(perfect, str(tmp_path / "sheet.png"), prompts=["panda", "pizza"], cell=64, scenes_per_task=2)
    assert Image.open(out).size == (6 * 64, (1 + len(TASKS)) * (64 + 34))  # one emoji row, then a row per task


def test_geneval_of_a_small_world_asks_only_its_objects_and_judges_among_all(scene_world):
    """`evaluate --parts geneval --geneval-objects N`: the prompts of a run's small world (`scene_objects`), judged by
    the detector of every object, so that a drawing of any other object is wrong."""
    from imagen_app.evaluation.evaluate import geneval_parts, scene_worlds

    small = scene_world.restricted(16)
    outsider = next(o for o in scene_world.names if o not in small.names)
    asked = []

    class Other:  # draws one object that is not in the small world, whatever it is asked
        stage_resolutions = [128]

        def __call__(self, prompt, num_images_per_prompt, generator, stop_at_stage):
            asked.append(prompt)
            spec = SceneSpec("single object", ((outsider, None),))
            return SimpleNamespace(images=[Image.fromarray(compose(spec, 128, scene_world.renders, random.Random(k))[0])
                                           for k in range(num_images_per_prompt)])

    report = geneval_parts(Other(), ["geneval"], per_task=1, stage=None, seed=0, worlds=scene_worlds(16))["geneval"]
    assert report["objects"] == 16 and report["held out"]["overall"] == 0.0 and report["seen"]["overall"] == 0.0
    words = {w for p in asked for w in p.split()}
    assert outsider not in words and words & set(small.names)


def test_evaluate_refuses_a_small_world_it_cannot_make_before_loading_anything(scene_world, capsys):
    from imagen_app.cli import main

    too_many = len(scene_world.names) + 1
    assert main(["evaluate", "--weights", "no-such-folder", "--parts", "geneval",
                 "--geneval-objects", str(too_many)]) == 2
    assert f"1 to {len(scene_world.names)} objects, not {too_many}" in capsys.readouterr().err
