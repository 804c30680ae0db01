import pytest
import torch

from imagen_app.training.word_rows import keep_rows


def _encoders(tmp_path):
    """A reference encoder folder and a 'taught' one whose rows of draw, sad_alone(_2) and emoji moved."""
    from transformers import T5EncoderModel

    from imagen_app.training.text_pretrain import small_t5_config, train_caption_tokenizer

    tokenizer = train_caption_tokenizer(["draw cat", "sad_alone sad_alone_2 cat", "cat emoji", "dog"], max_length=16)
    torch.manual_seed(0)
    encoder = T5EncoderModel(small_t5_config(len(tokenizer), d_model=16, layers=1, heads=2)).eval()
    for name in ("reference", "taught"):
        tokenizer.save_pretrained(str(tmp_path / name / "tokenizer"))
        encoder.save_pretrained(str(tmp_path / name / "text_encoder"))
    taught = T5EncoderModel.from_pretrained(str(tmp_path / "taught" / "text_encoder"))
    vocab = tokenizer.get_vocab()
    with torch.no_grad():
        for word in ("draw", "sad_alone", "sad_alone_2", "emoji"):
            taught.get_input_embeddings().weight[vocab[word]] += 1.0
    taught.save_pretrained(str(tmp_path / "taught" / "text_encoder"))
    return tokenizer, vocab


def _encode(folder, tokenizer, prompt):
    from transformers import T5EncoderModel

    encoder = T5EncoderModel.from_pretrained(str(folder / "text_encoder")).eval()
    with torch.no_grad():
        return encoder(**tokenizer(prompt, return_tensors="pt")).last_hidden_state


def test_kept_words_read_as_the_reference_reads_them_and_every_other_taught_row_stays(tmp_path):
    tokenizer, vocab = _encoders(tmp_path)
    tokens = keep_rows(str(tmp_path / "taught"), str(tmp_path / "reference"), ["draw", "sad_alone"], str(tmp_path / "out"))
    assert tokens == ["draw", "sad_alone", "sad_alone_2"]  # a word's further rows go with it
    out, ref, taught = (tmp_path / "out"), (tmp_path / "reference"), (tmp_path / "taught")
    for prompt in ("draw cat", "sad_alone sad_alone_2 cat"):  # prompts of kept words: exactly the reference's output
        assert torch.equal(_encode(out, tokenizer, prompt), _encode(ref, tokenizer, prompt))
    assert torch.equal(_encode(out, tokenizer, "cat emoji"), _encode(taught, tokenizer, "cat emoji"))
    assert not torch.equal(_encode(out, tokenizer, "cat emoji"), _encode(ref, tokenizer, "cat emoji"))


def test_keeping_rows_refuses_a_word_either_tokenizer_lacks_or_encoders_whose_layers_differ(tmp_path):
    from transformers import T5EncoderModel

    _encoders(tmp_path)
    with pytest.raises(ValueError, match="no word"):
        keep_rows(str(tmp_path / "taught"), str(tmp_path / "reference"), ["kitten"], str(tmp_path / "out"))
    other = T5EncoderModel.from_pretrained(str(tmp_path / "reference" / "text_encoder"))
    with torch.no_grad():
        next(p for n, p in other.named_parameters() if "shared" not in n).add_(0.1)
    other.save_pretrained(str(tmp_path / "reference" / "text_encoder"))
    with pytest.raises(ValueError, match="differ beyond their word rows"):
        keep_rows(str(tmp_path / "taught"), str(tmp_path / "reference"), ["draw"], str(tmp_path / "out"))
