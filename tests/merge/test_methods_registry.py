"""The method registry: every module registers itself, names are unique, plugins load."""

from __future__ import annotations

import pkgutil
from types import SimpleNamespace

import pytest
import torch

from npdecode.errors import NpdecodeError
from npdecode.merge import methods, registry
from npdecode.merge.registry import REQUIRED, MergeMethod, all_methods, get_method, register

REQUIRED_NAMES = {
    "linear", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties", "dare_ties",
    "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce", "model_stock",
    "nearswap", "arcee_fusion", "passthrough", "ram", "ramplus_tl",
}  # fmt: skip


def test_every_required_method_is_registered():
    assert REQUIRED_NAMES <= set(all_methods())


def test_every_method_module_registered_itself():
    modules = {
        f"{methods.__name__}.{m.name}" for m in pkgutil.iter_modules(methods.__path__) if not m.name.startswith("_")
    }
    registered_from = {m.module for m in all_methods().values()}
    assert modules <= registered_from, f"modules that registered nothing: {sorted(modules - registered_from)}"
    for m in all_methods().values():  # one method per module, named like it
        if m.module.startswith(methods.__name__):
            assert m.module.rsplit(".", 1)[1] == m.name


def test_registering_a_duplicate_name_raises():
    with pytest.raises(ValueError, match="registered twice"):
        register(MergeMethod(name="ties", func=lambda *a: None, module="somewhere.else"))
    assert get_method("ties").module == "npdecode.merge.methods.ties"


def test_unknown_method_is_a_one_line_error():
    with pytest.raises(NpdecodeError, match="unknown merge_method 'tiez'.*ties"):
        get_method("tiez")


@pytest.mark.parametrize(
    "name,expected_globals,expected_per_model",
    [
        ("linear", {"normalize": True}, {"weight": REQUIRED}),
        ("slerp", {"t": REQUIRED}, {}),
        ("task_arithmetic", {"normalize": False, "rescale": False, "lambda": 1.0, "int8_mask": False}, {}),
        ("ties", {"normalize": True, "rescale": False}, {"weight": REQUIRED, "density": 1.0}),
        ("dare_ties", {"normalize": False, "rescale": True}, {"density": 1.0}),
        ("dare_linear", {"normalize": False, "rescale": True}, {}),
        ("breadcrumbs", {"normalize": False, "rescale": False}, {"gamma": 0.01}),
        ("breadcrumbs_ties", {"normalize": False}, {"gamma": 0.01}),
        ("della", {"normalize": True, "rescale": True}, {"epsilon": 0.15}),
        ("della_linear", {"normalize": False, "rescale": True}, {"epsilon": 0.15}),
        ("nuslerp", {"nuslerp_flatten": True, "nuslerp_row_wise": False}, {"weight": REQUIRED}),
        ("multislerp", {"normalize_weights": True, "eps": 1e-8}, {"weight": REQUIRED}),
        ("karcher", {"max_iter": 10, "tol": 1e-5}, {}),
        ("sce", {"select_topk": 1.0, "int8_mask": False}, {}),
        ("model_stock", {"filter_wise": False}, {}),
        ("nearswap", {"t": REQUIRED}, {}),
        ("passthrough", {}, {"scale": None}),
        ("ram", {"epsilon": 1e-5}, {}),
        ("ramplus_tl", {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}, {}),
    ],
)
def test_parameter_names_and_defaults_follow_mergekit(name, expected_globals, expected_per_model):
    method = get_method(name)
    for key, default in expected_globals.items():
        assert method.global_params[key] is default or method.global_params[key] == default, key
    for key, default in expected_per_model.items():
        assert method.tensor_params[key] is default or method.tensor_params[key] == default, key


def test_random_and_base_flags():
    flags = {n: (m.uses_random, m.requires_base) for n, m in all_methods().items() if n in REQUIRED_NAMES}
    assert {n for n, (r, _) in flags.items() if r} == {"dare_ties", "dare_linear", "della", "della_linear"}
    assert not flags["linear"][1] and not flags["karcher"][1] and flags["ties"][1] and flags["slerp"][1]


def test_third_party_method_from_entry_point(monkeypatch):
    def merge_max(tensors, base, model_params, params, generator):
        return torch.stack(tensors).amax(dim=0) * params["gain"]

    plugin = MergeMethod(name="elementwise_max", func=merge_max, global_params={"gain": 1.0}, module="acme.merge")
    entry = SimpleNamespace(name="elementwise_max", load=lambda: plugin)
    seen_groups = []

    def fake_entry_points(group):
        seen_groups.append(group)
        return [entry]

    all_methods()  # builtins imported once; the registry below starts from them
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    method = get_method("elementwise_max")
    assert seen_groups == [registry.ENTRY_POINT_GROUP] == ["npdecode.merge_methods"]
    assert method is plugin and "ties" in all_methods()
    out = method.func([torch.tensor([1.0, 5.0]), torch.tensor([3.0, 2.0])], None, {}, {"gain": 2.0}, None)
    assert out.tolist() == [6.0, 10.0]


@pytest.mark.parametrize("payload, error", [("clash", ValueError), ("not-a-method", NpdecodeError)])
def test_bad_entry_point_plugins_are_refused(monkeypatch, payload, error):
    all_methods()
    clash = MergeMethod(name="ties", func=lambda *a: None, module="acme.merge")
    obj = clash if payload == "clash" else object()
    entry = SimpleNamespace(name="bad", value="acme.merge:bad", load=lambda: obj)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: [entry])
    with pytest.raises(error):
        get_method("linear")


def test_method_defaults_are_written_once_in_the_registry():
    """Methods read their parameters as filled by the engine (``params[name]``); a fallback
    default in the method body (``params.get(name, default)``) would be a second, possibly
    different, copy of the registry's default."""
    import re
    from pathlib import Path

    from npdecode.merge import methods

    offenders = [
        p.name
        for p in Path(methods.__path__[0]).glob("*.py")
        if re.search(r"\bparams\.get\(", p.read_text(encoding="utf-8"))
    ]
    assert not offenders, offenders
