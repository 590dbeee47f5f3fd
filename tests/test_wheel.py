"""The package as a user installs it: a wheel built from the checkout, installed (without the checkout) into
a fresh virtual environment that sees the test environment's packages, runs ``osum`` from elsewhere."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(*command, cwd, env=None):
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_wheel_carries_the_configs_and_runs_outside_the_checkout(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", tmp_path / "dist",
        ROOT, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("osum-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"osum_configs/fit.yaml", "osum_configs/serve.yaml", "osum_configs/presets/demo.yaml",
            "osum_configs/presets/osum-7b.yaml", "osum_configs/stages/adapter.yaml",
            "osum_core/serve/page/index.html"} <= names
    packages = {p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("osum_core/**/__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= names, "a package of osum_core is missing from the wheel"

    # A fresh environment on the base interpreter; the test environment's site-packages come in through a
    # .pth line, which does not run the .pth files there: the editable install of the checkout stays out.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    fresh_site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                          cwd=tmp_path).stdout.strip())
    (fresh_site / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--quiet", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    osum = venv / "bin" / "osum"
    where = run(python, "-c", "import osum_core, osum_configs; print(osum_core.__file__, osum_configs.CONFIG_DIR)",
                cwd=elsewhere).stdout
    assert str(ROOT) not in where and str(venv) in where
    printed = run(osum, "fit", "--tasks", "asr,ved", "--print-config", cwd=elsewhere).stdout
    demo = yaml.safe_load((ROOT / "configs" / "presets" / "demo.yaml").read_text())
    assert "d_model: 192" in printed and f"max_steps: {demo['trainer']['max_steps']}" in printed  # the demo preset's
    assert "osum-7b" not in printed
    preset = run(osum, "fit", "--tasks", "asr", "--preset", "osum-7b", "--print-config", cwd=elsewhere).stdout
    assert "Qwen/Qwen2-7B" in preset
    tasks = run(osum, "tasks", cwd=elsewhere).stdout
    assert all(name in tasks for name in ("asr", "srwt", "ved", "ser", "ssr", "sgc", "sap", "sttc"))
