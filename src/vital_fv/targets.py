"""What to visualize. A class target enters VITAL only through its references (SPEC §3: no logit term)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import VitalError, close_matches


@dataclass(frozen=True)
class ClassTarget:
    """A class neuron, by index or by name (names are matched case-insensitively against the model's classes)."""

    cls: int | str

    def resolve(self, class_names: list[str], synonyms: list[list[str]] | None = None) -> tuple[int, str]:
        return resolve_class(self.cls, class_names, synonyms)

    def slug(self, class_names: list[str], synonyms: list[list[str]] | None = None) -> str:
        index, name = self.resolve(class_names, synonyms)
        clean = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
        while "--" in clean:
            clean = clean.replace("--", "-")
        return f"{index}-{clean}" if clean else str(index)


def resolve_class(
    cls: int | str, class_names: list[str], synonyms: list[list[str]] | None = None
) -> tuple[int, str]:
    """(index, name) for an index, a digit string or a class name; unknown names get close suggestions.

    ``synonyms`` (per class, e.g. WordNet's 'tabby, tabby cat' for ImageNet) are accepted when unambiguous.
    """
    if isinstance(cls, str) and cls.strip().lstrip("-").isdigit():
        cls = int(cls.strip())
    if isinstance(cls, int):
        if class_names and not 0 <= cls < len(class_names):
            raise VitalError(f"class index {cls} is out of range: the model has {len(class_names)} classes")
        if cls < 0:
            raise VitalError(f"class index {cls} is negative")
        return cls, class_names[cls] if class_names else str(cls)
    if not class_names:
        raise VitalError(f"class '{cls}' given by name, but the model has no class names: give an index")
    wanted = cls.strip().lower()
    exact = [i for i, n in enumerate(class_names) if n.lower() == wanted]
    if exact:
        return exact[0], class_names[exact[0]]
    if synonyms:
        hits = sorted({i for i, words in enumerate(synonyms) if wanted in (w.lower() for w in words)})
        if len(hits) == 1:
            return hits[0], class_names[hits[0]]
    near = close_matches(cls, class_names)
    hint = f" Did you mean: {', '.join(repr(n) for n in near)}?" if near else ""
    raise VitalError(f"unknown class '{cls}'.{hint} `vital classes --grep WORD` searches the class names.")
