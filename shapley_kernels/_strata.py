"""Stratified q and honest standard errors: what the variance-reduced samplers share.

Every sampler of this library draws S from the q-trick: q ~ U(0, 1), then each non-target
player kept with probability q (``_sampling.draw_subsets``). The Beta(1, 1) integral over q
carries much of a term's variance (a coalition near empty and one near full give very
different terms), so the ``"stratified"`` estimators split (0, 1) into J equal strata and draw
one q per stratum:

    q_j = (j + u_j) / J,   u_j ~ U(0, 1) independent,   j = 0..J-1.

Each q_j is U(0, 1) on its stratum, so (1 / J) sum_j term_j has the plain estimator's
expectation exactly (unbiased), and the between-strata part of the variance is gone.

Standard error (``strata_stderr``): the J terms are independent but not identically
distributed, so the sample standard deviation over all J overstates the error. Adjacent strata
are collapsed in groups of 2 (the last group holds 3 when J is odd), and

    Var[mean] ~ (1 / J^2) sum_g n_g / (n_g - 1) sum_{j in g} (term_j - mean_g)^2,

the collapsed-strata estimator: unbiased for the sum of the within-stratum variances plus the
squared differences of neighbouring strata means (small when J is large), so slightly
conservative, never optimistic on average.
"""
import torch


def stratified_uniform(shape, num_strata: int, generator, device) -> torch.Tensor:
    """One U(0, 1) draw per stratum: float[*shape, J], entry j in [j / J, (j + 1) / J)."""
    u = torch.rand(*shape, num_strata, generator=generator, device=device)
    return (torch.arange(num_strata, device=device) + u) / num_strata


def iid_stderr(terms: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean of i.i.d. terms float[..., S]: sample std / sqrt(S)."""
    return terms.std(-1, correction=1) / terms.shape[-1] ** 0.5


def strata_stderr(terms: torch.Tensor) -> torch.Tensor:
    """Collapsed-strata standard error of the mean of float[..., J] (one term per stratum, in
    stratum order, J >= 2): float[...] (module docstring)."""
    J = terms.shape[-1]
    pairs = J // 2 * 2 if J % 2 == 0 else J - 3
    head = terms[..., :pairs].unflatten(-1, (-1, 2))  # groups of 2: n/(n-1) * sum (y - mean)^2 = (y1 - y2)^2
    total = (head[..., 0] - head[..., 1]).pow(2).sum(-1)
    if J % 2:
        tail = terms[..., pairs:]
        total = total + 1.5 * (tail - tail.mean(-1, keepdim=True)).pow(2).sum(-1)
    return total.sqrt() / J


def crossfit_control(terms: torch.Tensor, features: torch.Tensor, ridge: float = 1e-2):
    """Control-variate adjusted terms (float[..., J], stderr factor float[...]) from terms float[..., J] and zero-mean
    features float[..., J, F] (E[features_j | q_j] = 0 for each stratum j, e.g. a player's
    presence bit minus q_j).

    Cross-fitting keeps the expectation exactly: the coefficients applied to the even strata
    are a ridge regression (centred, penalty ``ridge`` x the mean feature variance) of the odd
    strata's terms on their features, and vice versa, so every coefficient is independent of
    the features it multiplies and every correction has mean 0. The adjusted terms stay one
    per stratum; their ``strata_stderr`` times the factor sqrt(h / max(h - F, 1)) (h = J // 2
    strata per half, F the features not identically 0: the residual degrees of freedom of each
    fit) is the standard error.
    """
    def fit(y, X):
        Xc, yc = X - X.mean(-2, keepdim=True), y - y.mean(-1, keepdim=True)
        gram = Xc.transpose(-1, -2) @ Xc
        scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
        eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
        return torch.linalg.solve(gram + (ridge * scale + 1e-12) * eye, Xc.transpose(-1, -2) @ yc[..., None])

    beta_even, beta_odd = fit(terms[..., 0::2], features[..., 0::2, :]), fit(terms[..., 1::2], features[..., 1::2, :])
    out = terms.clone()
    out[..., 0::2] -= (features[..., 0::2, :] @ beta_odd)[..., 0]
    out[..., 1::2] -= (features[..., 1::2, :] @ beta_even)[..., 0]
    h = terms.shape[-1] // 2
    used = (features != 0).any(-2).sum(-1).to(terms.dtype)
    return out, (h / (h - used).clamp(min=1)).sqrt()
