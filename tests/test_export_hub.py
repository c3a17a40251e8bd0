"""``ndkd export --push-to-hub``: the export folder goes to the model repo (HfApi recorded, no
network); no library, no token or no network is one line naming the repo, exit 2, and the
local export stays written. The model card carries the Hub's YAML header."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from helpers import train_digits_ce_run
from ndkd.cli import main

REPO = "someone/ndkd-digits-resnet8"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A one-epoch resnet8 CE run on digits."""
    return train_digits_ce_run(tmp_path_factory.mktemp("export-hub"))


@pytest.fixture
def no_login(tmp_path, monkeypatch):
    """No token anywhere huggingface_hub looks, offline mode on: nothing can reach the Hub."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    if "huggingface_hub" in sys.modules:  # its constants were read at import
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
        monkeypatch.setattr(
            constants,
            "HF_STORED_TOKENS_PATH",
            str(tmp_path / "hf-home" / "stored_tokens"),
            raising=False,
        )


def _export_args(run_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["export", str(run_dir), "--format", "safetensors", "-o", str(out), *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def _assert_exported(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.yaml",
        "model.safetensors",
    ]


def test_model_card_has_the_hubs_front_matter(run_dir, tmp_path):
    out = tmp_path / "out"
    assert main(_export_args(run_dir, out)) == 0
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    header = yaml.safe_load(card.split("---\n", 2)[1])
    assert header["library_name"] == "ndkd"
    assert header["tags"][0] == "knowledge-distillation" and "safetensors" in header["tags"]
    assert header["pipeline_tag"] == "image-classification"
    assert "\n# digits/ce/resnet8: resnet8 student\n" in card


def test_push_creates_the_repo_and_uploads_the_export_folder(
    run_dir, tmp_path, monkeypatch, capsys
):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, "token": self.token, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        calls.append(
            ("upload_folder", {**kwargs, "files": sorted(p.name for p in folder.iterdir())})
        )
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    out = tmp_path / "out"
    assert main(_export_args(run_dir, out, "--push-to-hub", REPO, "--private")) == 0
    assert [name for name, _ in calls] == ["create_repo", "upload_folder"]
    created, uploaded = calls[0][1], calls[1][1]
    assert created["repo_id"] == REPO and created["repo_type"] == "model"
    assert created["exist_ok"] is True and created["private"] is True
    assert created["token"] == "hf_not_a_real_token"
    assert uploaded["repo_id"] == REPO and uploaded["repo_type"] == "model"
    assert Path(uploaded["folder_path"]) == out
    assert uploaded["files"] == ["README.md", "config.yaml", "model.safetensors"]
    stdout = capsys.readouterr().out
    assert "check passed" in stdout and f"pushed {out} to https://huggingface.co/{REPO}" in stdout


def test_push_without_a_token_is_one_line_and_the_export_stays(run_dir, tmp_path, no_login, capsys):
    pytest.importorskip("huggingface_hub")
    out = tmp_path / "out"
    assert main(_export_args(run_dir, out, "--push-to-hub", REPO)) == 2
    line = _one_error_line(capsys)
    assert line.startswith("ndkd export: error: --push-to-hub " + REPO)
    assert "no Hugging Face token" in line and "HF_TOKEN" in line
    _assert_exported(out)


def test_push_offline_is_one_line_and_the_export_stays(
    run_dir, tmp_path, no_login, monkeypatch, capsys
):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    out = tmp_path / "out"
    assert main(_export_args(run_dir, out, "--push-to-hub", REPO)) == 2
    line = _one_error_line(capsys)
    assert REPO in line and "push failed (OfflineModeIsEnabled" in line
    assert f"the export stays written at {out}" in line
    _assert_exported(out)


def test_push_without_a_network_is_one_line(run_dir, tmp_path, monkeypatch, capsys):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'\n(more detail)")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    out = tmp_path / "out"
    assert main(_export_args(run_dir, out, "--push-to-hub", REPO)) == 2
    line = _one_error_line(capsys)
    assert REPO in line and "ConnectionError: Failed to resolve 'huggingface.co')" in line
    _assert_exported(out)


def test_push_without_huggingface_hub_says_install_the_extra(
    run_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    out = tmp_path / "out"
    assert main(_export_args(run_dir, out, "--push-to-hub", REPO)) == 2
    line = _one_error_line(capsys)
    assert REPO in line and "pip install 'ndkd[hub]'" in line
    _assert_exported(out)


def test_private_without_push_is_refused_before_exporting(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_export_args(run_dir, out, "--private")) == 2
    assert "--private applies to --push-to-hub" in _one_error_line(capsys)
    assert not out.exists()
