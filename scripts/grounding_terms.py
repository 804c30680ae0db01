"""How far a base stage's object words attend to their objects: the grounding loss's token term (training/grounding.py,
0 = all of a phrase's attention inside its object, 1 = none) on 32 fresh seen scenes of each composition task, at
two noise levels (t = 300 and 700), no gradients. The scenes are drawn at the stage's side (64 px for a folded stage).
A stage with local text pools (models/unet.py `local_text_pool`) gets a second figure per task: its pools' term.

    python scripts/grounding_terms.py runs/stage_TAG [TEXT_ENCODER_FOLDER (default runs/scenes_text)]
"""
import random
import sys

import torch

from imagen_app.images import pixels_to_tensor
from imagen_app.models.schedules import stage_noise_schedule
from imagen_app.models.text_encoder import PromptEncoder, load_text_encoder
from imagen_app.models.unet import ImagenUNet, LocalTextPool, TextAttention
from imagen_app.training.data import caption_vocabulary
from imagen_app.training.grounding import AttentionGrabber, grounding_loss, grounding_targets
from imagen_app.training.scenes import TASKS, LiveScenes, load_scene_world


def main(stage: str, text: str = "runs/scenes_text", per_task: int = 32, timesteps=(300, 700)) -> str:
    torch.set_num_threads(1)
    tokenizer, text_encoder = load_text_encoder(text)
    encoder = PromptEncoder(tokenizer, text_encoder, vocabulary=caption_vocabulary())
    unet = ImagenUNet.from_pretrained(stage).float().eval()
    schedule = stage_noise_schedule("squaredcos_cap_v2", unet.config)
    live = LiveScenes(load_scene_world(), unet.config.sample_size)
    out = []
    for task in TASKS[1:]:  # a single object's phrase is the whole caption
        rng = random.Random(1)
        made = [live.draw_grounded(task, rng) for _ in range(per_task)]
        images = pixels_to_tensor([m[0] for m in made])
        captions = [m[1] for m in made]
        targets = grounding_targets(encoder, captions, [m[2] for m in made], unet.config.num_null_tokens, "cpu")
        embeds, mask = encoder.encode(captions)
        terms = []
        for step in timesteps:
            torch.manual_seed(0)
            t = torch.full((per_task,), step)
            attention, pools = AttentionGrabber(unet, 8, TextAttention), AttentionGrabber(unet, 8, LocalTextPool)
            with attention, pools, torch.no_grad():
                unet(schedule.add_noise(images, torch.randn_like(images), t), t, embeds, mask)
            terms.append(" + pools ".join(f"{float(grounding_loss(kind.taken, targets)[0]):.3f}"
                                          for kind in (attention, pools) if kind.taken))
        out.append(f"{task}: " + " / ".join(terms))
    return f"{stage} token term at t = {' / '.join(map(str, timesteps))}: " + " | ".join(out)


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
