"""The report's two charts: tanker calls per month, and cumulative estimated barrels with
their range against the UN's annual cap. Months the scenes did not see are drawn as such,
never as zero; charts made from simulated scenes say SIMULATED on the image."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from imagery.report.calls import CallsResult, monthly_counts
from imagery.tankers import UN_ANNUAL_CAP_BARRELS

SERIES = (("detected", "detected (seen in imagery)", "#4c72b0"),
          ("declared", "AIS-declared", "#55a868"),
          ("undeclared", "undeclared (no AIS)", "#c44e52"),
          ("confirmed", "analyst-confirmed tanker", "#8172b2"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain(text: str) -> str:
    """External text drawn as it is: matplotlib reads text between two $ as mathematics (and
    fails on a malformed formula)."""
    return text.replace("$", r"\$")


def _stamp(fig, simulated: bool) -> None:
    if simulated:
        fig.text(0.5, 0.5, "SIMULATED", fontsize=60, color="#d62728", alpha=0.18,
                 ha="center", va="center", rotation=20, weight="bold")
        fig.text(0.99, 0.01, "SIMULATED scenes and AIS", fontsize=9, color="#d62728",
                 ha="right", va="bottom", weight="bold")


def calls_per_month_chart(result: CallsResult, out: str | os.PathLike) -> Path:
    plt = _pyplot()
    counts = monthly_counts(result)
    months = result.months
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(months) + 3), 4.2), dpi=110)
    width = 0.8 / len(SERIES)
    top = max([1] + [c[k] for c in counts.values() for k, *_ in SERIES])
    for i, month in enumerate(months):
        if month.state == "not seen":
            ax.axvspan(i - 0.45, i + 0.45, color="#bbbbbb", alpha=0.5, hatch="//", lw=0)
            ax.text(i, top * 0.5, f"not seen\n({month.cloud_blocked} of {month.scenes} "
                    "scenes cloud-blocked)", ha="center", va="center", fontsize=8)
            continue
        for j, (key, label, colour) in enumerate(SERIES):
            ax.bar(i - 0.4 + width * (j + 0.5), counts[month.month][key], width, color=colour,
                   label=label if i == _first_seen(months) else None)
        if month.state == "little visibility":
            ax.text(i, top * 1.05, f"little visibility: {month.seen} scene(s)",
                    ha="center", fontsize=8, color="#555555")
    ax.set_xticks(range(len(months)), [m.month for m in months])
    ax.set_xlim(-0.6, len(months) - 0.4)
    ax.set_ylim(0, top * 1.2 + 0.5)
    ax.set_ylabel("tanker calls")
    prefix = "SIMULATED: " if result.simulated else ""
    ax.set_title(f"{prefix}{_plain(result.port.title)}\ntanker calls per month (by first seen)")
    if any(m.state != "not seen" for m in months):
        ax.legend(fontsize=8, loc="upper left")
    ax.yaxis.get_major_locator().set_params(integer=True)
    _stamp(fig, result.simulated)
    fig.tight_layout()
    return _save(fig, out)


def _first_seen(months) -> int:
    return next((i for i, m in enumerate(months) if m.state != "not seen"), -1)


def cumulative_series(result: CallsResult) -> dict[int, tuple[list, list, list, list]]:
    """year -> (times, low, central, high): each calendar year's cumulative barrels of the
    tanker calls by first seen, from 0 at the year's (or period's) start to its end. A call
    first seen at the very turn of a year counts in the new year only."""
    start, end = result.start, result.end
    series = {}
    for year in range(start.year, end.year + 1):
        t0 = max(start, datetime(year, 1, 1, tzinfo=UTC))
        # To the end of the period's last day, so that calls on that day show as steps.
        last_day = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
        t1 = min(last_day, datetime(year + 1, 1, 1, tzinfo=UTC))
        times, low, mid, high = [t0], [0.0], [0.0], [0.0]
        for call in result.calls:
            if call.barrels is None or not t0 <= call.first_seen < t1:
                continue
            times.append(call.first_seen)
            low.append(low[-1] + call.barrels.low)
            mid.append(mid[-1] + call.barrels.central)
            high.append(high[-1] + call.barrels.high)
        times.append(t1)
        low.append(low[-1])
        mid.append(mid[-1])
        high.append(high[-1])
        series[year] = (times, low, mid, high)
    return series


def cumulative_barrels_chart(result: CallsResult, out: str | os.PathLike) -> Path:
    """Cumulative barrels of the tanker calls (by first seen), restarting each calendar year
    as the cap does, with the low-high range shaded and the 500,000-barrel cap line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    start = result.start
    for year, (times, low, mid, high) in cumulative_series(result).items():
        ax.fill_between(times, low, high, step="post", color="#4c72b0", alpha=0.25,
                        label="low - high (length error)" if year == start.year else None)
        ax.step(times, mid, where="post", color="#4c72b0",
                label="central estimate" if year == start.year else None)
    for month in result.months:
        if month.state == "not seen":
            y, m = map(int, month.month.split("-"))
            a = datetime(y, m, 1, tzinfo=UTC)
            b = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
            ax.axvspan(a, b, color="#bbbbbb", alpha=0.5, hatch="//", lw=0,
                       label=None)
    ax.axhline(UN_ANNUAL_CAP_BARRELS, color="#d62728", ls="--",
               label=f"UN cap: {UN_ANNUAL_CAP_BARRELS:,} barrels a year (UNSCR 2397)")
    ax.set_ylabel("barrels (cumulative in the calendar year)")
    prefix = "SIMULATED: " if result.simulated else ""
    ax.set_title(f"{prefix}{_plain(result.port.title)}\n"
                 "estimated barrels carried by tanker calls")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, max(UN_ANNUAL_CAP_BARRELS * 1.1, ax.get_ylim()[1]))
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    fig.autofmt_xdate()
    _stamp(fig, result.simulated)
    fig.tight_layout()
    return _save(fig, out)


def _save(fig, out: str | os.PathLike) -> Path:
    plt = _pyplot()
    path = Path(out)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
