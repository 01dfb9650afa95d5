"""The paper's linear-network theory (section 3, appendix A, Fig. 2).

The same in prose: docs/design.md#linear-theory.

Task: ``y = A x + noise`` with ``x ~ N(0, I_n)``, Gaussian output noise of standard deviation
``noise_std`` (paper: 1) and ``A = sum_j s_j u_j v_j^T`` of rank d, built from random
(orthonormalised Gaussian) directions u_j (m), v_j (n). Network ``y_hat = W2 W1 x``
(W1: k x n, W2: m x k). The error reaching the hidden layer is ``B e`` with
``e = y - y_hat`` and feedback ``B = Q P`` (Q: k x r, P: r x m)::

    rule          B      Q              P
    "bp"          W2^T   --             --
    "fa"          Q P    fixed random   fixed random
    "lowrank_fa"  Q P    Kolen-Pollack  fixed random (Fig. 2b,c,f)
    "raf"         Q P    Kolen-Pollack  Oja's subspace rule (Fig. 2d,e,g)

``"fa"`` takes any rank r (r = m: the classic full-rank FA; r < m: low-rank FA with Q fixed
too). Updates (paper eqs. 4, 7, 8), averaged over a minibatch of fresh samples, all computed
from the weights before the step:

    dW1 = lr * Q P e x^T
    dW2 = lr * (e x^T W1^T - weight_decay * W2)
    dQ  = lr * (W1 x (P e)^T - weight_decay * Q)
    dP  = lr * (P y y^T (I - P^T P) - weight_decay * P)

so the per-step decay ``lambda`` is ``lr * weight_decay`` (torch's SGD convention) and
``weight_decay`` is the ``lambda`` of the continuous-time equations. With time
``t = lr * step`` (``tau = 1``) the mean of these updates is the ODE of paper eqs. (5), (9),
(10) / (A49) in the basis of ``Sigma_io = A = U S V^T`` (``W1 = W1_bar V^T``, ``W2 = U W2_bar``,
``P = P_bar U^T``, Q unrotated):

    dW1_bar/dt = B_bar (S - W2_bar W1_bar)
    dW2_bar/dt = (S - W2_bar W1_bar) W1_bar^T - weight_decay * W2_bar
    dQ/dt      = W1_bar (S - W2_bar W1_bar)^T P_bar^T - weight_decay * Q
    dP_bar/dt  = P_bar Sigma_oo_bar (I - P_bar^T P_bar) - weight_decay * P_bar

with ``B_bar = Q P_bar`` (``W2_bar^T`` for BP) and ``Sigma_oo_bar = S S^T + noise_std^2 I``. The
paper writes ``S S^T`` (noise-free targets); the noise term leaves Oja's fixed points unchanged
but sets its speed, and keeping it makes the ODE the exact mean of the simulated updates
(``noise_std=0`` gives eqs. 9-10 verbatim, and with ``weight_decay=0`` eq. A49). Samples are
fresh every step (p -> infinity), so ``Sigma_io = A`` exactly.

:func:`simulate` runs the stochastic updates, :func:`integrate_ode` the ODE (fixed-step RK4).
With the same parameters and seed both start from the same task and the same initial weights
and report on the same time axis. :func:`figure2_data` runs the paper's Fig. 2 conditions;
:func:`analysis.figures.theory.plot_figure2` draws its panels b-g.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from itertools import product

import numpy as np
import xarray as xr

from retina_raf.errors import ConfigError, RunError
from retina_raf.plan import RULES as PLAN_RULES

# The rules of the layer plan (retina_raf.plan) that the two-layer theory simulates, with
# their switches from the same table: Q trained (Kolen-Pollack), P trained (Oja).
THEORY_RULES = ("bp", "fa", "lowrank_fa", "raf")
TRAINS_Q = {rule: rule != "bp" and PLAN_RULES[rule][0] for rule in THEORY_RULES}
TRAINS_P = {rule: rule != "bp" and PLAN_RULES[rule][3] == "oja" for rule in THEORY_RULES}

ALIGNMENT_DEFINITION = (
    "alignment[j] = u_j^T (W2 W1) v_j / s_j where Sigma_io = A = U S V^T (u_j, v_j, s_j: j-th "
    "singular vectors and value), i.e. the j-th diagonal entry of W2_bar W1_bar = U^T W2 W1 V "
    "over S_jj: 0 = mode not learned, 1 = mode j of Sigma_io recovered at full strength"
)


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TheoryConfig:
    """Every parameter of one linear-network run (simulation or ODE).

    Sizes: ``n`` inputs, ``k`` hidden units, ``m`` outputs, ``d`` rank of the task (paper
    Fig. 2: n=128, k=64, m=64). ``rank`` is the feedback rank r (1..m; None = m); ``"bp"``
    only takes r = m. The d singular values s_j of the task are spaced linearly from
    ``signal_max`` to ``signal_min`` (coordinate ``singular_value`` of the results).
    Training: ``steps`` minibatches of ``batch_size`` fresh samples at learning rate ``lr``,
    so a run lasts ``lr * steps`` time units (default 12, by when every mode that will be
    learned is). Initial forward weights are Gaussian with standard deviation
    ``init_scale / sqrt(fan_in)``; Q and P are Gaussian with variances ``1/r`` and ``1/m``.
    ``n_records`` + 1 evenly spaced time points are reported. ``dt``: largest RK4 step of the
    ODE, in time units.
    """

    rule: str
    rank: int | None = None
    n: int = 128
    k: int = 64
    m: int = 64
    d: int = 16
    signal_max: float = 3.0
    signal_min: float = 1.0
    noise_std: float = 1.0
    steps: int = 2400
    lr: float = 0.005
    batch_size: int = 32
    weight_decay: float = 0.01
    init_scale: float = 0.1
    seed: int = 0
    n_records: int = 200
    dt: float = 0.05

    def __post_init__(self) -> None:
        if self.rule not in THEORY_RULES:
            raise ConfigError(
                f"unknown linear-theory rule {self.rule!r} (allowed: {', '.join(THEORY_RULES)})"
            )
        for name in ("n", "k", "m", "d", "steps", "batch_size", "n_records", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if value < (0 if name == "seed" else 1):
                raise ConfigError(f"{name} must be {'>= 0' if name == 'seed' else '>= 1'}")
        if self.d > min(self.n, self.m):
            raise ConfigError(f"task rank d={self.d} exceeds min(n, m)={min(self.n, self.m)}")
        rank = self.m if self.rank is None else self.rank
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
            raise ConfigError(f"rank must be an integer in 1..m={self.m}, got {rank!r}")
        if not 1 <= rank <= self.m:
            raise ConfigError(f"feedback rank {rank} is out of range 1..m={self.m}")
        if self.rule == "bp" and rank != self.m:
            raise ConfigError(f"rule 'bp' feeds back through W2^T, rank m={self.m}; got {rank}")
        object.__setattr__(self, "rank", int(rank))
        for name in (
            "signal_max",
            "signal_min",
            "lr",
            "init_scale",
            "dt",
            "noise_std",
            "weight_decay",
        ):
            value = getattr(self, name)
            positive = name not in ("noise_std", "weight_decay")
            if not isinstance(value, (int, float, np.floating, np.integer)) or not (
                value > 0 if positive else value >= 0
            ):
                raise ConfigError(
                    f"{name} must be a number {'> 0' if positive else '>= 0'}, got {value!r}"
                )
        if self.signal_min > self.signal_max:
            raise ConfigError("signal_min must not exceed signal_max")

    @property
    def duration(self) -> float:
        """Length of the run in time units (``lr * steps``)."""
        return self.lr * self.steps

    def attrs(self) -> dict:
        """The parameters as NetCDF-safe attributes."""
        return dataclasses.asdict(self)


def make_config(rule: str, rank: int | None = None, **params) -> TheoryConfig:
    """Build a :class:`TheoryConfig`; an unknown parameter name is a :class:`ConfigError`."""
    names = {f.name for f in dataclasses.fields(TheoryConfig)} - {"rule", "rank"}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ConfigError(f"unknown linear-theory parameter(s) {unknown}; valid: {sorted(names)}")
    return TheoryConfig(rule=rule, rank=rank, **params)


# ----------------------------------------------------------------------------- task and weights
@dataclass(frozen=True)
class LinearTask:
    """The task ``y = A x + noise`` and the SVD ``A = U S V^T`` with full orthogonal U, V.

    A: (m, n); U: (m, m); V: (n, n); S: (m, n) rectangular diagonal, nonzero on its first d
    entries; ``singular_values``: (d,), descending.
    """

    A: np.ndarray
    U: np.ndarray
    S: np.ndarray
    V: np.ndarray
    singular_values: np.ndarray


def make_task(cfg: TheoryConfig) -> LinearTask:
    """Draw ``A = sum_j s_j u_j v_j^T`` from random Gaussian directions (paper section 3).

    The directions are orthonormalised (QR of Gaussian matrices, i.e. uniformly random
    orthonormal sets), so that the s_j are exactly the singular values of A; the paper's raw
    Gaussian vectors overlap by O(1/sqrt(m)) and would blur the chosen spectrum. The QR also
    completes U (m, m) and V (n, n) to orthogonal bases for the rotated ODE.
    """
    rng = np.random.default_rng([cfg.seed, 0])
    U, _ = np.linalg.qr(rng.standard_normal((cfg.m, cfg.d)), mode="complete")
    V, _ = np.linalg.qr(rng.standard_normal((cfg.n, cfg.d)), mode="complete")
    strengths = np.linspace(cfg.signal_max, cfg.signal_min, cfg.d)
    A = (U[:, : cfg.d] * strengths) @ V[:, : cfg.d].T
    S = np.zeros((cfg.m, cfg.n))
    S[np.arange(cfg.d), np.arange(cfg.d)] = strengths
    return LinearTask(A=A, U=U, S=S, V=V, singular_values=strengths)


def init_weights(cfg: TheoryConfig) -> dict[str, np.ndarray]:
    """Initial W1 (k, n), W2 (m, k), Q (k, r), P (r, m); W1, W2 do not depend on rule or rank."""
    rng = np.random.default_rng([cfg.seed, 1])
    W1 = cfg.init_scale * rng.standard_normal((cfg.k, cfg.n)) / math.sqrt(cfg.n)
    W2 = cfg.init_scale * rng.standard_normal((cfg.m, cfg.k)) / math.sqrt(cfg.k)
    rng_feedback = np.random.default_rng([cfg.seed, 2, cfg.rank])
    Q = rng_feedback.standard_normal((cfg.k, cfg.rank)) / math.sqrt(cfg.rank)
    P = rng_feedback.standard_normal((cfg.rank, cfg.m)) / math.sqrt(cfg.m)
    return {"W1": W1, "W2": W2, "Q": Q, "P": P}


# ----------------------------------------------------------------------------- products
# OpenBLAS runs a product of M*N*K <= 4 * 65536 multiply-adds on one thread and splits larger
# ones over threads. For products this small threads only cost, most of all on a machine whose
# cores are busy (docs/performance.md#linear-theory). So big products go in column blocks.
_SINGLE_THREAD_MACS = 4 * 65536


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-d arrays, computed in column blocks that OpenBLAS keeps on one thread."""
    rows, inner = a.shape
    cols = b.shape[1]
    if rows * inner * cols <= _SINGLE_THREAD_MACS:
        return a @ b
    block = max(1, _SINGLE_THREAD_MACS // (rows * inner))
    return np.concatenate([a @ b[:, i : i + block] for i in range(0, cols, block)], axis=1)


@contextlib.contextmanager
def _divergence_is_run_error(cfg: TheoryConfig, step_name: str):
    """Overflow means the updates diverged (step too large): one RunError, no numpy warnings."""
    try:
        with np.errstate(over="raise", invalid="raise"):
            yield
    except FloatingPointError as exc:
        step = getattr(cfg, step_name)
        message = f"{cfg.rule} r={cfg.rank} diverged ({exc}); lower {step_name} (now {step})"
        raise RunError(message) from None


# ----------------------------------------------------------------------------- measurements
def _record_steps(cfg: TheoryConfig) -> np.ndarray:
    return np.unique(np.linspace(0, cfg.steps, cfg.n_records + 1).round().astype(int))


def _measure(cfg: TheoryConfig, basis: tuple, W1, W2, P) -> tuple:
    """Alignment (d,), population loss, relative error and feedback overlap of one state.

    ``basis = (target, out_modes, in_modes, singular_values)``: the task matrix (m, n), its top-d
    left (m, d) and right (n, d) singular vectors and values (d,) -- ``(A, U_d, V_d, s)`` for the
    weights as trained, ``(S, I_d, I_d, s)`` for the rotated weights of the ODE (the Frobenius
    norm and the row-space overlap do not change under the rotation).
    """
    target, out_modes, in_modes, singular_values = basis
    product_in_modes = (out_modes.T @ W2) @ _matmul(W1, in_modes)
    alignment = np.diag(product_in_modes) / singular_values
    residual = np.linalg.norm(target - _matmul(W2, W1)) ** 2
    loss = residual + cfg.m * cfg.noise_std**2
    relative_error = math.sqrt(residual) / np.linalg.norm(target)
    if cfg.rule == "bp":
        overlap = np.nan
    else:
        top = min(cfg.rank, cfg.d)
        row_space, _ = np.linalg.qr(P.T)  # orthonormal basis of P's row space, (m, r)
        overlap = np.linalg.norm(row_space.T @ out_modes[:, :top]) ** 2 / top
    if not np.isfinite(loss):
        raise RunError(f"{cfg.rule} r={cfg.rank} diverged; lower lr (or dt for the ODE)")
    return alignment, loss, relative_error, overlap


def _dataset(cfg: TheoryConfig, task: LinearTask, steps, records, source: str) -> xr.Dataset:
    alignment, loss, relative_error, overlap = (np.array(v) for v in zip(*records, strict=True))
    steps = np.asarray(steps)
    ds = xr.Dataset(
        {
            "alignment": (("time", "mode"), alignment),
            "loss": ("time", loss),
            "relative_error": ("time", relative_error),
            "feedback_overlap": ("time", overlap),
        },
        coords={
            "time": ("time", cfg.lr * steps),
            "step": ("time", steps),
            "mode": ("mode", np.arange(1, cfg.d + 1)),
            "singular_value": ("mode", task.singular_values),
        },
        attrs={
            "Conventions": "CF-1.10",
            **cfg.attrs(),
            "source": source,
            "alignment_definition": ALIGNMENT_DEFINITION,
            "time_unit": "lr * step (tau = 1)",
        },
    )
    ds["alignment"].attrs = {
        "long_name": "alignment of singular mode j of W2 W1 with Sigma_io",
        "definition": ALIGNMENT_DEFINITION,
    }
    ds["loss"].attrs = {"long_name": "population loss E||y - W2 W1 x||^2 (paper eq. 3)"}
    ds["relative_error"].attrs = {"long_name": "||A - W2 W1||_F / ||A||_F"}
    ds["feedback_overlap"].attrs = {
        "long_name": "fraction of the top min(r, d) left singular vectors of Sigma_io inside "
        "the row space of P (NaN for bp)"
    }
    # UDUNITS: a dimensionless time, learning rate x steps (time_unit says so too)
    ds["time"].attrs = {"long_name": "time, learning rate x training steps", "units": "1"}
    return ds


# ----------------------------------------------------------------------------- simulation
def simulate(rule: str, rank: int | None = None, progress: bool = False, **params) -> xr.Dataset:
    """Train the linear network with the stochastic updates of the module docstring.

    Each step draws ``batch_size`` fresh samples ``x ~ N(0, I_n)``, ``y = A x + noise_std * xi``
    and applies the minibatch mean of the per-sample updates. ``params`` are
    :class:`TheoryConfig` fields (defaults: n=128, k=64, m=64, d=16, steps=2400, lr=0.005,
    batch_size=32, weight_decay=0.01, seed=0). The seed fixes the task, the initial weights
    (shared with :func:`integrate_ode`) and the samples.

    Returns an ``xarray.Dataset``: ``alignment`` (time, mode) as defined in
    ``ALIGNMENT_DEFINITION``; ``loss``, ``relative_error``, ``feedback_overlap`` (time);
    coordinates ``time`` (= lr * step), ``step``, ``mode`` (1..d), ``singular_value`` (mode);
    every parameter as an attribute. Raises ConfigError on bad parameters, RunError when the
    updates diverge.
    """
    cfg = make_config(rule, rank, **params)
    task = make_task(cfg)
    w = init_weights(cfg)
    W1, W2, Q, P = w["W1"], w["W2"], w["Q"], w["P"]
    rng = np.random.default_rng([cfg.seed, 3])
    basis = (task.A, task.U[:, : cfg.d], task.V[:, : cfg.d], task.singular_values)
    record_at = set(_record_steps(cfg).tolist())
    records, batch, lr, decay = [], cfg.batch_size, cfg.lr, cfg.weight_decay
    train_q, train_p, bp = TRAINS_Q[cfg.rule], TRAINS_P[cfg.rule], cfg.rule == "bp"
    chunk = max(1, 2**20 // (cfg.n * batch))  # steps whose samples are drawn in one RNG call

    steps = range(cfg.steps + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"simulate {cfg.rule} r={cfg.rank}", leave=False, disable=None)
    with _divergence_is_run_error(cfg, "lr"):
        for step in steps:
            if step in record_at:
                records.append(_measure(cfg, basis, W1, W2, P))
            if step == cfg.steps:
                break
            if step % chunk == 0:
                xs = rng.standard_normal((chunk, cfg.n, batch))
                noise = cfg.noise_std * rng.standard_normal((chunk, cfg.m, batch))
            X = xs[step % chunk]
            Y = _matmul(task.A, X) + noise[step % chunk]
            H = _matmul(W1, X)
            E = Y - W2 @ H  # error e of every sample, (m, batch)
            PE = None if bp else P @ E
            hidden_error = W2.T @ E if bp else Q @ PE
            if train_q:
                Q = Q + lr * (H @ PE.T / batch - decay * Q)
            if train_p:
                PY = P @ Y
                P = P + lr * (PY @ (Y.T - PY.T @ P) / batch - decay * P)
            W1, W2 = (
                W1 + lr / batch * _matmul(hidden_error, X.T),
                W2 + lr * (E @ H.T / batch - decay * W2),
            )
    return _dataset(cfg, task, sorted(record_at), records, "simulation")


# ----------------------------------------------------------------------------- ODE
def _ode_rhs(cfg: TheoryConfig, S, output_cov, state):
    """Right-hand side of paper eqs. (9), (10) in the rotated basis; state = (W1, W2, Q, P)."""
    W1, W2, Q, P = state
    E = S - _matmul(W2, W1)
    PE = None if cfg.rule == "bp" else _matmul(P, E)
    dW1 = _matmul(W2.T, E) if cfg.rule == "bp" else _matmul(Q, PE)
    dW2 = _matmul(E, W1.T) - cfg.weight_decay * W2
    dQ = _matmul(W1, PE.T) - cfg.weight_decay * Q if TRAINS_Q[cfg.rule] else np.zeros_like(Q)
    if TRAINS_P[cfg.rule]:
        P_cov = P * output_cov  # P Sigma_oo_bar; Sigma_oo_bar is diagonal
        dP = P_cov - (P_cov @ P.T) @ P - cfg.weight_decay * P
    else:
        dP = np.zeros_like(P)
    return dW1, dW2, dQ, dP


def _rk4_step(rhs, state: tuple, h: float) -> tuple:
    def shifted(slopes, factor):
        return tuple(x + factor * dx for x, dx in zip(state, slopes, strict=True))

    k1 = rhs(state)
    k2 = rhs(shifted(k1, h / 2))
    k3 = rhs(shifted(k2, h / 2))
    k4 = rhs(shifted(k3, h))
    return tuple(
        x + h / 6 * (a + 2 * b + 2 * c + d)
        for x, a, b, c, d in zip(state, k1, k2, k3, k4, strict=True)
    )


def integrate_ode(rule: str, rank: int | None = None, **params) -> xr.Dataset:
    """Integrate the continuous-time limit (paper eqs. 5, 9, 10 / A49) with fixed-step RK4.

    Same parameters, task, initial weights (rotated into the basis of Sigma_io) and time axis
    ``time = lr * step`` as :func:`simulate` (``batch_size`` has no effect here). RK4 steps are
    at most ``dt`` time units long. Returns a dataset of the same form as :func:`simulate`'s,
    measured by the same code, with attribute ``source="ode"``.
    """
    cfg = make_config(rule, rank, **params)
    task = make_task(cfg)
    w = init_weights(cfg)
    state = (_matmul(w["W1"], task.V), task.U.T @ w["W2"], w["Q"], w["P"] @ task.U)
    output_cov = np.diag(task.S @ task.S.T) + cfg.noise_std**2
    identity = np.eye(max(cfg.m, cfg.n))
    basis = (task.S, identity[: cfg.m, : cfg.d], identity[: cfg.n, : cfg.d], task.singular_values)

    def rhs(s):
        return _ode_rhs(cfg, task.S, output_cov, s)

    def measure(s):
        return _measure(cfg, basis, s[0], s[1], s[3])

    record_at = _record_steps(cfg)
    times = cfg.lr * record_at
    records = [measure(state)]
    with _divergence_is_run_error(cfg, "dt"):
        for t0, t1 in zip(times[:-1], times[1:], strict=True):
            n_sub = max(1, math.ceil((t1 - t0) / cfg.dt - 1e-9))
            for _ in range(n_sub):
                state = _rk4_step(rhs, state, (t1 - t0) / n_sub)
            records.append(measure(state))
    return _dataset(cfg, task, record_at, records, "ode")


# ----------------------------------------------------------------------------- Fig. 2
def figure2_runs(low_rank: int = 8, m: int = 64) -> dict[str, tuple[str, int]]:
    """The conditions of Fig. 2: label -> (rule, feedback rank); BP is the reference."""
    conditions = [
        ("bp", m),
        ("lowrank_fa", m),
        ("lowrank_fa", low_rank),
        ("raf", m),
        ("raf", low_rank),
    ]
    return {f"{rule} r={rank}": (rule, rank) for rule, rank in conditions}


def figure2_data(
    low_rank: int = 8, seeds=(0, 1, 2), progress: bool = False, **params
) -> xr.Dataset:
    """Simulate and integrate every Fig. 2 condition for every seed.

    ``params`` are :class:`TheoryConfig` fields except rule, rank and seed. Returns a dataset
    with ``alignment`` (run, source, seed, time, mode) and ``loss``, ``feedback_overlap``
    (run, source, seed, time); ``source`` is "simulation" or "theory" (the ODE); coordinates
    ``rule`` and ``rank`` on run, ``singular_value`` on mode; the parameters as attributes.
    Runs: BP (reference), low-rank FA and RAF at r = m and r = ``low_rank``.
    """
    if {"rule", "rank", "seed"} & set(params):
        raise ConfigError("figure2_data takes low_rank and seeds, not rule/rank/seed")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("figure2_data needs at least one seed")
    m = params.get("m", TheoryConfig.m)
    runs = figure2_runs(low_rank, m)
    for rule, rank in runs.values():  # every config checked before any work is done
        for seed in seeds:
            make_config(rule, rank, seed=seed, **params)
    sources = ("simulation", "theory")
    jobs = list(product(runs, sources, seeds))
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="Fig. 2 runs", unit="run", disable=None)  # None: terminals only
    results = {}
    for label, source, seed in jobs:
        rule, rank = runs[label]
        run = simulate if source == "simulation" else integrate_ode
        results[label, source, seed] = run(rule, rank, seed=seed, **params)

    def stack(var: str) -> np.ndarray:
        values = np.array([results[key][var].values for key in product(runs, sources, seeds)])
        return values.reshape(len(runs), len(sources), len(seeds), *values.shape[1:])

    first = results[next(iter(results))]
    cfg = make_config("bp", None, **params)
    return xr.Dataset(
        {
            "alignment": (("run", "source", "seed", "time", "mode"), stack("alignment")),
            "loss": (("run", "source", "seed", "time"), stack("loss")),
            "feedback_overlap": (("run", "source", "seed", "time"), stack("feedback_overlap")),
        },
        coords={
            "run": list(runs),
            "rule": ("run", [rule for rule, _ in runs.values()]),
            "rank": ("run", [rank for _, rank in runs.values()]),
            "source": list(sources),
            "seed": seeds,
            "time": first["time"].values,
            "step": ("time", first["step"].values),
            "mode": first["mode"].values,
            "singular_value": ("mode", first["singular_value"].values),
        },
        attrs={
            **{k: v for k, v in cfg.attrs().items() if k not in ("rule", "rank", "seed")},
            "low_rank": int(low_rank),
            "alignment_definition": ALIGNMENT_DEFINITION,
            "time_unit": "lr * step (tau = 1)",
        },
    )
