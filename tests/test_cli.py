"""``droppath-surgery inspect``: builds models by name, prints sites with a schedule's rates, changes
nothing, draws the schedule, and reports every error in one line with a non-zero exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm

from droppath_surgery import find_residual_branches
from droppath_surgery.cli import main, parse_model_args, parse_spec

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^(?:\d+\s+)??(\d+)\s+(\d+)\s+([0-9.]+)\s+(replace|hook)\s+\S+\s+(\d+)\s+\S+\s+(\S+)$")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table(out: str) -> list[tuple[int, int, float, str, str]]:
    """(block, branch, rate, kind, path) of every site row the command printed."""
    rows = []
    for line in out.splitlines():
        m = ROW.match(line.strip())
        if m:
            rows.append((int(m[1]), int(m[2]), float(m[3]), m[4], m[6]))
    return rows


def python(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=timeout)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("droppath-surgery: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- what inspect prints -----------------------------------------------------------------------------


def test_timm_sites_and_linear_rates_are_those_of_find_residual_branches(capsys):
    code, out, err = run_cli(capsys, "inspect", "timm:test_vit", "--rate", "0.2")
    assert code == 0, err
    rows = table(out)
    model = timm.create_model("test_vit", pretrained=False)
    report = find_residual_branches(model, rate=0.2)
    assert [(s.block, s.branch, s.kind, s.path) for s in report.sites] == [(b, i, k, p) for b, i, _, k, p in rows]
    assert [r for _, _, r, _, _ in rows] == pytest.approx([s.rate for s in report.sites], abs=1e-4)
    n = report.num_blocks
    assert {b: r for b, _, r, _, _ in rows} == pytest.approx({b: 0.2 * b / (n - 1) for b in range(n)}, abs=1e-4)
    assert "random weights" in out and "nothing was changed" in out and "verified" not in out


def test_skip_dropped_shows_which_branches_skip_and_why_others_mask(capsys):
    code, out, err = run_cli(
        capsys, "inspect", "timm:resnet10t", "--rate", "0.3", "--skip-dropped", "--model-arg", "num_classes=3"
    )
    assert code == 0, err
    assert "skip_dropped=True" in out and "masks instead of skipping" in out and "batch statistics" in out
    code, out, err = run_cli(
        capsys, "inspect", "timm:vit_tiny_patch16_224", "--skip-dropped",
        "--model-arg", "img_size=32", "--model-arg", "depth=2", "--model-arg", "patch_size=8",
    )
    assert code == 0, err
    assert out.count(" skip ") == 4 and "masks instead" not in out


def test_uniform_schedule_and_model_args(capsys):
    code, out, err = run_cli(
        capsys, "inspect", "timm:vit_tiny_patch16_224", "--schedule", "uniform", "--rate", "0.3",
        "--model-arg", "img_size=32", "--model-arg", "depth=3", "--model-arg", "patch_size=8",
    )
    assert code == 0, err
    rows = table(out)
    assert len(rows) == 6 and {r for _, _, r, _, _ in rows} == {0.3}
    assert rows[0][4] == "blocks.0.drop_path1" and rows[-1][4] == "blocks.2.drop_path2"


def test_timm_schedule_gives_timms_own_per_branch_rates(capsys):
    code, out, err = run_cli(capsys, "inspect", "timm:cait_xxs24_224", "--schedule", "timm", "--rate", "0.2")
    assert code == 0, err
    rows = table(out)
    assert len(rows) == 52 and "schedule='timm'" in out
    assert {r for _, _, r, _, p in rows if p.startswith("blocks.")} == {0.2}  # CaiT: uniform
    assert {r for _, _, r, _, p in rows if p.startswith("blocks_token_only.")} == {0.0}  # class attention: 0
    code, out, err = run_cli(capsys, "inspect", "torchvision:resnet18", "--schedule", "timm")
    assert_one_line_error(code, err, "not a timm model", "schedule='linear'")


def test_hf_local_folder_builds_random_weights_from_its_config(tmp_path, capsys):
    import transformers as T

    T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8).save_pretrained(tmp_path)
    code, out, err = run_cli(capsys, "inspect", f"hf:{tmp_path}", "--rate", "0.1")
    assert code == 0, err
    assert "ViTModel" in out
    rows = table(out)
    assert [(b, p) for b, _, _, _, p in rows] == [(0, "layers.0.dropout")] * 2 + [(1, "layers.1.dropout")] * 2
    assert [r for _, _, r, _, _ in rows] == [0.0, 0.0, 0.1, 0.1]

    code, out, err = run_cli(capsys, "inspect", f"hf:{tmp_path}", "--hf-class", "AutoModelForImageClassification")
    assert code == 0, err
    assert "ViTForImageClassification" in out and "vit.layers.1.dropout" in out


def test_torchvision_model(capsys):
    code, out, err = run_cli(capsys, "inspect", "torchvision:mobilenet_v3_small", "--rate", "0.2")
    assert code == 0, err
    rows = table(out)
    assert rows and all(p.startswith("features.") for *_, p in rows)
    assert max(r for _, _, r, _, _ in rows) == pytest.approx(0.2)


def test_plot_draws_the_per_block_schedule(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot needs the optional matplotlib (pip install '.[plot]')")
    target = tmp_path / "rates.png"
    code, out, err = run_cli(capsys, "inspect", "timm:test_vit", "--plot", str(target))
    assert code == 0, err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 2000
    assert str(target) in out


def test_spec_and_model_arg_parsing():
    assert parse_spec("timm:vit_base_patch16_224.augreg_in21k") == ("timm", "vit_base_patch16_224.augreg_in21k")
    assert parse_spec("hf:google/vit-base-patch16-224") == ("hf", "google/vit-base-patch16-224")
    assert parse_model_args(["img_size=384", "name=abc", "depths=(1, 2)"]) == {"img_size": 384, "name": "abc", "depths": (1, 2)}


# -- errors: one line, non-zero exit, never a traceback -------------------------------------------------


@pytest.mark.parametrize(
    "argv, code, needles",
    [
        (["inspect", "timm:vit_bse_patch16_224"], 1, ["unknown timm model 'vit_bse_patch16_224'", "vit_base_patch16_224"]),
        (["inspect", "torchvision:resnt50"], 1, ["unknown torchvision model 'resnt50'", "resnet50"]),
        (["inspect", "tf:resnet50"], 2, ["LIBRARY:NAME", "'tf:resnet50'"]),
        (["inspect", "vit_base_patch16_224"], 2, ["LIBRARY:NAME"]),
        (["inspect", "timm:"], 2, ["no model name"]),
        (["inspect", "hf:./no/such/folder"], 1, ["local path './no/such/folder' does not exist"]),
        (["inspect", "timm:test_vit", "--schedule", "cosine"], 2, ["unknown schedule 'cosine'", "linear"]),
        (["inspect", "timm:test_vit", "--rate", "1.5"], 2, ["1.5"]),
        (["inspect", "timm:test_vit", "--rate", "abc"], 2, ["--rate", "abc"]),
        (["inspect", "timm:test_vit", "--model-arg", "img_size"], 2, ["KEY=VALUE"]),
        (["inspect", "timm:test_vit", "--model-arg", "no_such_kwarg=1"], 1, ["no_such_kwarg"]),
        (["inspect", "torchvision:squeezenet1_1"], 1, ["found no residual branch in SqueezeNet"]),
        (["inspect"], 2, ["model"]),
        ([], 2, ["no command"]),
        (["frobnicate"], 2, ["frobnicate"]),
    ],
)
def test_errors_are_one_line(capsys, argv, code, needles):
    got, out, err = run_cli(capsys, *argv)
    assert got == code
    assert_one_line_error(got, err, *needles)


def test_hf_folder_without_config(tmp_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"")
    code, out, err = run_cli(capsys, "inspect", f"hf:{tmp_path}")
    assert_one_line_error(code, err, "not a folder with a config.json")


def test_unknown_hf_class(tmp_path, capsys):
    import transformers as T

    T.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    code, out, err = run_cli(capsys, "inspect", f"hf:{tmp_path}", "--hf-class", "NoSuchModel")
    assert_one_line_error(code, err, "no model class 'NoSuchModel'")


def test_unreachable_hub_is_one_line_through_python_m():
    # huggingface_hub reads HF_HUB_OFFLINE when it is imported, so this runs in a fresh process.
    proc = python("-m", "droppath_surgery", "inspect", "hf:droppath-surgery-tests/no-such-model", env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc.returncode, proc.stderr, "cannot load 'droppath-surgery-tests/no-such-model' from the Hugging Face Hub", "HF_HUB_OFFLINE")
    assert proc.stdout == ""


# -- packaging: console script, optional dependencies ------------------------------------------------


def test_console_script_and_plot_extra_are_declared():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["droppath-surgery"] == "droppath_surgery.cli:main"
    assert any(dep.startswith("matplotlib") for dep in project["optional-dependencies"]["plot"])


_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Blocker())
    sys.argv = sys.argv[1:]
    import droppath_surgery
    assert "droppath_surgery.cli" not in sys.modules, "the library must not import the CLI"
    from droppath_surgery.cli import main
    code = main(sys.argv[1:])
    print("loaded:", sorted(m for m in BLOCKED if m in sys.modules))
    sys.exit(code)
    """
)


def test_library_and_cli_work_without_optional_packages():
    # Without timm/transformers/torchvision/matplotlib: the library imports, the CLI says what to install.
    blocked = "timm,transformers,torchvision,matplotlib"
    proc = python("-c", _BLOCKER, blocked, "inspect", "timm:test_vit")
    assert_one_line_error(proc.returncode, proc.stderr, "needs timm", "pip install 'droppath-surgery[timm]'")
    assert "loaded: []" in proc.stdout


def test_plot_without_matplotlib_is_one_line(tmp_path):
    proc = python("-c", _BLOCKER, "matplotlib", "inspect", "timm:test_vit", "--plot", str(tmp_path / "x.png"))
    assert_one_line_error(proc.returncode, proc.stderr, "--plot needs matplotlib", "droppath-surgery[plot]")
    assert not (tmp_path / "x.png").exists()


# -- start-up, --version, the checks made before any work ----------------------------------------------


def test_help_and_version_do_not_import_torch_and_answer_at_once():
    # The package's public names are lazy (PEP 562) and the CLI imports torch only when a command runs.
    code = textwrap.dedent(
        """
        import sys, time
        start = time.perf_counter()
        from droppath_surgery.cli import main
        for argv in (["--help"], ["inspect", "--help"], ["--version"]):
            try:
                main(argv)
            except SystemExit as exc:
                assert exc.code == 0, exc.code
        print("heavy:", sorted(m for m in ("torch", "timm", "transformers", "torchvision", "matplotlib") if m in sys.modules))
        print(f"seconds: {time.perf_counter() - start:.3f}")
        """
    )
    proc = python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout, proc.stdout
    assert "usage: droppath-surgery" in proc.stdout and "--schedule" in proc.stdout
    seconds = float(proc.stdout.rsplit("seconds:", 1)[1])
    print(f"--help, inspect --help and --version in one process: {seconds:.3f} s")  # shown with pytest -s
    assert seconds < 3.0  # importing torch alone takes longer than this here


def test_version_is_the_installed_distributions(capsys):
    from importlib import metadata

    import droppath_surgery

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"droppath-surgery {droppath_surgery.__version__}"
    assert droppath_surgery.__version__ == metadata.version("droppath-surgery")


def test_schedule_names_in_help_are_the_librarys():
    from droppath_surgery.cli import SCHEDULE_NAMES
    from droppath_surgery.schedules import schedule_names

    assert list(SCHEDULE_NAMES) == schedule_names()


def test_model_arg_error_names_only_the_key_at_fault(capsys):
    code, out, err = run_cli(capsys, "inspect", "timm:test_vit", "--model-arg", "img_size=64", "--model-arg", "foo=1")
    assert_one_line_error(code, err, "--model-arg foo=")
    assert "img_size" not in err
    code, out, err = run_cli(capsys, "inspect", "torchvision:resnet18", "--model-arg", "num_classes=3", "--model-arg", "bar=1")
    assert_one_line_error(code, err, "--model-arg bar=")
    assert "num_classes" not in err


def test_hf_model_arg_that_is_no_config_field_is_named(tmp_path, capsys):
    import transformers as T

    T.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    code, out, err = run_cli(capsys, "inspect", f"hf:{tmp_path}", "--model-arg", "num_hidden_layers=2", "--model-arg", "foo=1")
    assert_one_line_error(code, err, "ViTConfig", "has no --model-arg foo=")
    assert "num_hidden_layers" not in err.split("(")[0]
    code, out, err = run_cli(capsys, "inspect", f"hf:{tmp_path}", "--model-arg", "num_hidden_layers=2")
    assert code == 0, err
    assert "layers.1.dropout" in out  # the config field was set: two layers


@pytest.mark.parametrize(
    "target, needle",
    [
        ("no/such/folder/rates.png", "does not exist"),
        ("rates.notanimage", "matplotlib cannot write .notanimage"),
        ("", "is a folder"),
    ],
)
def test_plot_path_is_checked_before_any_work(tmp_path, capsys, monkeypatch, target, needle):
    pytest.importorskip("matplotlib", reason="--plot needs the optional matplotlib (pip install '.[plot]')")
    import droppath_surgery.cli as cli

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the output path was checked")

    monkeypatch.setattr(cli, "build_model", no_build)
    code, out, err = run_cli(capsys, "inspect", "timm:test_vit", "--plot", str(tmp_path / target) if target else str(tmp_path))
    assert code == 2
    assert_one_line_error(code, err, "--plot", needle)


def test_plot_marks_stages_and_each_branch(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot needs the optional matplotlib (pip install '.[plot]')")
    from droppath_surgery.cli import stages_of

    torchvision = pytest.importorskip("torchvision")
    report = find_residual_branches(torchvision.models.resnet18(), rate=0.1)
    assert [name for name, _, _ in stages_of(report.sites)] == ["layer1", "layer2", "layer3", "layer4"]
    assert [(first, last) for _, first, last in stages_of(report.sites)] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    vit = find_residual_branches(timm.create_model("test_vit"), rate=0.1)
    assert [name for name, _, _ in stages_of(vit.sites)] == ["blocks"]  # one stack of blocks: no bands

    import matplotlib.pyplot as plt

    from droppath_surgery import cli

    captured = {}
    real_close = plt.close

    def keep(fig=None):  # look at the figure before it is closed
        if fig is not None and not isinstance(fig, str):
            captured["fig"] = fig
        real_close(fig)

    plt.close = keep
    try:
        cli.plot_rates(vit, str(tmp_path / "vit.svg"), "test_vit")
    finally:
        plt.close = real_close
    ax = captured["fig"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["block rate", f"branch 0 of its block ({vit.num_blocks})", f"branch 1 of its block ({vit.num_blocks})"]
    # each branch is its own marker: two branches of a block with the same rate do not overlap
    xs = sorted(x for coll in ax.collections for x, _ in coll.get_offsets())
    assert len(xs) == len(vit.sites) == len(set(xs))
    # the legend is outside the axes (to their right)
    fig = captured["fig"]
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    assert (tmp_path / "vit.svg").read_text().lstrip().startswith("<?xml")


def _no_hub_env(tmp_path) -> dict:
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf-home")}  # port 9: refused at once
    return env


def test_unreachable_hub_is_one_line_within_seconds(tmp_path):
    import time

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(_no_hub_env(tmp_path), PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "droppath_surgery", "inspect", "hf:google/vit-base-patch16-224"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    seconds = time.perf_counter() - start
    assert_one_line_error(proc.returncode, proc.stderr, "'google/vit-base-patch16-224'", "Hub is unreachable",
                          "127.0.0.1:9", "not in the local cache")
    assert seconds < 15  # huggingface_hub's own retries alone take 23 s (1 + 2 + 4 + 8 + 8)


def test_unreachable_hub_uses_a_cached_model(tmp_path):
    import transformers as T

    from droppath_surgery.cli import hf_hub_access

    snapshot = tmp_path / "hf-home" / "hub" / "models--someone--tiny-vit" / "snapshots" / ("0" * 40)
    T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8).save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(_no_hub_env(tmp_path), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "droppath_surgery", "inspect", "hf:someone/tiny-vit"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "ViTModel" in proc.stdout and "layers.1.dropout" in proc.stdout
    assert hf_hub_access(str(snapshot)) == {}  # a local folder needs no Hub
