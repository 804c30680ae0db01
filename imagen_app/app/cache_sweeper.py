"""Deletes the files a running app wrote for its requests once they are older than an age.

Why not Gradio's own `delete_cache` alone: Gradio 6.31 deletes only the files it recorded on the app's
components, and it records some files elsewhere: an output that was once updated with `gr.skip()` or
`gr.update()` is replaced by a per-session copy of its component, and the files written for it afterwards
(every streamed preview frame, the results) are recorded on that copy, which its sweep never sees; nor does
it know the files an app writes itself (the PNG downloads). Such files stay until the disk is full. This
sweeper does not depend on how Gradio records anything: it looks at the folders the app's components write
to (each component's `GRADIO_CACHE`) and any folders the app names (its own downloads),
and deletes every file in them that is older than `age_s` (by ctime, as Gradio ages files: a cached copy
that Gradio hands out again is touched and so kept), then the hash subfolders left empty (by this sweep, or
by Gradio's own sweep, which deletes files but not their folders).

Only files that were not there when the sweeper started are ever deleted: examples and initial values
(which Gradio writes while the app is built), and the files of other apps or earlier runs that existed
before, are never touched. Files that other processes write into the same folders later (a
`gradio_client` on the same machine downloads into the same temp folder, another app shares Gradio's
cache folder) go the same way once they are older than `age_s`: give apps with different ages each
their own GRADIO_TEMP_DIR (the tests do, per run).

It sweeps only while the app runs (`demo.is_running`, which Gradio sets at launch and clears at close):
it waits for the launch, and its thread ends at the first check after the app is closed (or when the app
object is garbage-collected without ever being launched), so it never deletes anything once its app has
stopped. A closed and relaunched app is swept by Gradio's own `delete_cache` only.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

log = logging.getLogger("imagen_app.cache_sweeper")


def component_cache_folders(demo) -> set:
    """The folders the app's components write their files to (each component's `GRADIO_CACHE`)."""
    return {folder for block in demo.blocks.values() if (folder := getattr(block, "GRADIO_CACHE", None))}


def _walk(roots: Iterable[str]) -> Iterator[Tuple[str, List[str], List[str]]]:
    """(folder, subfolders, files) under every root, deepest folders first."""
    for root in roots:
        yield from os.walk(root, topdown=False)


class CacheSweeper:
    """Every `every_s` seconds while `demo.is_running`: deletes the files under `folders` that are older
    than `age_s` seconds and were not there at `start()`, and the subfolders this leaves empty."""

    def __init__(self, demo, folders: Iterable[str], every_s: float, age_s: float):
        self._demo = weakref.ref(demo)  # the thread must not keep a never-launched app alive
        folders = sorted({os.path.realpath(f) for f in folders})
        # A folder inside another one (GRADIO_TEMP_DIR holding the downloads folder) is walked as part of it.
        self.roots = [f for f in folders if not any(f.startswith(other + os.sep) for other in folders)]
        self.every_s, self.age_s = every_s, age_s
        self._existing: Dict[str, int] = {}  # path -> inode of every file there at start(): never deleted
        self._existing_folders: Set[str] = set()  # the folders there at start(): never removed
        self.thread: Optional[threading.Thread] = None
        self.launched = False  # the app has been seen running
        self.deleted = 0  # files deleted so far

    def start(self) -> "CacheSweeper":
        for folder, _, names in _walk(self.roots):
            self._existing_folders.add(folder)
            for name in names:
                try:
                    self._existing[os.path.join(folder, name)] = os.lstat(os.path.join(folder, name)).st_ino
                except OSError:
                    pass
        self.thread = threading.Thread(target=self._run, name="imagen-cache-sweeper", daemon=True)
        self.thread.start()
        return self

    def _running(self) -> Optional[bool]:
        """True while the app runs, False before its launch, None once it has been closed or collected."""
        demo = self._demo()
        if demo is None:
            return None
        if demo.is_running:
            self.launched = True
            return True
        return None if self.launched else False

    def _run(self) -> None:
        while True:
            time.sleep(self.every_s)
            running = self._running()
            if running is None:
                return
            if running:
                try:
                    self.sweep()
                except Exception:  # a sweep that fails must not end the sweeping
                    log.exception("cache sweep failed")

    def sweep(self, now: Optional[float] = None) -> int:
        """Deletes the old files written since start(), then the folders made since then that are empty now
        and were emptied by this sweep or are older than `age_s` (Gradio's own delete_cache leaves the hash
        folders of the files it deletes); returns how many files it deleted."""
        now = time.time() if now is None else now
        count, removed = 0, set()  # removed: the folders this sweep deleted something in
        for folder, _, names in _walk(self.roots):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                    if self._existing.get(path) == st.st_ino or now - st.st_ctime <= self.age_s:
                        continue
                    os.remove(path)
                except OSError:  # gone meanwhile (Gradio's own delete_cache), or not ours to delete
                    continue
                count += 1
                removed.add(folder)
            if folder in self.roots or folder in self._existing_folders:
                continue
            try:
                if folder in removed or now - os.lstat(folder).st_mtime > self.age_s:
                    os.rmdir(folder)  # only if empty: a folder with a file in it (Gradio just wrote one) stays
                    removed.add(os.path.dirname(folder))
            except OSError:
                continue
        self.deleted += count
        if count:
            log.info("deleted %d cached file(s) older than %g s", count, self.age_s)
        return count


def start_sweeper(demo, extra_folders: Iterable[str], every_s: float, age_s: float) -> CacheSweeper:
    """Starts a CacheSweeper on the folders of `demo`'s components and `extra_folders` (call after building it)."""
    return CacheSweeper(demo, [*component_cache_folders(demo), *extra_folders], every_s, age_s).start()
