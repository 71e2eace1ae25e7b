"""``probestore delete``: what a target names, the locks a delete holds, and the delete itself.

The removal of each node is :meth:`ActivationStore.delete_run` / ``delete_checkpoint`` /
``delete_layer`` (one atomic step per node, every intermediate state a valid store).
This module adds what a command needs around them:

* **targets** ``RUN[/CHECKPOINT[/LAYER]]``, each part an exact name or a glob of the
  one selector (:func:`probestore.selectors.select`), resolved against the store into a
  plan: the items, their bytes on disk, and the derived nodes that go with them (the
  shared indices of an architecture no run is left of);
* **locks**: a delete must not race an extraction. It takes the store's set-up lock
  (``<store>.extract-lock``, held by ``probestore extract`` while it creates or adds to
  a store) without waiting, refuses while any writer lock of the store is held
  (``<store>.writer-<run>@<checkpoint>.lock``), and holds the writer locks of the
  checkpoints it removes until it is done, so an extraction started meanwhile waits
  for them instead of writing into a checkpoint being deleted.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from probestore.errors import ConfigError
from probestore.locking import (
    LockHeldError,
    held_writer_locks,
    setup_lock_path,
    try_file_lock,
    writer_lock_path,
)
from probestore.selectors import check_matched, select
from storage_schema import layout
from storage_schema.metadata import delete_entry
from storage_schema.store import ActivationStore, probestore_version

__all__ = ["DeleteItem", "DeletePlan", "delete_lock", "plan_delete", "apply_delete",
           "leftover_trash"]

_HINT = "`probestore inspect STORE` lists runs, checkpoints and layers"


@dataclass(frozen=True)
class DeleteItem:
    """One thing a delete removes: a run, a checkpoint or a layer."""

    kind: str  # "run", "checkpoint" or "layer"
    run: str
    checkpoint: str | None = None
    layer: str | None = None
    nbytes: int = 0
    detail: str = ""

    @property
    def path(self) -> str:
        return "/".join(p for p in (self.run, self.checkpoint, self.layer) if p is not None)

    def covers(self, other: DeleteItem) -> bool:
        """Whether removing this item removes ``other`` too (a run covers its checkpoints)."""
        mine = [p for p in (self.run, self.checkpoint, self.layer) if p is not None]
        theirs = [p for p in (other.run, other.checkpoint, other.layer) if p is not None]
        return len(mine) < len(theirs) and theirs[:len(mine)] == mine


@dataclass
class DeletePlan:
    """What a delete removes, in the order it removes it."""

    items: list[DeleteItem] = field(default_factory=list)
    #: Architectures whose shared reduction indices go too (no run of them is left;
    #: ``delete_run`` removes them with the architecture's last run).
    architectures: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(item.nbytes for item in self.items)

    def checkpoints(self, store: ActivationStore) -> list[tuple[str, str]]:
        """Every (run, checkpoint) the plan touches: the writer locks a delete holds."""
        out: list[tuple[str, str]] = []
        for item in self.items:
            if item.checkpoint is not None:
                out.append((item.run, item.checkpoint))
            else:
                out += [(item.run, c.name) for c in store.checkpoints(item.run, include_incomplete=True)]
        return list(dict.fromkeys(out))


def parse_target(target: str) -> tuple[str, str | None, str | None]:
    """``RUN[/CHECKPOINT[/LAYER]]`` -> its parts (names cannot contain ``/``)."""
    parts = target.split("/")
    if not 1 <= len(parts) <= 3 or any(not p for p in parts):
        raise ConfigError(
            "a delete target is RUN, RUN/CHECKPOINT or RUN/CHECKPOINT/LAYER",
            where="probestore delete TARGET", expected="1 to 3 non-empty names or globs joined by '/'",
            got=repr(target), fix=f"for example 'generalizing/epoch_0010/relu2'; {_HINT}")
    return parts[0], (parts[1] if len(parts) > 1 else None), (parts[2] if len(parts) > 2 else None)


def plan_delete(store: ActivationStore, targets: Sequence[str]) -> DeletePlan:
    """Resolve ``targets`` against the store; a pattern that matches nothing is refused.

    Incomplete checkpoints and blocks are matched too (a killed extraction's leftovers
    are a reason to delete). An item inside another one is listed once, as the larger.
    """
    items: list[DeleteItem] = []
    for target in targets:
        items += _items_of(store, target)
    unique = list(dict.fromkeys(items))
    items = [i for i in unique if not any(o.covers(i) for o in unique)]
    plan = DeletePlan(items)
    gone = {i.run for i in items if i.kind == "run"}
    left = {store.run_info(r).architecture for r in store.runs() if r not in gone}
    stored = set(store.architectures())
    plan.architectures = sorted(({store.run_info(r).architecture for r in gone} - left) & stored)
    return plan


def _items_of(store: ActivationStore, target: str) -> list[DeleteItem]:
    run_pat, ckpt_pat, layer_pat = parse_target(target)
    where = f"probestore delete {target!r}"
    runs = select(store.runs(), run_pat, what="run", where=where, hint=_HINT)
    if ckpt_pat is None:
        return [_run_item(store, r) for r in runs]
    ckpts = {r: select(store.checkpoints(r, include_incomplete=True), ckpt_pat, what="checkpoint",
                       where=where, must_match=False) for r in runs}
    check_matched(ckpt_pat, [c for cs in ckpts.values() for c in cs],
                  [c for r in runs for c in store.checkpoints(r, include_incomplete=True)],
                  what="checkpoint", where=where, hint=_HINT)
    if layer_pat is None:
        return [_checkpoint_item(store, r, c) for r in runs for c in ckpts[r]]
    if layer_pat == layout.OUTPUTS:
        raise ConfigError("the outputs block (the model's logits) cannot be deleted on its own", where=where,
                          expected="a layer name or glob", got=repr(target),
                          fix=f"delete the whole checkpoint ({run_pat}/{ckpt_pat}), or keep the outputs")
    chosen: list[DeleteItem] = []
    known: list[str] = []
    for r in runs:
        for c in ckpts[r]:
            names = store.layers(r, c, include_incomplete=True)
            known += names
            chosen += [_layer_item(store, r, c, name)
                       for name in select(names, layer_pat, what="layer", where=where, must_match=False)]
    check_matched(layer_pat, [i.layer for i in chosen if i.layer], known, what="layer", where=where, hint=_HINT)
    return chosen


def _run_item(store: ActivationStore, run: str) -> DeleteItem:
    ckpts = store.checkpoints(run, include_incomplete=True)
    done = sum(c.complete for c in ckpts)
    return DeleteItem("run", run, nbytes=store.backend.stored_bytes(layout.run_node(run)),
                      detail=f"{len(ckpts)} checkpoint(s), {done} complete")


def _checkpoint_item(store: ActivationStore, run: str, ckpt: str) -> DeleteItem:
    info = store.checkpoint_info(run, ckpt)
    state = "complete" if info is not None and info.complete else "incomplete"
    blocks = store.blocks(run, ckpt, include_incomplete=True)
    n_layers = sum(b != layout.OUTPUTS for b in blocks)
    outputs = " + outputs" if layout.OUTPUTS in blocks else ""
    return DeleteItem("checkpoint", run, ckpt, nbytes=store.backend.stored_bytes(layout.checkpoint_node(run, ckpt)),
                      detail=f"{state}, {n_layers} layer(s){outputs}")


def _layer_item(store: ActivationStore, run: str, ckpt: str, layer: str) -> DeleteItem:
    info = store.block_info(run, ckpt, layer)
    state = "complete" if info.complete else "incomplete"
    return DeleteItem("layer", run, ckpt, layer, nbytes=store.stored_bytes(run, ckpt, layer),
                      detail=f"{info.n_features} features, {state}")


@contextlib.contextmanager
def delete_lock(store_path: Path, checkpoints: Sequence[tuple[str, str]]) -> Iterator[None]:
    """Hold the store's set-up lock and the writer locks of ``checkpoints``; refuse if busy.

    Never waits: a delete that would have to wait for an extraction is refused with
    the holder named, so a user never deletes from under a running job by accident.
    """
    store_path = Path(store_path)
    fix = "wait for that extraction to finish (or stop it), then rerun the same command"
    with contextlib.ExitStack() as stack:
        setup = try_file_lock(setup_lock_path(store_path))
        if setup is None:
            raise LockHeldError("the store is being set up by `probestore extract` (or changed by another delete)",
                                where=str(setup_lock_path(store_path)), fix=fix)
        stack.enter_context(setup)
        busy = held_writer_locks(store_path)
        if busy:
            lock, holder = busy[0]
            raise LockHeldError(f"the store is being written by {holder or 'another process'}",
                                where=str(lock), fix=fix)
        for run, ckpt in checkpoints:
            lock_path = writer_lock_path(store_path, run, ckpt)
            held = try_file_lock(lock_path)
            if held is None:  # taken in the instant since the check above
                raise LockHeldError(f"checkpoint {run}/{ckpt} is being written by another process",
                                    where=str(lock_path), fix=fix)
            stack.enter_context(held)
        yield


def leftover_trash(store_path: Path) -> list[Path]:
    """Folders a killed delete was still emptying (renamed out of the store; safe to remove)."""
    store_path = Path(store_path)
    return sorted(store_path.parent.glob(f".{store_path.name}.deleting-*"))


def apply_delete(store: ActivationStore, plan: DeletePlan) -> list[str]:
    """Remove the plan's items (with indices no run needs any more); return the nodes removed.

    Call under :func:`delete_lock`. Leftovers of an earlier delete that was killed while
    emptying its renamed-away folders are removed first. What was removed is then
    recorded as a ``deleted`` entry of the root ``history`` (SCHEMA.md §4.1), so the store
    says why a run its config names is missing; a delete killed before that line leaves
    a valid store without the entry.
    """
    for trash in leftover_trash(store.path):
        shutil.rmtree(trash, ignore_errors=True)
    removed: list[str] = []
    for item in plan.items:
        if item.kind == "run":
            removed += store.delete_run(item.run)
        elif item.kind == "checkpoint":
            removed += store.delete_checkpoint(item.run, item.checkpoint or "")
        else:
            removed += store.delete_layer(item.run, item.checkpoint or "", item.layer or "")
    if plan.items:
        store.append_history(delete_entry(config_hash=store.config_hash,
                                          deleted=[f"{item.kind} {item.path}" for item in plan.items],
                                          probestore_version=probestore_version()))
    return removed
