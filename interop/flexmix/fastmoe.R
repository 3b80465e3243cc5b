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
##   expert), as FLXMRglm(family = "poisson") fits it by glm.fit.
## FLXMRfastmoe(family = "binomial"): binomial experts (logit link) of a
##   two-column y of successes and failures, as FLXMRglm(family = "binomial"):
##   each row is sent as two weighted rows of fastmoe's Bernoulli experts (y =
##   1 with weight w times its successes, y = 0 with w times its failures),
##   whose weighted log-likelihood is the binomial one less its binomial
##   coefficients.
## FLXMRfastmoe(family = "Gamma"): Gamma experts with the log link and each
##   expert's maximum-likelihood shape, fastmoe's Gamma experts (components'
##   parameters coef and shape). Not FLXMRglm(family = "Gamma"), which takes
##   the inverse link, whose means can turn negative, and a moment estimate
##   of the dispersion: the two fit different models.
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
  if (is.null(.fastmoe$py)) {
    .fastmoe$py <- reticulate::import("fastmoe._r")
    .fastmoe$py$warm_up()  # the compiled kernels, once per session
  }
  .fastmoe$py
}

## an array's numbers as bytes: its attributes dropped first, not by
## as.vector, which spells out the row names R keeps unexpanded (10 ms per
## call at 60 000 rows, a third of a fit's time)
.fastmoe_bytes <- function(a) {
  attributes(a) <- NULL
  writeBin(as.double(a), raw())
}

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

FLXMRfastmoe <- function(formula = . ~ ., family = c("gaussian", "poisson", "binomial", "Gamma")) {
  family <- match.arg(family)
  if (family != "gaussian") return(.fastmoe_glm_driver(formula, family))
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
  binomial <- family == "binomial"
  gamma <- family == "Gamma"
  z@fit <- function(x, y, w, component) {
    design <- .fastmoe_design(cache, x, "FLXMRfastmoe")
    if (!identical(cache$y, y)) {
      cache$y <- y
      if (gamma && (NCOL(y) != 1L || any(y <= 0)))
        stop("FLXMRfastmoe(family = \"Gamma\") needs a positive response.", call. = FALSE)
      if (binomial) {  # successes and failures: two weighted 0/1 rows per row
        if (NCOL(y) != 2L || any(y < 0))
          stop("FLXMRfastmoe(family = \"binomial\") needs y = cbind(successes, failures).",
               call. = FALSE)
        cache$y_bytes <- .fastmoe_bytes(rep(c(1, 0), each = nrow(y)))
        cache$counts <- c(y[, 1], y[, 2])
      } else {
        cache$y_bytes <- .fastmoe_bytes(y)
      }
    }
    d <- length(design$names)
    coef <- setNames(numeric(ncol(x)), colnames(x))
    dispersion <- NULL
    if (d == 0L && binomial) {  # intercept only: the logit of the weighted share
      p <- sum(w * y[, 1]) / sum(w * rowSums(y))
      coef[] <- log(p / (1 - p))
    } else if (d == 0L) {  # intercept only: the log of the weighted mean
      coef[] <- log(sum(w * y) / sum(w))
      if (gamma)  # the ML shape: log(nu) - digamma(nu) = log(mean) - mean(log y)
        dispersion <- 1 / .fastmoe_gamma_shape(coef[[1]] - sum(w * log(y)) / sum(w))
    } else {
      start <- component$coef
      start <- if (length(start) == ncol(x)) as.double(start[c("(Intercept)", design$names)])
      if (binomial) {
        if (is.null(cache$x2) || !identical(cache$x2, x)) {  # the design twice, once
          cache$x2 <- x
          cache$bytes2 <- .fastmoe_bytes(rbind(x, x)[, design$names, drop = FALSE])
        }
        out <- unlist(.fastmoe_py()$glm_expert(cache$bytes2, cache$y_bytes,
                                               .fastmoe_bytes(rep(w, 2) * cache$counts),
                                               2L * nrow(x), d, "bernoulli", start))
      } else {
        out <- unlist(.fastmoe_py()$glm_expert(design$bytes, cache$y_bytes,
                                               .fastmoe_bytes(w), nrow(x), d,
                                               if (gamma) "gamma" else family, start))
      }
      coef["(Intercept)"] <- out[1]
      coef[design$names] <- out[2:(d + 1L)]
      if (gamma) dispersion <- out[d + 2L]
    }
    if (gamma) return(.fastmoe_gamma_component(coef, 1 / dispersion, ncol(x) + 1L, cache))
    .fastmoe_glm_component(coef, ncol(x), binomial, cache)
  }
  z
}

## nu solving log(nu) - digamma(nu) = s (s > 0): the Gamma shape's ML equation
.fastmoe_gamma_shape <- function(s) {
  if (!(s > 0)) return(1e8)  # a constant response: no spread
  uniroot(function(nu) log(nu) - digamma(nu) - s, c(1e-8, 1e8), tol = 1e-12)$root
}

## a Gamma expert of mean exp(x b) and shape nu; its logLik in closed form with
## log y computed once per response
.fastmoe_gamma_component <- function(coef, shape, df, cache) {
  eta <- .fastmoe_eta(coef)
  predict <- function(x, ...) exp(eta(x, ...))
  logLik <- function(x, y, ...) {
    if (!identical(cache$ll_y, y)) {
      cache$ll_y <- y
      cache$ll_base <- log(y)
    }
    e <- as.vector(eta(x, ...))
    shape * log(shape) - lgamma(shape) + (shape - 1) * cache$ll_base - shape * e -
      shape * y * exp(-e)
  }
  new("FLXcomponent", parameters = list(coef = coef, shape = shape), logLik = logLik,
      predict = predict, df = df)
}

## a component's linear predictor x b (plus flexmix's offset, where given)
.fastmoe_eta <- function(coef) {
  function(x, ...) {
    offset <- list(...)$offset
    p <- x %*% coef
    if (!is.null(offset)) p <- p + offset
    p
  }
}

## FLXMRglm's component for these families, with the same predict; its
## logLik in closed form from the linear predictor, the terms of y alone
## (log y! or the log binomial coefficient) computed once per response:
## R's dpois and dbinom took a tenth of a fit's time
.fastmoe_glm_component <- function(coef, df, binomial, cache) {
  eta <- .fastmoe_eta(coef)
  softplus <- function(e) pmax(e, 0) + log1p(exp(-abs(e)))  # log(1 + exp(e)), no overflow
  predict <- function(x, ...) if (binomial) plogis(eta(x, ...)) else exp(eta(x, ...))
  logLik <- function(x, y, ...) {
    if (!identical(cache$ll_y, y)) {
      cache$ll_y <- y
      cache$ll_base <- if (binomial) lchoose(rowSums(y), y[, 1]) else -lgamma(y + 1)
    }
    e <- as.vector(eta(x, ...))
    if (binomial) cache$ll_base - y[, 1] * softplus(-e) - y[, 2] * softplus(e)
    else cache$ll_base + y * e - exp(e)  # (e is finite: finite coefficients)
  }
  new("FLXcomponent", parameters = list(coef = coef), logLik = logLik, predict = predict,
      df = df)
}

setClass("FLXPfastmoe", contains = "FLXP")

FLXPfastmoe <- function(formula = ~1) {
  state <- new.env()  # the covariates as bytes, and the last gates (a warm start)
  fit_gates <- function(x, y, w) {
    if (missing(w) || is.null(w) || all(w == 1)) w <- NULL  # no weights: none sent
    K <- ncol(y)
    if (K < 2L) stop("FLXPfastmoe needs at least two components.", call. = FALSE)
    design <- .fastmoe_design(state, x, "FLXPfastmoe")
    d <- length(design$names)
    if (d == 0L) {  # intercept only: the log-odds of the weighted mean targets
      if (is.null(w)) w <- rep(1, nrow(y))
      p <- colSums(w * y) / sum(w * y)
      B <- rbind(log(p) - log(p[1]))
    } else {
      init <- if (!is.null(state$B) && identical(dim(state$B), c(ncol(x), K)))
        as.double(state$B) else NULL
      B <- matrix(unlist(.fastmoe_py()$gates(design$bytes, .fastmoe_bytes(y),
                                             if (is.null(w)) NULL else .fastmoe_bytes(w),
                                             nrow(x), d, K, init)),
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
