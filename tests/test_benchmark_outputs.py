"""Running a benchmark does not rewrite the published numbers under benchmarks/results/ (tracked
in git) unless asked to with --out."""

import argparse
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("name", ["core_ops", "input_pipeline", "train_step"])
def test_benchmarks_write_outside_the_tracked_results_by_default(name, monkeypatch):
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, [], namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [name])
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(_Parsed) as parsed:
        module.main()
    out = os.path.abspath(os.path.join(ROOT, parsed.value.args[0].out))
    assert os.path.commonpath([out, os.path.join(ROOT, "benchmarks", "results")]) != os.path.join(
        ROOT, "benchmarks", "results"), out
    assert out == os.path.join(ROOT, "benchmarks", "runs", f"{name}.json")
