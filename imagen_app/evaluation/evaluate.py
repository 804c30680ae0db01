"""`python -m imagen_app evaluate`: the shipped model's quality and speed, seeded and re-runnable.

- Alignment: for each caption, generate at the base resolution with the default settings and rank
  all real emoji renders (the whole corpus, held-out ones included) by pixel-space L2 distance to
  the generated image. Top-1 / top-10 accuracy and median rank of the caption's own emoji, with
  the chance level beside each. Seen captions: a fixed sample of 200 from the training split;
  held-out: all held-out compositions, plus whether the nearest real image has the asked
  attribute (skin tone, gender or colour).
- Super-resolution: each SR stage run from the real low-res image of held-out emoji (the high-res
  render area-downsampled, as in training), against the real high-res render: PSNR and SSIM,
  beside bicubic upsampling of the same low-res image.
- Timing: seconds per stage and end to end at the default settings.
- By family (what users see; the average hides it): seen captions sampled per family (single emoji,
  flags, skin-tone variants, other people), each in two phrasings: the CLDR caption ("flag: japan",
  "woman firefighter: dark skin tone") and the plain name as people type it ("japan", "woman
  firefighter dark skin tone"), plus the emoji's aliases; the same seed for both phrasings. The UI
  examples at seeds 0-3 (right = the asked emoji among the 3 nearest real renders). And the quick
  text-use measure per family (how much the right caption cuts the x0 error; `curriculum.text_use`).
"""
from __future__ import annotations

import json
import random
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..images import pil_to_tensor, pixels_to_tensor
from ..models.unet import upsample_lowres
from ..pipeline.pipeline import ImagenPipeline
from .phrasing import PHRASING_PARTS


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) per image of (B, C, H, W) tensors."""
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-coords**2 / (2 * 1.5**2))
    g = (g / g.sum()).float()
    window = (g[:, None] * g[None, :]).expand(a.shape[1], 1, 11, 11).contiguous()

    def blur(x):
        return F.conv2d(x, window, groups=x.shape[1])

    a, b = a.float(), b.float()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse.clamp(min=1e-10))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) in [-1, 1]."""
    return pixels_to_tensor(images)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8: the inverse of `to_tensor`."""
    return ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def generate_base(pipe: ImagenPipeline, captions: List[str], seed: int, batch: int = 50) -> torch.Tensor:
    out = []
    for i in range(0, len(captions), batch):
        chunk = captions[i:i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        images = pipe(chunk, stop_at_stage=1, generator=gens).images
        out.append(pil_to_tensor(images))
    return torch.cat(out)


def rank_of_truth(generated: torch.Tensor, corpus: torch.Tensor, truth: List[int]):
    """Rank (1 = nearest) of each caption's own emoji among all real renders, and the nearest index."""
    d = torch.cdist(generated.flatten(1), corpus.flatten(1))  # (G, N)
    own = d[torch.arange(len(truth)), torch.tensor(truth)]
    ranks = (d < own[:, None]).sum(dim=1) + 1
    return ranks, d.argmin(dim=1)


def alignment(pipe, emojis, corpus, captions: List[str], seed: int) -> Dict:
    index = {e.caption: i for i, e in enumerate(emojis)}
    generated = generate_base(pipe, captions, seed)
    ranks, nearest = rank_of_truth(generated, corpus, [index[c] for c in captions])
    n = len(emojis)
    return dict(count=len(captions), top1=float((ranks <= 1).float().mean()), top10=float((ranks <= 10).float().mean()),
                median_rank=float(ranks.float().median()), chance_top1=1 / n, chance_top10=10 / n, chance_median_rank=n / 2,
                nearest=[emojis[int(i)].caption for i in nearest], ranks=ranks.tolist())


def attribute_accuracy(emojis, held: List[str], nearest: List[str]) -> Dict:
    """For held-out compositions: does the nearest real image have the asked skin tone / gender / colour?"""
    from ..training.data import COLOURS, GENDERS, SKIN_TONES, Emoji

    results: Dict[str, List[bool]] = {"skin tone": [], "gender": [], "colour": []}
    for asked, got in zip(held, nearest):
        a, g = Emoji("", asked), Emoji("", got)
        if a.skin_tone:
            results["skin tone"].append(a.skin_tone == g.skin_tone)
        elif a.colour:
            results["colour"].append(a.colour == g.colour)
        elif a.gender:
            results["gender"].append(a.gender == g.gender)
    chance = {"skin tone": 1 / len(SKIN_TONES), "gender": 1 / len(GENDERS), "colour": 1 / len(COLOURS)}
    return {k: dict(count=len(v), accuracy=float(np.mean(v)) if v else None, chance=chance[k]) for k, v in results.items()}


@torch.no_grad()
def super_resolution(pipe, emojis, held_idx: List[int], count: int, seed: int) -> List[Dict]:
    from ..training.data import rendered_corpus

    rows = []
    idx = held_idx[:count]
    chosen = [emojis[i] for i in idx]
    captions = [e.caption for e in chosen]
    for k in range(1, pipe.num_stages):
        lo_res, hi_res = pipe.stage_resolutions[k - 1], pipe.stage_resolutions[k]
        hi = to_tensor(rendered_corpus(emojis, hi_res)[idx])
        lo = F.interpolate(hi, size=lo_res, mode="area")  # as in training: the area-downsampled real image
        sr = []
        for i in range(0, len(idx), 8):
            gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(captions[i:i + 8]))]
            out = pipe(captions[i:i + 8], image=lo[i:i + 8], start_at_stage=k + 1, stop_at_stage=k + 1, generator=gens)
            sr.append(pil_to_tensor(out.images))
        sr = torch.cat(sr)
        bicubic = upsample_lowres(lo, hi_res).clamp(-1, 1)
        rows.append(dict(stage=k + 1, from_px=lo_res, to_px=hi_res, count=len(idx),
                         psnr=float(psnr(sr, hi).mean()), ssim=float(ssim(sr, hi).mean()),
                         bicubic_psnr=float(psnr(bicubic, hi).mean()), bicubic_ssim=float(ssim(bicubic, hi).mean())))
    return rows


def plain_phrasing(emoji) -> str:
    """The name as people type it: no CLDR punctuation ("woman firefighter dark skin tone"), a flag by its country."""
    if emoji.family == "flags" and emoji.caption.startswith("flag: "):
        return emoji.caption[len("flag: "):]
    return " ".join(emoji.caption.replace(":", " ").replace(",", " ").split())


def by_family(pipe, emojis, corpus, seen: List[str], per_family: int, seed: int) -> Dict:
    """Family -> phrasing -> alignment figures, on a seeded sample of `per_family` seen captions per family."""
    from ..training.data import FAMILIES

    index = {e.caption: i for i, e in enumerate(emojis)}
    rng = random.Random(seed)
    out: Dict = {}
    for fam in FAMILIES:
        members = [c for c in seen if emojis[index[c]].family == fam]
        chosen = sorted(rng.sample(members, min(per_family, len(members))))
        chosen_emoji = [emojis[index[c]] for c in chosen]
        phrasings = {"cldr": chosen, "plain": [plain_phrasing(e) for e in chosen_emoji]}
        with_alias = [(c, next(a for a in e.aliases if a != e.caption)) for c, e in zip(chosen, chosen_emoji)
                      if any(a != e.caption for a in e.aliases)]
        out[fam] = {}
        for name, prompts in phrasings.items():
            out[fam][name] = _ranked(pipe, emojis, corpus, prompts, [index[c] for c in chosen], seed)
        if with_alias:
            out[fam]["alias"] = _ranked(pipe, emojis, corpus, [a for _, a in with_alias], [index[c] for c, _ in with_alias], seed)
    return out


def two_tone_order(pipe, emojis, corpus, seen: List[str], count: int, seed: int) -> Dict:
    """Two-person emoji with two skin tones (a seeded sample of seen ones): top-1/top-10 as for a family, and how
    often the image is nearer the swapped emoji (each person with the other's tone) than the asked one."""
    from ..training.curriculum import swapped_tones, two_tone_sample

    index = {e.caption: i for i, e in enumerate(emojis)}
    chosen = [seen[i] for i in two_tone_sample(seen, count, seed)]
    generated = generate_base(pipe, chosen, seed)
    ranks, _ = rank_of_truth(generated, corpus, [index[c] for c in chosen])
    swapped_ranks, _ = rank_of_truth(generated, corpus, [index[swapped_tones(c)] for c in chosen])
    return dict(count=len(chosen), top1=float((ranks <= 1).float().mean()), top10=float((ranks <= 10).float().mean()),
                swapped_nearer=float((swapped_ranks < ranks).float().mean()))


def _ranked(pipe, emojis, corpus, prompts: List[str], truth: List[int], seed: int) -> Dict:
    generated = generate_base(pipe, prompts, seed)
    ranks, nearest = rank_of_truth(generated, corpus, truth)
    return dict(count=len(prompts), top1=float((ranks <= 1).float().mean()), top10=float((ranks <= 10).float().mean()),
                median_rank=float(ranks.float().median()),
                failures=[[p, emojis[int(n)].caption] for p, n, r in zip(prompts, nearest, ranks) if r > 10][:20])


def colour_compositions(pipe, emojis, corpus, held: List[str], seeds=(0, 1, 2, 3)) -> Dict:
    """The colour drawn for "<colour> <shape>" captions (heart, circle, square), held out and seen: the palette
    colour (imagen_app/recolour.py) that fills most of each generated image, against the asked one. The
    held-out ones test whether a colour word is a colour, not a part of one emoji's name."""
    from ..training.recolour import main_colour, palette

    colours = palette(emojis, to_pixels(corpus), held)
    held_set = set(held)
    report = {}
    for name, chosen in (("held_out", lambda c: c in held_set), ("seen", lambda c: c not in held_set)):
        captions = sorted(e.caption for e in emojis if e.colour in colours and chosen(e.caption))
        drawn = []
        for caption in captions:
            images = to_pixels(torch.cat([generate_base(pipe, [caption], s) for s in seeds]))
            drawn.append([main_colour(im, colours, min_share=0.3, tolerance=48.0) for im in images])
        right = [d == c.split()[0] for c, ds in zip(captions, drawn) for d in ds]
        report[name] = dict(count=len(right), accuracy=float(np.mean(right)) if right else 0.0,
                            chance=1 / len(colours), captions=captions, drawn=drawn, seeds=list(seeds))
    return report


def recipe_neighbours(pipe, emojis, corpus, held: List[str], seeds=(0, 1)) -> Dict:
    """Top-10 of the seen single emoji whose name is a part of a recoloured caption (`recolour.names_inside`):
    the family sample may hold none of them, and they are the ones the colour recipe puts at risk."""
    from ..training.recolour import names_inside, recoloured_emoji

    recoloured = recoloured_emoji(emojis, to_pixels(corpus), held)
    held_set = set(held)
    names = names_inside(recoloured, [e for e in emojis if e.caption not in held_set])
    index = {e.caption: i for i, e in enumerate(emojis)}
    runs = [_ranked(pipe, emojis, corpus, names, [index[c] for c in names], s) for s in seeds]
    return dict(count=len(names) * len(seeds), top10=float(np.mean([r["top10"] for r in runs])), seeds=list(seeds),
                captions=names, failures=[f for r in runs for f in r["failures"]])


def ui_examples(pipe, emojis, corpus, examples: List[str], seeds=(0, 1, 2, 3)) -> List[Dict]:
    """Each UI example at each seed: the rank of the asked emoji (right = among the 3 nearest real renders)."""
    from ..models.text_encoder import normalize_prompt

    names = {}
    for i, e in enumerate(emojis):
        for name in [e.caption] + e.aliases:
            names.setdefault(normalize_prompt(name), i)
    rows = []
    for prompt in examples:
        truth = names.get(normalize_prompt(prompt))
        if truth is None:
            rows.append(dict(prompt=prompt, ranks=None))
            continue
        images = [generate_base(pipe, [prompt], s) for s in seeds]
        ranks, nearest = rank_of_truth(torch.cat(images), corpus, [truth] * len(seeds))
        rows.append(dict(prompt=prompt, seeds=list(seeds), ranks=ranks.tolist(),
                         nearest=[emojis[int(n)].caption for n in nearest], right=[int(r) <= 3 for r in ranks]))
    return rows


def text_use_by_family(pipe, emojis, corpus_uint8, seen: List[str], per_family: int = 60, seed: int = 0) -> Dict:
    """The quick measure of how much the right caption helps the base U-Net, per family (as training logs it)."""
    from ..training.curriculum import (family_sample, summarize_by_family, text_use, two_tone_sample, word_order_use,
                             wrong_captions_within_family)
    from ..models.text_encoder import PromptEncoder

    index = {e.caption: i for i, e in enumerate(emojis)}
    families = [emojis[index[c]].family for c in seen]
    idx = family_sample(families, per_family, seed)
    captions = [seen[i] for i in idx]
    fams = [families[i] for i in idx]
    images = to_tensor(corpus_uint8[[index[c] for c in captions]])
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, cache_size=4 * len(captions) + 8)
    unet = pipe.unet_1.float() if pipe.unet_1.dtype == torch.float16 else pipe.unet_1
    measure = text_use(unet, pipe.scheduler_1, encoder, images, captions, wrong_captions_within_family(captions, fams))
    summary = summarize_by_family(measure, fams)
    # Word order: the same measure with each two-tone caption against its swapped form.
    two_tones = [seen[i] for i in two_tone_sample(seen, per_family, seed)]
    if two_tones:
        summary["two-tone order"] = word_order_use(unet, pipe.scheduler_1, encoder,
                                                   to_tensor(corpus_uint8[[index[c] for c in two_tones]]), two_tones)
    return summary


PARTS = ("families", "two_tones", "examples", "text_use", "colours", "neighbours", "held_out", "super_resolution", "timing",
         "geneval", "geneval_cascade") + tuple(PHRASING_PARTS)


def run_evaluation(weights: str, out: Optional[str] = None, seen_count: int = 200, sr_count: int = 24, seed: int = 0,
                   pipe: Optional[ImagenPipeline] = None, timing_repeats: int = 3, per_family: int = 100,
                   parts=PARTS, geneval_per_task: int = 8, geneval_stage: Optional[int] = None,
                   geneval_objects: int = 0) -> Dict:
    from .bench import time_end_to_end
    from ..training.data import held_out_split, load_emoji, rendered_corpus

    # the scene worlds first: a small world that cannot be made fails before anything else runs
    worlds = scene_worlds(geneval_objects) if {"geneval", "geneval_cascade"} & set(parts) else None
    pipe = pipe or ImagenPipeline.from_pretrained(weights)
    pipe.set_progress_bar_config(disable=True)
    emojis = load_emoji()
    base_px = pipe.stage_resolutions[0]
    corpus = to_tensor(rendered_corpus(emojis, base_px))
    held = held_out_split(emojis)
    held_set = set(held)
    seen = sorted(e.caption for e in emojis if e.caption not in held_set)
    seen = sorted(random.Random(seed).sample(seen, min(seen_count, len(seen))))
    t0 = time.time()
    report: Dict = dict(weights=weights, seed=seed, corpus_size=len(emojis), settings=pipe.settings)
    all_seen = sorted(e.caption for e in emojis if e.caption not in held_set)
    if "families" in parts:
        report["families"] = by_family(pipe, emojis, corpus, all_seen, per_family, seed)
    if "two_tones" in parts:
        report["two_tones"] = two_tone_order(pipe, emojis, corpus, all_seen, per_family, seed)
    if "examples" in parts:
        from ..examples import EXAMPLES

        report["ui_examples"] = ui_examples(pipe, emojis, corpus, EXAMPLES)
    if "colours" in parts:
        report["colours"] = colour_compositions(pipe, emojis, corpus, held)
    if "neighbours" in parts:
        report["neighbours"] = recipe_neighbours(pipe, emojis, corpus, held)
    if "text_use" in parts:
        report["text_use"] = text_use_by_family(pipe, emojis, rendered_corpus(emojis, base_px), all_seen, seed=seed)
    if "held_out" in parts:
        report["seen"] = alignment(pipe, emojis, corpus, seen, seed)
        report["held_out"] = alignment(pipe, emojis, corpus, held, seed)
        report["held_out_attributes"] = attribute_accuracy(emojis, held, report["held_out"]["nearest"])
    if "super_resolution" in parts:
        held_idx = [i for i, e in enumerate(emojis) if e.caption in held_set]
        report["super_resolution"] = super_resolution(pipe, emojis, held_idx, sr_count, seed)
    from .phrasing import phrasing

    for part, (_, prompts, seeds) in PHRASING_PARTS.items():
        if part in parts:
            report[part] = phrasing(pipe, emojis, corpus, generate_base, seeds=seeds, prompts=prompts())
    if "geneval" in parts or "geneval_cascade" in parts:
        report.update(geneval_parts(pipe, parts, geneval_per_task, geneval_stage, seed, worlds))
    if "timing" in parts:
        total, per_stage = time_end_to_end(pipe, "red heart", timing_repeats)
        report["timing"] = dict(end_to_end_s=total, stage_s=per_stage, threads=torch.get_num_threads())
    report["evaluation_s"] = time.time() - t0
    print_report(report)
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    return report


def scene_worlds(objects: int = 0):
    """(every object's scene world, the world whose prompts GenEval asks): with `objects`, a small world of that many
    (a run's `scene_objects`), else the same world."""
    from ..training.scenes import load_scene_world

    world = load_scene_world()
    return world, world.restricted(objects) if objects else world


def geneval_parts(pipe: ImagenPipeline, parts, per_task: int, stage: Optional[int], seed: int,
                  worlds=None) -> Dict:
    """GenEval's six tasks on held-out and seen scene prompts (four images each), the detector's ceiling on composed
    real renders at the judged resolution, and (geneval_cascade) a perfect base stage seen through this cascade's
    super-resolution stages. `worlds` (`scene_worlds`, by default every object's): the prompts are the second
    world's, judged by the detector of the first's objects, so that in a small world any other object is wrong."""
    from .geneval import Detector, cascade_ceiling, detector_ceiling, run_geneval

    every, world = worlds or scene_worlds()
    detector = Detector(every)
    out: Dict = {}
    if "geneval" in parts:
        size = pipe.stage_resolutions[(stage or len(pipe.stage_resolutions)) - 1]
        out["geneval"] = dict(per_task=per_task, images_per_prompt=4, stop_at_stage=stage, resolution=size,
                              objects=len(world.objects),
                              **run_geneval(pipe, world, per_task=per_task, seed=seed, stop_at_stage=stage,
                                            detector=detector),
                              ceiling=detector_ceiling(world, detector, per_task=per_task, size=size, seed=seed))
    if "geneval_cascade" in parts:
        out["geneval_cascade"] = cascade_ceiling(pipe, world, detector, per_task=per_task, seed=seed,
                                                 stop_at_stage=stage)
    return out


def print_geneval(r: Dict) -> None:
    from ..training.scenes import TASKS

    rows = []
    if "geneval" in r:
        g = r["geneval"]
        rows += [(f"model, {split}", g[split]) for split in ("held out", "seen")]
        rows += [(f"detector ceiling, {split}", g["ceiling"][split]) for split in ("held out", "seen")]
    if "geneval_cascade" in r:
        rows += [(f"perfect base via SR, {split}", r["geneval_cascade"][split]) for split in ("held out", "seen")]
    if not rows:
        return
    print(f"{'GenEval (share of images right)':<34}" + "".join(f"{t[:12]:>13}" for t in TASKS) + f"{'overall':>9}")
    for name, scores in rows:
        print(f"{name:<34}" + "".join(f"{scores.get(t, float('nan')):>13.3f}" for t in TASKS) +
              f"{scores.get('overall', float('nan')):>9.3f}")


def print_report(r: Dict) -> None:
    print(f"alignment at {r['settings'].get('num_inference_steps')} steps, guidance {r['settings'].get('guidance_scale')} "
          f"(rank among {r['corpus_size']} real emoji; chance top-10 {10 / r['corpus_size']:.2%})")
    if "families" in r:
        print(f"{'family':<20} {'phrasing':<8} {'n':>4} {'top-1':>7} {'top-10':>7} {'median rank':>12}")
        for fam, rows in sorted(r["families"].items(), key=lambda kv: kv[1]["cldr"]["top10"]):  # weakest first
            for phrasing, a in rows.items():
                print(f"{fam:<20} {phrasing:<8} {a['count']:>4} {a['top1']:>7.1%} {a['top10']:>7.1%} {a['median_rank']:>12.0f}")
    if "two_tones" in r:
        t = r["two_tones"]
        print(f"two-person emoji with two skin tones: n {t['count']}, top-1 {t['top1']:.1%}, top-10 {t['top10']:.1%}; "
              f"nearer the swapped emoji than the asked one {t['swapped_nearer']:.1%}")
    from .phrasing import print_phrasing

    for part, (title, _, _) in PHRASING_PARTS.items():
        if part in r:
            print_phrasing(r[part], title)
    for ex in r.get("ui_examples", []):
        if ex["ranks"] is None:
            print(f"UI example {ex['prompt']!r}: no emoji of that name")
        else:
            print(f"UI example {ex['prompt']!r}: right at seeds {ex['seeds']}: {ex['right']} (ranks {ex['ranks']})")
    for fam, v in r.get("text_use", {}).items():  # "two-tone order": the right caption against its swapped tones
        print(f"text use {fam:<20} gain {v['gain']:.2f} specificity {v['specificity']:.2f} (n {v['count']})")
    for name, c in r.get("colours", {}).items():
        print(f"colour x shape, {name.replace('_', '-')}: the asked colour fills the image {c['accuracy']:.1%} of "
              f"{c['count']} (chance {c['chance']:.1%}); " + ", ".join(
                  f"{cap} -> {'/'.join(d or '?' for d in ds)}" for cap, ds in zip(c["captions"], c["drawn"])))
    n = r.get("neighbours")
    if n:
        print(f"single emoji named inside a recoloured caption ({len(n['captions'])}, seeds {n['seeds']}): top-10 "
              f"{n['top10']:.1%}; wrong: " + (", ".join(f"{p} -> {w}" for p, w in n["failures"]) or "none"))
    if "seen" in r or "held_out" in r:
        print(f"{'set':<10} {'n':>4} {'top-1':>7} {'chance':>7} {'top-10':>7} {'chance':>7} {'median rank':>12} {'chance':>7}")
    for name in [n for n in ("seen", "held_out") if n in r]:
        a = r[name]
        print(f"{name:<10} {a['count']:>4} {a['top1']:>7.1%} {a['chance_top1']:>7.2%} {a['top10']:>7.1%} "
              f"{a['chance_top10']:>7.2%} {a['median_rank']:>12.0f} {a['chance_median_rank']:>7.0f}")
    for k, v in r.get("held_out_attributes", {}).items():
        if v["count"]:
            print(f"held-out {k:<10} nearest real image has it: {v['accuracy']:.1%} of {v['count']} (chance {v['chance']:.1%})")
    for s in r.get("super_resolution", []):
        print(f"stage {s['stage']} {s['from_px']}->{s['to_px']} px on {s['count']} held-out emoji: PSNR {s['psnr']:.2f} dB "
              f"(bicubic {s['bicubic_psnr']:.2f}), SSIM {s['ssim']:.4f} (bicubic {s['bicubic_ssim']:.4f})")
    print_geneval(r)
    t = r.get("timing")
    if t:
        print("timing: " + ", ".join(f"stage {k + 1} {s:.2f} s" for k, s in enumerate(t["stage_s"])) +
              f"; end to end {t['end_to_end_s']:.2f} s ({t['threads']} threads)")


# Every family, with ones the shipped model still gets wrong (docs/evaluation_families.json lists its misses:
# "penguin", "brain", two-person emoji with two tones), then held-out compositions.
SEEN_GRID_PROMPTS = ["panda", "pizza", "rocket", "grinning face", "penguin", "brain",
                     "flag: japan", "flag: germany", "woman firefighter: dark skin tone", "man astronaut",
                     "people holding hands", "woman and man holding hands: dark skin tone, light skin tone"]
HELD_OUT_GRID_PROMPTS = ["red heart", "purple heart", "blue square"]


def sample_grid(pipe: ImagenPipeline, out: str, prompts: Optional[List[str]] = None, seed: int = 0, cell: int = 160,
                scenes_per_task: int = 0):
    """A grid of final images with each prompt written under its image; held-out prompts are marked. With
    `scenes_per_task`, a row per GenEval task follows: held-out scene prompts, each marked right or wrong by the
    GenEval detector (geneval.scene_samples), so the sheet shows what still fails."""
    from PIL import Image, ImageDraw

    from ..training.data import held_out_split, load_emoji

    held = held_out_split(load_emoji())
    if prompts is None:
        prompts = SEEN_GRID_PROMPTS + HELD_OUT_GRID_PROMPTS + [h for h in held[::42] if h not in HELD_OUT_GRID_PROMPTS][:3]
    cols = 6
    rows = [[(p, pipe(p, generator=torch.Generator().manual_seed(seed)).images[0], "(held out)" if p in held else "")
             for p in prompts[i:i + cols]] for i in range(0, len(prompts), cols)]
    if scenes_per_task:
        from ..training.scenes import load_scene_world
        from .geneval import scene_samples

        for task, samples in scene_samples(pipe, load_scene_world(), scenes_per_task, seed):
            for i in range(0, len(samples), cols):
                rows.append([(p, im, f"{task}: {'right' if ok else 'wrong'}") for p, im, ok in samples[i:i + cols]])
    label_h = 34
    sheet = Image.new("RGB", (cols * cell, len(rows) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, (p, im, note) in enumerate(row):
            x, y = c * cell, r * (cell + label_h)
            sheet.paste(im.resize((cell, cell), Image.LANCZOS), (x, y))
            text = p if len(p) <= 26 else p[:25] + "…"
            for j, line in enumerate([text, note[:26]]):
                draw.text((x + 4, y + cell + 2 + 14 * j), line, fill=(0, 0, 0))
    # 256 colours, undithered: a quarter of the bytes of the full-colour sheet (a tracked file), no visible change
    sheet.quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)
    return out
