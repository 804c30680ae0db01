import torch

from imagen_app.evaluate import attribute_accuracy, psnr, rank_of_truth, ssim


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
