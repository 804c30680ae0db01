import torch

from imagen_app.evaluation.evaluate import attribute_accuracy, psnr, rank_of_truth, ssim


def test_ssim_and_psnr():
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)
    noisy = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    blurred = torch.nn.functional.avg_pool2d(a, 3, 1, 1)
    assert (ssim(a, noisy) < 0.9).all() and (ssim(a, blurred) < 1).all()
    assert (psnr(a, noisy) < psnr(a, (a + 0.01 * torch.randn_like(a)).clamp(-1, 1))).all()


def test_rank_of_truth():
    corpus = torch.eye(5).view(5, 1, 1, 5)
    generated = corpus[[2, 4]] + 0.01
    ranks, nearest = rank_of_truth(generated, corpus, [2, 0])
    assert ranks.tolist()[0] == 1 and ranks.tolist()[1] > 1
    assert nearest.tolist() == [2, 4]


def test_attribute_accuracy():
    held = ["woman firefighter: dark skin tone", "purple heart", "man cook"]
    nearest = ["man firefighter: dark skin tone", "red heart", "man farmer"]
    acc = attribute_accuracy(None, held, nearest)
    assert acc["skin tone"]["accuracy"] == 1.0 and acc["colour"]["accuracy"] == 0.0 and acc["gender"]["accuracy"] == 1.0


def test_two_tone_order_counts_images_nearer_the_swapped_emoji(monkeypatch):
    from types import SimpleNamespace

    import imagen_app.evaluation.evaluate as evaluate
    from imagen_app.training.curriculum import swapped_tones

    captions = ["kiss woman man: dark skin tone, light skin tone", "kiss woman man: light skin tone, dark skin tone",
                "handshake: medium skin tone, dark skin tone", "handshake: dark skin tone, medium skin tone",
                "panda", "woman firefighter: dark skin tone"]
    emojis = [SimpleNamespace(caption=c) for c in captions]
    corpus = torch.rand(len(captions), 3, 4, 4) * 2 - 1
    index = {c: i for i, c in enumerate(captions)}

    def drawing(swap):  # a model that draws every asked emoji, or its swapped-tone twin
        return lambda pipe, prompts, seed: corpus[[index[swapped_tones(p) if swap else p] for p in prompts]]

    monkeypatch.setattr(evaluate, "generate_base", drawing(swap=False))
    right = evaluate.two_tone_order(None, emojis, corpus, captions, count=10, seed=0)
    assert right == dict(count=4, top1=1.0, top10=1.0, swapped_nearer=0.0)
    monkeypatch.setattr(evaluate, "generate_base", drawing(swap=True))
    swapped = evaluate.two_tone_order(None, emojis, corpus, captions, count=10, seed=0)
    assert swapped["count"] == 4 and swapped["top1"] == 0.0 and swapped["swapped_nearer"] == 1.0


def test_colour_compositions_name_the_colour_each_image_is_filled_with(monkeypatch):
    import numpy as np

    import imagen_app.evaluation.evaluate as evaluate
    from imagen_app.training.data import Emoji
    from conftest import GREEN, PURPLE, RED, filled

    emojis = [Emoji(code=str(i), caption=c) for i, c in enumerate(["red circle", "purple square", "green heart", "purple heart"])]
    pixels = np.stack([filled(c) for c in (RED, PURPLE, GREEN, PURPLE)])
    corpus = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    fills = {"red": RED, "purple": PURPLE, "green": GREEN}

    def drawing(held_colour):  # seen captions in their own colour; the held-out "purple heart" in `held_colour`
        def generate(pipe, prompts, seed):
            colour = held_colour if prompts[0] == "purple heart" else prompts[0].split()[0]
            return torch.from_numpy(filled(fills[colour])[None]).permute(0, 3, 1, 2).float() / 127.5 - 1
        return generate

    monkeypatch.setattr(evaluate, "generate_base", drawing("green"))
    report = evaluate.colour_compositions(None, emojis, corpus, ["purple heart"], seeds=(0, 1))
    assert report["seen"]["accuracy"] == 1.0 and report["seen"]["count"] == 6
    assert report["held_out"] == dict(count=2, accuracy=0.0, chance=1 / 3, captions=["purple heart"],
                                      drawn=[["green", "green"]], seeds=[0, 1])
    monkeypatch.setattr(evaluate, "generate_base", drawing("purple"))
    assert evaluate.colour_compositions(None, emojis, corpus, ["purple heart"], seeds=(0, 1))["held_out"]["accuracy"] == 1.0


def test_recipe_neighbours_ranks_the_names_a_recoloured_caption_contains(monkeypatch):
    import imagen_app.evaluation.evaluate as evaluate
    import imagen_app.training.recolour as recolour
    from imagen_app.training.data import CaptionedImages, Emoji

    captions = ["kiss", "kiss mark", "panda"] + [f"thing {i}" for i in range(10)]
    emojis = [Emoji(code=str(i), caption=c) for i, c in enumerate(captions)]
    corpus = -torch.ones(len(captions), 3, 4, 4) + 0.05 * torch.rand(len(captions), 3, 4, 4)
    corpus[0] = 1.0  # "kiss" far from every other emoji, so drawing the kiss mark for it ranks it last
    made = CaptionedImages(torch.zeros(1, 4, 4, 3).byte().numpy(), [["purple kiss mark"]], ["recoloured"])
    monkeypatch.setattr(recolour, "recoloured_emoji", lambda *a, **k: made)
    index = {c: i for i, c in enumerate(captions)}

    def drawing(wrong_seeds):  # "kiss" drawn as the kiss mark at `wrong_seeds`, everything else right
        return lambda pipe, prompts, seed: corpus[[index["kiss mark" if p == "kiss" and seed in wrong_seeds else p]
                                                   for p in prompts]]

    monkeypatch.setattr(evaluate, "generate_base", drawing(wrong_seeds={0}))
    report = evaluate.recipe_neighbours(None, emojis, corpus, held=[], seeds=(0, 1))
    assert report["captions"] == ["kiss"] and report["count"] == 2 and report["top10"] == 0.5
    assert report["failures"] == [["kiss", "kiss mark"]]
    monkeypatch.setattr(evaluate, "generate_base", drawing(wrong_seeds=set()))
    assert evaluate.recipe_neighbours(None, emojis, corpus, held=[], seeds=(0, 1))["top10"] == 1.0


def test_report_prints_each_phrasing_part_under_its_own_title_with_its_wrong_prompts(capsys):
    from imagen_app.evaluation.evaluate import print_report
    from imagen_app.evaluation.phrasing import PHRASING_PARTS

    def part(right, asked, wrong):
        kinds = {"frame": dict(right=right, asked=asked, accuracy=right / asked)}
        return dict(overall=dict(kinds["frame"]), by_kind=kinds, prompts=asked // 2, seeds=[0, 1], missing_names=[],
                    failures=[dict(prompt=wrong, nearest=["racing car"], understood=wrong, unknown=[])])

    report = dict(settings=dict(num_inference_steps=8, guidance_scale=4.0), corpus_size=3000,
                  phrasing_third=part(50, 54, "a cup of coffee"), phrasing=part(136, 144, "a sad cat"))
    print_report(report)
    out = capsys.readouterr().out
    first, third = out.index(PHRASING_PARTS["phrasing"][0]), out.index(PHRASING_PARTS["phrasing_third"][0])
    assert first < out.index("136/144") < third < out.index("50/54")  # in the titles' order, each under its own
    assert "'a cup of coffee' -> ['racing car']" in out[third:] and PHRASING_PARTS["phrasing_grid"][0] not in out
