"""Spec inputs/outputs (tacegen.io_spec): presets, custom form, validation, JSON and hash,
``tacegen build --input/--output`` and its help and report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tacegen.cli import cli
from tacegen.io_spec import INPUT_PRESETS, OUTPUT_PRESETS, InputSpec, OutputSpec, parse_input, parse_output
from tacegen.spec import ModelSpec, SpecError, command_line


def test_default_spec_has_no_io_fields_in_its_json():
    d = json.loads(ModelSpec().canonical_json())
    assert "inputs" not in d and "outputs" not in d
    assert ModelSpec().name == "tace_l3_nu3"


def test_io_spec_round_trips_through_json_and_changes_hash_and_name():
    spec = ModelSpec(lmax=2, nu=2, hidden_lmax=2, inputs=("total_charge", "electric_field:structure:1:o:even"),
                     outputs=("dipole", "shield:atom:2:general:e:even"))
    assert spec.inputs[1] == INPUT_PRESETS["electric_field"]
    assert spec.outputs[1] == OutputSpec("shield", "atom", 2, "general", "e", "even")
    back = ModelSpec.from_json(spec.canonical_json())
    assert back == spec and back.hash == spec.hash
    assert spec.hash != ModelSpec(lmax=2, nu=2, hidden_lmax=2).hash
    assert spec.name.startswith("tace_l2_nu2_io")
    assert "--input total_charge --input electric_field --output dipole --output shield:atom:2:general:e:even" \
        in command_line(spec)


@pytest.mark.parametrize("text,message", [
    ("charge", "unknown input 'charge'; presets: total_charge"),
    ("x:galaxy:0:e:even", "per='galaxy' is not allowed; allowed: structure, atom"),
    ("x:structure:2:e:even", "rank=2 is not allowed"),
    ("x:structure:1:p:even", "parity='p' is not allowed; allowed: e, o"),
    ("x:structure:1:o:sometimes", "time='sometimes' is not allowed"),
    ("x:structure:1:o:even:category", "a category input is a time-even scalar"),
    ("x:structure:1", "expected NAME:PER:RANK:PARITY:TIME[:KIND]"),
    ("x y:structure:0:e:even", "must be an identifier"),
])
def test_bad_inputs_name_the_field_and_the_allowed_values(text, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelSpec(lmax=2, nu=2, inputs=(text,))


@pytest.mark.parametrize("text,message", [
    ("hessian_thing", "unknown output 'hessian_thing'"),
    ("x:structure:2:elastic:e:even", "symmetry 'elastic' needs rank in"),
    ("x:structure:2:wobbly:e:even", "symmetry='wobbly' is not allowed"),
    ("x:structure:1:general:o:odd", "is time-odd: .* time-odd inputs: none"),
    ("polarizability", "hidden_lmax must be >= 2, got 1"),
    ("x:structure:2:general:o:even", "pseudo-scalar part"),
    ("energy:structure:1:general:o:even", "'energy' is reserved"),
    ("cell:structure:2:general:e:even", "'cell' is reserved"),
])
def test_bad_outputs_name_the_field_and_the_allowed_values(text, message):
    with pytest.raises(SpecError, match=message):
        ModelSpec(lmax=2, nu=2, hidden_lmax=1, outputs=(text,))


def test_duplicates_are_refused_and_long_range_combines_with_inputs():
    with pytest.raises(SpecError, match="declared twice"):
        ModelSpec(lmax=2, nu=2, inputs=("spin", "spin"))
    for long_range in ("les", "ewald"):
        spec = ModelSpec(lmax=2, nu=2, inputs=("spin",), outputs=("atomic_dipole",), long_range=long_range)
        assert spec.long_range == long_range and spec.name.startswith(f"tace_l2_nu2_{long_range}_io")


def test_every_preset_parses_to_itself():
    for name, spec in INPUT_PRESETS.items():
        assert parse_input(name) == spec and isinstance(spec, InputSpec)
    for name, spec in OUTPUT_PRESETS.items():
        assert parse_output(name) == spec


def test_cli_build_with_inputs_and_outputs_reports_their_labels_and_parts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["build", "--lmax", "2", "--nu", "1", "--hidden-lmax", "2", "--backend", "torch",
                                      "--input", "total_charge", "--input", "magnetic_field", "--output",
                                      "born_charges", "--out", str(tmp_path / "b"), "--report"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "b" / "REPORT.md").read_text()
    assert "input `magnetic_field`: 1e odd, per structure; values from `atoms.info['magnetic_field']`" in report
    assert "(magnetic_field x magnetic_field)->2e" in report
    assert "output `born_charges`: rank 2 general, parity e" in report and "0e + 1e + 2e" in report
    assert "--input magnetic_field" in (tmp_path / "b" / "model.py").read_text()
    assert not (tmp_path / "b" / "numba_model.py").exists()


def test_cli_refuses_an_input_that_cannot_couple(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # an electric field (1o) cannot enter a model whose features stop at rank 0
    result = CliRunner().invoke(cli, ["build", "--lmax", "0", "--nu", "1", "--hidden-lmax", "0", "--backend", "torch",
                                      "--input", "electric_field", "--out", str(tmp_path / "b")])
    assert result.exit_code != 0
    assert "input 'electric_field'" in str(result.exception) and "no allowed coupling" in str(result.exception)


def test_build_help_documents_every_preset_with_its_labels():
    result = CliRunner().invoke(cli, ["build", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    for name, spec in {**INPUT_PRESETS, **OUTPUT_PRESETS}.items():
        assert name in result.output and spec.label in result.output
