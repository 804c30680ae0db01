"""The command-line interface: scripted generation, benchmarks, training and export."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Sequence

from .pipeline.settings import SETTING, SETTING_NAMES  # the table of per-stage settings (no torch: --help stays fast)

DEFAULT_WEIGHTS = os.environ.get("IMAGEN_WEIGHTS", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights"))


def _stage_values(text: str | None, kind=float):
    """'16' -> 16.0; '16,8,4' -> [16.0, 8.0, 4.0]; None -> None (the pipeline's default). Words that are not
    numbers stay words, so that the pipeline's resolve_settings names the setting in its error."""
    if text is None:
        return None

    def value(part: str):
        if kind is str:
            return part
        try:
            return float(part)
        except ValueError:
            return part

    values = [value(p.strip()) for p in text.split(",")]
    return values[0] if len(values) == 1 else values


def add_setting_flags(parser: argparse.ArgumentParser, names: Sequence[str] = SETTING_NAMES, note: str = "") -> None:
    """One flag per per-stage setting named (the pipeline's table, settings.SETTINGS): --steps,
    --guidance-scale, ..., each taking one value or one per stage, comma-separated."""
    for name in names:
        setting = SETTING[name]
        parser.add_argument("--" + setting.flag.replace("_", "-"), dest=name, default=None, metavar=setting.flag.upper(),
                            help=f"{setting.help}: {setting.accepted()}; one value, or one per stage, comma-separated"
                                 + (f" ({note})" if note else ""))


def setting_values(args, names: Sequence[str] = SETTING_NAMES) -> Dict[str, object]:
    """The per-stage settings given by add_setting_flags' flags, as keyword arguments of the pipeline (None: its
    default)."""
    return {name: _stage_values(getattr(args, name), str if SETTING[name].kind is str else float) for name in names}


def use_threads(args) -> None:
    """PyTorch's CPU threads for a command that runs the model: --threads, else chosen from the cores available and
    the load (threads.py, the helper the app uses too)."""
    from .threads import use_available_cores

    use_available_cores(getattr(args, "threads", None))


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: the cores available less the load average, at least 1; or "
                             "IMAGEN_THREADS / OMP_NUM_THREADS)")


def cmd_generate(args) -> int:
    import torch

    from .pipeline.pipeline import ImagenPipeline

    use_threads(args)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.deepfloyd_if:  # DeepFloyd IF's stage I (and II) folders or hub ids; fp16 on CUDA
        from .pipeline.deepfloyd_if import place

        pipe = ImagenPipeline.from_deepfloyd_if(args.deepfloyd_if, args.stage_2,
                                                torch_dtype=torch.float16 if device == "cuda" else None)
        place(pipe, device, cpu_offload=args.cpu_offload, text_encoder_on_cpu=args.t5_on_cpu)
    else:
        pipe = ImagenPipeline.from_pretrained(args.weights)
        pipe.to(device)
    # Checked before any work; a ValueError names the setting (main() prints it).
    stages = pipe.resolve_settings(stop_at_stage=args.stop_at_stage, **setting_values(args))
    for warning in pipe.check_prompt(args.prompt).warnings():
        print("warning:", warning, file=sys.stderr)
    out = pipe(args.prompt, negative_prompt=args.negative_prompt, num_images_per_prompt=args.num_images,
               generator=torch.Generator().manual_seed(args.seed), image=args.image, mask_image=args.mask,
               strength=args.strength, stage_settings=stages)
    root, ext = os.path.splitext(args.out)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for i, image in enumerate(out.images):
        path = args.out if i == 0 else f"{root}_{i}{ext}"
        image.save(path)
        print(path)
    for k, images in enumerate(out.stage_images, 1):
        for i, image in enumerate(images):
            image.save(f"{root}_stage{k}" + (f"_{i}" if i else "") + ext)
    with open(root + ".json", "w") as f:
        json.dump(dict(out.settings, seed=args.seed), f, indent=2)
    return 0


def cmd_upscale(args) -> int:
    import torch
    from PIL import Image

    from .pipeline.pipeline import ImagenPipeline

    use_threads(args)
    pipe = ImagenPipeline.from_pretrained(args.weights)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    with Image.open(args.image) as image:
        image_size = max(image.size)
    # The stage whose input size is nearest to the image's, up to --size (pipeline.upscale_stages); the flags win.
    start, stop = pipe.upscale_stages(image_size, args.size)
    start = args.start_at_stage or start
    stop = args.stop_at_stage or stop
    out = pipe(args.prompt, image=args.image, start_at_stage=start, stop_at_stage=stop,
               generator=torch.Generator().manual_seed(args.seed), **setting_values(args, UPSCALE_SETTINGS))
    root, ext = os.path.splitext(args.out)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    out.images[0].save(args.out)
    for k, images in enumerate(out.stage_images[:-1], start):
        images[0].save(f"{root}_stage{k}{ext}")
    with open(root + ".json", "w") as f:
        json.dump(dict(out.settings, seed=args.seed, image=args.image), f, indent=2)
    print(args.out, f"{out.images[0].size[0]} px (stages {start}-{stop}, from a {image_size} px image)")
    return 0


UPSCALE_SETTINGS = ("num_inference_steps", "noise_aug_level")


def cmd_train(args) -> int:
    from .training.train import TrainConfig, train

    cfg = TrainConfig.load(args.config, max_steps=args.max_steps, run_dir=args.run_dir, text_encoder=args.text_encoder,
                           data=args.data, init_from=args.init_from, threads=args.threads)
    train(cfg, max_minutes=args.max_minutes, log=_log_line)
    return 0


def _log_line(message: str) -> None:
    """A training log line on stdout that leaves the progress bar (stderr, on a terminal) intact."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def cmd_branch_run(args) -> int:
    from .training.train import TrainConfig, branch_run

    branch_run(args.from_run, TrainConfig.load(args.config, run_dir=args.run_dir))  # main() reports its errors
    return 0


def cmd_export_stage(args) -> int:
    from .training.train import export_stage

    export_stage(args.run_dir, args.out, fp16=args.fp16)
    print(args.out)
    return 0


def cmd_average_stages(args) -> int:
    from .training.stage_average import average_stages

    average_stages(args.stages, args.out, weights=args.weights, fp16=args.fp16)
    print(args.out)
    return 0


def cmd_export_dataset(args) -> int:
    from .training.data import emoji_dataset, write_image_folder

    if args.scenes:
        from .training.scenes import write_scene_training_folder

        counts = write_scene_training_folder(args.out, args.resolution, per_task=args.scenes, seed=args.seed)
        print(f"{sum(counts.values())} images -> {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    data = emoji_dataset(args.resolution, args.split)
    if args.recoloured:
        from .training.recolour import with_recoloured

        before = len(data)
        data = with_recoloured(data, args.resolution)
        print(f"{len(data) - before} recoloured images added")
    n = write_image_folder(data, args.out)
    print(f"{n} images -> {args.out}")
    return 0


def cmd_repack_dataset(args) -> int:
    from .training.data import repack_image_folder

    sizes = repack_image_folder(args.src, args.out)
    print(f"{args.src} -> {args.out}: PNGs {sizes['before']} -> {sizes['after']} bytes (the same pixels)")
    return 0


def cmd_extend_text_encoder(args) -> int:
    from .training.scenes import load_scene_world, scene_texts
    from .training.text_extension import extend_text_encoder

    texts, stands_for = scene_texts(load_scene_world())
    words = extend_text_encoder(args.weights, args.out, texts, stands_for)
    print(f"{len(words)} new words -> {args.out}/tokenizer, {args.out}/text_encoder")
    return 0


def cmd_build_keywords(args) -> int:
    from .training.data import cache_dir
    from .training.keywords import build_keywords

    sources = os.path.join(cache_dir(), "keyword-sources")
    lines = build_keywords(args.cldr or os.path.join(sources, "cldr"), args.wordnet or os.path.join(sources, "wordnet"),
                           args.out)
    print(f"{lines} keyword lines -> {args.out}")
    return 0


def cmd_tune_text(args) -> int:
    from .training.text_tuning import TextTuningConfig, tune_text

    cfg = TextTuningConfig(weights=args.weights, run_dir=args.run_dir, out=args.out or os.path.join(args.run_dir, "export"),
                           steps=args.steps, batch_size=args.batch_size, lr=args.lr, threads=args.threads,
                           anchor_weight=args.anchor_weight, new_word_lr=args.new_word_lr,
                           new_words_only=not args.all_layers, objective=args.objective, trace_draws=args.trace_draws,
                           frequency_power=args.frequency_power, anchor_objective=args.anchor_objective,
                           modes=args.modes, word_rows=args.word_rows, learn_words=tuple(args.learn_words or ()),
                           pairs=args.pairs, verb_phrases=args.verb_phrases,
                           portion_phrases=args.portion_phrases, lr_decay=args.lr_decay,
                           portion_frame_weight=args.portion_frame_weight)
    tune_text(cfg, max_minutes=args.max_minutes)
    return 0


def cmd_keep_rows(args) -> int:
    from .training.word_rows import keep_rows

    tokens = keep_rows(args.taught, args.reference, args.words, args.out)
    print(f"{args.out}: {args.taught} with the rows of {', '.join(tokens)} as {args.reference} has them")
    return 0


def cmd_train_text_encoder(args) -> int:
    from .training.text_pretrain import train_text_encoder

    train_text_encoder(args.out, steps=args.steps)
    return 0


def cmd_bench(args) -> int:
    from .evaluation.bench import run_bench

    use_threads(args)
    run_bench(args.weights, prompt=args.prompt, repeats=args.repeats, baseline=not args.no_baseline)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation.evaluate import run_evaluation

    from .evaluation.evaluate import PARTS

    use_threads(args)
    parts = args.parts.split(",") if args.parts else PARTS
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown --parts {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    run_evaluation(args.weights, out=args.out, seen_count=args.seen, sr_count=args.sr_count, seed=args.seed,
                   per_family=args.per_family, parts=parts, geneval_per_task=args.geneval_per_task,
                   geneval_stage=args.geneval_stage, geneval_objects=args.geneval_objects)
    return 0


def cmd_compare(args) -> int:
    from .evaluation.compare import parse_row, write_comparison
    from .pipeline.pipeline import ImagenPipeline

    try:
        guidances = [float(g) for g in args.guidance.split(",")]
        rows = [parse_row(r) for r in args.thresholding.split(",")]
    except ValueError as e:
        raise SystemExit(f"compare: {e}")
    use_threads(args)
    pipe = ImagenPipeline.from_pretrained(args.weights)
    pipe.set_progress_bar_config(disable=True)
    cells = write_comparison(pipe, args.prompt, guidances, rows, args.out, seed=args.seed, stage=args.stage,
                             show_stage=args.show_stage,
                             on_cell=lambda c: print(f"cell {c.row + 1},{c.col + 1}: guidance {c.guidance_scale:g}, "
                                                     f"{rows[c.row].label}", flush=True))
    print(f"{len(cells)} cells -> {args.out} and {os.path.splitext(args.out)[0]}.json")
    return 0


def cmd_grid(args) -> int:
    from .evaluation.evaluate import sample_grid
    from .pipeline.pipeline import ImagenPipeline

    use_threads(args)
    pipe = ImagenPipeline.from_pretrained(args.weights)
    pipe.set_progress_bar_config(disable=True)
    scenes = args.scenes if args.scenes is not None else (0 if args.prompts else 6)
    print(sample_grid(pipe, args.out, prompts=args.prompts or None, seed=args.seed, scenes_per_task=scenes))
    return 0


def cmd_assemble(args) -> int:
    from .training.train import assemble_pipeline

    settings = json.loads(args.settings) if args.settings else None
    assemble_pipeline(args.text_encoder, args.stages, args.out, settings=settings)
    if args.emoji_lists:
        from .training.data import write_caption_lists

        write_caption_lists(args.out)
    print(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imagen_app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate an image from a prompt")
    g.add_argument("prompt")
    g.add_argument("--weights", default=DEFAULT_WEIGHTS)
    g.add_argument("--out", default="out.png")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--negative-prompt", default=None)
    add_setting_flags(g)
    g.add_argument("--num-images", type=int, default=1)
    g.add_argument("--stop-at-stage", type=int, default=None)
    g.add_argument("--deepfloyd-if", metavar="STAGE_1", default=None,
                   help="run DeepFloyd IF instead of --weights: IF stage I folder or hub id (DeepFloyd/IF-I-XL-v1.0)")
    g.add_argument("--stage-2", default=None, help="with --deepfloyd-if: IF stage II folder or hub id (DeepFloyd/IF-II-L-v1.0)")
    g.add_argument("--cpu-offload", action="store_true", help="with --deepfloyd-if on CUDA: keep only the running model on the GPU")
    g.add_argument("--t5-on-cpu", action="store_true", help="with --deepfloyd-if: run the T5 text encoder on the CPU")
    g.add_argument("--image", default=None, help="edit this image: image-to-image, or inpainting with --mask")
    g.add_argument("--mask", default=None, help="with --image: white = repaint, black = keep (or an RGBA layer's alpha)")
    g.add_argument("--strength", type=float, default=None,
                   help="with --image: the fraction of stage 1's schedule re-run, (0, 1] (default 0.8; 1 with --mask)")
    add_threads_flag(g)
    g.set_defaults(func=cmd_generate)

    u = sub.add_parser("upscale", help="super-resolve an image with the super-resolution stages")
    u.add_argument("image")
    u.add_argument("--prompt", default="", help="what the image shows (the stages are text-conditioned)")
    u.add_argument("--weights", default=DEFAULT_WEIGHTS)
    u.add_argument("--out", default="upscaled.png")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--size", type=int, default=None,
                   help="the output size in pixels: a super-resolution stage's (default: the last stage's)")
    u.add_argument("--start-at-stage", type=int, default=None,
                   help="the first stage run (default: the one whose input size is nearest to the image's); the "
                        "image is resized to the resolution of the stage before it")
    u.add_argument("--stop-at-stage", type=int, default=None, help="the last stage run (default: from --size)")
    add_setting_flags(u, UPSCALE_SETTINGS, note="stages 1..N: the ones before the start are unused")
    add_threads_flag(u)
    u.set_defaults(func=cmd_upscale)

    b = sub.add_parser("bench", help="ms per U-Net evaluation and end-to-end seconds, beside a diffusers UNet2DConditionModel")
    b.add_argument("--weights", default=DEFAULT_WEIGHTS)
    b.add_argument("--prompt", default="red heart")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--no-baseline", action="store_true")
    add_threads_flag(b)
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("train", help="train one stage from a config file (several processes: torchrun / accelerate launch)")
    t.add_argument("config")
    t.add_argument("--max-minutes", type=float, default=None, help="time budget, measured by the main process")
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--run-dir", default=None)
    t.add_argument("--text-encoder", default=None)
    t.add_argument("--data", default=None, help="'emoji' or a folder of images with .txt captions / metadata.jsonl")
    t.add_argument("--threads", type=int, default=None, help="CPU threads for this run")
    t.add_argument("--init-from", default=None, help="an exported stage folder to start from when no checkpoint exists")
    t.set_defaults(func=cmd_train)

    br = sub.add_parser("branch-run", help="start a config's run from another run's checkpoint, with the modules the "
                                           "config adds (e.g. local_text_pool) new; then `train CONFIG` goes on")
    br.add_argument("from_run", help="the run folder whose checkpoint to start from")
    br.add_argument("config")
    br.add_argument("--run-dir", default=None)
    br.set_defaults(func=cmd_branch_run)

    e = sub.add_parser("export-stage", help="write a run's EMA weights as an ImagenUNet folder")
    e.add_argument("run_dir")
    e.add_argument("out")
    e.add_argument("--fp16", action="store_true", help="store the weights in float16 (as the shipped stages)")
    e.set_defaults(func=cmd_export_stage)

    av = sub.add_parser("average-stages", help="the weighted mean of exported stages of one architecture (model soup)")
    av.add_argument("out")
    av.add_argument("stages", nargs="+", help="two or more exported stage folders")
    av.add_argument("--weights", type=float, nargs="+", default=None, help="one per stage, summing to 1 (default: equal)")
    av.add_argument("--fp16", action="store_true", help="store the weights in float16 (as the shipped stages)")
    av.set_defaults(func=cmd_average_stages)

    ds = sub.add_parser("export-dataset", help="write the emoji corpus as an image folder (PNGs + metadata.jsonl)")
    ds.add_argument("out")
    ds.add_argument("--resolution", type=int, default=32)
    ds.add_argument("--split", default="train", choices=["train", "held_out", "all"])
    ds.add_argument("--recoloured", action="store_true",
                    help='add synthetic "<colour> <name>" images of seen single emoji (imagen_app/recolour.py)')
    ds.add_argument("--scenes", type=int, default=0, metavar="N",
                    help="the base stage's scene corpus instead: the training split and its recoloured emoji, plus N "
                         "scenes of each GenEval task (training/scenes.py; no held-out combination)")
    ds.add_argument("--seed", type=int, default=0)
    ds.set_defaults(func=cmd_export_dataset)

    rp = sub.add_parser("repack-dataset", help="copy an image folder with each PNG in its smallest lossless form "
                                              "(the same rows, captions and pixels; for the device's 64 MiB)")
    rp.add_argument("src")
    rp.add_argument("out")
    rp.set_defaults(func=cmd_repack_dataset)

    xt = sub.add_parser("extend-text-encoder", help="add the scene captions' new words (plurals, above, below, ...) "
                                                    "to a text encoder without changing the old words' embeddings")
    xt.add_argument("out")
    xt.add_argument("--weights", default=DEFAULT_WEIGHTS, help="folder with tokenizer/ and text_encoder/")
    xt.set_defaults(func=cmd_extend_text_encoder)

    bk = sub.add_parser("build-keywords", help="the keyword table (keywords.txt) from the CLDR emoji annotations and "
                                               "WordNet (scripts/fetch_keyword_sources.sh downloads both)")
    bk.add_argument("--out", default=os.path.join(DEFAULT_WEIGHTS, "keywords.txt"))
    bk.add_argument("--cldr", help="folder with annotations/ and annotationsDerived/ (default: the cache's)")
    bk.add_argument("--wordnet", help="WordNet 3.0 database folder (default: the cache's)")
    bk.set_defaults(func=cmd_build_keywords)

    tt = sub.add_parser("tune-text", help="teach the text encoder the forms people type (keywords, articles, plurals, "
                                          "frames), distilled through the frozen base U-Net; resumable")
    tt.add_argument("--weights", default=DEFAULT_WEIGHTS, help="pipeline folder (its keywords.txt, unet_1, text encoder)")
    tt.add_argument("--run-dir", default="runs/text_tuning")
    tt.add_argument("--out", help="where tokenizer/ and text_encoder/ go (default RUN_DIR/export)")
    from .training.text_tuning import TextTuningConfig as T  # its defaults are the shipped run's

    tt.add_argument("--steps", type=int, default=T.steps)
    tt.add_argument("--batch-size", type=int, default=T.batch_size)
    tt.add_argument("--lr", type=float, default=T.lr, help="the encoder's layers (with --all-layers)")
    tt.add_argument("--new-word-lr", type=float, default=T.new_word_lr, help="the new words' embedding rows")
    tt.add_argument("--objective", choices=["layers", "output"], default=T.objective,
                    help="layers: each text attention layer's output on pixels traced once per name (fast); "
                         "output: the U-Net's prediction, run at every step")
    tt.add_argument("--modes", type=int, default=T.modes,
                    help="a keyword standing for several emoji learns the nearest of up to this many (layers); 1: "
                         "the mean over them")
    tt.add_argument("--word-rows", type=int, default=T.word_rows,
                    help="a keyword no caption holds reads as its emoji name's words (as many rows, up to this many; an "
                         "earlier run's keyword too), and a caption's word standing alone as a word of its own "
                         "('a cowboy'); 1: one row per new word, none of this")
    tt.add_argument("--trace-draws", type=int, default=T.trace_draws, help="noised renders traced per name (layers)")
    tt.add_argument("--frequency-power", type=float, default=T.frequency_power,
                    help="typed heads are drawn in proportion to their English frequency to this power")
    tt.add_argument("--all-layers", action="store_true",
                    help="also teach the encoder's layers and old rows (with an anchor on every caption); without it "
                         "only the new words' rows learn and every old caption encodes bit for bit as before")
    tt.add_argument("--learn-words", nargs="+", metavar="WORD",
                    help="only these words' rows learn, every other row stays ('frames': the frame phrases, "
                         "picture_of, ...; 'form-words': the forms' other words, emoji, draw, ...; 'pairs': the words --pairs reads "
                         "anew); without --all-layers")
    tt.add_argument("--pairs", action="store_true",
                    help="two words of one emoji: a caption's word before another word of an emoji it names reads as "
                         "a word of its own ('a sad cat', 'a bunny rabbit', 'a cup of tea'), and the typed forms put "
                         "portions with food ('a slice of pizza', 'a pizza slice')")
    tt.add_argument("--verb-phrases", action="store_true", help="'show me' and 'draw me' read as one word each")
    tt.add_argument("--portion-phrases", action="store_true",
                    help="'cup of', 'slice of', ... read as one word each, learned with the frames ('a cup of coffee')")
    tt.add_argument("--portion-frame-weight", type=float, default=T.portion_frame_weight,
                    help="with --portion-phrases: how often each portion frame ('a cup of {}') is drawn, beside the "
                         "frame nouns' 0.01-0.06")
    tt.add_argument("--lr-decay", choices=["constant", "cosine"], default=T.lr_decay,
                    help="cosine: the learning rates fall to 0 at the last step (constant before session 20)")
    tt.add_argument("--anchor-weight", type=float, default=T.anchor_weight)
    tt.add_argument("--anchor-objective", choices=["embeddings", "layers"], default=T.anchor_objective,
                    help="with --all-layers: hold every caption's encoder output (embeddings) or what the base "
                         "U-Net's text layers read of it (layers, with --objective layers)")
    tt.add_argument("--threads", type=int)
    tt.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after so many minutes")
    tt.set_defaults(func=cmd_tune_text)

    kr = sub.add_parser("keep-rows", help="a taught text encoder with some words' rows as another encoder has them "
                                          "(a choice per word between two tune-text runs)")
    kr.add_argument("taught", help="folder with tokenizer/ and text_encoder/ (a tune-text export)")
    kr.add_argument("--reference", default=DEFAULT_WEIGHTS, help="the encoder whose rows of WORDS are kept")
    kr.add_argument("--words", nargs="+", required=True, help="words as the tokenizer holds them (draw, show_me)")
    kr.add_argument("--out", required=True, help="where tokenizer/ and text_encoder/ go")
    kr.set_defaults(func=cmd_keep_rows)
    te = sub.add_parser("train-text-encoder", help="tokenizer + span-corruption T5 on the emoji captions")
    te.add_argument("out")
    te.add_argument("--steps", type=int, default=2000)
    te.set_defaults(func=cmd_train_text_encoder)
    ev = sub.add_parser("evaluate", help="alignment, super-resolution and timing figures (JSON report + table)")
    ev.add_argument("--weights", default=DEFAULT_WEIGHTS)
    ev.add_argument("--out", default="evaluation.json")
    ev.add_argument("--seen", type=int, default=200, help="size of the fixed sample of seen captions")
    ev.add_argument("--sr-count", type=int, default=24, help="held-out emoji for the super-resolution figures")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--per-family", type=int, default=100, help="seen captions per family for the family table")
    ev.add_argument("--parts", default=None, help="comma-separated subset of: families, two_tones (two-person emoji "
                                                  "with two skin tones: how often they come out swapped), examples, "
                                                  "text_use, colours (the colour drawn for colour x shape captions), neighbours "
                                                  "(single emoji named inside a recoloured caption), held_out, "
                                                  "super_resolution, timing, geneval (GenEval's six tasks on "
                                                  "scene prompts, held out and seen), geneval_cascade (a perfect "
                                                  "base stage through the super-resolution stages, up to --geneval-stage), phrasing "
                                                  "(everyday prompts), phrasing_more (a second list of them), phrasing_third (a third, written before its "
                                                  "runs were judged), phrasing_portions ('a cup of coffee'), phrasing_grid (every frame around "
                                                  "12 heads, one seed), phrasing_grid2 (the frames around 12 other heads), "
                                                  "phrasing_names (their emoji's names: the ceiling) (default: all)")
    ev.add_argument("--geneval-per-task", type=int, default=8, help="prompts per task and split (4 images each)")
    ev.add_argument("--geneval-stage", type=int, default=None,
                    help="judge the images of this stage (default: the last; 1 is fast and coarse)")
    ev.add_argument("--geneval-objects", type=int, default=0,
                    help="the prompts of a small world of this many objects (a run's scene_objects; 0: all)")
    add_threads_flag(ev)
    ev.set_defaults(func=cmd_evaluate)

    cmp = sub.add_parser("compare", help="guidance x thresholding grid (Imagen Fig. A.10) for one prompt, same seed in every cell")
    cmp.add_argument("prompt")
    cmp.add_argument("--weights", default=DEFAULT_WEIGHTS)
    cmp.add_argument("--guidance", default="1,4,8,16", help="the columns: guidance weights")
    cmp.add_argument("--thresholding", default="0,static,99.5",
                     help="the rows: 0 (off), static (clip to [-1, 1]), a percentile (dynamic), or aug=LEVEL (noise aug, SR stages)")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--stage", type=int, default=1, help="the stage whose settings vary and whose image is shown")
    cmp.add_argument("--show-stage", type=int, default=None,
                     help="show the output of this later stage (its default settings on the varied stage's image), "
                          "e.g. 2: the base stage's 32 px cells are too small to see the difference (default: --stage)")
    cmp.add_argument("--out", default="grid.png")
    add_threads_flag(cmp)
    cmp.set_defaults(func=cmd_compare)

    gr_ = sub.add_parser("grid", help="a sample grid with prompts under the images (seen and held-out captions)")
    gr_.add_argument("--weights", default=DEFAULT_WEIGHTS)
    gr_.add_argument("--out", default="samples.png")
    gr_.add_argument("--seed", type=int, default=0)
    gr_.add_argument("--scenes", type=int, default=None,
                     help="held-out scene prompts per GenEval task, a row each, marked right or wrong by the detector "
                          "(default: 6 with the built-in prompts, 0 with yours)")
    gr_.add_argument("prompts", nargs="*")
    add_threads_flag(gr_)
    gr_.set_defaults(func=cmd_grid)

    a = sub.add_parser("assemble", help="build a pipeline folder from a text encoder and exported stages")
    a.add_argument("out")
    a.add_argument("stages", nargs="+", help="exported stage folders, base first")
    a.add_argument("--text-encoder", default=DEFAULT_WEIGHTS)
    a.add_argument("--settings", default=None, help='JSON of default settings, e.g. {"guidance_scale": [4, 2, 1]}')
    a.add_argument("--emoji-lists", action="store_true", help="also write captions.txt, held_out.txt and aliases.txt")
    a.set_defaults(func=cmd_assemble)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
