"""Blocks a complete checkpoint declares but that cannot be read: planned as failures.

``ActivationStore.blocks`` lists the blocks whose array is present; a block folder
whose ``features`` (or ``logits``) array was deleted, or whose metadata no longer
matches its array, is simply not listed. An analysis that plans from that list would
skip the block and report "5/5 blocks fitted": the damage would show only as rows
missing from the table. Instead every block folder of a complete checkpoint is
planned, and those that cannot be read become ``failed`` rows whose message says why
(:data:`analyze.results.UNREADABLE_BLOCK`), and the analysis exits non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from probestore.errors import ProbestoreError
from storage_schema import layout


@dataclass(frozen=True)
class UnreadableBlock:
    """A declared block of a complete checkpoint that the store cannot return."""

    name: str
    kind: str  # "features" | "logits"
    n_features: int  # from the block's metadata, -1 when unknown
    reason: str  # the failed rows' message


def _declared(store, run: str, checkpoint: str) -> list[tuple[str, str]]:
    """``(name, kind)`` of every block folder of a checkpoint, readable or not."""
    backend = store.backend
    base = layout.checkpoint_node(run, checkpoint)
    out = []
    if backend.node_kind(f"{base}/layers") == "group":
        out += [(name, "features") for name in backend.list_children(f"{base}/layers")[0]]
    if backend.node_kind(f"{base}/{layout.OUTPUTS}") == "group":
        out.append((layout.OUTPUTS, "logits"))
    return out


def _reason(store, run: str, checkpoint: str, name: str, kind: str) -> str:
    array = layout.block_array_node(run, checkpoint, name)
    if store.backend.node_kind(array) != "array":
        what = f"its {'logits' if kind == 'logits' else 'features'} array is missing"
    else:
        try:
            info = store.block_info(run, checkpoint, name)
        except ProbestoreError as exc:
            what = str(exc).split("; fix:")[0]
        else:
            what = "it is marked incomplete" if not info.complete else "it cannot be listed"
    return f"{run}/{checkpoint}/{name}: {what}, although the checkpoint is marked complete"


def unreadable_blocks(store, run: str, checkpoint: str, listed: set[str]) -> list[UnreadableBlock]:
    """Blocks of a complete checkpoint that ``store.blocks`` did not list (``listed``), with why.

    Parameters
    ----------
    store : ActivationStore
    run, checkpoint : str
        A checkpoint the store marks complete.
    listed : set of str
        Names ``store.blocks(run, checkpoint)`` returned.
    """
    out = []
    for name, kind in _declared(store, run, checkpoint):
        if name in listed:
            continue
        try:
            attrs = store.backend.get_attrs(layout.block_node(run, checkpoint, name))
        except Exception:  # noqa: BLE001 - unreadable metadata is one more reason, found below
            attrs = {}
        width = attrs.get("n_features") if isinstance(attrs, dict) else None
        out.append(UnreadableBlock(name, kind, int(width) if isinstance(width, int) else -1,
                                   _reason(store, run, checkpoint, name, kind)))
    return out
