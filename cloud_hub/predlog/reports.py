"""Reports on an endpoint's quality patterns, computed from the prediction log.

- **A/B** (`ab_split`): per variant the number of samples and the mean of a metric, and a
  significance test between each pair of variants: Welch's t-test for `score` (each answered
  row's top score) and `latency` (each answered request's latency), a two-proportion z-test for
  `error_rate` (each request's outcome: failed or switched off against answered; bad input is
  the caller's and left out), with its p-value and a plain verdict.
- **Shadow** (`shadow`): per candidate, the requests it saw, how often its answer agrees with
  the primary's on the same row (records joined on request id and row: the same top label, or
  head results that agree per task as `edge_agent.core.heads.compare` says), the primary's and the
  candidate's latency p50/p99 over the same requests, and its errors.

Only the newest `max_records` records (or those since `since`) are read.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from itertools import combinations
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from cloud_hub.core.db import Database
from cloud_hub.predlog import endpoint_logs
from edge_agent.core.heads import compare

Metric = Literal["score", "latency", "error_rate"]
ALPHA = 0.05
PRIMARY_MS_TAG = "shadow_primary_ms"  # as cloud_hub.serving.steps.shadow writes it


class VariantSummary(BaseModel):
    variant: str
    n: int = Field(description="samples: rows (score) or requests (latency, error_rate)")
    mean: float | None = Field(description="mean score, mean latency (ms) or error rate")
    std: float | None = None
    errors: int | None = Field(default=None, description="error_rate: failed requests")


class Comparison(BaseModel):
    a: str
    b: str
    test: str
    statistic: float | None
    p_value: float | None
    significant: bool
    verdict: str


class AbReport(BaseModel):
    endpoint: str
    metric: Metric
    alpha: float = ALPHA
    variants: list[VariantSummary]
    comparisons: list[Comparison]
    verdict: str


class CandidateSummary(BaseModel):
    candidate: str
    requests: int
    rows_compared: int
    agreement: float | None = Field(description="share of rows whose top label is the primary's")
    errors: int
    primary_latency_ms: dict[str, float | None]
    candidate_latency_ms: dict[str, float | None]


class ShadowReport(BaseModel):
    endpoint: str
    requests: int = Field(description="answered requests in the window")
    candidates: list[CandidateSummary]


def ab_report(
    db: Database,
    endpoint: str,
    metric: Metric = "score",
    *,
    since: float | None = None,
    order: list[str] | None = None,
    max_records: int = 500_000,
) -> AbReport:
    samples: dict[str, list[float]] = defaultdict(list)
    rows = endpoint_logs.variant_samples(
        db.conn, endpoint, metric, since=since, max_records=max_records
    )
    for r in rows:
        if r["v"] is not None:
            samples[r["variant"]].append(float(r["v"]))
    names = [n for n in (order or []) if n in samples] + sorted(set(samples) - set(order or []))
    summaries = []
    for name in names:
        xs = np.asarray(samples[name])
        summaries.append(
            VariantSummary(
                variant=name,
                n=len(xs),
                mean=round(float(xs.mean()), 6) if len(xs) else None,
                std=round(float(xs.std(ddof=1)), 6) if len(xs) > 1 else None,
                errors=int(xs.sum()) if metric == "error_rate" else None,
            )
        )
    comparisons = [
        _compare(metric, a, b, samples[a], samples[b]) for a, b in combinations(names, 2)
    ]
    if len(names) < 2:
        verdict = (
            f"not enough data: {len(names)} variant(s) with {metric} samples in the log; "
            "need two to compare"
        )
    elif len(comparisons) == 1:
        verdict = comparisons[0].verdict
    else:
        found = [c.verdict for c in comparisons if c.significant]
        verdict = "; ".join(found) if found else f"no significant difference in {metric}"
    return AbReport(
        endpoint=endpoint,
        metric=metric,
        variants=summaries,
        comparisons=comparisons,
        verdict=verdict,
    )


_WHAT = {"score": "mean score", "latency": "mean latency (ms)", "error_rate": "error rate"}


def _compare(metric: Metric, a: str, b: str, xa: list[float], xb: list[float]) -> Comparison:
    from scipy import stats

    what = _WHAT[metric]
    na, nb = len(xa), len(xb)
    if metric == "error_rate":
        test = "two-proportion z-test"
        ea, eb = sum(xa), sum(xb)
        pa, pb = ea / na, eb / nb
        pooled = (ea + eb) / (na + nb)
        se = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
        if se == 0:
            stat, p = None, 1.0  # the same rate (0 or 1) on both sides
        else:
            stat = (pb - pa) / se
            p = float(2 * stats.norm.sf(abs(stat)))
        ma, mb = pa, pb
    else:
        test = "Welch's t-test"
        ma, mb = float(np.mean(xa)), float(np.mean(xb))
        if na < 2 or nb < 2:
            return Comparison(
                a=a,
                b=b,
                test=test,
                statistic=None,
                p_value=None,
                significant=False,
                verdict=f"not enough data to compare {a} and {b} (n = {na}, {nb}; need 2 each)",
            )
        if np.var(xa) == 0 and np.var(xb) == 0:
            stat, p = None, (1.0 if ma == mb else 0.0)
        else:
            result = stats.ttest_ind(xb, xa, equal_var=False)
            stat, p = float(result.statistic), float(result.pvalue)
    significant = p < ALPHA
    fa, fb = _fmt(metric, ma), _fmt(metric, mb)
    if significant:
        higher, lower = (b, a) if mb > ma else (a, b)
        hi, lo = (fb, fa) if mb > ma else (fa, fb)
        verdict = (
            f"{higher}'s {what} ({hi}) is higher than {lower}'s ({lo}): significant at "
            f"{ALPHA:.0%} (p = {p:.3g}, n = {na}, {nb})"
        )
    else:
        verdict = (
            f"no significant difference in {what} between {a} ({fa}) and {b} ({fb}) "
            f"(p = {p:.3g}, n = {na}, {nb})"
        )
    return Comparison(
        a=a,
        b=b,
        test=test,
        statistic=None if stat is None else round(stat, 4),
        p_value=round(p, 6),
        significant=significant,
        verdict=verdict,
    )


def _fmt(metric: Metric, value: float) -> str:
    if metric == "error_rate":
        return f"{value:.2%}"
    if metric == "latency":
        return f"{value:.3g} ms"
    return f"{value:.4f}"


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    xs = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(xs, 50)), 3),
        "p99": round(float(np.percentile(xs, 99)), 3),
    }


def _result(output: Any) -> dict[str, Any] | None:
    if not isinstance(output, str) or not output.startswith("{"):
        return None
    try:
        doc = json.loads(output)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "task" in doc else None


def _agree(a: tuple[str | None, Any], b: tuple[str | None, Any]) -> bool:
    """Two logged answers agree: the same top label (class scores), or head results that
    agree per task (`edge_agent.core.heads.compare`: boxes at IoU 0.5, cosine of embeddings...)."""
    ra, rb = _result(a[1]), _result(b[1])
    if ra is not None and rb is not None and ra.get("task") != "classification":
        try:
            return compare.agrees(ra, rb)
        except ValueError:
            return False
    return a[0] == b[0]


def shadow_report(
    db: Database, endpoint: str, *, since: float | None = None, max_records: int = 500_000
) -> ShadowReport:
    rows = endpoint_logs.answers_and_shadows(
        db.conn, endpoint, since=since, max_records=max_records
    )
    answers: dict[tuple[str, int], tuple[str | None, Any]] = {}
    primary_ms: dict[str, float] = {}
    shadows: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        if r["role"] == "shadow":
            shadows[r["step"]].append(r)
            continue
        if r["outcome"] != "ok":
            continue
        answers[(r["request_id"], r["row"])] = (r["label"], r["output"])
        if r["row"] == 0:
            tags = json.loads(r["tags"]) if r["tags"] else {}
            ms = tags.get(PRIMARY_MS_TAG)
            primary_ms[r["request_id"]] = float(ms) if ms is not None else r["latency_ms"]
    candidates = []
    for name in sorted(shadows):
        records = shadows[name]
        requests = {r["request_id"] for r in records}
        errors = {r["request_id"] for r in records if r["outcome"] != "ok"}
        compared = agree = 0
        cand_ms: dict[str, float] = {}
        for r in records:
            if r["row"] == 0 or r["outcome"] != "ok":
                cand_ms.setdefault(r["request_id"], r["latency_ms"])
            if r["outcome"] != "ok":
                continue
            key = (r["request_id"], r["row"])
            if key in answers:
                compared += 1
                agree += _agree(answers[key], (r["label"], r["output"]))
        both = [rid for rid in cand_ms if rid in primary_ms]
        candidates.append(
            CandidateSummary(
                candidate=name,
                requests=len(requests),
                rows_compared=compared,
                agreement=round(agree / compared, 4) if compared else None,
                errors=len(errors),
                primary_latency_ms=_pct([primary_ms[rid] for rid in both]),
                candidate_latency_ms=_pct(
                    [cand_ms[rid] for rid in both if cand_ms[rid] is not None]
                ),
            )
        )
    return ShadowReport(
        endpoint=endpoint,
        requests=len(primary_ms),
        candidates=candidates,
    )
