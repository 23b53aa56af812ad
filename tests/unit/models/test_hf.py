"""Hub names and TransformerLens names: each way of failing gets its own error, and no test touches
the network (offline mode is on; the other failures come from a stubbed huggingface_hub download
that transformers calls and wraps exactly as it wraps the real one)."""

from collections.abc import Callable
from pathlib import Path

import httpx2  # huggingface_hub 2.x builds its HTTP errors from httpx2 responses
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

import mechlab
from mechlab import HubGatedModelError, HubModelNotFoundError, HubUnreachableError, ModelNotFoundError
from mechlab.models.load import resolve_source


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty Hugging Face cache, so a model someone downloaded on this machine is not found."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def hub_download_raising(make_error: Callable[[str], Exception]) -> Callable[..., str]:
    def download(repo_id: str, *args: object, **kwargs: object) -> str:
        raise make_error(repo_id)

    return download


def http_error(kind: type[RepositoryNotFoundError], repo_id: str) -> RepositoryNotFoundError:
    url = f"https://huggingface.co/{repo_id}/resolve/main/config.json"
    status = 401 if kind is RepositoryNotFoundError else 403
    response = httpx2.Response(status, request=httpx2.Request("GET", url))
    return kind(f"{status} Client Error for url {url}", response=response)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[str], Exception]], None]:
    """Switch offline mode off and make every Hub download raise the given error."""
    import transformers.utils.hub

    def install(make_error: Callable[[str], Exception]) -> None:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", hub_download_raising(make_error))
        monkeypatch.setattr(transformers.utils.hub, "snapshot_download", hub_download_raising(make_error))

    return install


def test_transformer_lens_names_resolve_to_hub_names() -> None:
    assert resolve_source("gpt2-small") == ("hub", "gpt2")
    assert resolve_source("pythia-70m") == ("hub", "EleutherAI/pythia-70m")
    assert resolve_source("hf:GPT2-Small") == ("hub", "gpt2")
    assert resolve_source("some-org/some-model") == ("hub", "some-org/some-model")


def test_offline_alias_names_the_alias_and_the_hub_name(empty_hf_cache: None) -> None:
    with pytest.raises(
        HubUnreachableError,
        match=r"(?s)^'gpt2-small' \(TransformerLens' name for 'gpt2'\) is not a local path.*"
        r"offline mode is on \(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set\).*"
        r"hf download gpt2 --local-dir DIR.*GGUF file",
    ):
        mechlab.load_model("gpt2-small")


def test_offline_hub_name_says_so_and_suggests_a_path(empty_hf_cache: None) -> None:
    with pytest.raises(
        HubUnreachableError,
        match=r"(?s)^'some-org/not-cached' is not a local path.*offline mode is on.*local-dir",
    ):
        mechlab.load_model("hf:some-org/not-cached")


def test_unreachable_hub_says_so_and_names_the_cause(online, empty_hf_cache: None) -> None:
    def no_connection(repo_id: str) -> Exception:
        error = LocalEntryNotFoundError("cannot find the requested files in the local cache")
        error.__cause__ = ConnectionError("[Errno -3] Temporary failure in name resolution")
        return error

    online(no_connection)
    with pytest.raises(
        HubUnreachableError,
        match=r"(?s)asked the Hugging Face Hub for it, and the Hub could not be reached.*"
        r"Underlying error: ConnectionError: \[Errno -3\] Temporary failure",
    ):
        mechlab.load_model("some-org/some-model")


def test_unknown_repository_is_not_called_unreachable(online, empty_hf_cache: None) -> None:
    online(lambda repo_id: http_error(RepositoryNotFoundError, repo_id))
    with pytest.raises(
        HubModelNotFoundError, match=r"(?s)has no model 'some-org/typo-model'.*hf auth login"
    ) as info:
        mechlab.load_model("hf:some-org/typo-model")
    assert not isinstance(info.value, HubUnreachableError | HubGatedModelError)


def test_gated_repository_says_how_to_get_access(online, empty_hf_cache: None) -> None:
    online(lambda repo_id: http_error(GatedRepoError, repo_id))
    with pytest.raises(
        HubGatedModelError,
        match=r"(?s)'gpt2-small' \(TransformerLens' name for 'gpt2'\) is a gated model.*"
        r"https://huggingface.co/gpt2",
    ):
        mechlab.load_model("gpt2-small")


@pytest.mark.parametrize(
    "source", ["hf:./missing-dir", "./missing-dir", "hf:~/missing-dir", "a/b/missing-dir"]
)
def test_path_like_sources_never_ask_the_hub(source: str) -> None:
    with pytest.raises(
        ModelNotFoundError, match=r"looks like a path, and /\S*/missing-dir does not exist"
    ) as info:
        mechlab.load_model(source)
    assert not isinstance(info.value, HubUnreachableError)


def test_missing_absolute_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for source in (str(missing), f"hf:{missing}"):
        with pytest.raises(ModelNotFoundError, match=rf"(?s)looks like a path, and {missing} does not exist"):
            mechlab.load_model(source)
