"""The device mesh (topology order made process-major), data preparation by process 0 with the
others meeting it at a collective, and workdir paths that need not be local files."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from kinpose_jax import parallel
from kinpose_jax.data import DataError, setup
from tests.tiny_problem import tiny_config


def test_mesh_spans_every_device_once_in_process_major_order():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == (parallel.DATA_AXIS,)
    assert mesh.axis_types == (AxisType.Auto,)
    devices = list(mesh.devices.flat)
    assert len(devices) == jax.device_count() == 4  # tests/conftest.py
    assert sorted(d.id for d in devices) == sorted(d.id for d in jax.devices())
    processes = [d.process_index for d in devices]
    assert processes == sorted(processes)


def test_process_major_keeps_each_process_topology_order():
    fake = [SimpleNamespace(process_index=p, id=i) for p, i in [(1, 6), (0, 3), (1, 4), (0, 0), (0, 2), (1, 5)]]
    got = parallel.process_major(np.asarray(fake, dtype=object))
    assert [(d.process_index, d.id) for d in got] == [(0, 3), (0, 0), (0, 2), (1, 6), (1, 4), (1, 5)]


def test_a_process_that_does_not_see_the_prepared_data_names_the_missing_file(tmp_path):
    config = tiny_config(str(tmp_path / "nothing"))
    with pytest.raises(DataError, match=r"process 1: .*hm36_train/dataset_info\.json.* every process sees"):
        setup.ensure_dataset(config, train=True, process_index=1)  # prepares nothing: not process 0


def test_other_processes_raise_when_process_0_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "_process0_failed", lambda failed: True)  # process 0's broadcast status
    with pytest.raises(DataError, match="process 1: process 0 failed to prepare the data"):
        setup.ensure_dataset(tiny_config(str(tmp_path)), train=True, process_index=1)


def test_process_0_reports_its_own_preparation_error(tmp_path):
    config = tiny_config(str(tmp_path / "missing"), data__synthetic=False)
    with pytest.raises(DataError, match="found neither a cache"):
        setup.ensure_dataset(config, train=True, process_index=0, log=lambda *a: None)


def test_prepared_data_passes_the_check_on_every_process(data_root):
    for process_index in (0, 1):
        setup.ensure_dataset(tiny_config(data_root), train=True, process_index=process_index, log=lambda *a: None)
