"""How the figures tell models apart: a hue per family of methods, shades and markers within a family.

Thirteen or more lines in one panel cannot be told apart by colour alone (a qualitative map runs out of distinct hues
after about ten), so each family gets one hue (paper 1's training modes blue, adversarial fine-tuning red, AToP's
purification green, paper 2's defenses purple, the reference models grey, anything else brown) and each member of a
family its own shade and marker. The teacher and CommonInit's common model are reference models, not defenses: the
legends say so.
"""

from __future__ import annotations

#: Family of each shipped model name; a defense not listed (a user's) joins `other`.
FAMILIES = {
    "teacher": "reference",
    "common": "reference",
    "scratch": "modes",
    "finetune": "modes",
    "freeze": "modes",
    "linear_probe": "modes",
    "commoninit": "modes",
    "pgd_at": "adversarial",
    "trades": "adversarial",
    "tla": "adversarial",
    "genaf": "adversarial",
    "purifier": "purification",
    "atop": "purification",
    "neuron_distance": "paper2",
    "dropout": "paper2",
    "differentiator": "paper2",
}
#: The sequential colormap of each family (its members take shades from its darker half).
HUES = {
    "reference": "Greys",
    "modes": "Blues",
    "adversarial": "Reds",
    "purification": "Greens",
    "paper2": "Purples",
    "other": "YlOrBr",
}
#: Markers within a family, in order.
MARKERS = "osD^vP*X<>ph"
#: Names the legends give the reference models.
REFERENCE_LABEL = " (reference)"


def family(name: str) -> str:
    return FAMILIES.get(name, "other")


def model_styles(models: list[str]) -> tuple[dict[str, tuple], dict[str, str]]:
    """A colour and a marker per model, fixed by the ordered list: the family's hue, a shade per member (darkest
    first), a marker per member."""
    import matplotlib

    members: dict[str, list[str]] = {}
    for m in models:
        members.setdefault(family(m), []).append(m)
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
    return name + (REFERENCE_LABEL if family(name) == "reference" else "")
