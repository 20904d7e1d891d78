"""Which versions of a TF Serving base (NAME/1, NAME/2, ...) `serve` keeps loaded: TF Serving's model version
policies, written as `serve.versions` (`--versions`).

- `latest`     the newest version (TF Serving's default)
- `latest:N`   the N newest
- `all`        every version
- `1,3`        those versions (TF Serving's `specific`)

Requests without a version go to the newest loaded one; `/versions/N` and `/labels/LABEL` pin one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    newest: int | None = 1  # keep the N newest; None: every version, or the listed ones
    listed: tuple[int, ...] = ()

    def pick(self, present: list[int]) -> list[int]:
        """The versions to serve among those present (oldest first)."""
        present = sorted(set(present))
        if self.listed:
            return [v for v in present if v in self.listed]
        return present if self.newest is None else present[-self.newest:]

    def __str__(self) -> str:
        if self.listed:
            return ",".join(map(str, self.listed))
        return "all" if self.newest is None else "latest" if self.newest == 1 else f"latest:{self.newest}"


def parse(text: str) -> Policy:
    """`latest`, `latest:N`, `all` or a list of versions `1,3`; ValueError naming what is wrong."""
    t = str(text).strip().lower()
    if t == "latest":
        return Policy()
    if t == "all":
        return Policy(None)
    if t.startswith("latest:"):
        n = t.partition(":")[2]
        if n.isdigit() and int(n) >= 1:
            return Policy(int(n))
        raise ValueError(f"{text!r}: latest:N needs N >= 1 (e.g. latest:2)")
    parts = [p.strip() for p in t.split(",")]
    if parts and all(p.isdigit() for p in parts):
        return Policy(None, tuple(sorted({int(p) for p in parts})))
    raise ValueError(f"{text!r} is not a version policy: latest, latest:N, all, or versions such as 1,3")
