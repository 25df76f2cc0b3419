"""The package's public names are explicit, importable and documented."""

from __future__ import annotations

import pipeline


def test_every_public_name_is_listed_importable_and_documented() -> None:
    assert pipeline.__all__ == sorted(pipeline.__all__, key=lambda n: (n[0].islower(), n))
    for name in pipeline.__all__:
        value = getattr(pipeline, name)
        assert value.__doc__, f"pipeline.{name} has no docstring"
    exported = {n for n in dir(pipeline) if not n.startswith("_")}
    modules = {n for n in exported if type(getattr(pipeline, n)).__name__ == "module"}
    assert exported - modules - {"annotations"} == set(pipeline.__all__)
