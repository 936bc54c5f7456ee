"""The demo world's text side: a word-level tokenizer over the world's vocabulary and a small encoder.

The tokenizer is a Hugging Face ``PreTrainedTokenizerFast`` over a ``tokenizers`` WordLevel model, so it
saves, loads and plugs into a diffusers pipeline like any other. It knows every word the demo world's
captions use (shapes, colours, motions, backgrounds and their synonyms, and filler words); a prompt with
other words is refused by :func:`check_prompt`, naming them and the nearest known words. Every sequence
starts with ``[BOS]``, so even the empty prompt (the unconditional branch of classifier-free guidance)
has one real token.

>>> from reelkit.models.text import WorldTextEncoder, build_tokenizer, encode_prompts
>>> tokenizer = build_tokenizer()
>>> encoder = WorldTextEncoder(vocab_size=len(tokenizer), dim=32, num_layers=1, num_heads=2).eval()
>>> encode_prompts(["a red ball slides to the left", ""], tokenizer, encoder).shape   # (B, L, dim)
torch.Size([2, 24, 32])
>>> check_prompt("a red circel", tokenizer)
Traceback (most recent call last):
...
reelkit.errors.PromptError: unknown word in prompt: 'circel' (did you mean circle?)
"""

from __future__ import annotations

import difflib
import logging

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from reelkit.errors import PromptError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]")
MAX_LENGTH = 24


def build_tokenizer(max_length: int = MAX_LENGTH):
    """A word-level tokenizer over the demo world's vocabulary (lower-cased, punctuation dropped)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from reelkit.data.captions import VOCABULARY

    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *sorted(VOCABULARY)))}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(r"[^a-z\s]"), " ")])
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", model_max_length=max_length)


def prompt_words(prompt: str, tokenizer) -> list[str]:
    """The words of ``prompt`` as ``tokenizer`` normalises and splits them."""
    backend = tokenizer.backend_tokenizer
    text = backend.normalizer.normalize_str(prompt) if backend.normalizer else prompt
    return [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


def check_prompt(prompt: str, tokenizer) -> None:
    """Raise :class:`PromptError` for an empty prompt, or one with words ``tokenizer`` does not know (naming
    them and the nearest known words), or one longer than the tokenizer's maximum length."""
    words = prompt_words(prompt, tokenizer)
    if not words:
        raise PromptError("the prompt is empty; describe the video, e.g. 'a red circle moving right'")
    known = [w for w in tokenizer.get_vocab() if w not in SPECIAL_TOKENS]
    unknown = [w for w in dict.fromkeys(words) if w not in tokenizer.get_vocab()]
    if unknown:
        def suggest(word: str) -> str:
            close = difflib.get_close_matches(word, known, n=3, cutoff=0.6)
            return f"'{word}' (did you mean {' / '.join(close)}?)" if close else f"'{word}'"

        plural = "s" if len(unknown) > 1 else ""
        raise PromptError(f"unknown word{plural} in prompt: {', '.join(suggest(w) for w in unknown)}")
    if len(words) + 1 > tokenizer.model_max_length:
        raise PromptError(f"the prompt has {len(words)} words; this text encoder reads at most "
                          f"{tokenizer.model_max_length - 1}")


def prepare_prompt(prompt: str, tokenizer) -> str:
    """The prompt a world text encoder reads: size and speed words dropped (with a notice on the ``reelkit``
    logger: the world renders neither), then checked by :func:`check_prompt`; a background-only colour given to
    an object is a :class:`PromptError`.

    >>> prepare_prompt("a tiny red circle moving right", build_tokenizer())
    'a red circle moving right'
    """
    from reelkit.data.captions import check_object_colors, drop_unrendered_words

    clean, notice = drop_unrendered_words(prompt)
    if notice is not None and clean.strip():
        logging.getLogger("reelkit").warning(notice)
    check_object_colors(clean)
    check_prompt(clean, tokenizer)
    return clean


class WorldTextEncoder(ModelMixin, ConfigMixin):
    """A small pre-norm transformer encoder: token ids ``(B, L)`` -> hidden states ``(B, L, dim)``."""

    @register_to_config
    def __init__(self, vocab_size: int = 256, dim: int = 128, num_layers: int = 2, num_heads: int = 4,
                 max_length: int = MAX_LENGTH):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[1]]
        padding = None if attention_mask is None else attention_mask == 0
        return self.final_norm(self.encoder(x, src_key_padding_mask=padding))


def tokenize_prompts(prompts: list[str], tokenizer) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``(B, max_length)``, padded to the tokenizer's maximum."""
    return tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt")


def encode_prompts(prompts: list[str], tokenizer, text_encoder: WorldTextEncoder) -> torch.Tensor:
    """Prompts -> text-encoder states ``(B, max_length, dim)`` (no prompt checking: see :func:`check_prompt`)."""
    tokens = tokenize_prompts(prompts, tokenizer)
    return text_encoder(tokens["input_ids"].to(text_encoder.device),
                        tokens["attention_mask"].to(text_encoder.device))


__all__ = ["WorldTextEncoder", "build_tokenizer", "check_prompt", "encode_prompts", "prepare_prompt",
           "prompt_words", "tokenize_prompts"]
