"""Validation by retrieval: decode queries with the real constrained decoder, score the run.

The same function serves the validation loop (per batch of query ids), the run's final
memorisation check and any caller that wants metrics of a model over an index's trie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from npdecode.search.options import SearchOptions

VAL_METRICS = ("ndcg_cut_10", "success_1", "Rprec")


class Validator:
    """``validator(model, qids) -> {metric: per-query values}`` for held-out ``queries``.

    ``trie`` is the run index's trie in the model's id space (CE ids for Np, token ids for
    vanilla); ``group_docs[g]`` lists the documents of trie value ``g``.
    """

    def __init__(
        self,
        trie: Any,
        group_docs: Sequence[Sequence[str]],
        queries: Mapping[str, str],
        qrels: Mapping[str, Mapping[str, int]],
        *,
        beam: int = 10,
        k: int = 10,
    ):
        self.trie, self.group_docs = trie, [list(d) for d in group_docs]
        self.queries, self.qrels = dict(queries), {q: dict(r) for q, r in qrels.items()}
        self.beam, self.k = beam, k
        # decoded as `npdecode search` decodes by default, so the selected epoch is the one search sees
        self.length_penalty = SearchOptions().length_penalty

    def run(self, model: Any, qids: Sequence[str]) -> dict[str, dict[str, float]]:
        """Top-``k`` documents per query (an identifier's documents share its score)."""
        from npdecode.decoding import search

        hits = search(
            model,
            self.trie,
            [self.queries[q] for q in qids],
            k=self.k,
            beam=self.beam,
            length_penalty=self.length_penalty,
        )
        run: dict[str, dict[str, float]] = {}
        for qid, ranked in zip(qids, hits):
            docs: dict[str, float] = {}
            for group, score in ranked:
                for doc_id in self.group_docs[group]:
                    if len(docs) < self.k:
                        docs.setdefault(doc_id, max(-1e30, score))
            run[qid] = docs
        return run

    def __call__(self, model: Any, qids: Sequence[str]) -> dict[str, list[float]]:
        from npdecode.eval.metrics import evaluate

        qids = list(qids)
        run = self.run(model, qids)
        evaluation = evaluate(
            {q: self.qrels[q] for q in qids},
            run,
            queries=qids,
            measures=("ndcg_cut.10", "success.1", "Rprec"),
            mrr_cutoffs=(),
        )
        return {m: [evaluation.per_query.get(q, {}).get(m, 0.0) for q in qids] for m in VAL_METRICS}

    def mean(self, model: Any, batch_size: int = 64) -> dict[str, float]:
        """Mean metrics over all queries (batched), on whatever device the model is."""
        import torch

        totals = dict.fromkeys(VAL_METRICS, 0.0)
        qids = sorted(self.queries)
        with torch.inference_mode():
            for lo in range(0, len(qids), batch_size):
                for metric, values in self(model, qids[lo : lo + batch_size]).items():
                    totals[metric] += sum(values)
        return {m: v / max(1, len(qids)) for m, v in totals.items()}


def memorisation(model: Any, index: Any, corpus: Mapping[str, Mapping[str, str]], config: Any, n: int = 200) -> float:
    """Hits@1 of decoding ``n`` documents' own indexing inputs (seeded sample): how much of the
    corpus the model has memorised."""
    import random

    from npdecode.train.examples import index_input
    from npdecode.trie import Trie

    doc_ids = sorted(d for g in range(len(index.groups)) for d in index.live_doc_ids(g))
    random.Random(config.trainer.seed + 2).shuffle(doc_ids)
    picked = doc_ids[:n]
    queries = {d: index_input(corpus[d], config.data) for d in picked}
    qrels = {d: {d: 1} for d in picked}
    mode = "token" if config.model.variant == "vanilla" else "ce"
    validator = Validator(
        Trie.load(index.trie_path(mode)),
        [index.live_doc_ids(g) for g in range(len(index.groups))],
        queries,
        qrels,
        beam=config.validation.beam,
    )
    return validator.mean(model)["success_1"]
