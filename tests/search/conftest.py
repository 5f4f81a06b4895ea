"""The search stage's tests use the evaluation harness's toy BEIR folder and tiny BERT encoder."""

from tests.eval.conftest import beir_dir, tiny_bert_dir  # noqa: F401
