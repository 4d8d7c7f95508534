"""The GPU tiers a plan or a report prints, chosen by name from report.gpus.

python -c "from sweep.settings.tiers import SEED_TIERS; print(SEED_TIERS)"
"""

from __future__ import annotations

from sweep.settings.errors import ConfigError
from sweep.settings.schema import GpuClass

SEED_TIERS = ("A100 80GB", "RTX 4090 24GB", "A10G 24GB", "RTX 3090 24GB")  # the seed's table


def pick_tiers(
    gpus: list[GpuClass], names: str | list[str] | None, key: str = "tiers"
) -> list[GpuClass]:
    """The tiers a plan prints: the seed's four (None), "all", or names ("A100 80GB" or "A100")."""
    if names == "all":
        return list(gpus)
    if names is None:  # the seed's four, in its order, as far as report.gpus lists them
        seed = sorted(
            (g for g in gpus if g.name in SEED_TIERS), key=lambda g: SEED_TIERS.index(g.name)
        )
        return seed or list(gpus)
    wanted = [names] if isinstance(names, str) else names
    out = []
    for w in wanted:
        hits = [g for g in gpus if g.name.lower() == str(w).lower()] or [
            g for g in gpus if str(w).lower() in g.name.lower()
        ]
        if not hits:
            known = ", ".join(g.name for g in gpus)
            raise ConfigError(f"{key}: {w!r} is not a GPU class in report.gpus; allowed: {known}")
        out += [g for g in hits if g not in out]
    return out
