"""The one factory of tiny random models for every test, saved as ordinary HF checkpoint dirs,
built offline in seconds. The models are random (seeded): tests use them for shapes, id spaces
and oracle comparisons, never for quality.

- Retrieval backbones (``build_t5``, ``build_bart``, ``build_bert2bert``; ``BUILDERS``): each
  writes ``config.json`` + ``model.safetensors`` + a tokenizer trained on the fly (SentencePiece
  unigram for T5, byte-level BPE for BART, a WordPiece vocab for bert2bert).
- Merge inputs of every architecture family the merge engine supports (``save_checkpoint``,
  ``MERGE_FAMILIES``): original T5 (``DenseReluDense.wi``, tied), gated t5-v1.1 with a separate
  ``lm_head``, mT5, BART (``final_logits_bias``), bert2bert, Llama, GPT-2, with a word-level
  tokenizer; saved as one safetensors file, sharded safetensors, or a ``.bin`` state dict with
  tied storages.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import torch

# A closed word list, so every tokenizer covers the toy corpora completely.
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "theta",
    "kappa",
    "lambda",
    "sigma",
    "omega",
    "river",
    "mountain",
    "city",
    "forest",
    "ocean",
    "desert",
    "island",
    "valley",
    "bridge",
    "castle",
    "garden",
    "market",
    "school",
    "library",
    "museum",
    "history",
    "science",
    "music",
    "poetry",
    "painting",
    "physics",
    "chemistry",
    "biology",
    "geology",
    "astronomy",
    "king",
    "queen",
    "knight",
    "bishop",
    "tower",
    "harbor",
    "station",
    "planet",
    "comet",
    "galaxy",
    "star",
    "moon",
    "sun",
    "cloud",
    "storm",
    "rain",
    "snow",
    "wind",
    "fire",
    "stone",
    "iron",
    "gold",
    "silver",
    "copper",
    "glass",
    "paper",
    "book",
    "song",
    "dance",
]

_D_MODEL = 32


def toy_sentences(n: int = 400, seed: int = 0) -> list[str]:
    """Deterministic sentences over ``WORDS`` (tokenizer training text and toy corpora)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def toy_corpus(n_docs: int = 12, seed: int = 0) -> dict[str, dict[str, str]]:
    """A BEIR-style corpus ``{doc_id: {"title", "text"}}`` with distinct two-word titles."""
    rng = random.Random(seed)
    titles: list[str] = []
    while len(titles) < n_docs:
        title = " ".join(rng.sample(WORDS, 2)).title()
        if title not in titles:
            titles.append(title)
    sentences = toy_sentences(n_docs, seed + 1)
    return {f"d{i}": {"title": t, "text": s} for i, (t, s) in enumerate(zip(titles, sentences))}


def _train_spiece(vocab_size: int = 160) -> bytes:
    """Train a SentencePiece unigram model (T5 id layout: pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(toy_sentences() + [w.title() for w in WORDS]),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    return buf.getvalue()


def save_t5_tokenizer(out_dir: Path) -> int:
    """Write a T5 tokenizer (``spiece.model`` + fast ``tokenizer.json``); return its size."""
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spiece.model").write_bytes(_train_spiece())
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512})
    )
    tok = AutoTokenizer.from_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return len(tok)


def _save_safetensors(model, out_dir: Path, extra: dict | None = None) -> None:
    """Save every parameter (no tie dedup) so the file holds what a hub checkpoint holds."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    state.update(extra or {})
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def build_t5(out_dir: str | Path, *, gated: bool = False, tied: bool = True, seed: int = 0) -> Path:
    """Tiny T5: ``gated=False`` is the original layout (``DenseReluDense.wi``), ``gated=True``
    the v1.1 / flan layout (``wi_0``/``wi_1``). ``tied=False`` writes a separate ``lm_head``
    and ``tie_word_embeddings: false`` (v1.1 checkpoints: no ``d_model**-0.5`` output scaling).
    """
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    out_dir = Path(out_dir)
    vocab = save_t5_tokenizer(out_dir)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab,
        d_model=_D_MODEL,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=tied,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = T5ForConditionalGeneration(config).eval()
    extra = {}
    if not tied:
        extra["lm_head.weight"] = torch.randn(vocab, _D_MODEL) * 0.5
    else:
        extra["lm_head.weight"] = model.shared.weight.detach().clone()
    model.config.save_pretrained(out_dir)
    if not tied:  # transformers 5 forces the flag to True in memory; hub v1.1 configs say false
        cfg = json.loads((out_dir / "config.json").read_text())
        cfg["tie_word_embeddings"] = False
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    _save_safetensors(model, out_dir, extra)
    return out_dir


def _train_bpe(out_dir: Path) -> int:
    """Train a byte-level BPE and save it as a BART (RoBERTa-style) tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        toy_sentences() + [w.title() for w in WORDS],
        vocab_size=400,
        min_frequency=2,
        special_tokens=specials,
        show_progress=False,
    )
    vocab = bpe.get_vocab()
    model_json = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    tok = BartTokenizer(vocab=vocab, merges=merges)
    tok.save_pretrained(out_dir)
    return len(tok)


def build_bart(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Tiny BART (learned positions, ``</s>`` as decoder start, tied ``lm_head``)."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = _train_bpe(out_dir)
    tok = BartTokenizer.from_pretrained(out_dir)
    torch.manual_seed(seed)
    config = BartConfig(
        vocab_size=vocab,
        d_model=_D_MODEL,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    )
    model = BartForConditionalGeneration(config).eval()
    model.save_pretrained(out_dir)
    return out_dir


def save_bert_tokenizer(out_dir: Path) -> int:
    """A tiny lower-cased WordPiece vocab: specials + every toy word + single characters."""
    from transformers import BertTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
    pieces += sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,"))
    pieces += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    (out_dir / "vocab.txt").write_text("\n".join(pieces) + "\n")
    tok = BertTokenizer(vocab=str(out_dir / "vocab.txt"))
    tok.save_pretrained(out_dir)
    return len(tok)


def build_bert_encoder(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A tiny BERT encoder checkpoint (stand-in for all-MiniLM-L6-v2) with its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    out_dir = Path(out_dir)
    vocab = save_bert_tokenizer(out_dir)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=_D_MODEL,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).eval().save_pretrained(out_dir)
    return out_dir


def build_bert2bert(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Tiny bert2bert ``EncoderDecoderModel`` warm-started from a tiny BERT encoder."""
    from transformers.utils import logging

    from npdecode.backbone import make_bert2bert

    logging.set_verbosity_error()  # warm-starting reports every new cross-attention weight
    out_dir = Path(out_dir)
    enc_dir = build_bert_encoder(out_dir.parent / f"{out_dir.name}-encoder", seed=seed)
    return make_bert2bert(enc_dir, out_dir, seed=seed)


BUILDERS = {
    "t5": lambda d: build_t5(d, gated=False, tied=True),
    "t5_gated": lambda d: build_t5(d, gated=True, tied=False),
    "bart": build_bart,
    "bert2bert": build_bert2bert,
}


# ---- merge inputs: every architecture family --------------------------------------------------

D, FF, LAYERS, HEADS = 16, 32, 2, 2
MERGE_FAMILIES = ("t5", "t5v11", "mt5", "bart", "bert2bert", "llama", "gpt2")


def words(n: int, prefix: str = "w") -> list[str]:
    """A word-level vocabulary: special tokens, then ``n`` words."""
    return ["<pad>", "</s>", "<unk>"] + [f"{prefix}{i}" for i in range(n)]


def random_model(family: str, vocab_size: int, layers: int = LAYERS):
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


def save_word_tokenizer(path: Path, vocab: list[str]) -> None:
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
    model = random_model(family, len(vocab), layers)
    path.mkdir(parents=True, exist_ok=True)
    if fmt == "bin":
        model.config.save_pretrained(str(path))
        torch.save(model.state_dict(), path / "pytorch_model.bin")  # tied names share one storage
    else:
        model.save_pretrained(str(path), max_shard_size="20KB" if fmt == "sharded" else "5GB")
    save_word_tokenizer(path, vocab)
    return path
