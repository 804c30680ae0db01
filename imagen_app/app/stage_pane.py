"""The output pane of one cascade stage, shared by the Generate, Edit and Upscale tabs."""

from __future__ import annotations

import os
from typing import Optional

import gradio as gr
from PIL import Image


class StagePane(gr.Image):
    """A stage's output pane. The streams give every output a value in every update (never gr.skip(), which
    makes Gradio keep a component copy per generation: see ui._generate), so an unchanged pane comes back as the
    same PIL image; it is not encoded and written to Gradio's cache again (Gradio would rewrite the file in place,
    under a client that may be downloading it: "Too little data for declared Content-Length"). Its file is touched
    instead, as Gradio touches a cached copy it hands out again, so that `delete_cache` does not take it while the
    run still shows it (and one already taken is written again)."""
    is_template = True

    def postprocess(self, value):
        sent = self.__dict__.setdefault("_sent", {})  # id(image) -> (image, what it became): the last few only
        hit = sent.get(id(value))
        if value is not None and hit is not None and hit[0] is value:
            try:
                os.utime(hit[1].path)  # its age starts again
                return hit[1]
            except OSError:  # deleted meanwhile (a cache age shorter than the run): written again below
                pass
        data = super().postprocess(value)
        if value is not None:
            sent[id(value)] = (value, data)
            while len(sent) > 16:
                sent.pop(next(iter(sent)))
        return data

    @staticmethod
    def final(preview: Optional[Image.Image], image: Image.Image) -> Image.Image:
        """A stage's final image, or its last preview where that is the same picture (so it is not written again)."""
        same = (preview is not None and preview.size == image.size and preview.mode == image.mode
                and preview.tobytes() == image.tobytes())
        return preview if same else image


def stage_pane(k: int, resolution: Optional[int]) -> StagePane:
    """The pane of stage k (0-based), labelled with its output size when known."""
    return StagePane(label=f"Stage {k + 1}" + (f": {resolution} px" if resolution else ""), type="pil",
                     format="png", height=256, interactive=False, elem_classes="stage-image")
