"""Benchmark of the electrostatics reference: LES (direct, sharp sphere) and classic Ewald.

Run as ``python -m benchmarks.bench_ewald`` (from the repository root).

For N random neutral charges (normal, mean removed) at 0.1 atoms/Å^3 in a cubic box,
times energy + autograd forces ("E+F") in float64 with 2 torch threads:

* ``LES``: tacegen.runtime.electrostatics.les_energy_periodic, sigma = 1 Å, k_c = pi
  (the model's own truncation; exact sum, O(N x N_k) = O(N^2) at fixed density);
* ``Ewald``: ewald_energy at ``--accuracy`` (alpha/r_cut/k_cut balanced, O(N^1.5));
* ``LES-gen`` / ``Ewald-gen``: the same energies through the kernels the compiler emits
  into generated Numba models (``tacegen.ir.long_range`` programs printed by
  ``tacegen.backends.long_range_printer``), forces from the reverse programs derived in
  the IR (no autograd); Ewald-gen uses the same alpha/r_cut/k_cut as ``Ewald``;
* ``tpme-Ewald`` / ``tpme-PME``: torch-pme's EwaldCalculator / PMECalculator, if
  installed, at matched accuracy: the same alpha and r_cut as ours for Ewald (with
  lr_wavelength = pi / k_cut, torch-pme's effective cutoff being ~ pi / lr_wavelength);
  for PME the smearing, cutoff, mesh spacing and interpolation order are calibrated at
  the smallest N (fastest point of a small grid whose energy and force errors are no
  larger than those of our Ewald there) and kept for the larger N.

``--scaling`` (mesh path, ``tacegen.runtime.mesh``): for N = 1,024 ... 32,768 it times

* ``LES-mesh``: the LES sum (sigma = 1 Å, k_c = pi, sharp sphere) by smooth PME at
  mesh accuracy ``--mesh-accuracy`` (the path generated models take above
  ``mesh_min_atoms``); its error against the direct LES sum is measured at the smallest N;
* ``Ewald-mesh``: classic Ewald with real space within 8 Å (vesin) + the mesh reciprocal
  sum (``ewald_mesh_split``'s alpha and k_cut at ``--accuracy``);
* ``tpme-PME``: torch-pme's PMECalculator calibrated at the smallest N to Ewald-mesh's
  energy and force errors (against our Ewald at ``--ref-accuracy``);

and prints the time ratio to tpme-PME at N = 8,192, the fitted exponent of time vs N, and
t / (N log N) normalised to the smallest N (flat = N log N growth).

Timings include the neighbour list (vesin) for every real-space method. Accuracy is
measured against our Ewald at ``--ref-accuracy`` (relative energy error and RMS
force error relative to the RMS force). The machine is shared: compare only ratios
from one run.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from tacegen.runtime.electrostatics import K_E, ewald_energy, ewald_parameters, les_energy_periodic

DENSITY = 0.1  # atoms / Å^3


def make_system(n: int, seed: int = 0):
    g = np.random.default_rng(seed)
    length = (n / DENSITY) ** (1.0 / 3.0)
    pos = g.random((n, 3)) * length
    q = g.normal(size=n)
    q -= q.mean()
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    return t(q), t(pos), t(np.eye(3) * length)


def energy_and_forces(fn, q, pos, cell):
    p = pos.clone().requires_grad_(True)
    e = fn(q, p, cell)
    (g,) = torch.autograd.grad(e, p)
    return float(e.detach()), -g


def timed(fn, q, pos, cell, repeats: int):
    energy_and_forces(fn, q, pos, cell)  # warm-up
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = energy_and_forces(fn, q, pos, cell)
        times.append(time.perf_counter() - t0)
    return min(times), out


def _half_list(pos, cell, r_cut):
    from vesin import NeighborList

    i, j, s = NeighborList(cutoff=float(r_cut), full_list=False).compute(
        pos.detach().numpy(), cell.detach().numpy(), True, "ijS"
    )
    i = torch.from_numpy(i.astype(np.int64))
    j = torch.from_numpy(j.astype(np.int64))
    s = torch.from_numpy(s.astype(np.float64))
    dist = torch.linalg.norm(pos[j] - pos[i] + s @ cell, dim=1)
    return torch.stack([i, j], dim=1), dist


def torchpme_fn(kind: str, smearing: float, r_cut: float, **kw):
    import torchpme

    pot = torchpme.CoulombPotential(smearing=smearing, prefactor=K_E)
    if kind == "ewald":
        calc = torchpme.EwaldCalculator(pot, lr_wavelength=kw["lr_wavelength"])
    else:
        calc = torchpme.PMECalculator(pot, mesh_spacing=kw["mesh_spacing"], interpolation_nodes=kw["nodes"])
    calc = calc.to(torch.float64)

    def fn(q, pos, cell):
        idx, dist = _half_list(pos, cell, r_cut)
        return (q[:, None] * calc(q[:, None], cell, pos, idx, dist)).sum()

    return fn


class GeneratedKernels:
    """The Numba long-range kernels of a generated model, driven by IR programs and their
    IR-derived reverse programs (the path `tacegen build --long-range ...` models take)."""

    def __init__(self):
        import tempfile

        from tacegen.backends.long_range_printer import numba_module_source
        from tacegen.backends.numba_printer import load_source

        self.module = load_source(numba_module_source(()), tempfile.mkdtemp(prefix="bench-ewald-"))
        self.names: dict = {}

    def _programs(self, key):
        from dataclasses import replace

        from tacegen.backends.numba_model import python_programs, with_reverse
        from tacegen.ir import dense_ops as d
        from tacegen.ir import long_range as lr
        from tacegen.ir.model import ewald_program
        from tacegen.ir.nodes import NODE, Program

        if key not in self.names:
            name = f"program_{len(self.names)}"
            if key[0] == "les":
                pos, cell = d.vector("positions", NODE), d.array("cell", d.STRUCTURE, (3, 3))
                q, strain = d.array("charges", NODE), d.array("strain", d.STRUCTURE, (3, 3))
                shifts = d.array("shifts", "edge", (3,))
                e = lr.structure_energy("energy_lr")
                op = replace(lr.les_reciprocal(e, pos, q, cell, strain, key[1], key[2]), background=True)
                program = Program(name, "LES", (pos, q, cell, shifts, strain), (), (op,), (e,)).check()
                programs = with_reverse([program], {name: ["positions", "strain"]})
            else:  # one program for every (alpha, r_cut, k_cut): run-time scalars (see energy_forces)
                programs = with_reverse([replace(ewald_program(True), name=name)], {name: ["positions", "strain"]})
            exec(compile(python_programs(programs), name, "exec"), self.module.__dict__)
            self.names[key] = name
        return self.names[key]

    def energy_forces(self, key, q, pos, cell, r_cut=None):
        from tacegen.backends.numba_printer import receiver_offsets, sender_csr

        name = self._programs(key)
        n = pos.shape[0]
        if r_cut is not None:
            from vesin import NeighborList

            i, j, sh = NeighborList(cutoff=float(r_cut), full_list=True).compute(
                pos.numpy(), cell.numpy(), True, "ijS")
            order = np.lexsort((j, i))
            receivers, senders = i[order].astype(np.int64), j[order].astype(np.int64)
            shifts = np.ascontiguousarray(sh[order], dtype=np.float64)
        else:
            receivers = senders = np.zeros(0, np.int64)
            shifts = np.zeros((0, 3))
        sorder, soff = sender_csr(senders, n)
        graph = {"senders": senders, "receivers": receivers, "receiver_offsets": receiver_offsets(receivers, n),
                 "sender_order": sorder, "sender_offsets": soff, "batch": np.zeros(n, np.int64), "num_nodes": n,
                 "num_structures": 1}
        values = {"positions": pos.numpy(), "charges": q.numpy(), "cell": cell.numpy()[None], "shifts": shifts,
                  "strain": np.zeros((1, 3, 3))}
        fn, rev = self.module.__dict__[name], self.module.__dict__[name + "_reverse"]
        import inspect

        def call(f, extra, params):  # program functions: (inputs..., params, graph)
            args = {**values, **extra}
            names = [p for p in inspect.signature(f).parameters if p not in ("params", "graph")]
            return f(*[args[p] for p in names], params, graph)

        params = {}
        if key[0] != "les":
            from tacegen.runtime.long_range import ewald_kernel_parameters

            alpha, real_cut, k_cut = key[1:]
            gamma, self_coefficient = ewald_kernel_parameters(alpha, k_cut)
            params = {"alpha": alpha, "r_cut": real_cut, "k_cut": k_cut, "gamma": gamma,
                      "self_coefficient": self_coefficient}
        (energy,) = call(fn, {}, params)
        d_pos, _ = call(rev, {"d_energy_lr": np.ones(1)}, params)
        return float(energy[0]), torch.from_numpy(-d_pos)


def errors(e, f, e_ref, f_ref):
    rms_ref = float(f_ref.pow(2).mean().sqrt())
    return abs(e - e_ref) / abs(e_ref), float((f - f_ref).pow(2).mean().sqrt()) / rms_ref


def calibrate_pme(q, pos, cell, target, e_ref, f_ref):
    """Fastest (smearing, r_cut, mesh spacing, nodes) on a small grid whose energy and
    force errors are both within ``target = (dE/E, dF/F)`` (best of 3 timings)."""
    best = None
    for r_cut in (6.0, 8.0, 10.0):
        # smearing from the real-space error: erfc(r_cut / (sqrt 2 s)) ~ target
        x = math.sqrt(max(1.0, -math.log(min(target))))
        smearing = r_cut / (math.sqrt(2.0) * x)
        for nodes in (4, 5, 6, 7):
            for ratio in (1.0, 0.75, 0.5, 0.35, 0.25):
                fn = torchpme_fn("pme", smearing, r_cut, mesh_spacing=ratio * smearing, nodes=nodes)
                dt, (e, f) = timed(fn, q, pos, cell, 3)
                err_e, err_f = errors(e, f, e_ref, f_ref)
                if err_e <= target[0] and err_f <= target[1]:
                    if best is None or dt < best[0]:
                        best = (dt, dict(smearing=smearing, r_cut=r_cut, mesh_spacing=ratio * smearing, nodes=nodes))
                    break  # finer meshes only cost more
    return None if best is None else best[1]


def les_mesh_fn(accuracy: float):
    from tacegen.runtime.mesh import mesh_reciprocal_energy, mesh_settings

    order, oversampling = mesh_settings(accuracy)
    sigma = 1.0

    def fn(q, pos, cell):
        return mesh_reciprocal_energy(pos, q, cell, 0.5 * sigma * sigma, math.pi,
                                      1.0 / (sigma * math.sqrt(2.0 * math.pi)), False, order, oversampling)

    return fn


def ewald_mesh_fn(accuracy: float, mesh_accuracy: float, n: int, volume: float):
    """Classic Ewald: erfc real space within MESH_REAL_CUTOFF (vesin half list) + mesh."""
    from tacegen.runtime.electrostatics import ewald_alpha_for_real_cutoff, ewald_cutoff
    from tacegen.runtime.mesh import MESH_REAL_CUTOFF, mesh_reciprocal_energy, mesh_settings

    order, oversampling = mesh_settings(mesh_accuracy)
    r_cut = MESH_REAL_CUTOFF
    alpha = ewald_alpha_for_real_cutoff(r_cut, n, volume, accuracy)
    k_cut = ewald_cutoff(False, alpha, n, volume, accuracy)

    def fn(q, pos, cell):
        idx, dist = _half_list(pos, cell, r_cut)
        real = K_E * (q[idx[:, 0]] * q[idx[:, 1]] * torch.erfc(alpha * dist) / dist).sum()
        recip = mesh_reciprocal_energy(pos, q, cell, 1.0 / (4.0 * alpha * alpha), k_cut, alpha / math.sqrt(math.pi),
                                       False, order, oversampling)
        return real + recip

    return fn, f"alpha={alpha:.3f} r_c={r_cut:.1f} k_c={k_cut:.3f}"


def scaling(args, have_tpme):
    """The mesh table of ``--scaling`` (module docstring)."""
    rows = {}
    errs = {}
    pme_params = None
    for n in args.sizes:
        q, pos, cell = make_system(n)
        vol = float(torch.linalg.det(cell))
        reps = 1 if n >= 8192 else 3
        first = n == args.sizes[0]
        if first:
            e_les, f_les = energy_and_forces(lambda a, b, c: les_energy_periodic(a, b, c, 1.0, math.pi), q, pos, cell)
            e_ref, f_ref = energy_and_forces(lambda a, b, c: ewald_energy(a, b, c, accuracy=args.ref_accuracy),
                                             q, pos, cell)
        fn = les_mesh_fn(args.mesh_accuracy)
        t, (e, f) = timed(fn, q, pos, cell, reps)
        rows.setdefault("LES-mesh", {})[n] = t
        if first:
            errs["LES-mesh"] = errors(e, f, e_les, f_les)
        fn, note = ewald_mesh_fn(args.accuracy, args.mesh_accuracy, n, vol)
        t, (e, f) = timed(fn, q, pos, cell, reps)
        rows.setdefault("Ewald-mesh", {})[n] = t
        if first:
            errs["Ewald-mesh"] = errors(e, f, e_ref, f_ref)
        if have_tpme:
            if pme_params is None:
                target = (max(errs["Ewald-mesh"][0], 1e-12), max(errs["Ewald-mesh"][1], 1e-12))
                pme_params = calibrate_pme(q, pos, cell, target, e_ref, f_ref) or dict(
                    smearing=10.0 / (math.sqrt(2) * 4.0), r_cut=10.0, mesh_spacing=0.25 * 10.0 / (math.sqrt(2) * 4.0),
                    nodes=7)
            pp = pme_params
            fn = torchpme_fn("pme", pp["smearing"], pp["r_cut"], mesh_spacing=pp["mesh_spacing"], nodes=pp["nodes"])
            t, (e, f) = timed(fn, q, pos, cell, reps)
            rows.setdefault("tpme-PME", {})[n] = t
            if first:
                errs["tpme-PME"] = errors(e, f, e_ref, f_ref)
        print(f"[N={n}] " + "  ".join(f"{m} {rows[m][n]:.3f} s" for m in rows), flush=True)
    sizes = list(args.sizes)
    print()
    print(f"Mesh path, E+F, float64, {args.threads} threads, {DENSITY} atoms/Å^3; seconds (best of the repeats)")
    print("| method | " + " | ".join(f"N={n}" for n in sizes) + " | exponent | dE/E | dF/F (at N=" + f"{sizes[0]}) |")
    print("|" + "---|" * (len(sizes) + 4))
    for m, ts in rows.items():
        expo = fit_exponent(list(ts), list(ts.values())) if len(ts) > 1 else float("nan")
        e_err, f_err = errs.get(m, (float("nan"), float("nan")))
        print(f"| {m} | " + " | ".join(f"{ts[n]:.3f}" for n in sizes) + f" | {expo:.2f} | {e_err:.1e} | {f_err:.1e} |")
    print("(LES-mesh errors against the direct LES sum; Ewald-mesh and tpme-PME against Ewald at "
          f"{args.ref_accuracy:g}.)")
    print()
    print("t / (N log N), normalised to the smallest N (1.00 everywhere = N log N growth):")
    for m, ts in rows.items():
        base = ts[sizes[0]] / (sizes[0] * math.log(sizes[0]))
        print(f"  {m:10s} " + "  ".join(f"{ts[n] / (n * math.log(n)) / base:5.2f}" for n in sizes))
    if have_tpme and 8192 in rows.get("tpme-PME", {}):
        for m in ("LES-mesh", "Ewald-mesh"):
            print(f"N=8192: {m} / tpme-PME time = {rows[m][8192] / rows['tpme-PME'][8192]:.2f}")
    if pme_params is not None:
        print(f"tpme-PME parameters: {pme_params}")


def fit_exponent(ns, ts):
    x = np.log(np.asarray(ns, float))
    y = np.log(np.asarray(ts, float))
    return float(np.polyfit(x, y, 1)[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--accuracy", type=float, default=1e-6, help="ewald_energy accuracy")
    ap.add_argument("--ref-accuracy", type=float, default=1e-10, help="accuracy of the error reference")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats, best kept (1 for N >= 8192)")
    ap.add_argument("--no-torchpme", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="skip the accuracy reference")
    ap.add_argument("--scaling", action="store_true",
                    help="the mesh path from 1,024 to 32,768 atoms against torch-pme's PME (default sizes)")
    ap.add_argument("--mesh-accuracy", type=float, default=1e-6, help="mesh accuracy (tacegen.runtime.mesh)")
    args = ap.parse_args(argv)
    if args.scaling and args.sizes == [512, 2048, 8192]:
        args.sizes = [1024, 2048, 4096, 8192, 16384, 32768]

    torch.set_num_threads(args.threads)
    try:
        import torchpme  # noqa: F401

        have_tpme = not args.no_torchpme
    except ImportError:
        have_tpme = False
        print("torch-pme not installed: skipping its columns")

    if args.scaling:
        scaling(args, have_tpme)
        return
    rows = []  # (method, N, seconds, err_e, err_f, note)
    generated = GeneratedKernels()
    try:
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    pme_params = None
    for n in args.sizes:
        q, pos, cell = make_system(n)
        vol = float(torch.linalg.det(cell))
        reps = 1 if n >= 8192 else args.repeats
        p = ewald_parameters(n, vol, args.accuracy)
        e_ref = f_ref = None
        if not args.no_reference:
            t0 = time.perf_counter()
            e_ref, f_ref = energy_and_forces(lambda a, b, c: ewald_energy(a, b, c, accuracy=args.ref_accuracy), q, pos, cell)
            print(f"[N={n}] reference Ewald (accuracy {args.ref_accuracy:g}) E+F: {time.perf_counter() - t0:.2f} s")

        def add_generated(method, key, r_cut, note, compare=True):
            run = lambda: generated.energy_forces(key, q, pos, cell, r_cut)  # noqa: E731
            run()  # warm-up (compiles the kernels once)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                e, f = run()
                times.append(time.perf_counter() - t0)
            err = errors(e, f, e_ref, f_ref) if (e_ref is not None and compare) else (float("nan"), float("nan"))
            rows.append((method, n, min(times), err[0], err[1], note))
            print(f"[N={n}] {method:11s} {min(times):8.3f} s  dE/E={err[0]:.1e} dF/F={err[1]:.1e}  {note}", flush=True)

        def add(method, fn, note="", compare=True):
            t, (e, f) = timed(fn, q, pos, cell, reps)
            err = errors(e, f, e_ref, f_ref) if (e_ref is not None and compare) else (float("nan"), float("nan"))
            rows.append((method, n, t, err[0], err[1], note))
            print(f"[N={n}] {method:11s} {t:8.3f} s  dE/E={err[0]:.1e} dF/F={err[1]:.1e}  {note}", flush=True)
            return err

        add("LES", lambda a, b, c: les_energy_periodic(a, b, c, sigma=1.0, k_cut=math.pi), "sigma=1, k_c=pi", compare=False)
        add_generated("LES-gen", ("les", 1.0, math.pi), None, "generated kernels, IR reverse pass", compare=False)
        add_generated("Ewald-gen", ("ewald", p.alpha, p.r_cut, p.k_cut), p.r_cut, "generated kernels, same alpha/r_c/k_c")
        ew_err = add(
            "Ewald",
            lambda a, b, c: ewald_energy(a, b, c, accuracy=args.accuracy),
            f"alpha={p.alpha:.3f} r_c={p.r_cut:.2f} k_c={p.k_cut:.3f}",
        )
        if have_tpme:
            smearing = 1.0 / (math.sqrt(2.0) * p.alpha)
            add(
                "tpme-Ewald",
                torchpme_fn("ewald", smearing, p.r_cut, lr_wavelength=math.pi / p.k_cut),
                f"smearing={smearing:.3f} lr_wl={math.pi / p.k_cut:.3f}",
            )
            if pme_params is None and e_ref is not None:
                pme_params = calibrate_pme(q, pos, cell, (max(ew_err[0], 1e-12), max(ew_err[1], 1e-12)), e_ref, f_ref)
                if pme_params is None:
                    print("PME calibration failed to reach the target; using the finest grid tried")
                    pme_params = dict(smearing=10.0 / (math.sqrt(2) * 4.0), r_cut=10.0, mesh_spacing=0.25 * 10.0 / (math.sqrt(2) * 4.0), nodes=7)
            if pme_params is None:
                pme_params = dict(smearing=1.5, r_cut=8.0, mesh_spacing=0.5, nodes=6)
            pp = pme_params
            add(
                "tpme-PME",
                torchpme_fn("pme", pp["smearing"], pp["r_cut"], mesh_spacing=pp["mesh_spacing"], nodes=pp["nodes"]),
                f"smearing={pp['smearing']:.3f} r_c={pp['r_cut']:.1f} h={pp['mesh_spacing']:.3f} nodes={pp['nodes']}",
            )

    methods = list(dict.fromkeys(r[0] for r in rows))
    sizes = list(dict.fromkeys(r[1] for r in rows))
    print()
    print(f"E+F, float64, {args.threads} threads, {DENSITY} atoms/Å^3, cubic box; seconds (best of the timed repeats)")
    header = "| method | " + " | ".join(f"N={n}" for n in sizes) + " | exponent | max dE/E | max dF/F |"
    print(header)
    print("|" + "---|" * (len(sizes) + 4))
    for m in methods:
        mr = [r for r in rows if r[0] == m]
        ts = {r[1]: r[2] for r in mr}
        expo = fit_exponent([r[1] for r in mr], [r[2] for r in mr]) if len(mr) > 1 else float("nan")
        ee = max(r[3] for r in mr)
        ef = max(r[4] for r in mr)
        fmt = lambda x: "-" if math.isnan(x) else f"{x:.1e}"  # noqa: E731
        print(
            f"| {m} | " + " | ".join(f"{ts[n]:.3f}" if n in ts else "-" for n in sizes)
            + f" | {expo:.2f} | {fmt(ee)} | {fmt(ef)} |"
        )
    print("(LES is its own model, sigma = 1 Å and k_c = pi: no error against Ewald.)")
    print()
    for m in methods:
        notes = [f"N={r[1]}: {r[5]}" for r in rows if r[0] == m and r[5]]
        if notes:
            print(f"{m}: " + "; ".join(notes))


if __name__ == "__main__":
    main()
