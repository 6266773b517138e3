"""The user's environment: the Keras backend setting, missing packages, newer Keras files.

* ``KERAS_BACKEND`` (or ``keras.json``) naming another backend: the CLI owns its process
  and runs Keras on TensorFlow with one note on stderr; its numbers are checked against a
  ``tf.GradientTape`` over ``model.compute_loss`` in this (TensorFlow) process.  A Python
  caller gets one :class:`UsageError` naming the fix, and Keras is not imported.  Keras
  reads the backend once, at import, so these run in real subprocesses.
* A model whose classes come from a package that is not installed: one line naming the
  class, its module and the ``pip install``, never the serialized config.
* A file saved by a newer Keras: a load failure names both versions; a load that works
  gets a note.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import types
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import error_line, invoke
from conftest import REPO, SAMPLE_MODELS

from gradscope import _tf
from gradscope.errors import ExitCode, ModelLoadError, UsageError
from gradscope.loading.models import load_model

MLP = SAMPLE_MODELS / "mlp.keras"
MLP_DATA = SAMPLE_MODELS / "mlp.npz"
H5 = SAMPLE_MODELS / "regression_keras3.h5"
FIX = "set KERAS_BACKEND=tensorflow before importing keras"
MAX_LINE = 300
NEWER = "3.99.0"


# -- helpers -------------------------------------------------------------------------------


def keras_home(tmp_path: Path, backend: str = "tensorflow") -> Path:
    """A ``KERAS_HOME`` folder whose ``keras.json`` names ``backend``."""
    home = tmp_path / "keras_home"
    home.mkdir(exist_ok=True)
    (home / "keras.json").write_text(json.dumps({"backend": backend}))
    return home


def subprocess_env(home: Path, backend: str | None) -> dict[str, str]:
    """This environment, with this worktree first on the path, ``KERAS_HOME=home`` and
    ``KERAS_BACKEND=backend`` (unset when ``None``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["KERAS_HOME"] = str(home)
    env.pop("KERAS_BACKEND", None)
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    return env


def run_python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def rewrite_archive(
    source: Path,
    target: Path,
    edit_config: Callable[[dict[str, Any]], None] | None = None,
    keras_version: str | None = None,
) -> Path:
    """A copy of a ``.keras`` archive with its ``config.json`` or ``metadata.json`` edited."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = old.read(name)
            if name == "config.json" and edit_config is not None:
                config = json.loads(data)
                edit_config(config)
                data = json.dumps(config).encode()
            if name == "metadata.json" and keras_version is not None:
                data = json.dumps({**json.loads(data), "keras_version": keras_version}).encode()
            new.writestr(name, data)
    return target


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def first_dense(config: dict[str, Any]) -> dict[str, Any]:
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")


def replace_dense(module: str, class_name: str, registered: str | None) -> Callable[..., None]:
    """Make the first ``Dense`` of the config a class ``class_name`` from ``module``."""

    def edit(config: dict[str, Any]) -> None:
        layer = first_dense(config)
        layer.update(module=module, class_name=class_name, registered_name=registered)

    return edit


def add_dense_argument(config: dict[str, Any]) -> None:
    """What a newer Keras might write: an argument this Keras's ``Dense`` does not take."""
    first_dense(config)["config"]["new_argument"] = 3


def reference_loss_and_norm() -> tuple[float, float]:
    """The mlp sample's compiled loss and global gradient norm, from one eager tape."""
    tf, keras = _tf.tensorflow(), _tf.keras()
    model = keras.saving.load_model(MLP)
    data = np.load(MLP_DATA)
    x, y = data["x"].astype(np.float32), data["y"]
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=False)
    grads = tape.gradient(loss, model.trainable_variables)
    norm = np.sqrt(sum(np.sum(np.square(g.numpy().astype(np.float64))) for g in grads))
    return float(loss), float(norm)


# -- where Keras takes its backend from ------------------------------------------------------


def test_the_backend_setting_is_read_as_keras_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = keras_home(tmp_path, "jax")
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    path = str(home / "keras.json")
    assert _tf.configured_backend() == _tf.BackendSetting("jax", path)
    monkeypatch.setenv("KERAS_BACKEND", "")  # an empty variable is ignored, as Keras does
    assert _tf.configured_backend() == _tf.BackendSetting("jax", path)
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # the variable wins over keras.json
    assert _tf.configured_backend() == _tf.BackendSetting("torch", "KERAS_BACKEND")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert _tf.configured_backend() is None
    monkeypatch.delenv("KERAS_BACKEND")
    (home / "keras.json").write_text("{not json")  # Keras reads an invalid file as {}
    assert _tf.configured_backend() is None
    (home / "keras.json").unlink()
    assert _tf.configured_backend() is None


def test_a_keras_imported_on_another_backend_is_one_clear_error(
    keras: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Keras imported in this process runs on TensorFlow: a later KERAS_BACKEND
    # changes nothing and is not an error.
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    _tf.check_backend()
    jax_keras = types.SimpleNamespace(config=types.SimpleNamespace(backend=lambda: "jax"))
    monkeypatch.setitem(sys.modules, "keras", jax_keras)
    with pytest.raises(UsageError) as raised:
        _tf.check_backend()
    message = str(raised.value)
    assert FIX in message
    assert "Received: keras.config.backend()='jax'" in message
    assert "\n" not in message
    assert len(message) < MAX_LINE


@pytest.mark.slow
def test_the_python_api_refuses_another_backend_before_importing_keras(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, sys, gradscope
        try:
            gradscope.inspect_file(sys.argv[1])
        except gradscope.errors.UsageError as exc:
            print(exc)
        print("keras" in sys.modules, os.environ.get("KERAS_BACKEND"))
        """
    )
    env = subprocess_env(keras_home(tmp_path, "jax"), backend=None)
    proc = run_python(["-c", script, str(MLP)], env)
    assert proc.returncode == 0, proc.stderr
    message, imported = proc.stdout.splitlines()
    keras_json = tmp_path / "keras_home" / "keras.json"
    assert message.startswith(f'"backend": "jax" in {keras_json} selects the \'jax\' backend')
    assert FIX in message
    assert len(message) < MAX_LINE
    # Keras was not imported, and the caller's environment is left as it was
    assert imported == "False None"


@pytest.mark.slow
def test_the_python_api_names_the_fix_when_keras_runs_on_jax(tmp_path: Path) -> None:
    pytest.importorskip("jax")
    script = textwrap.dedent(
        """
        import sys, keras, gradscope
        try:
            gradscope.inspect_file(sys.argv[1])
        except gradscope.errors.UsageError as exc:
            print(exc)
        """
    )
    proc = run_python(["-c", script, str(MLP)], subprocess_env(keras_home(tmp_path), "jax"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Keras was already imported with the 'jax' backend")
    assert FIX in proc.stdout
    assert len(proc.stdout.strip()) < MAX_LINE


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "keras_json", "quiet", "note"),
    [
        ("jax", "tensorflow", False, "KERAS_BACKEND=jax ignored"),
        ("garbage", "tensorflow", False, "KERAS_BACKEND=garbage ignored"),
        ("torch", "tensorflow", True, None),
        (None, "jax", False, '"backend": "jax" in {keras_json} ignored'),
    ],
    ids=["jax", "garbage", "torch-quiet", "keras-json"],
)
def test_the_cli_runs_on_tensorflow_whatever_the_backend_setting(
    variable: str | None, keras_json: str, quiet: bool, note: str | None, tmp_path: Path
) -> None:
    home = keras_home(tmp_path, keras_json)
    args = ["-m", "gradscope", "inspect", str(MLP), "-d", str(MLP_DATA), "--format", "json"]
    proc = run_python(args + ["--quiet"] * quiet, subprocess_env(home, variable))
    assert proc.returncode == 0, proc.stderr
    if note is None:
        assert proc.stderr == ""
    else:
        expected = note.format(keras_json=home / "keras.json")
        assert proc.stderr == f"gradscope: {expected}; gradscope runs Keras on TensorFlow\n"
    report = json.loads(proc.stdout)
    loss, norm = reference_loss_and_norm()
    assert report["loss"]["value"] == pytest.approx(loss, rel=1e-5)
    assert report["global_grad_norm"] == pytest.approx(norm, rel=1e-5)


@pytest.mark.parametrize("command", ["inspect", "hessian", "check"])
def test_every_model_command_sets_the_backend_and_notes_it_first(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # In-process, Keras is already imported; what is checked is that each command asks
    # for TensorFlow before it loads anything (here: a missing file), with the note
    # unless --quiet.
    calls: list[str] = []

    def use_tensorflow_backend() -> str:
        calls.append(command)
        return "KERAS_BACKEND=jax ignored; gradscope runs Keras on TensorFlow"

    monkeypatch.setattr(_tf, "use_tensorflow_backend", use_tensorflow_backend)
    missing = tmp_path / "missing.keras"
    loud, quiet = invoke(command, missing), invoke(command, missing, "--quiet")
    assert (loud.exit_code, quiet.exit_code) == (ExitCode.MODEL, ExitCode.MODEL)
    error = f"gradscope: error: {missing}: no such file"
    assert loud.stderr.splitlines()[0] == (
        "gradscope: KERAS_BACKEND=jax ignored; gradscope runs Keras on TensorFlow"
    )
    assert loud.stderr.splitlines()[1].startswith(error)
    assert quiet.stderr.startswith(error)
    assert calls == [command, command]


# -- the caller's warning filters ---------------------------------------------------------

_FILTERS = "import warnings\nprint(repr([str(f) for f in warnings.filters]))\n"

_GRADSCOPE_RUN = """
import warnings
import numpy as np
import gradscope
from gradscope import _tf

_tf.keras()  # the first use of TensorFlow imports it
print(repr([str(f) for f in warnings.filters]))
keras = _tf.keras()
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
model.compile(loss="mse")
x = np.ones((4, 3), np.float32)
gradscope.inspect(model, x, np.zeros((4, 2), np.float32))
print(repr([str(f) for f in warnings.filters]))
warnings.warn("the caller's own deprecation", DeprecationWarning)
"""


@pytest.mark.slow
def test_gradscope_leaves_the_callers_warning_filters_alone(tmp_path: Path) -> None:
    # A plain `import keras, tensorflow` (the order gradscope imports them in) is the
    # reference: the filters the libraries install themselves are theirs.
    env = subprocess_env(keras_home(tmp_path), "tensorflow")
    env.pop("PYTHONWARNINGS", None)
    plain = run_python(["-c", "import keras, tensorflow\n" + _FILTERS], env)
    assert plain.returncode == 0, plain.stderr
    proc = run_python(["-c", _GRADSCOPE_RUN], env)
    assert proc.returncode == 0, proc.stderr
    after_import, after_inspect = proc.stdout.splitlines()
    assert after_import == after_inspect == plain.stdout.strip()
    # Python shows a DeprecationWarning raised from __main__ by default: still so.
    assert "DeprecationWarning: the caller's own deprecation" in proc.stderr


# -- classes from packages that are not installed ----------------------------------------------


def test_a_class_from_an_uninstalled_package_names_it(tmp_path: Path) -> None:
    edit = replace_dense("not_a_pkg.layers", "Thing", "not_a_pkg>Thing")
    model = rewrite_archive(MLP, tmp_path / "model.keras", edit)
    message = error_line(["inspect", model], ExitCode.MODEL)
    assert message == (
        f"{model}: class 'not_a_pkg>Thing' from module not_a_pkg.layers is not available: "
        "not_a_pkg is not installed; install not_a_pkg (pip install not_a_pkg), or pass the "
        "Python file that defines it with --custom-objects FILE.py."
    )


def test_a_keras_family_package_maps_to_its_pip_name(tmp_path: Path) -> None:
    if _installed("keras_cv"):
        pytest.skip("keras_cv is installed")
    edit = replace_dense("keras_cv.src.models.thing", "Thing", "keras_cv>Thing")
    model = rewrite_archive(MLP, tmp_path / "model.keras", edit)
    message = error_line(["inspect", model], ExitCode.MODEL)
    assert message == (
        f"{model}: class 'keras_cv>Thing' from module keras_cv.src.models.thing is not "
        "available: keras_cv is not installed; install keras-cv (pip install keras-cv)."
    )


def test_a_class_the_installed_package_lacks_asks_for_a_newer_one(tmp_path: Path) -> None:
    pytest.importorskip("keras_hub")
    version = importlib.metadata.version("keras-hub")
    edit = replace_dense("keras_hub.src.models.not_a_model", "NotAModel", "keras_hub>NotAModel")
    model = rewrite_archive(MLP, tmp_path / "model.keras", edit)
    message = error_line(["inspect", model], ExitCode.MODEL)
    assert message == (
        f"{model}: class 'keras_hub>NotAModel' from module keras_hub.src.models.not_a_model is "
        f"not available: the installed keras-hub {version} does not provide it; the file may "
        "need a newer version (pip install -U keras-hub)."
    )


def test_a_missing_dependency_of_the_package_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A keras_cv stand-in that is installed but imports a module that is not.
    if _installed("keras_cv"):
        pytest.skip("keras_cv is installed")
    package = tmp_path / "site" / "keras_cv"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import not_a_dependency\n")
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.delitem(sys.modules, "keras_cv", raising=False)
    edit = replace_dense("keras_cv.layers", "Thing", "keras_cv>Thing")
    model = rewrite_archive(MLP, tmp_path / "model.keras", edit)
    message = error_line(["inspect", model], ExitCode.MODEL)
    assert message == (
        f"{model}: class 'keras_cv>Thing' from module keras_cv.layers is not available: "
        "importing it needs module 'not_a_dependency', which is not installed; install "
        "not_a_dependency (pip install not_a_dependency)."
    )


_BLOCKED_RUN = """
import sys

class Blocker:
    '''Makes `import keras_hub` fail, as on a machine without keras_hub.'''

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "keras_hub":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
from gradscope.cli import main
sys.argv = ["gradscope", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_keras_hub_model_without_keras_hub_is_one_short_line(tmp_path: Path) -> None:
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=30,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=12,
    )
    classifier = keras_hub.models.BertTextClassifier(backbone, num_classes=3, preprocessor=None)
    model = tmp_path / "bert.keras"
    classifier.save(model)
    assert len(zipfile.ZipFile(model).read("config.json")) > 1000  # what used to be printed
    env = subprocess_env(keras_home(tmp_path), "tensorflow")
    proc = run_python(["-c", _BLOCKED_RUN, "inspect", str(model)], env)
    assert proc.returncode == ExitCode.MODEL, proc.stderr
    assert proc.stderr == (
        f"gradscope: error: {model}: class 'keras_hub>BertTextClassifier' from module "
        "keras_hub.src.models.bert.bert_text_classifier is not available: keras_hub is not "
        "installed; install keras-hub (pip install keras-hub).\n"
    )
    assert len(proc.stderr) - len(str(model)) < MAX_LINE


def test_a_keras_message_quoting_the_whole_config_is_cut_short(tmp_path: Path) -> None:
    # Keras refuses a registered name on a built-in class and appends the full config.
    edit = replace_dense("keras.layers", "Dense", "mine>Dense")
    model = rewrite_archive(MLP, tmp_path / "model.keras", edit)
    message = error_line(["inspect", model], ExitCode.MODEL)
    assert message.startswith(f"{model}: cannot load the model: `registered_name='mine>Dense'`")
    assert "Full object config" not in message
    assert "'units'" not in message
    assert len(message) - len(str(model)) < MAX_LINE


# -- files saved by a newer Keras ----------------------------------------------------------


def test_a_newer_keras_archive_that_fails_names_both_versions(tmp_path: Path, keras: Any) -> None:
    model = rewrite_archive(MLP, tmp_path / "model.keras", add_dense_argument, NEWER)
    message = error_line(["inspect", model], ExitCode.MODEL)
    assert message == (
        f"{model}: cannot load the model, saved by Keras {NEWER}, newer than the installed "
        f"Keras {keras.__version__} (pip install -U keras): Unrecognized keyword arguments "
        "passed to Dense: {'new_argument': 3}"
    )


def test_a_newer_keras_class_is_a_version_error_not_a_custom_object(
    tmp_path: Path, keras: Any
) -> None:
    edit = replace_dense("keras.layers", "DenseFromTheFuture", None)
    model = rewrite_archive(MLP, tmp_path / "model.keras", edit, NEWER)
    message = error_line(["inspect", model], ExitCode.MODEL)
    assert message.startswith(
        f"{model}: cannot load the model, saved by Keras {NEWER}, newer than the installed "
        f"Keras {keras.__version__} (pip install -U keras): "
    )
    assert "DenseFromTheFuture" in message
    assert len(message) < MAX_LINE
    assert "--custom-objects" not in message


def test_a_newer_keras_h5_that_fails_names_both_versions(tmp_path: Path, keras: Any) -> None:
    import h5py

    model = tmp_path / "model.h5"
    model.write_bytes(H5.read_bytes())
    with h5py.File(model, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        first_dense(config)["config"]["new_argument"] = 3
        handle.attrs["model_config"] = json.dumps(config)
        handle.attrs["keras_version"] = NEWER
    with pytest.raises(ModelLoadError) as raised:
        load_model(model)
    message = str(raised.value)
    assert message.startswith(
        f"{model}: cannot load the model, saved by Keras {NEWER}, newer than the installed "
        f"Keras {keras.__version__} (pip install -U keras): "
    )
    assert "new_argument" in message
    assert len(message) < MAX_LINE + len(str(model))


def test_a_newer_keras_file_that_loads_gets_a_note(tmp_path: Path, keras: Any) -> None:
    model = rewrite_archive(MLP, tmp_path / "model.keras", keras_version=NEWER)
    assert load_model(model).notes == (
        f"saved by Keras {NEWER}, newer than the installed Keras {keras.__version__}; it "
        f"loaded, and its layers run as Keras {keras.__version__} defines them",
    )
    same = rewrite_archive(MLP, tmp_path / "same.keras", keras_version=keras.__version__)
    assert load_model(same).notes == ()
