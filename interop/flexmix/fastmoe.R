## flexmix drivers that run fastmoe's numerics through reticulate.
##
##   source("interop/flexmix/fastmoe.R")
##   fit <- flexmix(y ~ x1 + x2, data = d, k = 3, model = FLXMRfastmoe(),
##                  concomitant = FLXPfastmoe(~ x1 + x2))
##
## FLXMRfastmoe(): Gaussian experts. Its M-step is fastmoe.engine's weighted
##   least squares (expert_statistics + update_experts) with the
##   maximum-likelihood variance sum_i w_i r_i^2 / sum_i w_i (flexmix's own
##   FLXMRglm() divides by n - rank instead, so its fit sits slightly below the
##   likelihood's optimum).
## FLXMRfastmoe(family = "poisson"): Poisson experts (log link), the weighted
##   GLM of each component fitted by fastmoe's IRLS (fastmoe.fit_moe with one
##   expert), as FLXMRglm(family = "poisson") fits it by glm.fit. The
##   "binomial" (a two-column y of successes and failures) and "Gamma" (the
##   inverse link) families of FLXMRglm are not served yet: fastmoe's
##   Bernoulli experts take a 0/1 response and its Gamma experts the log link.
## FLXPfastmoe(formula): the softmax (multinomial-logistic) concomitant model.
##   Its M-step is fastmoe.engine.fit_gates: Newton/IRLS with step halving on
##   the soft targets, warm-started from the previous EM iteration, instead of
##   nnet::multinom's BFGS from zero. Coefficients follow flexmix's
##   convention: the first component is the zero reference.
##
## Needs the R packages flexmix and reticulate, and a Python with fastmoe
## installed (reticulate::use_python(...) or RETICULATE_PYTHON). Arrays go to
## Python as raw float64 bytes and come back as lists of numbers (fastmoe._r):
## reticulate converts NumPy 2 arrays only from version 1.36 on (Debian 12
## ships 1.28); this way works with any, at the cost of one copy per call.

suppressPackageStartupMessages({
  library(methods)
  library(flexmix)
  library(reticulate)
})

.fastmoe <- new.env()

.fastmoe_py <- function() {
  if (is.null(.fastmoe$py)) .fastmoe$py <- reticulate::import("fastmoe._r")
  .fastmoe$py
}

.fastmoe_bytes <- function(a) writeBin(as.vector(a, "double"), raw())

## the covariates (the model matrix without its intercept column: fastmoe adds
## its own) as bytes, kept in `cache` while flexmix passes the same matrix
.fastmoe_design <- function(cache, x, who) {
  if (!identical(cache$x, x)) {
    icpt <- which(colnames(x) == "(Intercept)")
    if (length(icpt) != 1L)
      stop(who, " needs a model with an intercept (a formula without '- 1' or '+ 0').",
           call. = FALSE)
    X <- x[, -icpt, drop = FALSE]
    cache$x <- x
    cache$names <- colnames(X)
    cache$bytes <- if (ncol(X)) .fastmoe_bytes(X) else NULL
  }
  cache
}

FLXMRfastmoe <- function(formula = . ~ ., family = c("gaussian", "poisson")) {
  family <- match.arg(family)
  if (family == "poisson") return(.fastmoe_glm_driver(formula, family))
  z <- FLXMRglm(formula = formula, family = "gaussian")
  z@name <- "FLXMRfastmoe"
  cache <- new.env()  # the covariates and the response as bytes
  z@fit <- function(x, y, w, component) {
    design <- .fastmoe_design(cache, x, "FLXMRfastmoe")
    d <- length(design$names)
    coef <- setNames(numeric(ncol(x)), colnames(x))
    if (d == 0L) {  # intercept only: the weighted mean
      coef[] <- sum(w * y) / sum(w)
      v <- sum(w * (y - coef)^2) / sum(w)
    } else {
      if (!identical(cache$y, y)) {
        cache$y <- y
        cache$y_bytes <- .fastmoe_bytes(y)
      }
      out <- unlist(.fastmoe_py()$experts(design$bytes, cache$y_bytes, .fastmoe_bytes(w),
                                          nrow(x), d))
      coef["(Intercept)"] <- out[1]
      coef[design$names] <- out[2:(d + 1L)]
      v <- out[d + 2L]
    }
    z@defineComponent(para = list(coef = coef, df = ncol(x) + 1, sigma = sqrt(v)))
  }
  z
}

.fastmoe_glm_driver <- function(formula, family) {
  z <- FLXMRglm(formula = formula, family = family)
  z@name <- paste("FLXMRfastmoe", family, sep = ":")
  cache <- new.env()
  z@fit <- function(x, y, w, component) {
    design <- .fastmoe_design(cache, x, "FLXMRfastmoe")
    if (!identical(cache$y, y)) {
      cache$y <- y
      cache$y_bytes <- .fastmoe_bytes(y)
    }
    d <- length(design$names)
    coef <- setNames(numeric(ncol(x)), colnames(x))
    if (d == 0L) {  # intercept only: the log of the weighted mean count
      coef[] <- log(sum(w * y) / sum(w))
    } else {
      start <- component$coef
      start <- if (length(start) == ncol(x)) as.double(start[c("(Intercept)", design$names)])
      out <- unlist(.fastmoe_py()$glm_expert(design$bytes, cache$y_bytes, .fastmoe_bytes(w),
                                             nrow(x), d, family, start))
      coef["(Intercept)"] <- out[1]
      coef[design$names] <- out[2:(d + 1L)]
    }
    z@defineComponent(para = list(coef = coef, df = ncol(x)))
  }
  z
}

setClass("FLXPfastmoe", contains = "FLXP")

FLXPfastmoe <- function(formula = ~1) {
  state <- new.env()  # the covariates as bytes, and the last gates (a warm start)
  fit_gates <- function(x, y, w) {
    if (missing(w) || is.null(w)) w <- rep(1, nrow(y))
    K <- ncol(y)
    if (K < 2L) stop("FLXPfastmoe needs at least two components.", call. = FALSE)
    design <- .fastmoe_design(state, x, "FLXPfastmoe")
    d <- length(design$names)
    if (d == 0L) {  # intercept only: the log-odds of the weighted mean targets
      p <- colSums(w * y) / sum(w * y)
      B <- rbind(log(p) - log(p[1]))
    } else {
      init <- if (!is.null(state$B) && identical(dim(state$B), c(ncol(x), K)))
        as.double(state$B) else NULL
      B <- matrix(unlist(.fastmoe_py()$gates(design$bytes, .fastmoe_bytes(y),
                                             .fastmoe_bytes(w), nrow(x), d, K, init)),
                  nrow = ncol(x))  # (1 + d) x K, column 1 zero
    }
    dimnames(B) <- list(colnames(x), seq_len(K))
    state$B <- B
    B
  }
  prior <- function(x, B) {
    eta <- x %*% B
    p <- exp(eta - eta[cbind(seq_len(nrow(eta)), max.col(eta, "first"))])
    p / rowSums(p)
  }
  z <- new("FLXPfastmoe", name = "FLXPfastmoe", formula = formula)
  z@fit <- function(x, y, w, ...) prior(x, fit_gates(x, y, w))
  z@refit <- function(x, y, w, ...) fit_gates(x, y, w)  # the coefficients (flexmix's @coef)
  z@df <- function(x, k, ...) (k - 1) * ncol(x)
  z
}
