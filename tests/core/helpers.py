"""Test helpers for the core: tiny Np models, random tries, a brute-force scorer, a fake decoder."""

from __future__ import annotations

import zlib

import torch

from npdecode.model import DecoderState, NpModel


def make_np_model(backbone, n_rows: int = 30, seed: int = 0, scale: float = 3.0) -> NpModel:
    """An Np model over a random CE table: rows 0/1 are start/EOS, others spread over a few tokens."""
    g = torch.Generator().manual_seed(seed)
    ce = torch.randn(n_rows, backbone.d_model, generator=g) * scale
    token_ids = torch.randint(5, 12, (n_rows,), generator=g)
    token_ids[0], token_ids[1] = backbone.decoder_start_token_id, backbone.eos_token_id
    return NpModel(backbone, ce, token_ids, start_ce_id=0, eos_ce_id=1)


def dict_trie(paths: list[list[int]]) -> dict:
    """The nested-dict trie of HF constrained decoding (``node[-1]`` = the path's index): what a
    ``prefix_allowed_tokens_fn`` walks, for comparisons with HF ``generate``."""
    root: dict = {}
    for i, p in enumerate(paths):
        node = root
        for t in p:
            node = node.setdefault(t, {})
        node[-1] = i
    return root


def random_sequences(n: int, vocab: int, eos: int, seed: int = 0, max_len: int = 3, lo: int = 2):
    """``n`` distinct random id sequences over ``[lo, vocab)`` (ids != eos), each ending with ``eos``."""
    g = torch.Generator().manual_seed(seed)
    seqs: list[list[int]] = []
    while len(seqs) < n:
        length = int(torch.randint(1, max_len + 1, (1,), generator=g))
        s = [t for t in torch.randint(lo, vocab, (length,), generator=g).tolist() if t != eos] + [eos]
        if len(s) > 1 and s not in seqs:
            seqs.append(s)
    return seqs


def exhaustive(model, query: str, seqs: list[list[int]], length_penalty: float = 0.0) -> list[tuple[int, float]]:
    """Teacher-forced score of every sequence (float64 sums), best first, ties by index.

    All sequences go through one batched forward; right padding cannot change earlier
    positions because the decoder is causal.
    """
    ids, mask = model.tokenize([query])
    width = max(map(len, seqs))
    dec = torch.tensor([[model.start_id] + s[:-1] + [model.start_id] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids.expand(len(seqs), -1), mask.expand(len(seqs), -1), dec).double(), -1)
    scores = []
    for i, s in enumerate(seqs):
        total = lp[i, torch.arange(len(s)), torch.tensor(s)].sum().item()
        scores.append((i, total / len(s) ** length_penalty if length_penalty else total))
    return sorted(scores, key=lambda x: (-x[1], x[0]))


class FakeModel:
    """A decoder with the model interface whose logits are a fixed random function of the last id.

    ``logits_fn`` may rewrite logits (e.g. to all -inf). Fast enough for property tests.
    """

    def __init__(self, vocab: int, seed: int = 0, logits_fn=None, start_id: int = 0, eos_id: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab, vocab, generator=g) * 2
        self.query_bias = torch.randn(97, vocab, generator=g)
        self.logits_fn = logits_fn
        self.start_id, self.eos_id, self.device = start_id, eos_id, torch.device("cpu")

    def tokenize(self, texts, max_length=64):
        # a stable hash: Python's hash() of a str changes from run to run (PYTHONHASHSEED)
        ids = torch.tensor([[zlib.crc32(t.encode()) % 97] for t in texts])
        return ids, torch.ones_like(ids)

    def encode(self, input_ids, attention_mask):
        return self.query_bias[input_ids[:, 0]][:, None, :], attention_mask

    def init_state(self, enc, mask):
        return DecoderState(enc, mask, None)

    def step(self, prev_ids, state):
        logits = self.table[prev_ids] + state.enc[:, 0]
        return (self.logits_fn(logits) if self.logits_fn else logits), state

    def reorder_state(self, state, rows, same_sources=False):
        return DecoderState(state.enc[rows], state.enc_mask[rows], None)

    def score(self, query: str, seq: list[int]) -> float:
        ids, mask = self.tokenize([query])
        enc, _ = self.encode(ids, mask)
        prev, total = self.start_id, 0.0
        for t in seq:
            total += torch.log_softmax((self.table[prev] + enc[0, 0]).double(), -1)[t].item()
            prev = t
        return total
