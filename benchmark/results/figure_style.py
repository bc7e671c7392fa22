"""How the figures tell models apart: a hue per family of methods, shades and markers within a family.

Thirteen or more lines in one panel cannot be told apart by colour alone (a qualitative map runs out of distinct hues
after about ten), so each family gets one hue (`benchmark.records.HUES`: paper 1's training modes blue, adversarial
fine-tuning red, AToP's purification green, paper 2's defenses purple, the reference models grey, anything else brown)
and each member of a family its own shade and marker. A defense's family is in its config (`family:`); the run hands
them to the report (report_config.json). The teacher and CommonInit's common model are reference models, not
defenses: the legends say so.
"""

from __future__ import annotations

from benchmark.records import HUES, OTHER

#: The models that are references, not defenses (every run has the teacher; CommonInit's runs the common model).
REFERENCE_MODELS = ("teacher", "common")

#: Markers within a family, in order.
MARKERS = "osD^vP*X<>ph"
#: Names the legends give the reference models.
REFERENCE_LABEL = " (reference)"


def family(name: str, families: dict[str, str]) -> str:
    """A model's family: `reference` for the reference models, else its defense's (`families`: defense -> family,
    from the configs), `other` for a defense that names none."""
    return "reference" if name in REFERENCE_MODELS else families.get(name, OTHER)


def model_styles(models: list[str], families: dict[str, str] | None = None) -> tuple[dict[str, tuple], dict[str, str]]:
    """A colour and a marker per model, fixed by the ordered list: the family's hue (`families`: defense -> family),
    a shade per member (darkest first), a marker per member."""
    import matplotlib

    members: dict[str, list[str]] = {}
    for m in models:
        members.setdefault(family(m, families or {}), []).append(m)
    colors, markers = {}, {}
    for fam, names in members.items():
        cmap = matplotlib.colormaps[HUES[fam]]
        for i, m in enumerate(names):
            shade = 0.9 - 0.45 * i / max(1, len(names) - 1) if len(names) > 1 else 0.75
            colors[m] = cmap(shade)
            markers[m] = MARKERS[i % len(MARKERS)]
    return colors, markers


def label(name: str) -> str:
    """A model's name in a legend: reference models say that they are."""
    return name + (REFERENCE_LABEL if name in REFERENCE_MODELS else "")
