"""A tiny random Llama and a byte-level BPE tokenizer trained offline on the project's own text.

Used by tests and by `--smoke` runs: it builds in well under a second, needs no download, and
goes through exactly the same loading code as a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from align.data.quickstart import corpus_lines

SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>"]
# ChatML, the same turn markers as SmolLM2, so prompts look alike on both models.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


def build_tiny_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the quickstart corpus (deterministic, < 1 s)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(tokenizer: PreTrainedTokenizerFast, **extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **TINY_CONFIG,
        **extra,
    )


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """Random Llama of ~0.1 M parameters whose vocabulary matches `tokenizer`."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_model(out: Path) -> None:
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)


def save_tiny_reward_model(out: Path, seed: int = 1) -> None:
    """A random one-logit sequence classifier on the tiny Llama: a real reward-model code path."""
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=1)).save_pretrained(out)
    tokenizer.save_pretrained(out)
