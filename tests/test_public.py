"""The public surface: ``__version__`` and ``jaxecg --version``, every ``__all__`` entry
importable, ``import jaxecg`` staying light, and a one-line ``repr`` for an Encoder."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxecg
from jaxecg.cli import main

PACKAGES = ["jaxecg", "convert", "jaxecg.models", "jaxecg.losses", "jaxecg.data"]


def test_version_is_the_installed_one_and_the_cli_prints_it(capsys) -> None:
    assert jaxecg.__version__ == importlib.metadata.version("jaxecg")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"jaxecg {jaxecg.__version__}\n"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_all_entry_imports(package: str) -> None:
    module = importlib.import_module(package)
    assert len(set(module.__all__)) == len(module.__all__), "no duplicates"
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert missing == []
    namespace: dict = {}
    exec(f"from {package} import *", namespace)  # noqa: S102 - what `import *` users get
    assert set(module.__all__) <= set(namespace)


def test_readme_entry_points_are_listed() -> None:
    assert {"load_encoder", "Encoder", "models", "data", "train", "viz"} <= set(jaxecg.__all__)
    assert {"load", "save", "restore", "export", "LoadReport"} <= set(
        importlib.import_module("convert").__all__
    )
    assert set(dir(jaxecg)) == {*jaxecg.__all__, "__version__"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        jaxecg.nope  # noqa: B018


def test_import_jaxecg_stays_light() -> None:
    code = "import sys, jaxecg; print(sorted({'jax', 'flax', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_encoder_repr_is_one_short_line() -> None:
    enc = jaxecg.load_encoder("pluto", kind="ecg", img_size=(1, 12, 100))
    count = sum(np.size(leaf) for leaf in jax.tree.leaves(enc.params["params"]))
    assert repr(enc) == (
        f"Encoder(kind='ecg', preset='pluto', feature_dim=256, "
        f"params={count / 1e6:.1f}M, source='pluto')"
    )
    custom = jaxecg.Encoder("ecg", enc.config.replace(depth=1), enc.params)
    assert repr(custom) == f"Encoder(kind='ecg', feature_dim=256, params={count / 1e6:.1f}M)"
