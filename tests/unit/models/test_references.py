"""Choosing a verification reference: unknown names and a missing llama-cpp-python are clear errors."""

import pytest

import mechlab
from mechlab.models.references import llamacpp


def test_an_unknown_reference_is_refused() -> None:
    with pytest.raises(mechlab.InputError, match="Unknown reference 'ollama'"):
        mechlab.verify("toy:tiny", reference="ollama")


def test_without_llama_cpp_python_the_error_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setattr(llamacpp, "available", lambda: None)
    with pytest.raises(mechlab.InputError, match=r"make install-llamacpp.*--reference transformers"):
        mechlab.verify("toy:tiny", reference="llamacpp")
