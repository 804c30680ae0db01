import random

import torch

from imagen_app.training.text_pretrain import export_encoder, pretrain_t5, span_corrupt, train_caption_tokenizer

CAPTIONS = ["red heart", "blue heart", "woman firefighter: dark skin tone", "man firefighter", "flag: japan"]


def test_span_corruption_round_trip():
    rng = random.Random(0)
    ids = list(range(100, 120))
    sentinels = [10, 11, 12, 13]
    inputs, targets = span_corrupt(ids, sentinels, eos_id=1, rng=rng)
    assert inputs[-1] == 1 and targets[-1] == 1
    # filling every sentinel of the input with its span from the target restores the text
    spans, current = {}, None
    for t in targets[:-1]:
        if t in sentinels:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    restored = [x for t in inputs[:-1] for x in (spans[t] if t in sentinels else [t])]
    assert restored == ids
    assert 0 < sum(len(v) for v in spans.values()) < len(ids)


def test_exported_encoder_equals_trained_encoder():
    tok = train_caption_tokenizer(CAPTIONS)
    model = pretrain_t5(tok, CAPTIONS, steps=3, batch_size=4, d_model=32, layers=1, log_every=0)
    encoder = export_encoder(model)
    ids = torch.tensor([tok("red heart")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(encoder(input_ids=ids).last_hidden_state,
                                   model.get_encoder()(input_ids=ids).last_hidden_state)
    # and the trained weights really moved away from the initial ones (layer norms start at 1)
    assert not torch.all(encoder.encoder.final_layer_norm.weight == 1)
