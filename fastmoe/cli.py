"""Command line: ``fastmoe <command> [options]`` (``fastmoe <command> --help``)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit code 2."""


def _table(rows, header) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def cmd_demo(args) -> int:
    from . import fit_moe
    from .datasets import make_moe_regression
    from .diagnostics import parameter_rmse

    X, y, truth, _ = make_moe_regression(args.n_samples, args.n_features, args.n_experts,
                                         design=args.design, random_state=args.seed)
    n_train = int(0.9 * len(y))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a demo reports convergence in its table
        t0 = time.perf_counter()
        fit = fit_moe(X[:n_train], y[:n_train], args.n_experts, n_init=args.n_init,
                      random_state=args.seed, max_iter=args.max_iter)
        elapsed = time.perf_counter() - t0
    err = parameter_rmse(fit.params, truth)
    rows.append(["centralised EM", f"{elapsed:.2f}", fit.n_iter, fit.converged,
                 f"{fit.params.log_likelihood(X[n_train:], y[n_train:]):.1f}",
                 f"{err['gates']:.3f}", f"{err['experts']:.3f}", f"{err['variances']:.3f}"])
    rows.append(["truth", "", "", "", f"{truth.log_likelihood(X[n_train:], y[n_train:]):.1f}",
                 "0", "0", "0"])
    print(f"fastmoe demo: design={args.design}, n={args.n_samples} (train {n_train}), "
          f"d={args.n_features}, K={args.n_experts}")
    print(_table(rows, ["estimator", "fit time (s)", "iterations", "converged",
                        "test loglik", "RMSE gates", "RMSE experts", "RMSE variances"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastmoe", description="Fast Gaussian mixture-of-experts regression.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="simulate data, fit, print a comparison table",
                          description="Simulate the authors' design, fit, and print a table "
                          "of fit time, iterations, test log-likelihood and parameter error.")
    demo.add_argument("--n-samples", type=int, default=20000)
    demo.add_argument("--n-features", type=int, default=20)
    demo.add_argument("--n-experts", type=int, default=5)
    demo.add_argument("--design", choices=["authors", "separated"], default="authors")
    demo.add_argument("--n-init", type=int, default=3)
    demo.add_argument("--max-iter", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"fastmoe {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
