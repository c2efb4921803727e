"""The champion/challenger gate every registered model goes through.

Each new version gets the ``challenger`` alias when it is registered
(:func:`~mmpipe.registry.mlflow_registry.register_logged_model`). Its eval step records
the model's *primary metric* on the version as a tag (:func:`record_eval_metric`), and
the promotion step (:func:`promote_if_better`) moves ``champion`` to it only when it is
at least as good as the current champion on that metric. Downstream steps load
``models:/<name>@champion``, so a regression never reaches serving.

The comparison itself (:func:`decide`) is a pure function of two numbers, so the rule is
tested without MLflow. Every decision -- promotion, tie, refusal -- is written onto the
challenger's version as ``promotion.*`` tags with both numbers, and returned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mmpipe.registry.mlflow_registry import CHAMPION

# Outcomes: why the champion alias moved or stayed.
FIRST = "first"  # no champion yet: the challenger becomes the first one
BETTER = "better"  # strictly better by at least min_delta
TIE = "tie"  # exactly equal: "at least as good" promotes it (unless min_delta > 0)
WORSE = "worse"  # a regression: refused
BELOW_MIN_DELTA = "below_min_delta"  # better, but by less than min_delta: refused
UNSCORED_CHALLENGER = "unscored_challenger"  # the challenger's metric is not a number: refused
UNSCORED_CHAMPION = "unscored_champion"  # the champion has no recorded metric: refused
ALREADY_CHAMPION = "already_champion"  # the version already holds the alias: nothing to do
ROLLED_BACK = "rolled_back"  # an operator moved the alias back (``mmpipe registry rollback``)
UNMET_REQUIREMENTS = "unmet_requirements"  # a bound of the system's SPEC.requirements fails: refused

EVAL_TAG_PREFIX = "eval."
PROMOTION_TAG_PREFIX = "promotion."


@dataclass(frozen=True)
class PromotionDecision:
    """What the gate decided and why, with the numbers it compared.

    ``promote`` is True when the champion alias moves to the challenger. The registry
    fields are filled by :func:`promote_if_better`; :func:`decide` leaves them None.
    """

    promote: bool
    outcome: str
    metric: str
    challenger_value: float
    champion_value: float | None
    higher_is_better: bool
    reason: str
    name: str | None = None
    version: str | None = None  # the challenger's version
    previous_champion: str | None = None  # the champion's version before the decision
    champion: str | None = None  # the champion's version after it

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        """A short report of the decision, for the eval report's directory."""
        title = f"# Promotion of {self.name} version {self.version}" if self.name else "# Promotion"
        return "\n".join([
            title, "",
            f"- decision: **{'promoted' if self.promote else 'not promoted'}** ({self.outcome})",
            f"- {self.reason}",
            f"- champion before: version {self.previous_champion or 'none'}; "
            f"after: version {self.champion or 'none'}",
        ]) + "\n"

    def tags(self) -> dict[str, str]:
        """The ``promotion.*`` tags recorded on the challenger's version."""
        values = {
            "outcome": self.outcome,
            "promoted": str(self.promote).lower(),
            "metric": self.metric,
            "challenger_value": _number(self.challenger_value),
            "champion_value": _number(self.champion_value),
            "previous_champion": self.previous_champion or "none",
            "reason": self.reason,
        }
        return {PROMOTION_TAG_PREFIX + key: value for key, value in values.items()}


def _number(value: float | None) -> str:
    # repr round-trips a float exactly: a tie read back from a tag is still a tie.
    return "none" if value is None else repr(float(value))


def _show(value: float | None) -> str:
    return "none" if value is None else f"{float(value):.6g}"


def decide(metric: str, challenger: float, champion: float | None, *,
           higher_is_better: bool = True, min_delta: float = 0.0) -> PromotionDecision:
    """Whether a challenger scoring ``challenger`` may replace a champion scoring ``champion``.

    ``champion=None`` means there is no champion: the first version is always promoted,
    so the pipeline has something to serve (its number is still recorded). Otherwise the
    challenger is promoted when its improvement (in the metric's good direction) is at
    least ``min_delta``; with the default 0 a tie promotes ("at least as good"), and no
    setting can promote a regression. A challenger whose metric is NaN or infinite is
    refused: nothing shows it is as good.
    """
    if min_delta < 0 or not math.isfinite(min_delta):
        raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}: "
                         "a negative margin would let a worse model through")
    challenger = float(challenger)
    direction = "higher" if higher_is_better else "lower"

    def made(promote: bool, outcome: str, reason: str) -> PromotionDecision:
        return PromotionDecision(promote, outcome, metric, challenger, champion, higher_is_better,
                                 f"{reason} on {metric} ({direction} is better)")

    if champion is None:
        return made(True, FIRST, f"no champion yet: challenger {_show(challenger)} becomes the first")
    champion = float(champion)
    if not math.isfinite(challenger):
        return made(False, UNSCORED_CHALLENGER,
                    f"challenger {_show(challenger)} is not a score, champion {_show(champion)} stays")
    if not math.isfinite(champion):
        return made(False, UNSCORED_CHAMPION,
                    f"champion's recorded value {_show(champion)} is not a score; not comparable "
                    f"with challenger {_show(challenger)}, champion stays")
    gain = challenger - champion if higher_is_better else champion - challenger
    better_or_equal = ">=" if higher_is_better else "<="
    worse = "<" if higher_is_better else ">"
    delta = f"delta {challenger - champion:+.3g}"
    if gain < 0:
        return made(False, WORSE, f"challenger {_show(challenger)} {worse} champion {_show(champion)} "
                                  f"({delta}): regression refused")
    if gain < min_delta:
        outcome = TIE if gain == 0 else BELOW_MIN_DELTA
        return made(False, outcome, f"challenger {_show(challenger)} {better_or_equal} champion "
                                    f"{_show(champion)} ({delta}) but short of min_delta "
                                    f"{min_delta:g}: refused")
    if gain == 0:
        return made(True, TIE, f"challenger {_show(challenger)} == champion {_show(champion)}: "
                               "tie, at least as good, promoted")
    return made(True, BETTER, f"challenger {_show(challenger)} {better_or_equal} champion "
                              f"{_show(champion)} ({delta}): promoted")


# ---------------------------------------------------------------------------------------
# the registry side


def metric_tag(metric: str) -> str:
    """The version tag holding ``metric``: ``eval.<metric>`` with ``@`` spelled ``_at_``
    (MLflow keys allow letters, digits, ``_ - . / :`` and spaces), as eval logs metrics."""
    return EVAL_TAG_PREFIX + metric.replace("@", "_at_")


def record_eval_metric(client: MlflowClient, name: str, version: str, metric: str, value: float,
                       extra: dict[str, str] | None = None) -> None:
    """Write the eval step's primary metric (and ``extra`` as ``eval.<key>``) on the version.

    This is the number a later challenger is compared with when this version is champion,
    so it is stored exactly (``repr``), not rounded.
    """
    client.set_model_version_tag(name, str(version), metric_tag(metric), _number(value))
    for key, text in (extra or {}).items():
        client.set_model_version_tag(name, str(version), EVAL_TAG_PREFIX + key, str(text))


def recorded_metric(client: MlflowClient, name: str, version: str, metric: str) -> float | None:
    """The value :func:`record_eval_metric` stored on the version, or None when absent."""
    text = client.get_model_version(name, str(version)).tags.get(metric_tag(metric))
    if text is None or text == "none":
        return None
    return float(text)


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version holding ``alias``, or None when no version does (or ``name`` is unregistered)."""
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return str(aliases[alias]) if alias in aliases else None


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The version holding ``champion``, or None when no version does yet."""
    return alias_version(client, name, CHAMPION)


def _same(version: str | int | None, other: str | None) -> bool:
    return version is not None and other is not None and str(version) == other


def promote_if_better(
    client: MlflowClient,
    name: str,
    version: str,
    metric: str,
    value: float,
    *,
    higher_is_better: bool = True,
    min_delta: float = 0.0,
    champion_value: float | None = None,
    scored_champion: str | None = None,
    unmet_requirements: tuple[str, ...] = (),
) -> PromotionDecision:
    """Move ``name@champion`` to ``version`` when it scores at least as well; record why.

    ``value`` is the challenger's primary metric from its eval report. The champion's
    number is the one its own eval recorded on its version (``eval.<metric>``), unless the
    eval step re-scored the champion on the same data: then it passes ``champion_value``
    with ``scored_champion`` (the version it scored), which is used only if that version
    still holds the alias. A champion with no recorded number refuses the challenger
    rather than guess. A challenger with ``unmet_requirements`` (the system's own bounds,
    each a sentence saying which failed) is refused whatever the numbers say, even as the
    first version. Every decision is tagged on ``version`` (``promotion.*``), except
    "already champion", which keeps the tags of the decision that made it champion.
    """
    version = str(version)
    current = champion_version(client, name)
    if current == version:
        decision = PromotionDecision(
            False, ALREADY_CHAMPION, metric, float(value), float(value), higher_is_better,
            f"version {version} already holds {CHAMPION}: nothing to compare")
    elif unmet_requirements:
        decision = PromotionDecision(
            False, UNMET_REQUIREMENTS, metric, float(value), champion_value, higher_is_better,
            f"requirements not met ({'; '.join(unmet_requirements)}): refused, champion stays")
    else:
        decision = _compare_with(client, name, current, metric, float(value), higher_is_better,
                                 min_delta, champion_value if _same(scored_champion, current) else None)
    decision = replace(decision, name=name, version=version, previous_champion=current,
                       champion=version if decision.promote else current)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    if decision.outcome != ALREADY_CHAMPION:  # keep the tags of the decision that promoted it
        for key, text in decision.tags().items():
            client.set_model_version_tag(name, version, key, text)
    return decision


def _compare_with(client: MlflowClient, name: str, current: str | None, metric: str, value: float,
                  higher_is_better: bool, min_delta: float, rescored: float | None) -> PromotionDecision:
    if current is None:
        return decide(metric, value, None, higher_is_better=higher_is_better, min_delta=min_delta)
    champion = rescored if rescored is not None else recorded_metric(client, name, current, metric)
    if champion is None:
        return PromotionDecision(
            False, UNSCORED_CHAMPION, metric, value, None, higher_is_better,
            f"champion version {current} has no {metric_tag(metric)} tag to compare challenger "
            f"{_show(value)} with: refused (tag it, or move the alias by hand)")
    decision = decide(metric, value, champion, higher_is_better=higher_is_better, min_delta=min_delta)
    source = "re-scored on the same data" if rescored is not None else "as recorded by its own eval"
    return replace(decision, reason=f"{decision.reason}; champion is version {current}, {source}")


# ---------------------------------------------------------------------------------------
# what an eval report hands the promotion step


@dataclass(frozen=True)
class GateEvidence:
    """The numbers an eval step puts in its report for the promotion step to judge.

    Any model's eval writes this (``to_dict``) into its report summary and appends
    ``markdown()`` to its report, so the report itself shows the comparison the gate makes.
    ``champion_value`` is set when the eval re-scored the current champion on the same
    data; otherwise the gate falls back to the champion's recorded ``eval.<metric>`` tag.
    """

    registered_model: str
    metric: str
    higher_is_better: bool
    challenger_version: str
    challenger_value: float
    champion_version: str | None = None
    champion_value: float | None = None
    note: str = ""  # e.g. why the champion was not re-scored
    requirements: tuple[str, ...] = ()  # the SPEC's requirements, described
    unmet_requirements: tuple[str, ...] = ()  # those the challenger fails, each with its value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> GateEvidence:
        # Report JSON writes NaN as null: an unscored challenger reads back as NaN, not None.
        value = record["challenger_value"]
        return cls(**{**record, "challenger_value": math.nan if value is None else float(value),
                      "requirements": tuple(record.get("requirements", ())),
                      "unmet_requirements": tuple(record.get("unmet_requirements", ()))})

    def markdown(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        challenger = _show(self.challenger_value)
        lines = ["## Promotion gate", "",
                 f"Primary metric of `{self.registered_model}`: `{self.metric}` ({direction} is better).",
                 "", "| version | role | value |", "|---|---|---:|",
                 f"| {self.challenger_version} | challenger (this report) | {challenger} |"]
        if self.champion_version is None:
            lines.append("| – | champion | none yet |")
        elif self.champion_version == self.challenger_version:
            lines.append(f"| {self.champion_version} | champion (same version) | {challenger} |")
        elif self.champion_value is not None:
            lines.append(f"| {self.champion_version} | champion, re-scored on this data | "
                         f"{_show(self.champion_value)} |")
        else:
            lines.append(f"| {self.champion_version} | champion | its recorded `{metric_tag(self.metric)}` |")
        if self.requirements:
            unmet = set(self.unmet_requirements)
            lines += ["", "Requirements (all must hold):", ""]
            lines += [f"- `{text}`: " + ("**unmet** (" + next(u for u in unmet if u.startswith(text)) + ")"
                                          if any(u.startswith(text) for u in unmet) else "met")
                      for text in self.requirements]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"


def promote_from_evidence(client: MlflowClient, evidence: GateEvidence, min_delta: float = 0.0
                          ) -> PromotionDecision:
    """:func:`promote_if_better` on what an eval report recorded."""
    return promote_if_better(
        client, evidence.registered_model, evidence.challenger_version, evidence.metric,
        evidence.challenger_value, higher_is_better=evidence.higher_is_better, min_delta=min_delta,
        champion_value=evidence.champion_value, scored_champion=evidence.champion_version,
        unmet_requirements=tuple(evidence.unmet_requirements),
    )


def rollback(client: MlflowClient, name: str, to: str | None = None) -> PromotionDecision:
    """Move ``name@champion`` back to version ``to``, by default to the champion before the
    current one (the ``promotion.previous_champion`` the current champion's promotion
    recorded). Recorded like a promotion: ``promotion.*`` tags on the version that now
    holds the alias (outcome ``rolled_back``, the version it replaced as previous
    champion), so a second rollback undoes the first. Refuses, with a message, when there
    is no champion, no earlier one, or ``to`` is not a version of ``name``."""
    current = champion_version(client, name)
    if current is None:
        raise ValueError(f"{name} has no {CHAMPION} to roll back")
    if to is None:
        tags = client.get_model_version(name, current).tags
        to = tags.get(PROMOTION_TAG_PREFIX + "previous_champion", "none")
        if to == "none":
            raise ValueError(f"{name}@{CHAMPION} (version {current}) recorded no earlier champion; "
                             "name the version with --to")
    to = str(to)
    versions = {str(v.version) for v in client.search_model_versions(f"name='{name}'")}
    if to not in versions:
        raise ValueError(f"{name} has no version {to}; it has {sorted(versions, key=int)}")
    if to == current:
        raise ValueError(f"version {to} already holds {name}@{CHAMPION}")
    metric = client.get_model_version(name, current).tags.get(PROMOTION_TAG_PREFIX + "metric", "")
    value = recorded_metric(client, name, to, metric) if metric else None
    current_value = recorded_metric(client, name, current, metric) if metric else None
    decision = PromotionDecision(
        True, ROLLED_BACK, metric, math.nan if value is None else value, current_value, True,
        f"rolled back by an operator from version {current} to version {to}",
        name=name, version=to, previous_champion=current, champion=to)
    client.set_registered_model_alias(name, CHAMPION, to)
    for key, text in decision.tags().items():
        client.set_model_version_tag(name, to, key, text)
    return decision
