# Reference numbers for tests/common/test_stats_*.py.
#
# Run from the repository root (needs R >= 4.2, pROC 1.18, metafor 3.8, metadat;
# Debian: r-base-core r-cran-proc r-cran-metafor r-cran-metadat):
#
#     Rscript tests/common/reference/make_reference.R
#
# It writes the public data sets it uses (aSAH from pROC, dat.bcg from metadat),
# the synthetic data sets it draws (fixed seeds), and the reference numbers as
# JSON into tests/common/reference/. The Python tests read only those files, so
# neither CI nor developers need R. Numbers are written with 17 significant
# digits; no JSON package is needed.

suppressPackageStartupMessages({
  library(pROC)
  library(metafor)
})

out_dir <- "tests/common/reference"
if (!dir.exists(out_dir)) stop("run from the repository root")

# ---------------------------------------------------------------- JSON writer
num_json <- function(v) {
  if (is.na(v)) return("null")
  if (is.infinite(v)) stop("cannot write Inf to JSON")
  sprintf("%.17g", v)
}
to_json <- function(x, indent = 0) {
  pad <- strrep("  ", indent + 1)
  end <- strrep("  ", indent)
  if (is.list(x) && !is.null(names(x))) {
    items <- vapply(names(x), function(n) paste0(pad, '"', n, '": ', to_json(x[[n]], indent + 1)),
                    character(1))
    return(paste0("{\n", paste(items, collapse = ",\n"), "\n", end, "}"))
  }
  if (is.list(x)) {
    items <- vapply(x, to_json, character(1), indent = indent + 1)
    return(paste0("[", paste(items, collapse = ", "), "]"))
  }
  if (is.character(x)) {
    s <- paste0('"', gsub('"', '\\\\"', x), '"')
  } else if (is.logical(x)) {
    s <- ifelse(x, "true", "false")
  } else {
    s <- vapply(as.numeric(x), num_json, character(1))
  }
  if (length(x) == 1 && is.null(attr(x, "array"))) s else paste0("[", paste(s, collapse = ", "), "]")
}
arr <- function(x) structure(as.vector(x), array = TRUE)  # force a JSON array, even of length 1
write_json <- function(x, name) {
  writeLines(to_json(x), file.path(out_dir, name))
  cat("wrote", name, "\n")
}
versions <- list(
  R = R.version.string,
  pROC = as.character(packageVersion("pROC")),
  metafor = as.character(packageVersion("metafor"))
)

# ---------------------------------------------------------------- data sets
data(aSAH, package = "pROC")
asah <- data.frame(
  gos6 = as.integer(aSAH$gos6), outcome = as.character(aSAH$outcome),
  gender = as.character(aSAH$gender), age = aSAH$age, wfns = as.integer(aSAH$wfns),
  s100b = aSAH$s100b, ndka = aSAH$ndka
)
write.csv(asah, file.path(out_dir, "aSAH.csv"), row.names = FALSE)

dat.bcg <- metadat::dat.bcg
bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
write.csv(data.frame(trial = bcg$trial, author = bcg$author, year = bcg$year,
                     tpos = bcg$tpos, tneg = bcg$tneg, cpos = bcg$cpos, cneg = bcg$cneg,
                     yi = sprintf("%.17g", bcg$yi), vi = sprintf("%.17g", bcg$vi)),
          file.path(out_dir, "dat_bcg.csv"), row.names = FALSE)

# ---------------------------------------------------------------- pROC
proc_roc <- function(y, x) roc(y, x, levels = c("Good", "Poor"), direction = "<", quiet = TRUE)
y <- aSAH$outcome
aucs <- list()
for (p in c("s100b", "wfns", "ndka")) {
  r <- proc_roc(y, as.numeric(aSAH[[p]]))
  ci <- ci.auc(r, method = "delong", conf.level = 0.95)
  ci90 <- ci.auc(r, method = "delong", conf.level = 0.90)
  aucs[[p]] <- list(auc = as.numeric(auc(r)), variance = var(r, method = "delong"),
                    ci95 = arr(c(ci[1], ci[3])), ci90 = arr(c(ci90[1], ci90[3])),
                    n_pos = length(r$cases), n_neg = length(r$controls))
}
r_s <- proc_roc(y, aSAH$s100b)
r_w <- proc_roc(y, as.numeric(aSAH$wfns))
r_n <- proc_roc(y, aSAH$ndka)
paired <- function(a, b) {
  t <- roc.test(a, b, paired = TRUE, method = "delong")
  list(z = unname(t$statistic), p = t$p.value, ci95 = arr(t$conf.int))
}
male <- aSAH$gender == "Male"
r_m <- proc_roc(y[male], aSAH$s100b[male])
r_f <- proc_roc(y[!male], aSAH$s100b[!male])
unp <- roc.test(r_m, r_f, paired = FALSE, method = "delong")
unp2 <- roc.test(proc_roc(y[male], aSAH$ndka[male]), proc_roc(y[!male], as.numeric(aSAH$wfns)[!male]),
                 paired = FALSE, method = "delong")
site <- function(r) list(auc = as.numeric(auc(r)), variance = var(r, method = "delong"),
                         n_pos = length(r$cases), n_neg = length(r$controls))
grid <- seq(0, 1, by = 0.05)
sens_at <- function(r, t) max(r$sensitivities[1 - r$specificities <= t + 1e-12])
write_json(list(
  versions = versions,
  reference = "pROC 1.18: roc(outcome, predictor, levels=c('Good','Poor'), direction='<') on aSAH",
  auc = aucs,
  paired = list(
    s100b_wfns = paired(r_s, r_w), wfns_ndka = paired(r_w, r_n), ndka_s100b = paired(r_n, r_s)
  ),
  unpaired = list(
    s100b_male_female = list(male = site(r_m), female = site(r_f),
                             statistic = unname(unp$statistic), df = unname(unp$parameter),
                             p = unp$p.value),
    ndka_male_wfns_female = list(statistic = unname(unp2$statistic), df = unname(unp2$parameter),
                                 p = unp2$p.value)
  ),
  roc_grid = list(
    rule = "max(r$sensitivities[1 - r$specificities <= fpr]) over pROC's empirical ROC points",
    fpr = arr(grid),
    s100b = arr(vapply(grid, function(t) sens_at(r_s, t), numeric(1))),
    ndka = arr(vapply(grid, function(t) sens_at(r_n, t), numeric(1))),
    wfns = arr(vapply(grid, function(t) sens_at(r_w, t), numeric(1)))
  )
), "proc_reference.json")

# ---------------------------------------------------------------- metafor
set.seed(20260101)
k5 <- data.frame(yi = round(rnorm(5, 0.4, 0.35), 4), vi = round(runif(5, 0.01, 0.08), 5))
k2 <- data.frame(yi = c(0.21, 0.64), vi = c(0.015, 0.04))
homog <- data.frame(yi = c(0.10, 0.12, 0.09, 0.11), vi = c(0.04, 0.05, 0.03, 0.06))
k1 <- data.frame(yi = 0.3, vi = 0.02)
write.csv(rbind(cbind(dataset = "k5", k5), cbind(dataset = "k2", k2),
                cbind(dataset = "homog", homog), cbind(dataset = "k1", k1)),
          file.path(out_dir, "meta_synthetic.csv"), row.names = FALSE)

fit_summary <- function(fit) {
  pr <- predict(fit)
  list(estimate = as.numeric(fit$beta), se = fit$se, ci = arr(c(fit$ci.lb, fit$ci.ub)),
       statistic = fit$zval, p = fit$pval, tau2 = fit$tau2, i2 = fit$I2, h2 = fit$H2,
       q = fit$QE, q_p = fit$QEp, pi = arr(c(pr$pi.lb, pr$pi.ub)), k = fit$k)
}
ctrl <- function(method) {
  if (method == "REML") return(list(threshold = 1e-12, maxiter = 1000))
  if (method == "PM") return(list(tol = 1e-12, maxiter = 1000))
  list()
}
meta_cases <- list()
sets <- list(bcg = data.frame(yi = bcg$yi, vi = bcg$vi), k5 = k5, k2 = k2, homog = homog, k1 = k1)
for (nm in names(sets)) {
  d <- sets[[nm]]
  for (method in c("REML", "DL", "PM")) {
    for (test in c("z", "knha")) {
      if (nrow(d) == 1 && test == "knha") next
      fit <- rma(yi, vi, data = d, method = method, test = test, control = ctrl(method))
      meta_cases[[paste(nm, method, test, sep = "_")]] <- c(
        list(dataset = nm, method = method, hartung_knapp = test == "knha",
             call = sprintf("rma(yi, vi, method='%s', test='%s'%s); predict()", method, test,
                            switch(method, REML = ", control=list(threshold=1e-12)",
                                   PM = ", control=list(tol=1e-12)", ""))),
        fit_summary(fit))
    }
  }
}
fit90 <- rma(yi, vi, data = bcg, method = "REML", control = ctrl("REML"), level = 90)
meta_cases[["bcg_REML_z_level90"]] <- c(
  list(dataset = "bcg", method = "REML", hartung_knapp = FALSE, level = 0.90,
       call = "rma(yi, vi, data=dat.bcg, method='REML', level=90, control=list(threshold=1e-12))"),
  fit_summary(fit90))
default_reml <- rma(yi, vi, data = bcg, method = "REML")
default_pm <- rma(yi, vi, data = bcg, method = "PM")

# pooling on the logit scale: AUCs (delta method) and proportions (escalc PLO)
auc_sites <- data.frame(auc = c(0.72, 0.81, 0.68, 0.77, 0.85),
                        variance = c(0.0021, 0.0015, 0.0032, 0.0018, 0.0011))
auc_sites$yi <- qlogis(auc_sites$auc)
auc_sites$vi <- auc_sites$variance / (auc_sites$auc * (1 - auc_sites$auc))^2
pool_auc <- function(method, test) {
  fit <- rma(yi, vi, data = auc_sites, method = method, test = test, control = ctrl(method))
  pr <- predict(fit, transf = plogis)
  list(method = method, hartung_knapp = test == "knha", estimate = pr$pred,
       ci = arr(c(pr$ci.lb, pr$ci.ub)), pi = arr(c(pr$pi.lb, pr$pi.ub)),
       logit_estimate = as.numeric(fit$beta), logit_se = fit$se, tau2 = fit$tau2)
}
props <- data.frame(events = c(12, 0, 30, 7, 25), totals = c(40, 25, 60, 30, 25))
plo <- escalc(measure = "PLO", xi = events, ni = totals, data = props)
pool_prop <- function(method, test) {
  fit <- rma(yi, vi, data = plo, method = method, test = test, control = ctrl(method))
  pr <- predict(fit, transf = transf.ilogit)
  list(method = method, hartung_knapp = test == "knha", estimate = pr$pred,
       ci = arr(c(pr$ci.lb, pr$ci.ub)), pi = arr(c(pr$pi.lb, pr$pi.ub)),
       logit_estimate = as.numeric(fit$beta), logit_se = fit$se, tau2 = fit$tau2)
}
write_json(list(
  versions = versions,
  cases = meta_cases,
  bcg_default_control = list(
    REML = c(list(call = "rma(yi, vi, data=dat.bcg, method='REML')"), fit_summary(default_reml)),
    PM = c(list(call = "rma(yi, vi, data=dat.bcg, method='PM')"), fit_summary(default_pm))
  ),
  pool_auc = list(
    call = "rma(qlogis(auc), variance/(auc*(1-auc))^2, ...); predict(fit, transf=plogis)",
    auc = arr(auc_sites$auc), variance = arr(auc_sites$variance),
    logit_yi = arr(auc_sites$yi), logit_vi = arr(auc_sites$vi),
    fits = list(pool_auc("REML", "z"), pool_auc("DL", "z"), pool_auc("REML", "knha"),
                pool_auc("PM", "knha"))
  ),
  pool_proportions = list(
    call = "escalc('PLO', xi=events, ni=totals) (add=1/2 to='only0'); rma(...); predict(transf=transf.ilogit)",
    events = arr(props$events), totals = arr(props$totals),
    logit_yi = arr(as.numeric(plo$yi)), logit_vi = arr(as.numeric(plo$vi)),
    fits = list(pool_prop("REML", "z"), pool_prop("DL", "z"), pool_prop("REML", "knha"),
                pool_prop("PM", "z"))
  )
), "metafor_reference.json")

# ---------------------------------------------------------------- proportions
wilson_cases <- list(c(81, 263), c(15, 148), c(0, 20), c(1, 29), c(29, 29), c(7, 10), c(50, 100))
wilson <- lapply(wilson_cases, function(kn) {
  t95 <- prop.test(kn[1], kn[2], correct = FALSE)$conf.int
  t90 <- prop.test(kn[1], kn[2], correct = FALSE, conf.level = 0.90)$conf.int
  list(k = kn[1], n = kn[2], ci95 = arr(as.numeric(t95)), ci90 = arr(as.numeric(t90)))
})
# 2x2 tables: sensitivity/specificity/PPV/NPV with prop.test(correct=FALSE) (Wilson);
# LR+, LR- with the log method of Simel, Samsa & Matchar (1991); DOR with Woolf's
# log interval; 0.5 added to every cell for LR/DOR when any cell is zero.
diag_ref <- function(tp, fp, fn, tn, level = 0.95) {
  w <- function(k, n) as.numeric(prop.test(k, n, correct = FALSE, conf.level = level)$conf.int)
  z <- qnorm(1 - (1 - level) / 2)
  zero <- any(c(tp, fp, fn, tn) == 0)
  a <- tp + 0.5 * zero; b <- fp + 0.5 * zero; c <- fn + 0.5 * zero; d <- tn + 0.5 * zero
  se <- a / (a + c); sp <- d / (b + d)
  lrp <- se / (1 - sp); lrn <- (1 - se) / sp; dor <- a * d / (b * c)
  s_lrp <- sqrt(1 / a - 1 / (a + c) + 1 / b - 1 / (b + d))
  s_lrn <- sqrt(1 / c - 1 / (a + c) + 1 / d - 1 / (b + d))
  s_dor <- sqrt(1 / a + 1 / b + 1 / c + 1 / d)
  list(tp = tp, fp = fp, fn = fn, tn = tn, level = level, corrected = zero,
       sensitivity = arr(c(tp / (tp + fn), w(tp, tp + fn))),
       specificity = arr(c(tn / (tn + fp), w(tn, tn + fp))),
       ppv = arr(c(tp / (tp + fp), w(tp, tp + fp))),
       npv = arr(c(tn / (tn + fn), w(tn, tn + fn))),
       lr_pos = arr(c(lrp, exp(log(lrp) + c(-1, 1) * z * s_lrp))),
       lr_neg = arr(c(lrn, exp(log(lrn) + c(-1, 1) * z * s_lrn))),
       dor = arr(c(dor, exp(log(dor) + c(-1, 1) * z * s_dor))))
}
write_json(list(
  versions = versions,
  wilson_call = "prop.test(k, n, correct=FALSE)$conf.int",
  wilson = wilson,
  diagnostic = list(diag_ref(40, 10, 5, 65), diag_ref(20, 0, 3, 30), diag_ref(81, 30, 12, 140, 0.9))
), "proportions_reference.json")

# ---------------------------------------------------------------- calibration
set.seed(20260102)
n <- 300
lp <- rnorm(n, -0.4, 1.3)
p <- round(plogis(lp), 6)
y <- rbinom(n, 1, plogis(0.25 + 0.7 * qlogis(p)))
write.csv(data.frame(y = y, p = sprintf("%.6f", p)), file.path(out_dir, "calibration.csv"),
          row.names = FALSE)
gctrl <- glm.control(epsilon = 1e-14, maxit = 100)
slope_fit <- glm(y ~ qlogis(p), family = binomial, control = gctrl)
citl_fit <- glm(y ~ offset(qlogis(p)), family = binomial, control = gctrl)
cs <- summary(slope_fit)$coefficients
cc <- summary(citl_fit)$coefficients
ece_r <- function(y, p, bins) {
  b <- pmin(floor(p * bins), bins - 1)  # [j/B, (j+1)/B), last bin closed at 1
  tot <- 0
  for (j in 0:(bins - 1)) {
    s <- b == j
    if (any(s)) tot <- tot + sum(s) / length(y) * abs(mean(y[s]) - mean(p[s]))
  }
  tot
}
b10 <- pmin(floor(p * 10), 9)
write_json(list(
  versions = versions,
  glm_slope_call = "glm(y ~ qlogis(p), family=binomial, control=glm.control(epsilon=1e-14))",
  glm_citl_call = "glm(y ~ offset(qlogis(p)), family=binomial, control=glm.control(epsilon=1e-14))",
  slope = cs[2, 1], slope_se = cs[2, 2], intercept = cs[1, 1], intercept_se = cs[1, 2],
  citl = cc[1, 1], citl_se = cc[1, 2],
  brier = mean((p - y)^2),
  ece_10 = ece_r(y, p, 10), ece_15 = ece_r(y, p, 15),
  bins_10 = list(count = arr(tabulate(b10 + 1, 10)),
                 sum_p = arr(vapply(0:9, function(j) sum(p[b10 == j]), numeric(1))),
                 sum_y = arr(vapply(0:9, function(j) sum(y[b10 == j]), numeric(1))))
), "calibration_reference.json")

# ---------------------------------------------------------------- segmentation
set.seed(20260103)
dice <- round(pmin(1, pmax(0, rbeta(23, 12, 2.5))), 6)
tt <- t.test(dice)
tt90 <- t.test(dice, conf.level = 0.90)
q <- quantile(dice, c(0.25, 0.5, 0.75), type = 7)
write_json(list(
  versions = versions,
  call = "mean, sd, t.test(dice)$conf.int, quantile(dice, type=7)",
  dice = arr(dice), mean = mean(dice), sd = sd(dice), n = length(dice),
  ci95 = arr(as.numeric(tt$conf.int)), ci90 = arr(as.numeric(tt90$conf.int)),
  q1 = unname(q[1]), median = unname(q[2]), q3 = unname(q[3])
), "segmentation_reference.json")
