"""Hook statistics replies (e.g. Nyul landmarks), screened site by site before pooling.

A site's statistics set the federation's shared scale, weighted by the number of
cases it says it fitted them on, so each reply is checked like an update: no
error, readable JSON, ``n_cases`` a whole number from 1 to the cases the site
declared when it joined, and statistics that the hooks accept on their own
(``HookSet.combine`` of that one site: finite, in range, the expected landmarks).
A reply that fails is a named rejection: that site does not contribute.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

from flwr.app import ConfigRecord, Message

from common.hooks import HookError, HookSet
from common.keys import SiteKey
from server.reply_checks import ReplyError, count_problem, json_object, site_record

log = logging.getLogger("hepafed.progress")

Statistics = tuple[float, dict[str, Any]]  # (n_cases, the hooks' statistics by hook name)


def screen_statistics(
    replies: list[Message],
    site_of: Callable[[Message], str],
    declared: Mapping[str, int],
    hooks: HookSet,
    identity: Callable[[Message, ConfigRecord], str | None] | None = None,
) -> tuple[dict[str, Statistics], dict[str, str]]:
    """The believable (n_cases, statistics) of each site in ``declared`` (site -> its
    declared cases), and why each other site's cannot be used (no reply included).
    ``identity`` (a deployment) says why a reply is not signed by that site's key."""
    stats: dict[str, Statistics] = {}
    rejected: dict[str, str] = {}
    for reply in replies:
        site = site_of(reply)
        try:
            if site not in declared or site in stats or site in rejected:
                raise ReplyError("statistics from a site that was not asked, or sent twice")
            if identity is not None:
                info = site_record(reply, "could not compute hook statistics")
                if info.get(SiteKey.NAME.value) != site:
                    raise ReplyError(f"statistics signed as {info.get(SiteKey.NAME.value)!r}")
                problem = identity(reply, info)
                if problem is not None:
                    raise ReplyError(problem)
            stats[site] = site_statistics(reply, declared[site], hooks)
        except ReplyError as e:
            stats.pop(site, None)
            rejected[site] = str(e)
            log.warning("hook statistics from %s rejected: %s", site, e)
    for site in sorted(set(declared) - set(stats) - set(rejected)):
        rejected[site] = "no reply in time"
        log.warning("hook statistics from %s rejected: no reply in time", site)
    return stats, dict(sorted(rejected.items()))


def site_statistics(reply: Message, declared: int, hooks: HookSet) -> Statistics:
    """One site's (n_cases, statistics); ReplyError naming what cannot be believed."""
    info = site_record(reply, "could not compute hook statistics")
    n_cases = info.get(SiteKey.N_CASES)
    limit = f"the {declared} case(s) the site declared when it joined"
    problem = count_problem(SiteKey.N_CASES.value, n_cases, declared, 1, limit)
    if problem is not None:
        raise ReplyError(problem)
    statistics = json_object(info.get(SiteKey.STATISTICS), SiteKey.STATISTICS.value)
    weight = float(cast(float, n_cases))
    try:
        hooks.combine([(weight, statistics)])  # the hooks' own checks, on this site alone
    except (HookError, TypeError, ValueError, AttributeError, KeyError) as e:
        raise ReplyError(f"statistics refused: {e}") from e
    return weight, statistics
