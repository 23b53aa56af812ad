"""What a remote executor needs, checked without one: a model is known by the spec it was loaded
from, a changed model gets a new fingerprint, and the Ray executor's options and missing package are
refused with the fix."""

import copy
import sys

import pytest
import torch

import mechlab
from mechlab.executors.ray import Ray
from mechlab.models.spec import ModelSpec, fingerprint, spec_known, spec_of
from mechlab.models.stand_in import StandIn, load_spec


def test_load_model_records_the_spec_that_loads_the_same_model_again() -> None:
    loaded = mechlab.load_model("toy:tiny", dtype=torch.float32)
    spec = spec_of(loaded.model)
    assert spec == ModelSpec("toy:tiny", "cpu", "float32", None)
    again = load_spec(spec)
    assert again is load_spec(spec)  # once per process
    assert again is not loaded.model and fingerprint(again) == fingerprint(loaded.model)
    assert StandIn(spec, fingerprint(loaded.model)).resolve() is again


def test_a_changed_or_unrecorded_model_is_told_apart() -> None:
    model = mechlab.load_model("toy:tiny").model
    before = fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).mul_(2)
    assert fingerprint(model) != before
    with pytest.raises(mechlab.InputError, match="has other weights than the driver's model"):
        StandIn(spec_of(model), fingerprint(model)).resolve()  # loads the unchanged weights
    copied = copy.deepcopy(model)
    assert spec_known(model) and not spec_known(copied) and not spec_known([1])
    with pytest.raises(mechlab.InputError, match=r"not returned by mechlab\.load_model, so the ray executor"):
        spec_of(copied, "the ray executor")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"address": "localhost:6379"},
            r"address='localhost:6379': expected None .* 'auto' .* 'ray://HOST:PORT'",
        ),
        ({"num_workers": 0}, "num_workers must be at least 1, got 0"),
        ({"num_cpus_per_task": 0.0}, "each task must reserve some CPU or GPU"),
        ({"max_retries": -1}, "max_retries must be ≥ 0"),
    ],
)
def test_bad_ray_options_are_refused_before_ray_starts(options: dict, message: str) -> None:
    with pytest.raises(mechlab.InputError, match=message):
        Ray(**options)


def test_without_the_ray_package_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(mechlab.InputError, match=r"pip install 'mechlab\[ray\]'"):
        Ray().map(abs, [1])
