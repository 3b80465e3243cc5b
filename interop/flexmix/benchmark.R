## flexmix with fastmoe's drivers against flexmix's own, from the same start.
##
##   Rscript interop/flexmix/benchmark.R [n] [repetitions] [tolerance] [family] [K]
##
## Data: fastmoe.datasets.make_moe_regression(n, d = 2, K, family) (family
## "gaussian", K = 3 by default, or "poisson": FLXMRglm(family = "poisson")
## against FLXMRfastmoe(family = "poisson")). Both fits
## start from the same partition (k-means on (x, y), `cluster =`) and run
## with flexmix's control (its default tolerance 1e-6 unless given, iter.max
## 2000); the script prints the log-likelihood,
## the EM iterations and the time of each, and their ratio.
args <- commandArgs(trailingOnly = TRUE)
n <- if (length(args) >= 1) as.integer(args[1]) else 100000L
reps <- if (length(args) >= 2) as.integer(args[2]) else 3L
tolerance <- if (length(args) >= 3) as.numeric(args[3]) else 1e-6
family <- if (length(args) >= 4) args[4] else "gaussian"
K <- if (length(args) >= 5) as.integer(args[5]) else 3L

here <- dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)))
source(file.path(here, "fastmoe.R"))

sim <- reticulate::py_run_string(local = TRUE, code = sprintf("
from fastmoe.datasets import make_moe_regression
X, y, _, _ = make_moe_regression(%d, 2, %d, family='%s', random_state=0)
x1, x2, y = X[:, 0].tolist(), X[:, 1].tolist(), y.tolist()", n, K, family))
d <- data.frame(x1 = unlist(sim$x1), x2 = unlist(sim$x2), y = unlist(sim$y))
set.seed(1)
start <- kmeans(scale(as.matrix(d)), centers = K, nstart = 1)$cluster

run <- function(model, concomitant) {
  t0 <- proc.time()[["elapsed"]]
  fit <- flexmix(y ~ x1 + x2, data = d, k = K, cluster = start, model = model,
                 concomitant = concomitant,
                 control = list(tolerance = tolerance, iter.max = 2000L))
  list(fit = fit, time = proc.time()[["elapsed"]] - t0)
}
invisible(.fastmoe_py())  # import and load the kernels once per session, outside the timings
rows <- NULL
for (r in seq_len(reps)) {
  own <- run(FLXMRglm(family = family), FLXPmultinom(~ x1 + x2))
  fm <- run(FLXMRfastmoe(family = family), FLXPfastmoe(~ x1 + x2))
  rows <- rbind(rows, data.frame(
    repetition = r,
    loglik_flexmix = as.numeric(logLik(own$fit)), loglik_fastmoe = as.numeric(logLik(fm$fit)),
    iter_flexmix = own$fit@iter, iter_fastmoe = fm$fit@iter,
    k_flexmix = own$fit@k, k_fastmoe = fm$fit@k,
    time_flexmix = own$time, time_fastmoe = fm$time,
    speedup = own$time / fm$time))
}
cat(sprintf("n = %d, d = 2, K = %d, %s experts, tolerance %g, %s\n", n, K, family, tolerance,
            R.version.string))
print(rows, digits = 8, row.names = FALSE)
cat(sprintf("median speed-up %.1fx; log-likelihood fastmoe - flexmix: %s\n",
            median(rows$speedup),
            paste(sprintf("%.6f", rows$loglik_fastmoe - rows$loglik_flexmix), collapse = ", ")))
