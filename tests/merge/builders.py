"""Tiny random checkpoints of every architecture family the merge engine supports.

All built locally (no downloads): original T5 (``DenseReluDense.wi``, tied), gated t5-v1.1
with a separate ``lm_head``, mT5, BART (``final_logits_bias``), bert2bert, Llama, GPT-2; saved
as one safetensors file, sharded safetensors, or a ``.bin`` state dict with tied storages.
"""

from __future__ import annotations

from pathlib import Path

import torch

D, FF, LAYERS, HEADS = 16, 32, 2, 2
FAMILIES = ("t5", "t5v11", "mt5", "bart", "bert2bert", "llama", "gpt2")


def words(n: int, prefix: str = "w") -> list[str]:
    """A word-level vocabulary: special tokens, then ``n`` words."""
    return ["<pad>", "</s>", "<unk>"] + [f"{prefix}{i}" for i in range(n)]


def build_model(family: str, vocab_size: int, layers: int = LAYERS):
    """A random transformers model of ``family`` (seed set by the caller)."""
    import transformers as tf

    if family in ("t5", "t5v11", "mt5"):
        cls_cfg = tf.MT5Config if family == "mt5" else tf.T5Config
        cfg = cls_cfg(
            vocab_size=vocab_size, d_model=D, d_kv=8, d_ff=FF, num_layers=layers, num_decoder_layers=layers,
            num_heads=HEADS, feed_forward_proj="relu" if family == "t5" else "gated-gelu",
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )  # fmt: skip
        if family != "t5":
            cfg.tie_word_embeddings = False  # transformers 5 ignores the init kwarg for T5
        return (tf.MT5ForConditionalGeneration if family == "mt5" else tf.T5ForConditionalGeneration)(cfg)
    if family == "bart":
        cfg = tf.BartConfig(
            vocab_size=vocab_size, d_model=D, encoder_layers=layers, decoder_layers=layers,
            encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FF,
            decoder_ffn_dim=FF, max_position_embeddings=32, pad_token_id=0, eos_token_id=1,
            bos_token_id=2, decoder_start_token_id=1, forced_eos_token_id=None,
        )  # fmt: skip
        model = tf.BartForConditionalGeneration(cfg)
        model.final_logits_bias.normal_()  # make the vocabulary-axis bias non-trivial
        return model
    if family == "bert2bert":
        common = {"vocab_size": vocab_size, "hidden_size": D, "num_hidden_layers": layers, "num_attention_heads": HEADS,
                  "intermediate_size": FF, "max_position_embeddings": 32, "pad_token_id": 0}  # fmt: skip
        enc = tf.BertConfig(**common)
        dec = tf.BertConfig(**common, is_decoder=True, add_cross_attention=True)
        cfg = tf.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
        cfg.decoder_start_token_id, cfg.pad_token_id = 1, 0
        return tf.EncoderDecoderModel(cfg)
    if family == "llama":
        cfg = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=D, intermediate_size=FF, num_hidden_layers=layers,
                             num_attention_heads=HEADS, num_key_value_heads=1, tie_word_embeddings=False,
                             bos_token_id=1, eos_token_id=1, pad_token_id=0)  # fmt: skip
        return tf.LlamaForCausalLM(cfg)
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab_size, n_embd=D, n_layer=layers, n_head=HEADS, n_positions=32,
                            bos_token_id=1, eos_token_id=1)  # fmt: skip
        return tf.GPT2LMHeadModel(cfg)
    raise ValueError(family)


def save_tokenizer(path: Path, vocab: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    fast.save_pretrained(str(path))


def save_checkpoint(
    family: str, path: Path, seed: int, fmt: str = "safetensors", vocab: list[str] | None = None,
    layers: int = LAYERS,
) -> Path:  # fmt: skip
    """Build and save a random model; ``fmt``: safetensors | sharded | bin."""
    vocab = vocab or words(37)
    torch.manual_seed(seed)
    model = build_model(family, len(vocab), layers)
    path.mkdir(parents=True, exist_ok=True)
    if fmt == "bin":
        model.config.save_pretrained(str(path))
        torch.save(model.state_dict(), path / "pytorch_model.bin")  # tied names share one storage
    else:
        model.save_pretrained(str(path), max_shard_size="20KB" if fmt == "sharded" else "5GB")
    save_tokenizer(path, vocab)
    return path
