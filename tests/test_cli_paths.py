"""The ``tacegen paths`` command: table, JSON, cache flags and one-line errors.

Most runs are in-process (click's CliRunner on ``tacegen.cli.cli``, or the console entry
function ``tacegen.cli.app`` with a patched argv, which is what the installed script
calls). Two real subprocesses prove ``python -m tacegen.cli`` and the installed
``tacegen`` console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tacegen.algebra.characters import multiplicity_in_symmetric_power
from tacegen.cli import app, cli

REPO = Path(__file__).resolve().parent.parent
KEYS = {"lmax", "nu", "L", "parity", "candidates", "independent", "seconds"}
SPEC_COUNTS = {(1, 0, 1): 1, (2, 0, 1): 4, (3, 0, 1): 8, (3, 1, -1): 12}  # (nu, L, parity), lmax 3


def character_count(lmax, nu, L, parity):
    pieces = [(l, (-1) ** l) for l in range(lmax + 1)]
    return multiplicity_in_symmetric_power(pieces, nu, L, parity)


def invoke(args, cache_dir, **env):
    runner = CliRunner()
    result = runner.invoke(cli, ["paths", *args], env={"TACEGEN_CACHE_DIR": str(cache_dir), "COLUMNS": "160", **env})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def run_app(args, monkeypatch, capsys):
    """Run the console entry point in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["tacegen", *args])
    with pytest.raises(SystemExit) as exc:
        app()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def check_json_rows(rows, lmax, nu_max, L_values):
    # one object per (nu, L, parity); an L that nu copies cannot reach has empty counts
    expected = {(nu, L, p) for nu in range(1, nu_max + 1) for L in L_values for p in (1, -1)}
    keys = [(r["nu"], r["L"], r["parity"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(expected)
    assert set(keys) == expected
    for r in rows:
        assert KEYS <= set(r)
        assert r["lmax"] == lmax
        assert r["independent"] == character_count(lmax, r["nu"], r["L"], r["parity"])
        assert 0 <= r["independent"] <= r["candidates"]
        if r["L"] > r["nu"] * lmax:
            assert r["candidates"] == r["independent"] == 0
        assert isinstance(r["seconds"], (int, float)) and r["seconds"] >= 0


# --------------------------------------------------------------------------- output


def test_json_lmax3_nu3(tmp_path):
    result = invoke(["--lmax", "3", "--nu", "3", "--json"], tmp_path)
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    check_json_rows(rows, 3, 3, range(0, 4))
    by_key = {(r["nu"], r["L"], r["parity"]): r for r in rows}
    for key, count in SPEC_COUNTS.items():
        assert by_key[key]["independent"] == count
    assert by_key[(3, 1, -1)]["candidates"] == 19


def test_json_has_unreachable_L_rows_and_honours_L_option(tmp_path):
    rows = json.loads(invoke(["--lmax", "1", "--nu", "2", "--json"], tmp_path).stdout)
    check_json_rows(rows, 1, 2, range(0, 3))  # default L = 0..min(3, nu*lmax)
    rows = json.loads(invoke(["--lmax", "2", "--nu", "2", "--L", "4", "--L", "1", "--json"], tmp_path).stdout)
    check_json_rows(rows, 2, 2, [1, 4])


def parse_table(text: str) -> dict:
    """(nu, L, parity) -> (candidates, independent) from the rich table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) != 6 or not cells[0].isdigit():
            continue
        L, parity, nu, cand, indep = int(cells[0]), cells[1], int(cells[2]), int(cells[3]), int(cells[4])
        p = {"+1 (e)": 1, "-1 (o)": -1}[parity]
        rows[(nu, L, p)] = (cand, indep)
    return rows


def test_table_prints_the_counts(tmp_path):
    result = invoke(["--lmax", "3", "--nu", "3"], tmp_path)
    assert result.exit_code == 0
    table = parse_table(result.stdout)
    json_rows = json.loads(invoke(["--lmax", "3", "--nu", "3", "--json"], tmp_path).stdout)
    assert table == {(r["nu"], r["L"], r["parity"]): (r["candidates"], r["independent"]) for r in json_rows}
    for key, count in SPEC_COUNTS.items():
        assert table[key][1] == count
    assert table[(3, 1, -1)] == (19, 12)
    assert "lmax=3" in result.stdout


def test_cache_flags(tmp_path):
    folder = tmp_path / "cache"
    rows = json.loads(invoke(["--lmax", "2", "--nu", "2", "--json", "--no-cache"], folder).stdout)
    assert not folder.exists() or not any(folder.iterdir())
    assert not any(r["cached"] for r in rows)
    first = json.loads(invoke(["--lmax", "2", "--nu", "2", "--json"], folder).stdout)
    assert any(folder.iterdir())
    second = json.loads(invoke(["--lmax", "2", "--nu", "2", "--json"], folder).stdout)
    # every derived row comes from the cache; unreachable L rows are empty and never derived
    assert all(r["cached"] for r in second if r["L"] <= r["nu"] * 2)
    assert all(r["candidates"] == 0 for r in second if r["L"] > r["nu"] * 2)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "cached"} for r in rs]
    assert strip(first) == strip(second)


# --------------------------------------------------------------------------- bad input


BAD = [  # (arguments, the flag, the value as typed, the allowed range)
    (["--lmax", "-1"], "--lmax", "-1", "0..10"),
    (["--nu", "0"], "--nu", "0", "1..8"),
    (["--lmax", "11"], "--lmax", "11", "0..10"),
    (["--lmax", "2.5"], "--lmax", "2.5", "0..10"),
    (["--lmax", "abc"], "--lmax", "abc", "0..10"),
    (["--lmax", "3", "--nu", "3", "--L", "10"], "--L", "10", "0..9"),
]


@pytest.mark.parametrize("args,flag,value,allowed", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_is_one_line_exit_2(args, flag, value, allowed, monkeypatch, capsys):
    code, out, err = run_app(["paths", *args], monkeypatch, capsys)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0] and value in lines[0] and allowed in lines[0], lines[0]


def test_entry_point_success_exit_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TACEGEN_CACHE_DIR", str(tmp_path))
    code, out, err = run_app(["paths", "--lmax", "1", "--nu", "2", "--json"], monkeypatch, capsys)
    assert code == 0 and err == ""
    check_json_rows(json.loads(out), 1, 2, range(0, 3))


# --------------------------------------------------------------------------- real processes


def _env(tmp_path):
    env = dict(os.environ)
    env["TACEGEN_CACHE_DIR"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("TACEGEN_DEBUG", None)
    return env


def test_python_dash_m_bad_input_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tacegen.cli", "paths", "--lmax", "3", "--nu", "3", "--L", "10"],
                          capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--L=10" in lines[0] and "0..9" in lines[0]


def test_installed_console_script(tmp_path):
    script = Path(sys.executable).parent / "tacegen"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    proc = subprocess.run([str(script), "paths", "--lmax", "3", "--nu", "3", "--json"],
                          capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    check_json_rows(rows, 3, 3, range(0, 4))
    by_key = {(r["nu"], r["L"], r["parity"]): r["independent"] for r in rows}
    for key, count in SPEC_COUNTS.items():
        assert by_key[key] == count
    assert any((tmp_path / "cache").iterdir()), "the script used TACEGEN_CACHE_DIR"
