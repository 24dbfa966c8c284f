"""Recognisability reports: per-class and overall top-1 of one sampling setting
(:class:`RecognitionReport`) and the markdown tables of a sweep."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass
class RecognitionReport:
    """Top-1 of the nearest-centroid classifier, per class and overall, for generated samples
    and for held-out real crops (fractions in ``[0, 1]``)."""

    class_names: list[str]
    generated: list[float]
    real: list[float]
    generated_overall: float
    real_overall: float
    settings: dict[str, Any]

    @property
    def generated_stderr(self) -> float:
        """Binomial standard error of :attr:`generated_overall` over its
        ``n_generated * classes`` samples: ``sqrt(p (1 - p) / M)``."""
        m = self.settings["n_generated"] * len(self.class_names)
        p = self.generated_overall
        return math.sqrt(p * (1 - p) / m)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "generated_stderr": self.generated_stderr}

    def markdown(self) -> str:
        """A markdown table: one row per class, then the overall row (percentages)."""
        s = self.settings
        lines = [f"| class | generated top-1 ({s['n_generated']}/class) | real held-out top-1 ({s['n_real']}/class) |",
                 "|---|---|---|"]
        for i, name in enumerate(self.class_names):
            lines.append(f"| {i} {name} | {100 * self.generated[i]:.0f}% | {100 * self.real[i]:.0f}% |")
        lines.append(f"| **overall** | **{100 * self.generated_overall:.1f}%** "
                     f"(+-{100 * self.generated_stderr:.1f}) | **{100 * self.real_overall:.1f}%** |")
        return "\n".join(lines)


def setting_label(settings: Mapping[str, Any]) -> str:
    """A short name of a report's sampling setting, e.g. ``sde 50 cfg 1.5 [0,1]``."""
    low, high = settings["guidance_interval"]
    return f"{settings['sampler']} {settings['steps']} cfg {settings['cfg_scale']:g} [{low:g},{high:g}]"


def sweep_markdown(reports: Sequence[RecognitionReport]) -> str:
    """Reports of one sweep as two markdown tables: overall top-1 (+- one binomial standard
    error) per setting, then top-1 per class (rows) and setting (columns), with the real crops."""
    if not reports:
        raise ValueError("reports: need at least one report")
    first = reports[0]
    n, k = first.settings["n_generated"], len(first.class_names)
    lines = [f"| setting | generated top-1 ({n}/class, {n * k} samples) |", "|---|---|"]
    for r in reports:
        lines.append(f"| {setting_label(r.settings)} | {100 * r.generated_overall:.1f}% "
                     f"+- {100 * r.generated_stderr:.1f} |")
    lines.append(f"| real held-out crops ({first.settings['n_real']}/class) | {100 * first.real_overall:.1f}% |")
    lines += ["", "| class | " + " | ".join(setting_label(r.settings) for r in reports) + " | real |",
              "|---" * (len(reports) + 2) + "|"]
    for i, name in enumerate(first.class_names):
        cells = " | ".join(f"{100 * r.generated[i]:.0f}%" for r in reports)
        lines.append(f"| {i} {name} | {cells} | {100 * first.real[i]:.0f}% |")
    return "\n".join(lines)
