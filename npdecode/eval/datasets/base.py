"""What every dataset loader returns: the corpus location, queries and qrels of one split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from npdecode.topics import Qrels


@dataclass
class Dataset:
    """One split of a retrieval dataset, in the BEIR data contract.

    ``corpus_path`` is read lazily with :func:`npdecode.corpus.iter_corpus` (streamed);
    ``queries`` holds only the queries of the split; ``primary`` lists the metric keys that
    the dataset's literature reports (shown first in tables).
    """

    name: str
    split: str
    corpus_path: Path
    queries: dict[str, str]
    qrels: Qrels
    primary: tuple[str, ...] = ("ndcg_cut_10", "recall_100")
    ignore_identical_ids: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        """The name shown in plot and table titles: a folder dataset's folder name (``name`` is
        its path), a registry name as it is."""
        return Path(self.name).name if self.name == str(self.corpus_path.parent) else self.name
