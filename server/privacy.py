"""Central differential privacy: Flower's DP strategy wrapper, with the privacy spent
after every round.

``wrap_for_privacy`` wraps the run's FedAvg in ``CentralDp``, a Flower
``DifferentialPrivacyClientSideFixedClipping`` whose updates the server clips first:
under ``privacy.mode = central`` the server does the clipping, under
``central-client-clip`` the sites do (``client.privacy.privacy_mod``) and the server
checks it. Either way the new global model is ``w + mean_i clip(u_i) + N(0, (sigma C /
n)^2)``, with ``C = privacy.clip-norm``, ``sigma = privacy.noise-multiplier`` and ``n``
the number of sites sampled per round; ``none`` and ``local`` leave the strategy alone
(local noise is the sites' business). Flower's ``DifferentialPrivacyServerSideFixedClipping``
is not used: its clipping divides by the update's norm, so one site sending back the
model it received fails the round with ZeroDivisionError (pinned by a test).

**Unit of privacy: the site.** Neighbouring federations differ by one site's data
(add/remove one site), so the noisy sum of clipped updates has sensitivity ``C``: the
DP-FedAvg setting of McMahan et al., "Learning differentially private recurrent language
models", ICLR 2018. That analysis, and Flower's accountant, needs the plain mean of the
clipped updates: a site weighted by its case count could move the model by more than
``C / n``. So every accepted reply's weight (FedAvg's ``weighted_by_key``) is set to 1
before Flower aggregates: each site counts once, however many cases it has.

**Accounting.** Flower's ``RdpAccountant`` (Google's ``dp-accounting``, the ``flwr[dp]``
extra) composes one Gaussian release of noise multiplier ``sigma`` per completed round,
add/remove-one-site, *without* subsampling amplification (the only sampling model
Flower's fixed-clipping wrappers accept). With ``federation.fraction-train < 1`` a site
sits out some rounds, so the reported epsilon is an upper bound. ``privacy_spent`` also
reports ``epsilon-gdp``, the exact epsilon of the same composition (``common.privacy``),
which RDP overestimates by a few per cent. Each release is also charged to every site
that may train in the federation, in the run's ``SiteLedger`` (``server.privacy_ledger``):
a site in several federations (leave-one-site-out folds) composes them all.
``privacy.max-epsilon`` is enforced on that per-site RDP total: ``configure_train`` raises
``PrivacyBudgetError`` instead of starting a round that would take any site past it.

**Strictness.** The noise is calibrated to ``n`` updates; a round in which any sampled
site fails or is rejected releases nothing (Flower returns no aggregate) and costs no
privacy. Noise comes from a generator seeded by the operating system, not from the run
seed every site knows (``common.privacy``). Only model updates are protected: metrics,
site summaries and hook statistics are not.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import (
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, compute_stdv

from common.array_views import array_view, records
from common.config import RunConfig
from common.config_sections import PrivacyConfig as Settings
from common.hooks.proximal import ProximalStrategy
from common.keys import PrivacyMode, RecordKey, SiteKey, StrategyName
from common.privacy import (
    add_gaussian_noise,
    clip_update,
    composed_mu,
    gaussian_epsilon,
    noise_rng,
    update_norm,
)
from server.privacy_ledger import ACCOUNTING, SiteLedger

log = logging.getLogger("hepafed.progress")

NO_NOISE = "aggregates released with privacy.noise-multiplier = 0"
CLIP_TOLERANCE = 1e-3  # client-clip: a site's update may exceed C by this (float32 rounding)


class PrivacyError(ValueError):
    """The privacy settings cannot be honoured by this run (strategy, noise, budget)."""


class PrivacyBudgetError(PrivacyBudgetExhausted):
    """The next round would spend more than ``privacy.max-epsilon``; it was not started."""


def sample_size(cfg: RunConfig, n_train_sites: int) -> int:
    """How many sites Flower's FedAvg samples per round among ``n_train_sites`` (what
    ``server.strategies.build_strategy`` configures): the ``n`` the noise is scaled by."""
    fed = cfg.federation
    return max(int(n_train_sites * fed.fraction_train), min(fed.min_sites, n_train_sites))


def wrap_for_privacy(
    strategy: Strategy,
    cfg: RunConfig,
    n_sampled: int,
    population: int | None = None,
    ledger: SiteLedger | None = None,
    sites: Sequence[str] = (),
) -> Strategy:
    """``strategy`` with central DP for ``privacy.mode`` central / central-client-clip.

    ``n_sampled``: sites per round (``sample_size``); ``population``: sites that may
    train (defaults to ``n_sampled``; reported only, no amplification is claimed).
    ``ledger``: the run's per-site ledger, charged for every release on behalf of
    ``sites`` (the names of the sites that may train; by default ``site-1`` ...). A
    FedProx wrapper (``ProximalStrategy``) stays outermost. Raises ``PrivacyError`` for
    a strategy other than plain FedAvg, or a budget that cannot hold without noise.
    """
    p = cfg.privacy
    mode = p.mode
    if mode in (PrivacyMode.NONE, PrivacyMode.LOCAL):
        return strategy
    if isinstance(strategy, ProximalStrategy):
        inner = wrap_for_privacy(strategy.inner, cfg, n_sampled, population, ledger, sites)
        return ProximalStrategy(inner, strategy.mu)
    if type(strategy) is not FedAvg:
        raise PrivacyError(
            f"privacy.mode = {p.mode.value!r} calibrates its noise to the plain mean of clipped "
            f"updates: it needs federation.strategy = {StrategyName.FEDAVG.value!r}, got "
            f"{cfg.federation.strategy.value!r} ({type(strategy).__name__})"
        )
    if n_sampled <= 0:
        raise PrivacyError(f"{n_sampled} site(s) per round: central DP needs at least one")
    accountant = None
    if p.noise_multiplier > 0:
        accountant = _accountant(p, max(population or n_sampled, n_sampled))
    elif p.max_epsilon > 0:
        raise PrivacyError(
            f"privacy.max-epsilon = {p.max_epsilon:g} cannot hold with "
            "privacy.noise-multiplier = 0: without noise epsilon is unbounded"
        )
    names = list(sites) or [f"site-{i}" for i in range(1, max(population or 0, n_sampled) + 1)]
    dp = CentralDp(strategy, p, n_sampled, accountant)
    dp.ledger, dp.sites = ledger if ledger is not None else SiteLedger(p.delta), names
    return dp


def privacy_spent(strategy: Strategy) -> dict[str, Any] | None:
    """What the run's central DP has spent so far (None without central DP).

    ``epsilon`` is Flower's RDP bound at ``delta`` (what ``privacy.max-epsilon`` is
    checked against), ``epsilon-gdp`` the exact value of the same composition; both are
    None with ``privacy.noise-multiplier = 0`` (no guarantee). ``releases`` counts
    rounds whose noised aggregate was released. ``sites`` is the run's per-site ledger
    (``SiteLedger.summary``): every site's composition over all its federations so far.
    """
    dp = _dp_layer(strategy)
    if dp is None:
        return None
    p = dp.settings
    spent = dp.privacy_spent()
    noisy = spent is not None
    return {
        "mode": p.mode,
        "epsilon": spent.epsilon if spent is not None else None,
        "epsilon-gdp": (
            gaussian_epsilon(composed_mu(p.noise_multiplier, dp.releases), p.delta)
            if noisy
            else None
        ),
        "delta": p.delta,
        "releases": dp.releases,
        "noise-multiplier": p.noise_multiplier,
        "clip-norm": p.clip_norm,
        "sampled": dp.num_sampled_clients,
        "accounting": ACCOUNTING if noisy else "none",
        "sites": dp.ledger.summary(),
    }


def whole_model_privacy(cfg: RunConfig, ledger: SiteLedger, site: str, model: str) -> str | None:
    """Account for ``site`` sending ``model``, trained whole on its data (local-only,
    fine-tuned), under a central mode: no noise, so the site's epsilon is unbounded.

    Returns why the model may not be trained when ``privacy.max-epsilon`` > 0 (the
    ledger is then left untouched), else None after marking the site unbounded. Other
    modes return None: ``none`` promises nothing, and a ``local`` site refuses itself.
    """
    p = cfg.privacy
    if p.mode not in (PrivacyMode.CENTRAL, PrivacyMode.CENTRAL_CLIENT_CLIP):
        return None
    if p.max_epsilon > 0:
        return (
            f"privacy.max-epsilon = {p.max_epsilon:g}: {model} would send a model trained "
            f"at {site} without noise (unbounded epsilon), so it was not trained; turn off "
            "eval.local-only and hooks.finetune-epochs for a budgeted DP run"
        )
    ledger.mark_unbounded(site, f"{model}: trained at the site, sent without noise")
    return None


class CentralDp(DifferentialPrivacyClientSideFixedClipping):
    """Flower's fixed-clipping DP wrapper with every update clipped by the server first.

    Both central modes use Flower's client-side-clipping wrapper for what follows the
    clipping (reply checks, equal-weight check, FedAvg, noise, accounting) and clip here:
    Flower's server-side wrapper divides by the update's norm and fails the whole round
    with ZeroDivisionError when a site sends back the model it received, and it pairs
    tensors by position. Under ``central-client-clip`` the sites have clipped already
    (``client.privacy``); an update longer than the clip norm (a site without the mod)
    is logged, and clipped all the same, so the guarantee never rests on the sites.
    Flower's wrapper puts its clip norm in the round config; it is taken out again,
    since sites read ``privacy.clip-norm`` and reject keys that are not run-config keys.
    """

    def __init__(
        self,
        strategy: FedAvg,
        settings: Settings,
        n_sampled: int,
        accountant: RdpAccountant | None,
    ) -> None:
        super().__init__(
            strategy,
            settings.noise_multiplier,
            settings.clip_norm,
            n_sampled,
            accountant=accountant,
        )
        self.settings, self.releases, self.reference = settings, 0, ArrayRecord()
        self.ledger = SiteLedger(settings.delta)
        self.sites: list[str] = []

    def __repr__(self) -> str:
        return f"CentralDp(mode={self.settings.mode.value!r}, {super().__repr__()})"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.reference = arrays
        _check_budget(self, server_round)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            for record in records(message.content, ConfigRecord).values():
                record.pop(KEY_CLIPPING_NORM, None)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        sites_clip = self.settings.mode == PrivacyMode.CENTRAL_CLIENT_CLIP
        prepared = _prepared(self, server_round, replies)
        for reply in prepared:
            _clip_reply(reply, self.reference, self.clipping_norm, server_round, sites_clip)
        arrays, metrics = super().aggregate_train(server_round, prepared)
        if arrays is not None:
            self.releases += 1
            if self.accountant is not None:
                self.ledger.charge(self.sites, self.noise_multiplier)
            else:
                for site in self.sites:
                    self.ledger.mark_unbounded(site, NO_NOISE)
        return arrays, metrics

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        """Flower's central noise, N(0, (sigma C / n)^2) per entry, from an OS-seeded
        generator (Flower's own uses NumPy's global state, which sites seed from the
        public run seed)."""
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        if std == 0:
            return aggregated_arrays
        values = {k: array_view(v) for k, v in aggregated_arrays.items()}
        noised = add_gaussian_noise(values, std, noise_rng())
        log.info("central DP: Gaussian noise of std %.4g added to the aggregate", std)
        return ArrayRecord(
            OrderedDict((k, Array(noised[k].astype(values[k].dtype, copy=False))) for k in values)
        )


# ---- internals ---------------------------------------------------------------------------


def _accountant(p: Settings, population: int) -> RdpAccountant:
    config = PrivacyConfig(
        target_delta=p.delta,
        population_size=population,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=None,  # enforced per site over the whole run (``_check_budget``)
    )
    try:
        return RdpAccountant(config)
    except ImportError as e:
        raise PrivacyError(
            f"privacy.mode = {p.mode.value!r} needs the 'dp-accounting' package (flwr[dp]), a "
            "dependency of hepafed: reinstall hepafed into this environment"
        ) from e


def _dp_layer(strategy: Strategy) -> CentralDp | None:
    inner = strategy.inner if isinstance(strategy, ProximalStrategy) else strategy
    return inner if isinstance(inner, CentralDp) else None


def _check_budget(dp: CentralDp, server_round: int) -> None:
    """``PrivacyBudgetError`` when one more release would take a site of this federation
    past ``privacy.max-epsilon`` in the run's ledger (the ledger is left untouched)."""
    p = dp.settings
    if dp.accountant is None or p.max_epsilon <= 0:
        return
    worst = dp.ledger.over_budget(dp.sites, dp.noise_multiplier, p.max_epsilon)
    if worst is None:
        return
    site, projected = worst
    spent = dp.ledger.epsilon(site)
    raise PrivacyBudgetError(
        f"privacy.max-epsilon = {p.max_epsilon:g}: round {server_round} would bring "
        f"{site}'s epsilon to {projected:.3f} at delta {p.delta:g} (spent {spent:.3f} over "
        f"{dp.ledger.releases(site)} release(s) in this run's federations, "
        f"{ACCOUNTING.upper()} accounting), so it was not started. Raise "
        "privacy.noise-multiplier or privacy.max-epsilon, or lower federation.num-rounds."
    )


def _prepared(dp: CentralDp, server_round: int, replies: Iterable[Message]) -> list[Message]:
    """Replies with unit weights and tensors in the global model's order (the aggregate
    takes the first reply's), and a warning when a missing update voids the round."""
    weight_key = cast(FedAvg, dp.strategy).weighted_by_key
    out = list(replies)
    for reply in out:
        if reply.has_error():
            continue
        content = reply.content
        for name, record in records(content, ArrayRecord).items():
            if list(record) != list(dp.reference) and set(record) == set(dp.reference):
                content[name] = ArrayRecord(OrderedDict((k, record[k]) for k in dp.reference))
        for name, metrics in records(content, MetricRecord).items():
            content[name] = MetricRecord({**metrics, weight_key: 1.0})
    usable = sum(not r.has_error() for r in out)
    if dp.accountant is not None and usable != dp.num_sampled_clients:
        log.warning(
            "round %d: %d of %d sampled sites sent a usable update; with privacy.mode = %r "
            "the noise is calibrated to %d updates, so this round releases nothing",
            server_round,
            usable,
            dp.num_sampled_clients,
            dp.settings.mode,
            dp.num_sampled_clients,
        )
    return out


def _clip_reply(
    reply: Message, reference: ArrayRecord, clip_norm: float, rnd: int, sites_clip: bool
) -> None:
    """Clip ``reply``'s update to ``clip_norm`` in place (float64; a zero update stays zero).

    When the sites are meant to clip (``sites_clip``), an update longer than the clip
    norm (beyond float32 rounding) is logged by site name.
    """
    if reply.has_error():
        return
    content = reply.content
    for name, record in records(content, ArrayRecord).items():
        if set(record) != set(reference):
            continue  # Flower's aggregation reports the mismatch
        ref = {k: array_view(v) for k, v in reference.items()}
        update = {k: array_view(record[k]).astype(np.float64) - ref[k] for k in reference}
        length = update_norm(update)
        if length <= clip_norm:
            continue
        if sites_clip and length > clip_norm * (1.0 + CLIP_TOLERANCE):
            sites = records(content, ConfigRecord).get(RecordKey.SITE, ConfigRecord())
            site = sites.get(SiteKey.NAME, f"node {reply.metadata.src_node_id}")
            log.warning(
                "round %d: %s sent an update of norm %.4g > privacy.clip-norm = %g (is the "
                "site's privacy mod installed?); clipped by the server",
                rnd,
                site,
                length,
                clip_norm,
            )
        clipped, _ = clip_update(update, clip_norm)
        content[name] = ArrayRecord(
            OrderedDict(
                (k, Array((ref[k] + clipped[k]).astype(ref[k].dtype, copy=False)))
                for k in reference
            )
        )
