"""The ``tacegen`` command line.

Bad input never shows a traceback: every error is one line on stderr naming the value
and the allowed range, with exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from . import __version__
from .paths import LMAX_LIMIT, NU_LIMIT
from .spec import BACKENDS, BASES, LONG_RANGE


class IntInRange(click.ParamType):
    """An integer option whose error message names the value and the allowed range."""

    name = "integer"

    def __init__(self, low: int, high: int):
        self.low, self.high = low, high

    def get_metavar(self, param, ctx=None) -> str:
        return f"INTEGER RANGE {self.low}..{self.high}"

    def convert(self, value, param, ctx):
        flag = f"--{param.name}" if param is not None else "value"
        try:
            number = int(str(value).strip())
        except ValueError:
            raise click.UsageError(f"{flag} must be an integer in {self.low}..{self.high}, got {value!r}", ctx)
        if not self.low <= number <= self.high:
            raise click.UsageError(f"{flag}={number} is outside the allowed range {self.low}..{self.high}", ctx)
        return number


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="tacegen")
def cli() -> None:
    """tacegen: derive exact ICT algebra and compile TACE potentials."""


@cli.command()
@click.option("--lmax", type=IntInRange(0, LMAX_LIMIT), default=3, show_default=True,
              help="Largest rank of the atomic basis A.")
@click.option("--nu", type=IntInRange(1, NU_LIMIT), default=3, show_default=True,
              help="Largest correlation order; the table covers 1..nu.")
@click.option("--L", "L_values", type=IntInRange(0, LMAX_LIMIT * NU_LIMIT), multiple=True,
              help="Output rank(s) to derive (repeatable). Default: 0..3.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--no-cache", is_flag=True, help="Derive afresh; do not read or write the disk cache.")
@click.option("--basis", type=click.Choice(BASES), default="ict", show_default=True,
              help="ict: TACE coupling trees; moment: TMP moment-tensor contractions, printed next to the ICT counts.")
@click.option("--level", type=IntInRange(2, 64), default=None,
              help="--basis moment only: MTP level truncation, sum over factors of 2 + rank <= LEVEL.")
def paths(lmax: int, nu: int, L_values: tuple[int, ...], as_json: bool, no_cache: bool, basis: str,
          level: int | None) -> None:
    """Independent product-basis paths per (nu, L, parity)."""
    from .cache import DiskCache
    from .paths import natural_pieces, path_table

    reach = nu * lmax
    for L in L_values:
        if L > reach:
            raise click.UsageError(
                f"--L={L} is outside the range the inputs can reach with --lmax {lmax} --nu {nu}: 0..{reach}")
    Ls = sorted(set(L_values)) if L_values else list(range(0, min(3, reach) + 1))
    cache = DiskCache(enabled=not no_cache)
    if level is not None and basis != "moment":
        raise click.UsageError("--level applies to --basis moment only")
    if basis == "moment":
        from .cli_moment import print_moment_paths

        print_moment_paths(lmax, nu, Ls, level, as_json, cache)
        return
    start = time.perf_counter()
    table = path_table(natural_pieces(lmax), nu, Ls, cache=cache)
    total = time.perf_counter() - start
    rows = [{
        "lmax": lmax, "nu": ps.nu, "L": ps.L, "parity": ps.parity,
        "candidates": len(ps.candidates), "independent": len(ps.independent),
        "seconds": ps.seconds, "cached": ps.cached,
    } for ps in table]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Product-basis paths, lmax={lmax}, natural-parity inputs 0..{lmax}, one channel")
    for col in ("L", "parity", "nu", "candidate trees", "independent paths", "derivation s"):
        t.add_column(col, justify="right")
    for r in sorted(rows, key=lambda r: (r["L"], -r["parity"], r["nu"])):
        seconds = f"{r['seconds']:.3f}" + (" (cached)" if r["cached"] else "")
        t.add_row(str(r["L"]), "+1 (e)" if r["parity"] == 1 else "-1 (o)", str(r["nu"]),
                  str(r["candidates"]), str(r["independent"]), seconds)
    console = Console()
    console.print(t)
    console.print(f"total {total:.2f} s; counts proven equal to the character (weight-counting) multiplicities")


class BackendList(click.ParamType):
    """A comma-separated list of back ends; the metavar shows the choices, an error names the
    bad item and the allowed ones."""

    name = "backends"

    def __init__(self, choices):
        self.choices = tuple(choices)

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join((*self.choices, ",".join(self.choices))) + "]"

    def convert(self, value, param, ctx):
        items = [item.strip() for item in str(value).split(",") if item.strip()]
        for item in items:
            if item not in self.choices:
                raise click.UsageError(
                    f"--backend: back end {item!r} is not available; allowed: {', '.join(self.choices)} "
                    f"(comma-separated)", ctx)
        if not items:
            raise click.UsageError(f"--backend is empty; allowed: {', '.join(self.choices)}", ctx)
        return ",".join(items)


BUILD_EPILOG = """\b
Build folders: ./generated/<name> under the current directory, <name> = tace_l<lmax>_nu<nu>
with _les or _ewald for a long-range block and _unoptimised for --unoptimised; --out
chooses another folder. --check compares the repository's committed builds (its own
generated/ folder) with a fresh compilation.

\b
MACE names: --nu is MACE's correlation, --lmax its max_ell, --hidden-lmax its max_L.

\b
Environment variables:
  TACEGEN_CACHE_DIR  cache of path derivations and of the Numba programs printed when a
                     model is bound (default $XDG_CACHE_HOME/tacegen or ~/.cache/tacegen;
                     "off" disables it)
  XDG_CACHE_HOME     base of the default cache folder
  TACEGEN_DEBUG      set to show the traceback of a library error instead of one line
  NUMBA_NUM_THREADS  threads of the Numba kernels (numba's own variable)
"""


def _build_epilog() -> str:
    from .io_spec import presets_help

    return BUILD_EPILOG + "\n\b\n" + presets_help() + """
\b
PER is structure or atom, PARITY the inversion eigenvalue e or o, TIME even or odd, KIND float
or category, SYMMETRY one of general, symmetric, symmetric_traceless, antisymmetric, piezo
(rank 3), elastic (rank 4). Values come from atoms.info[NAME] (per structure) and
atoms.arrays[NAME] (per atom); outputs appear under NAME in the model's output dict and
calc.results. Builds with inputs/outputs have no Numba model yet (numba_backend() refuses).
"""

_BUILD_OPTIONS = ("lmax", "nu", "hidden_lmax", "backends", "long_range", "out_dir", "force", "show_report",
                  "time_compile", "unoptimised", "basis", "inputs", "outputs")


def _given_options(ctx: click.Context, names) -> list[str]:
    """The options among ``names`` that the user set (not left at their defaults), as flags."""
    given = []
    for param in ctx.command.params:
        if param.name in names and ctx.get_parameter_source(param.name) not in (
                click.core.ParameterSource.DEFAULT, None):
            given.append(param.opts[0])
    return given


def default_build_folder(spec, optimised: bool = True):
    """``./generated/<spec.name>`` under the current directory (``_unoptimised`` appended for a
    naive build), never next to the installed package."""
    from pathlib import Path

    return Path.cwd() / "generated" / (spec.name if optimised else f"{spec.name}_unoptimised")


@cli.command(epilog=_build_epilog())
@click.option("--lmax", type=IntInRange(0, 6), default=3, show_default=True,
              help="Largest edge/atomic-basis rank (MACE: max_ell).")
@click.option("--nu", type=IntInRange(1, 4), default=3, show_default=True,
              help="Correlation order (MACE: correlation).")
@click.option("--hidden-lmax", type=IntInRange(0, 6), default=1, show_default=True,
              help="Largest rank of node features passed between layers, at most --lmax (MACE: max_L).")
@click.option("--backend", "backends", type=BackendList(BACKENDS), default="torch,numba", show_default=True,
              help="Back ends to print: torch, or torch,numba (numba evaluates the PyTorch module's weights, "
                   "so it implies torch).")
@click.option("--long-range", "long_range", type=click.Choice(list(LONG_RANGE)), default="none",
              show_default=True,
              help="Long-range electrostatics: les (latent Ewald summation: latent charges from the last layer, "
                   "Cheng et al.) or ewald (classic Ewald of the structures' given charges).")
@click.option("--input", "inputs", multiple=True, metavar="NAME",
              help="External input (repeatable): a preset name or NAME:PER:RANK:PARITY:TIME[:KIND]; see below.")
@click.option("--output", "outputs", multiple=True, metavar="NAME",
              help="Tensor output besides the energy (repeatable): a preset name or "
                   "NAME:PER:RANK:SYMMETRY:PARITY:TIME; see below.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder. Default: ./generated/<name> under the current directory.")
@click.option("--force", is_flag=True, help="Replace an existing folder that is not a tacegen build.")
@click.option("--report", "show_report", is_flag=True,
              help="Print FLOPs and memory per atom and layer (compiles nothing; see --time-compile).")
@click.option("--time-compile", "time_compile", is_flag=True,
              help="Time the Numba model's first call (JIT compilation of its kernels; minutes when "
                   "numba's cache is cold). Needs the numba back end.")
@click.option("--check", is_flag=True,
              help="Regenerate the repository's committed builds in memory and fail on any diff; takes no "
                   "other option.")
@click.option("--unoptimised", is_flag=True,
              help="Print the naive IR (for comparisons); default folder ./generated/<name>_unoptimised.")
@click.option("--basis", type=click.Choice(BASES), default="ict", show_default=True,
              help="ict: TACE (irreducible Cartesian tensors, couplings); moment: TMP (moment tensors r^(x)l, "
                   "contractions), folder tmp_l<lmax>_nu<nu>.")
def build(lmax, nu, hidden_lmax, backends, long_range, inputs, outputs, out_dir, force, show_report, time_compile,
          check, unoptimised, basis) -> None:
    """Compile a TACE model into an importable package."""
    from .build import check_builds, compile_spec, module_sizes, report, write_build
    from .spec import ModelSpec

    ctx = click.get_current_context()
    if check:
        others = _given_options(ctx, _BUILD_OPTIONS)
        if others:
            raise click.UsageError(f"--check takes no other options (it checks the committed default builds); "
                                   f"got {', '.join(others)}")
        diffs = check_builds()
        if diffs:
            for d in diffs:
                click.echo(d, err=True)
            raise click.ClickException(
                f"{len(diffs)} generated file(s) drift from the compiler; run `tacegen build` in the "
                "repository root for the defaults")
        click.echo("generated/ matches a fresh build")
        return
    if hidden_lmax > lmax:
        raise click.UsageError(f"--hidden-lmax={hidden_lmax} is outside the allowed range 0..{lmax} (--lmax)")
    spec = ModelSpec(lmax=lmax, nu=nu, hidden_lmax=hidden_lmax, backends=backends, long_range=long_range,
                     basis=basis, inputs=tuple(inputs), outputs=tuple(outputs))
    if time_compile and "numba" not in spec.backends:
        raise click.UsageError(f"--time-compile needs the numba back end; got --backend {backends}")
    start = time.perf_counter()
    compiled = compile_spec(spec)
    target = out_dir if out_dir is not None else default_build_folder(spec, optimised=not unoptimised)
    folder = write_build(spec, target, force=force, optimised=not unoptimised, compiled=compiled)
    click.echo(f"built {folder} (spec {spec.hash}) in {time.perf_counter() - start:.2f} s")
    for name, (lines, size) in module_sizes(folder).items():
        click.echo(f"  {name}: {lines} lines, {size} bytes")
    if show_report:
        click.echo(report(compiled))
    if time_compile:
        from .backends.numba_model import first_call_seconds

        click.echo("measuring the Numba model's first call (compiles its kernels unless numba's cache has them)")
        t = first_call_seconds(folder)
        click.echo(f"## Numba first call\n\nE+F+stress of a 4-atom Cu cell, float64: bind {t['bind']:.2f} s, first "
                   f"call {t['first']:.2f} s ({'kernels loaded from the cache' if t['cached'] else 'kernels compiled'}), "
                   f"second call {t['second'] * 1e3:.1f} ms.")


def _register_applications() -> None:
    from .cli_export import export_command
    from .cli_study import study_group
    from .cli_train import eval_command, train_command

    cli.add_command(train_command)
    cli.add_command(eval_command)
    cli.add_command(export_command)
    cli.add_command(study_group)


_register_applications()


def app() -> None:
    """Console entry point: click in non-standalone mode so errors stay one line."""
    try:
        rv = cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("tacegen: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"tacegen: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except (ValueError, TypeError, RuntimeError) as exc:  # validation / build errors from the library
        if os.environ.get("TACEGEN_DEBUG"):
            raise
        click.echo(f"tacegen: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    app()
