"""The one message a machine sends to the server, and its checks.

A :class:`LocalMessage` holds the local model, the number of rows it was
fitted on, and a covariate sample (or only the covariates' mean and
covariance). It is written as a compressed .npz archive (a JSON header and
float64 arrays; nothing is pickled) or as JSON.

A message is untrusted input. Reading one checks, before any array is
decompressed, the file size (``MAX_MESSAGE_BYTES``) and every array's
declared size; then :meth:`LocalMessage.validate` checks every field:

- ``n`` (and ``heldout_n``) an integer in [1, ``MAX_N``] ([0, MAX_N]);
- at most ``MAX_EXPERTS`` experts on at most ``MAX_FEATURES`` covariates;
- every value finite; the covariates of the sample and their mean within
  ``MAX_ABS``; the covariance symmetric positive semi-definite with variances
  at most ``MAX_ABS**2``;
- the model's expert means and gate logits within ``MAX_ABS`` wherever the
  server will evaluate them (at the sample's rows, or over the 4-sigma
  ellipsoid of the covariates' Gaussian), and its variances in
  (0, ``MAX_VAR``]: so that no cost, Gram matrix or prediction of the
  aggregate can overflow;
- a sample of at most ``n + heldout_n`` rows (it is drawn from the shard).

Each failure is a ValueError of one line naming the field and the value.

In a refinement round a machine sends back the M-step statistics of its rows
at the global model (:func:`round_to_bytes`); :func:`round_from_bytes` checks
them against that model before the server uses them.
"""

from __future__ import annotations

import hashlib
import io
import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._params import MoEParams
from .io import MAX_JSON_BYTES, check_file, parse_json, read_json, read_npz, write_bytes

__all__ = ["LocalMessage", "round_to_bytes", "round_from_bytes", "save_round", "load_round"]

MESSAGE_FORMAT = "fastmoe.LocalMessage"
MESSAGE_VERSION = 1
#: largest message (file, and arrays once decompressed) the server reads
MAX_MESSAGE_BYTES = 64 * 2**20
#: largest sample size a message may claim
MAX_N = 10**12
#: largest number of experts and of covariates in a message
MAX_EXPERTS = 1000
MAX_FEATURES = 1000
#: bound on covariates, expert means and gate logits where the server uses them
MAX_ABS = 1e50
#: bounds on the experts' variances: with means within MAX_ABS, every KL or
#: W2 cost between two experts stays finite (ratios at most 1e200)
MAX_VAR = 1e100
MIN_VAR = 1e-100
#: relative tolerance of the symmetry and semi-definiteness checks
_SYM_TOL = 1e-8


def _count(value, name: str, minimum: int, what: str = "message field") -> int:
    """An integer count in [minimum, MAX_N] (an integral float is accepted)."""
    ok = isinstance(value, (numbers.Integral, float, np.floating)) and not isinstance(
        value, (bool, np.bool_))
    if ok and not isinstance(value, numbers.Integral):
        ok = bool(np.isfinite(value)) and float(value).is_integer()
    if not ok or not minimum <= value <= MAX_N:
        raise ValueError(f"{what} {name} must be an integer in [{minimum}, {MAX_N:.0e}]; "
                         f"got {value!r}.")
    return int(value)


def _real(value, name: str, minimum: float | None = None, what: str = "message field") -> float:
    ok = isinstance(value, (numbers.Real, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not np.isfinite(value) or (minimum is not None and value < minimum):
        rel = "" if minimum is None else f" >= {minimum:g}"
        raise ValueError(f"{what} {name} must be a finite number{rel}; got {value!r}.")
    return float(value)


def _array(value, name: str, ndim: int, what: str = "message field") -> np.ndarray:
    """A finite float64 array of ``ndim`` dimensions from a list or an array."""
    try:
        a = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{what} {name} is not an array ({exc}).") from None
    if a.dtype.kind not in "biuf" or a.ndim != ndim:
        raise ValueError(f"{what} {name} must be a {ndim}-D array of numbers; got "
                         f"{a.ndim}-D dtype {a.dtype}.")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} {name} contains NaN or infinity.")
    return a


@dataclass(frozen=True, eq=False)
class LocalMessage:
    """What one machine sends to the server; nothing else leaves a shard.

    Attributes
    ----------
    params : MoEParams
        The local model.
    n : int
        Number of rows the local model was fitted on.
    support : ndarray of shape (s, d) or None
        Covariate rows sampled from the shard, or None when the machine sends
        only their moments (``support="gaussian"``).
    support_mean, support_cov : ndarray of shape (d,) and (d, d)
        Mean and covariance of the shard's covariates (always sent; used when
        ``support`` is None).
    heldout_loglik, heldout_n : float, int
        Log-likelihood of the local model on rows the machine held out of its
        fit, and how many (0 when none), for model selection at the server.
    fit_time : float
        Seconds the local fit took.
    meta : dict
        Free-form facts about the fit (converged, n_iter, warnings).
    """

    params: MoEParams
    n: int
    support: np.ndarray | None
    support_mean: np.ndarray
    support_cov: np.ndarray
    heldout_loglik: float = 0.0
    heldout_n: int = 0
    fit_time: float = 0.0
    meta: dict = field(default_factory=dict)

    # -- checks ----------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError (one line) unless every field is within the limits
        of the module docstring."""
        if not isinstance(self.params, MoEParams):
            raise ValueError(f"message params must be MoEParams; got "
                             f"{type(self.params).__name__}.")
        p = self.params
        K, d = p.n_experts, p.n_features
        if K > MAX_EXPERTS or d > MAX_FEATURES:
            raise ValueError(f"message model has {K} experts on {d} covariates; at most "
                             f"{MAX_EXPERTS} and {MAX_FEATURES} are accepted.")
        n = _count(self.n, "n", 1)
        held = _count(self.heldout_n, "heldout_n", 0)
        _real(self.heldout_loglik, "heldout_loglik")
        _real(self.fit_time, "fit_time", 0.0)
        if not isinstance(self.meta, dict):
            raise ValueError(f"message field meta must be a dict; got "
                             f"{type(self.meta).__name__}.")
        mean = _array(self.support_mean, "support_mean", 1)
        cov = _array(self.support_cov, "support_cov", 2)
        if mean.shape != (d,) or cov.shape != (d, d):
            raise ValueError(f"message support moments must have shapes ({d},) and ({d}, {d}) "
                             f"for a model on {d} covariates; got {mean.shape} and {cov.shape}.")
        if np.max(np.abs(mean)) > MAX_ABS:
            raise ValueError(f"message support_mean has a value beyond {MAX_ABS:g}.")
        _check_covariance(cov)
        if self.support is not None:
            S = _array(self.support, "support", 2)
            if S.shape[0] < 1 or S.shape[1] != d:
                raise ValueError(f"message support sample must have shape (s, {d}) with s >= 1; "
                                 f"got {S.shape}.")
            if S.shape[0] > n + held:
                raise ValueError(f"message support sample has {S.shape[0]} rows but the shard "
                                 f"claims {n + held} (n + heldout_n); a sample cannot be larger "
                                 "than its shard.")
            if np.max(np.abs(S)) > MAX_ABS:
                raise ValueError(f"message support sample has a value beyond {MAX_ABS:g}.")
        _check_model_range(p, self.support, mean, cov)

    # -- serialisation ---------------------------------------------------------
    def _fields(self) -> dict:
        return {"format": MESSAGE_FORMAT, "version": MESSAGE_VERSION, "n": int(self.n),
                "heldout_loglik": float(self.heldout_loglik),
                "heldout_n": int(self.heldout_n), "fit_time": float(self.fit_time),
                "params": self.params.to_dict(),
                "support_mean": np.asarray(self.support_mean).tolist(),
                "support_cov": np.asarray(self.support_cov).tolist(),
                "support": None if self.support is None else np.asarray(self.support).tolist(),
                "meta": self.meta}

    def to_bytes(self) -> bytes:
        """Compact binary form (a compressed .npz archive; nothing pickled).

        Returns
        -------
        bytes
            What :meth:`from_bytes` reads back.
        """
        buf = io.BytesIO()
        header = self._fields()
        arrays = {"support_mean": self.support_mean, "support_cov": self.support_cov}
        if self.support is not None:
            arrays["support"] = self.support
        for name in ("support", "support_mean", "support_cov"):
            header.pop(name)
        np.savez_compressed(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                            **{k: np.asarray(v, np.float64) for k, v in arrays.items()})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LocalMessage:
        """Read :meth:`to_bytes` output (checked: see the module docstring).

        Parameters
        ----------
        data : bytes
            The archive.

        Returns
        -------
        LocalMessage
            The message, every field checked.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"a message must be bytes; got {type(data).__name__}.")
        # the moments' absence is reported with the header's missing fields
        fields, arrays = _read_archive(data, MESSAGE_FORMAT, MAX_MESSAGE_BYTES, ("header",),
                                       ("support_mean", "support_cov", "support"))
        for name in ("support", "support_mean", "support_cov"):
            if name in fields:
                raise ValueError(f"malformed {MESSAGE_FORMAT}: {name} in both the header and "
                                 "the arrays.")
        fields.update(arrays)
        fields.setdefault("support", None)
        return cls._from_fields(fields)

    @classmethod
    def _from_fields(cls, d: dict) -> LocalMessage:
        _check_format(d, MESSAGE_FORMAT, MESSAGE_VERSION)
        missing = [k for k in ("params", "n", "support_mean", "support_cov") if k not in d]
        if missing:
            raise ValueError(f"malformed {MESSAGE_FORMAT}: missing field(s) {missing}.")
        try:
            params = MoEParams.from_dict(d["params"])
        except ValueError as exc:
            raise ValueError(f"malformed {MESSAGE_FORMAT}: params: {exc}") from None
        support = d.get("support")
        msg = cls(params, d["n"], None if support is None else _array(support, "support", 2),
                  _array(d["support_mean"], "support_mean", 1),
                  _array(d["support_cov"], "support_cov", 2),
                  d.get("heldout_loglik", 0.0), d.get("heldout_n", 0), d.get("fit_time", 0.0),
                  d.get("meta", {}))
        msg.validate()
        return msg._normalised()

    def _normalised(self) -> LocalMessage:
        """The same message with its counts as ints and arrays as float64."""
        return LocalMessage(self.params, int(self.n), None if self.support is None else
                            np.asarray(self.support, np.float64),
                            np.asarray(self.support_mean, np.float64),
                            np.asarray(self.support_cov, np.float64),
                            float(self.heldout_loglik), int(self.heldout_n),
                            float(self.fit_time), dict(self.meta))

    def digest(self) -> str:
        """SHA-256 of what the message says, not of its file's bytes.

        The model, the rows, the covariate sample and moments: one machine's
        message saved twice, as .npz and as .json, has one digest.

        Returns
        -------
        str
            The hexadecimal digest.
        """
        h = hashlib.sha256(model_digest(self.params).encode())
        for a in (self.support_mean, self.support_cov,
                  np.zeros((0, 0)) if self.support is None else self.support,
                  np.array([self.n, self.heldout_n], dtype=float)):
            a = np.ascontiguousarray(a, dtype=np.float64)
            h.update(repr(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def save(self, path) -> None:
        """Write to ``.npz`` (binary) or ``.json``, whole or not at all.

        Parameters
        ----------
        path : str or path-like
            The file; its suffix chooses the format.
        """
        path = Path(path)
        if path.suffix == ".npz":
            write_bytes(path, self.to_bytes(), "message file")
        elif path.suffix == ".json":
            write_bytes(path, json.dumps(self._fields()).encode(), "message file")
        else:
            raise ValueError(f"unknown message file type {path.suffix!r}; use .npz or .json.")

    @classmethod
    def load(cls, path) -> LocalMessage:
        """Read a file written by :meth:`save` (checked: see the module docstring).

        Parameters
        ----------
        path : str or path-like
            A ``.npz`` or ``.json`` message.

        Returns
        -------
        LocalMessage
            The message, every field checked.
        """
        path = Path(path)
        if path.suffix not in (".npz", ".json"):
            raise ValueError(f"unknown message file type {path.suffix!r}; use .npz or .json.")
        if path.suffix == ".npz":
            if not path.exists():
                raise FileNotFoundError(f"message file {str(path)!r} does not exist.")
            if path.is_file() and path.stat().st_size > MAX_MESSAGE_BYTES:
                raise ValueError(f"message file {str(path)!r} has {path.stat().st_size} bytes, "
                                 f"more than the limit of {MAX_MESSAGE_BYTES}.")
            return cls.from_bytes(path.read_bytes())
        return cls._from_fields(read_json(path, "message file",
                                          min(MAX_JSON_BYTES, 4 * MAX_MESSAGE_BYTES)))


def _read_archive(data, fmt: str, max_bytes: int, required, optional=()) -> tuple:
    """(header fields, the other arrays) of an archive of ``fmt``: at most
    ``max_bytes``, exactly the ``required`` arrays (the header among them)
    and any of the ``optional`` ones, the header a JSON object."""
    try:
        arrays = read_npz(bytes(data), f"a {fmt}", max_bytes)
    except ValueError as exc:
        raise ValueError(f"not a {fmt} ({exc})") from None
    if not set(required) <= set(arrays) <= set(required) | set(optional):
        extra = f" and optionally {', '.join(optional)}" if optional else ""
        raise ValueError(f"not a {fmt} (arrays {sorted(arrays)}; expected "
                         f"{', '.join(required)}{extra}).")
    header = arrays.pop("header")
    if header.dtype != np.uint8 or header.ndim != 1:
        raise ValueError(f"not a {fmt} (its header is not JSON text).")
    try:
        fields = parse_json(header.tobytes())
    except ValueError as exc:
        raise ValueError(f"not a {fmt} (its header is not JSON: {exc}).") from None
    if not isinstance(fields, dict):
        raise ValueError(f"not a {fmt} (its header is not a JSON object).")
    return fields, arrays


def _check_format(fields: dict, fmt: str, version: int) -> None:
    if not isinstance(fields, dict) or fields.get("format") != fmt:
        raise ValueError(f"not a {fmt} (missing or wrong 'format' field).")
    if fields.get("version") != version:
        raise ValueError(f"{fmt} version {fields.get('version')!r} is not supported "
                         f"(this fastmoe reads version {version}).")


def _check_symmetric(a: np.ndarray, label: str) -> float:
    """The largest absolute entry of ``a``, a matrix or a stack of them,
    after checking that each is symmetric to _SYM_TOL of it."""
    scale = float(np.max(np.abs(a)))
    if np.max(np.abs(a - np.swapaxes(a, -1, -2))) > _SYM_TOL * scale:
        raise ValueError(f"{label} is not symmetric.")
    return scale


def _check_semidefinite(a: np.ndarray, label: str, sign: float = 1.0) -> None:
    """``a`` symmetric and ``sign * a`` positive semi-definite."""
    scale = _check_symmetric(a, label)
    if scale > 0:
        low = float(np.linalg.eigvalsh(sign * (a + a.T) / 2)[0])
        if low < -_SYM_TOL * scale * a.shape[0]:
            kind = "positive" if sign > 0 else "negative"
            raise ValueError(f"{label} is not {kind} semi-definite (an eigenvalue of "
                             f"{sign * low:.3g}).")


def _check_covariance(cov: np.ndarray) -> None:
    if float(np.max(np.abs(cov))) > MAX_ABS**2:
        raise ValueError(f"message support_cov has a value beyond {MAX_ABS**2:g}.")
    _check_semidefinite(cov, "message support_cov")


def _check_model_range(p: MoEParams, support, mean, cov) -> None:
    """Expert means and gate logits within MAX_ABS where the server evaluates
    them, variances within [MIN_VAR, MAX_VAR]."""
    if np.max(p.expert_var) > MAX_VAR:
        raise ValueError(f"message model has an expert variance of {np.max(p.expert_var):.3g}, "
                         f"beyond {MAX_VAR:g}.")
    if np.min(p.expert_var) < MIN_VAR:
        raise ValueError(f"message model has an expert variance of {np.min(p.expert_var):.3g}, "
                         f"below {MIN_VAR:g}: the transport costs would overflow.")
    live = np.isfinite(p.gate_intercept)
    for what, coef, icpt in (("expert means", p.expert_coef, p.expert_intercept),
                             ("gate logits", p.gate_coef[live], p.gate_intercept[live])):
        with np.errstate(over="ignore", invalid="ignore"):
            if support is not None:
                top = np.max(np.abs(support @ coef.T + icpt))
            else:  # over the 4-sigma ellipsoid of N(mean, cov)
                spread = np.sqrt(np.maximum(np.einsum("kj,jl,kl->k", coef, cov, coef), 0.0))
                top = np.max(np.abs(coef @ mean + icpt) + 4.0 * spread)
        if not top <= MAX_ABS:
            raise ValueError(f"message model's {what} reach {top:.3g} on its covariates, "
                             f"beyond {MAX_ABS:g}: its coefficients are out of range.")


# ----------------------------------------------------------------------------
# refinement rounds: what a machine sends back at the global model
# ----------------------------------------------------------------------------
ROUND_FORMAT = "fastmoe.RoundStatistics"
ROUND_VERSION = 2  # 2: the statistics are centred at an origin they carry
#: room for the header and the archive beyond the arrays a model's statistics need
_ROUND_SLACK = 2**16


def model_digest(params: MoEParams) -> str:
    """SHA-256 of a model's parameters (shapes and float64 values): what a
    round's statistics name as the model they were computed at."""
    h = hashlib.sha256()
    for a in (params.gate_aug, params.expert_aug, params.expert_var):
        a = np.ascontiguousarray(a, dtype="<f8")
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    if params.family != "gaussian":  # (a Gaussian model's digest is unchanged)
        h.update(params.family.encode())
    return h.hexdigest()


def _round_shapes(params: MoEParams) -> dict:
    """The arrays' shapes in the statistics of a round at ``params``: for
    experts of another family, the log-likelihood's gradient and Hessian
    and EM's objective's Hessian in ``fastmoe._information.family_theta_of``."""
    K, d = params.n_experts, params.n_features
    if params.family != "gaussian":
        from .families import get_family

        P = (2 * K - 1) * (d + 1) + (K if get_family(params.family).has_dispersion else 0)
        return {"gradient": (P,), "hessian": (P, P), "complete": (P, P)}
    q = (K - 1) * (d + 1)  # the gates' free parameters
    P = (2 * K - 1) * (d + 1) + K  # every parameter (fastmoe._information)
    return {"expert_gram": (K, d + 2, d + 2), "gate_gradient": (q,), "gate_hessian": (q, q),
            "origin": (d + 1,), "gradient": (P,), "hessian": (P, P)}


def _round_bytes_needed(params: MoEParams) -> int:
    raw = 8 * sum(int(np.prod(shape)) for shape in _round_shapes(params).values())
    return raw + raw // 100 + _ROUND_SLACK  # deflate can add a little to random bits


def round_to_bytes(stats, params: MoEParams) -> bytes:
    """A machine's refinement-round statistics as a compressed .npz archive.

    The statistics are :func:`fastmoe.machine.round_statistics` at
    ``params``: a JSON header (the model's digest, the row count, the
    log-likelihood and the gate objective) and six float64 arrays (EM's
    statistics, the origin they are centred at, the log-likelihood's gradient
    and Hessian); nothing pickled. For experts of another family
    (``FamilyStatistics``), the header names the family
    and the arrays are the gradient, the Hessian and EM's objective's
    Hessian.

    Parameters
    ----------
    stats : StepStatistics or FamilyStatistics
        The machine's statistics, with derivatives.
    params : MoEParams
        The model they were computed at.

    Returns
    -------
    bytes
        The archive.
    """
    if params.family != "gaussian":
        header = {"format": ROUND_FORMAT, "version": ROUND_VERSION,
                  "model": model_digest(params), "family": params.family, "n": int(stats.n),
                  "log_likelihood": float(stats.log_likelihood)}
        der = stats.derivatives
        buf = io.BytesIO()
        np.savez_compressed(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                            gradient=np.asarray(der.gradient, np.float64),
                            hessian=np.asarray(der.hessian, np.float64),
                            complete=np.asarray(der.complete, np.float64))
        return buf.getvalue()
    header = {"format": ROUND_FORMAT, "version": ROUND_VERSION, "model": model_digest(params),
              "n": int(stats.n), "log_likelihood": float(stats.log_likelihood),
              "gate_objective": float(stats.gates.objective)}
    buf = io.BytesIO()
    np.savez_compressed(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                        expert_gram=np.asarray(stats.experts.gram, np.float64),
                        gate_gradient=np.asarray(stats.gates.gradient, np.float64),
                        gate_hessian=np.asarray(stats.gates.hessian, np.float64),
                        origin=np.asarray(stats.origin, np.float64),
                        gradient=np.asarray(stats.derivatives.gradient, np.float64),
                        hessian=np.asarray(stats.derivatives.hessian, np.float64))
    return buf.getvalue()


def round_from_bytes(data: bytes, params: MoEParams):
    """Read :func:`round_to_bytes` output as the statistics of a round at ``params``.

    Checked: the archive within the size the model's statistics need, computed
    at this model (its digest), the row count in [1, MAX_N], every value
    finite, each expert's Gram matrix positive semi-definite with weights that
    sum to the row count, the gate gradient and Hessian within what the rows
    allow, and the log-likelihood no higher than the model allows. Each failure
    is a ValueError of one line.

    Parameters
    ----------
    data : bytes
        The archive.
    params : MoEParams
        The model the round was run at.

    Returns
    -------
    StepStatistics or FamilyStatistics
        The machine's statistics, with derivatives.
    """
    from ._information import Derivatives
    from .engine import ExpertStatistics, GateStatistics, StepStatistics

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"round statistics must be bytes; got {type(data).__name__}.")
    fields, arrays = _read_archive(data, ROUND_FORMAT, _round_bytes_needed(params),
                                   ("header", *_round_shapes(params)))
    _check_format(fields, ROUND_FORMAT, ROUND_VERSION)
    digest = model_digest(params)
    if fields.get("model") != digest:
        raise OtherModelError(f"these round statistics were computed at another model (digest "
                         f"{str(fields.get('model'))[:12]!r}, not {digest[:12]!r}); every "
                         "machine must run the round at the model being refined.")
    field_ = "round statistics field"
    n = _count(fields.get("n"), "n", 1, field_)
    ll = _real(fields.get("log_likelihood"), "log_likelihood", what=field_)
    got = {}
    for name, shape in _round_shapes(params).items():
        got[name] = a = _array(arrays[name], name, len(shape), field_)
        if a.shape != shape:
            raise ValueError(f"{field_} {name} must have shape {shape} for a model of "
                             f"{params.n_experts} experts on {params.n_features} covariates; "
                             f"got {a.shape}.")
    if params.family != "gaussian":
        return _family_round(fields, got, n, ll, params)
    objective = _real(fields.get("gate_objective"), "gate_objective", what=field_)
    gram, grad, hess, origin, gradient, hessian = (
        got[k] for k in ("expert_gram", "gate_gradient", "gate_hessian", "origin", "gradient",
                         "hessian"))
    _check_symmetric(hessian, f"{field_} hessian")
    weight = gram[:, 0, 0]
    if np.min(weight) < 0 or abs(weight.sum() - n) > 1e-6 * n:
        raise ValueError(f"round statistics: the experts' weights sum to {weight.sum():.6g}, "
                         f"not to the {n} rows they claim (or one is negative).")
    for k in range(gram.shape[0]):  # sums of w r z z^T: each positive semi-definite
        _check_gram(gram[k], f"{field_} expert_gram[{k}]")
    _check_log_likelihood(ll, n, params)
    if objective > 1e-9 * n:
        raise ValueError(f"round statistics: gate objective {objective:.6g} is positive (a sum "
                         "of log-probabilities is at most 0).")
    if hess.size:
        _check_semidefinite(hess, f"{field_} gate_hessian", sign=-1.0)
        _check_gate_bounds(grad, hess, gram.sum(axis=0), n)
    return StepStatistics(ll, ExpertStatistics(gram), GateStatistics(objective, grad, hess), n,
                          origin, Derivatives(ll, gradient, hessian))


def _family_round(fields, got, n: int, ll: float, params: MoEParams):
    """The checked statistics of a round at a model of another family: the
    family named, symmetric Hessians, EM's objective's Hessian negative
    semi-definite for the canonical links (it is concave there), and the
    log-likelihood of counts and 0/1 responses at most 0."""
    from ._information import Derivatives, FamilyStatistics

    if fields.get("family") != params.family:
        raise ValueError(f"these round statistics are of {fields.get('family')!r} experts; the "
                         f"model's are {params.family!r}.")
    for name in ("hessian", "complete"):
        _check_symmetric(got[name], f"round statistics field {name}")
    if params.family in ("poisson", "bernoulli"):
        _check_semidefinite(got["complete"], "round statistics field complete", sign=-1.0)
        if ll > 1e-9 * n:
            raise ValueError(f"round statistics: log-likelihood {ll:.6g} is positive (a sum of "
                             "log-probabilities of counts or 0/1 responses is at most 0).")
    return FamilyStatistics(n, ll, Derivatives(ll, got["gradient"], got["hessian"], None,
                                               got["complete"]))


def _check_gram(G: np.ndarray, label: str) -> None:
    """A Gram matrix: symmetric, and positive semi-definite once scaled to a
    unit diagonal (an entry beyond what its diagonal allows, a negative sum
    of squares, a zero weight with nonzero sums: all refused)."""
    _check_symmetric(G, label)
    diag = np.diagonal(G)
    if np.min(diag) < 0:
        raise ValueError(f"{label} has a negative sum of squares ({np.min(diag):.3g}).")
    d = np.sqrt(diag)
    safe = np.where(d > 0, d, 1.0)
    if np.any((d == 0)[:, None] & (G != 0)):
        raise ValueError(f"{label} has nonzero sums for a zero sum of squares.")
    _check_semidefinite(G / safe[:, None] / safe[None, :], label)


def _check_log_likelihood(ll: float, n: int, params: MoEParams) -> None:
    """A log-likelihood no higher than the model allows: each row's density
    is at most that of the narrowest expert at its mean."""
    top = n * float(np.max(-0.5 * np.log(2 * np.pi * params.expert_var)))
    if ll > top + 1e-9 * abs(top) + 1e-9:
        raise ValueError(f"round statistics: log-likelihood {ll:.6g} is more than the model "
                         f"allows for {n} rows ({top:.6g}).")


def _check_gate_bounds(grad: np.ndarray, hess: np.ndarray, total: np.ndarray, n: int) -> None:
    """The gates' derivatives within what the rows allow: |g_kj| <=
    sqrt(n sum_i x_ij^2) (|r - pi| <= 1, Cauchy-Schwarz) and each diagonal
    entry of -H at most sum_i x_ij^2 / 4 (pi (1 - pi) <= 1/4), with the sums
    of squares from the experts' Gram matrices."""
    p = total.shape[0] - 1
    sq = np.tile(np.diagonal(total)[:p], grad.size // p)
    slack = 1.0 + 1e-6
    if np.any(np.abs(grad) > slack * np.sqrt(n * sq) + 1e-12):
        raise ValueError("round statistics: a gate gradient is larger than the rows allow.")
    if np.any(-np.diagonal(hess) > slack * sq / 4 + 1e-12):
        raise ValueError("round statistics: a gate Hessian entry is larger than the rows allow.")


class OtherModelError(ValueError):
    """Round statistics that were computed at another model than the one
    given (the server tells the candidates of a round apart by it)."""


def round_digest(stats) -> str:
    """SHA-256 of a round's numbers (not of its file's bytes): the same
    statistics saved twice, or re-compressed, have one digest."""
    h = hashlib.sha256()
    if getattr(stats, "experts", None) is None:  # experts of another family
        der = stats.derivatives
        arrays = (der.gradient, der.hessian, der.complete,
                  np.array([stats.log_likelihood, stats.n], dtype=float))
    else:
        arrays = (stats.experts.gram, stats.gates.gradient, stats.gates.hessian, stats.origin,
                  np.array([stats.log_likelihood, stats.gates.objective, stats.n], dtype=float))
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()


def save_round(path, stats, params: MoEParams) -> int:
    """Write :func:`round_to_bytes` to a ``.npz`` file, whole or not at all.

    Parameters
    ----------
    path : str or path-like
        The file.
    stats : StepStatistics
        The machine's statistics, with derivatives.
    params : MoEParams
        The model they were computed at.

    Returns
    -------
    int
        The bytes written.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"unknown round statistics file type {path.suffix!r}; use .npz.")
    return write_bytes(path, round_to_bytes(stats, params), "round statistics file")


def load_round(path, params: MoEParams):
    """Read a file written by :func:`save_round`, checked as by :func:`round_from_bytes`.

    The file's size is checked first.

    Parameters
    ----------
    path : str or path-like
        The file.
    params : MoEParams
        The model the round was run at.

    Returns
    -------
    StepStatistics
        The machine's statistics, with derivatives.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"unknown round statistics file type {path.suffix!r}; use .npz.")
    check_file(path, "round statistics file", _round_bytes_needed(params))
    try:
        return round_from_bytes(path.read_bytes(), params)
    except ValueError as exc:  # the same kind of error (OtherModelError stays one)
        raise type(exc)(f"{str(path)!r}: {exc}") from None
