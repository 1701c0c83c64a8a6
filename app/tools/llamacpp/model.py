"""A tiny random-weight llama-architecture GGUF model, made by the project.

Why: tests, CI and a new user's first run need a real model for a real `llama-server`,
and nothing may be downloaded from a model hub. This writes one with the `gguf` package
(llama.cpp's own GGUF writer): the llama architecture at a few MB, random weights, and a
vocabulary built for the benchmark client's prompts.

The vocabulary: the 256 byte-level tokens (any text can be tokenized), plus every prompt
word of `app.tools.loadgen.scenarios.PROMPT_WORDS` as a whole token, with and without its
leading space. With llama.cpp's "llama-bpe" pre-tokenizer a word that is in the vocabulary
is one token, so the engine sees the same prompt lengths as a real Llama-3-style tokenizer
(one " word" = one token, see the scenarios module). The output projection is zero for
every token but the spaced words, so greedy decoding emits words (valid text, never end-of-text
by chance): the requested output length is what the engine generates.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.tools.loadgen.scenarios import PROMPT_WORDS


@dataclass(frozen=True)
class ModelShape:
    """The model's size. The default is 4 layers, 256 wide: ~7 MB in F16, a few thousand
    tokens/s on one CPU core, so batching and threads make a measurable difference."""

    n_layer: int = 4
    n_embd: int = 256
    n_ff: int = 768
    n_head: int = 4
    n_head_kv: int = 2
    n_ctx: int = 4096


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode table: the printable stand-in for each of the 256 bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


@dataclass(frozen=True)
class Vocab:
    """The token list, each token's type, the special ids and the ids the model emits."""

    tokens: list[str]
    types: list[int]
    bos: int
    eos: int
    emitted: range


def vocabulary() -> Vocab:
    space = _byte_tokens()[ord(" ")]
    spaced = [space + w for w in PROMPT_WORDS]
    bare = [w for w in PROMPT_WORDS if len(w) > 1]  # single letters are byte tokens already
    tokens = _byte_tokens() + spaced + bare + ["<|begin_of_text|>", "<|end_of_text|>"]
    types = [1] * (len(tokens) - 2) + [3, 3]  # the last two are control tokens
    return Vocab(tokens, types, len(tokens) - 2, len(tokens) - 1, range(256, 256 + len(spaced)))


def write_model(path: str | Path, shape: ModelShape = ModelShape(), seed: int = 0) -> Path:
    """Write the model to ``path`` (replacing it) and return the path."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = vocabulary()
    n_vocab, d, head_dim = len(vocab.tokens), shape.n_embd, shape.n_embd // shape.n_head
    d_kv = head_dim * shape.n_head_kv

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float16)

    w = gguf.GGUFWriter(str(path) + ".tmp", "llama")
    w.add_name("autotuner-tiny-llama (random weights)")
    w.add_context_length(shape.n_ctx)
    w.add_embedding_length(d)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    space = _byte_tokens()[ord(" ")]
    w.add_token_merges([f"{space} t"])  # the key must exist; whole words bypass merges
    w.add_bos_token_id(vocab.bos)
    w.add_eos_token_id(vocab.eos)
    w.add_add_bos_token(True)

    ones = np.ones(d, dtype=np.float32)
    w.add_tensor("token_embd.weight", weight(n_vocab, d))
    for i in range(shape.n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.attn_q.weight", weight(d, d))
        w.add_tensor(f"blk.{i}.attn_k.weight", weight(d_kv, d))
        w.add_tensor(f"blk.{i}.attn_v.weight", weight(d_kv, d))
        w.add_tensor(f"blk.{i}.attn_output.weight", weight(d, d))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", weight(shape.n_ff, d))
        w.add_tensor(f"blk.{i}.ffn_up.weight", weight(shape.n_ff, d))
        w.add_tensor(f"blk.{i}.ffn_down.weight", weight(d, shape.n_ff))
    w.add_tensor("output_norm.weight", ones)
    output = np.zeros((n_vocab, d), dtype=np.float16)  # a zero row is never the argmax...
    output[vocab.emitted] = weight(len(vocab.emitted), d)  # ...so " word" tokens are emitted
    w.add_tensor("output.weight", output)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    Path(str(path) + ".tmp").replace(path)
    return path
