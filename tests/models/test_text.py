import pytest
import torch

from reelkit.data.captions import VOCABULARY
from reelkit.data.world import render_clip
from reelkit.errors import PromptError
from reelkit.models.text import WorldTextEncoder, build_tokenizer, check_prompt, encode_prompts, tokenize_prompts


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_tokenizer_covers_every_world_word_and_every_caption(tokenizer):
    vocab = tokenizer.get_vocab()
    assert set(vocab) >= VOCABULARY
    for seed in range(200):
        caption = render_clip(seed, 1, 8).caption
        check_prompt(caption, tokenizer)
        ids = tokenize_prompts([caption], tokenizer)["input_ids"][0]
        assert vocab["[UNK]"] not in ids.tolist()


def test_case_punctuation_and_hyphens_are_normalised(tokenizer):
    a = tokenize_prompts(["A RED ball, slides to the left!"], tokenizer)["input_ids"]
    b = tokenize_prompts(["a red ball slides to the left"], tokenizer)["input_ids"]
    assert torch.equal(a, b)


def test_every_sequence_starts_with_bos_and_pads_to_the_maximum(tokenizer):
    tokens = tokenize_prompts(["a red ball", ""], tokenizer)
    assert tokens["input_ids"].shape == (2, tokenizer.model_max_length)
    assert (tokens["input_ids"][:, 0] == tokenizer.bos_token_id).all()
    assert tokens["attention_mask"][1].sum() == 1  # the empty prompt is [BOS] alone


@pytest.mark.parametrize("prompt, message", [
    ("a red circel movng left", "unknown words in prompt: 'circel' (did you mean circle?), 'movng'"),
    ("a purple dragon", "'dragon'"),
    ("   ", "the prompt is empty"),
    ("!!!", "the prompt is empty"),
    ("a red ball " * 10, "at most 23"),
])
def test_bad_prompts_are_refused_with_the_nearest_words(tokenizer, prompt, message):
    with pytest.raises(PromptError) as error:
        check_prompt(prompt, tokenizer)
    assert message in str(error.value)


def test_encoder_output_ignores_padding_and_round_trips(tokenizer, tmp_path):
    torch.manual_seed(0)
    encoder = WorldTextEncoder(vocab_size=len(tokenizer), dim=16, num_layers=1, num_heads=2).eval()
    states = encode_prompts(["a red ball", "a red ball slides to the left"], tokenizer, encoder)
    assert states.shape == (2, tokenizer.model_max_length, 16) and torch.isfinite(states).all()
    # padding is masked: the first tokens of a short prompt don't see the pad positions
    alone = encode_prompts(["a red ball"], tokenizer, encoder)
    torch.testing.assert_close(alone[0, :4], states[0, :4])
    encoder.save_pretrained(tmp_path / "te")
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = WorldTextEncoder.from_pretrained(tmp_path / "te").eval()
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    torch.testing.assert_close(encode_prompts(["a red ball"], reloaded, loaded), alone)
